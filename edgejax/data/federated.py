"""Device-resident node datasets: every node's samples padded to one shape.

Layout (the data path every algorithm reads):

``NodeData``
    ``x [N, M, *feature_shape]``, ``y [N, M]``, ``count [N]``: node ``i`` owns
    ``x[i, :count[i]]``; slots ``count[i]..M-1`` are zero padding that no loss or
    metric ever reads (they carry weight 0).  ``M`` is the largest node size.
``TestData``
    the global test set ``x [T, ...]``, ``y [T]`` with a ``mask [T]`` so that it can
    be padded to a multiple of the evaluation batch.
``FederatedData``
    ``train`` and ``local_test`` (``NodeData``; each node's held-out split for per-node
    metrics), the global ``test`` set, and static metadata.  It is a pytree: pass it
    to jitted functions as an argument (never close over it, which would bake the
    arrays into the program as constants).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from edgejax.data.datasets import Dataset
from edgejax.data.partition import Natural, partition, partition_summary

EVAL_BATCH = 1024


class NodeData(NamedTuple):
    """Per-node samples padded to ``M``: ``x [N, M, ...]``, ``y [N, M]``, ``count [N]``.

    ``minibatches``: ``()``, or a round's explicit minibatches ``(slots [N, S, B], weights
    [N, S, B])`` that the local update trains on instead of drawing its own (a plan's, see
    ``Simulation.make_plan``)."""

    x: jnp.ndarray
    y: jnp.ndarray
    count: jnp.ndarray
    minibatches: tuple = ()

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[2:])


class TestData(NamedTuple):
    """A flat evaluation set ``x [T, ...]``, ``y [T]`` with a validity ``mask [T]``."""

    x: jnp.ndarray
    y: jnp.ndarray
    mask: jnp.ndarray


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FederatedData:
    """Everything a simulation reads: node train splits, node test splits, a global test set."""

    train: NodeData
    local_test: NodeData
    test: TestData
    num_classes: int = dataclasses.field(metadata={"static": True})
    name: str = dataclasses.field(metadata={"static": True})

    def replace(self, **changes) -> "FederatedData":
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    @property
    def num_nodes(self) -> int:
        return self.train.num_nodes

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self.train.feature_shape

    def node_counts(self) -> np.ndarray:
        """Training samples per node (host array)."""
        return np.asarray(self.train.count)


def _float(x: np.ndarray):
    """Keep a float array's precision (float64 stays float64 for x64 runs); anything else -> float32."""
    return x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32


def _labels(y: np.ndarray):
    """Class labels stay int32; float targets (regression) keep their float dtype."""
    return y.dtype if np.issubdtype(y.dtype, np.floating) else np.int32


def pad_nodes(x: np.ndarray, y: np.ndarray, parts: Sequence[np.ndarray]) -> NodeData:
    """Stack ``x[parts[i]]`` for every node into a zero-padded ``NodeData`` (labels ``[N, M]``,
    or ``[N, M, d]`` for vector regression targets)."""
    counts = np.array([len(p) for p in parts], dtype=np.int32)
    m = max(int(counts.max(initial=0)), 1)
    xs = np.zeros((len(parts), m, *x.shape[1:]), dtype=_float(x))
    ys = np.zeros((len(parts), m, *y.shape[1:]), dtype=_labels(y))
    for i, idx in enumerate(parts):
        xs[i, : len(idx)] = x[idx]
        ys[i, : len(idx)] = y[idx]
    return NodeData(*jax.device_put((xs, ys, counts)))   # a copy to the device: jnp.asarray compiles a program


def pad_test(x: np.ndarray, y: np.ndarray, batch: int = EVAL_BATCH) -> TestData:
    """Pad a test set to a multiple of ``min(batch, T)`` rows, with a mask of the real rows."""
    t = len(y)
    size = -(-t // min(batch, max(t, 1))) * min(batch, max(t, 1))
    xs = np.zeros((size, *x.shape[1:]), dtype=_float(x))
    ys = np.zeros((size, *y.shape[1:]), dtype=_labels(y))
    xs[:t], ys[:t] = x, y
    mask = np.arange(size) < t
    return TestData(*jax.device_put((xs, ys, mask.astype(np.float32))))


def _split_local_test(parts, fraction: float, rng: np.random.Generator):
    """Hold out ``round(fraction * n_i)`` random samples of each node (at least one train sample stays)."""
    train, test = [], []
    for idx in parts:
        n_test = min(int(round(fraction * len(idx))), len(idx) - 1)
        shuffled = rng.permutation(idx)
        test.append(np.sort(shuffled[:n_test]))
        train.append(np.sort(shuffled[n_test:]))
    return train, test


def federate(dataset: Dataset, num_nodes: int | None, scheme, *, seed: int = 0,
             local_test_fraction: float = 0.2) -> tuple[FederatedData, pd.DataFrame]:
    """Partition ``dataset``'s training split over nodes and put it on the device.

    Each node keeps ``local_test_fraction`` of its samples as a local test split
    (per-node metrics of the global model).  With the ``Natural`` scheme and a
    dataset whose test split carries group ids (e.g. FedProx Synthetic's 90/10 split
    per device), a node's local test split is its own group's test samples instead.
    The dataset's test split is the global test set.

    Returns the device-resident ``FederatedData`` and the partition summary
    (samples and label histogram per node of the training split).
    """
    if not 0.0 <= local_test_fraction < 1.0:
        raise ValueError(f"local_test_fraction must be in [0, 1); got {local_test_fraction}")
    natural = isinstance(scheme, Natural)
    if natural and num_nodes is None:
        num_nodes = len(np.unique(dataset.groups_train))
    if num_nodes is None:
        raise ValueError("num_nodes is required unless the partition is natural")
    rng = np.random.default_rng(seed)
    parts = partition(dataset.y_train, scheme, num_nodes, seed=seed, groups=dataset.groups_train)
    if natural and dataset.groups_test is not None:
        node_groups = np.unique(dataset.groups_train)
        train_parts = parts
        test_parts = [np.flatnonzero(dataset.groups_test == g) for g in node_groups]
        local_test = pad_nodes(dataset.x_test, dataset.y_test, test_parts)
    else:
        train_parts, test_parts = _split_local_test(parts, local_test_fraction, rng)
        local_test = pad_nodes(dataset.x_train, dataset.y_train, test_parts)
    data = FederatedData(
        train=pad_nodes(dataset.x_train, dataset.y_train, train_parts),
        local_test=local_test,
        test=pad_test(dataset.x_test, dataset.y_test),
        num_classes=dataset.num_classes,
        name=dataset.name,
    )
    return data, partition_summary(train_parts, dataset.y_train, dataset.num_classes)
