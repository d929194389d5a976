"""Node data kept in host memory, the cohort streamed to the device each round.

``FederatedData`` normally holds every node's padded samples on the device
(``NodeData [N, M, ...]``).  For cross-device training with far more clients than fit
there, ``host_federate`` keeps them on the host in a compact form and the device sees
only each node's sample count:

``HostSamples``
    ``pool_x [P, ...]`` (any dtype, e.g. ``uint8`` pixels; a sample's features are
    ``pool_x[j] * scale``), ``pool_y [P]`` and ``index [N, M]``: node ``i`` owns pool
    rows ``index[i, :count[i]]`` (nodes may share rows: a client population larger than
    the pool).  N x M x 4 bytes of indices plus the pool itself: 10^6 clients of up to
    64 samples over MNIST's 10^4 test images take 256 MB + 7.8 MB.
``HostNodeData``
    ``FederatedData.train`` for such data: ``count [N]`` on the device, the samples on
    the host.  ``take(nodes)`` is the cohort's ``NodeData [K, M, ...]``, gathered and
    converted on the host by a ``jax.pure_callback`` inside the compiled round, so the
    whole round loop still runs as one program; only K nodes' samples are on the device
    at a time.

Algorithms read node data through ``cohort_data`` (``edgejax.algorithms.server``) and so
work unchanged with a sampled cohort.  Algorithms that train every node every round
(decentralized ones) need device-resident data, and so do the per-node evaluation
metrics: with host data only the global test set is evaluated (``local_test`` is
``None``).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.core.state import tree_take
from edgejax.data.federated import FederatedData, NodeData, pad_test
from edgejax.parallel.nodes import shard_rows


class HostSamples:
    """The host arrays behind a ``HostNodeData`` (see the module docstring); compared by
    identity, so it can be static configuration of a compiled program."""

    def __init__(self, pool_x: np.ndarray, pool_y: np.ndarray, index: np.ndarray, count: np.ndarray,
                 scale: float = 1.0, dtype=np.float32):
        self.pool_x, self.pool_y = np.asarray(pool_x), np.asarray(pool_y)
        self.index, self.count = np.asarray(index, np.int32), np.asarray(count, np.int32)
        self.scale, self.dtype = float(scale), np.dtype(dtype)
        if len(self.pool_x) != len(self.pool_y):
            raise ValueError(f"pool_x has {len(self.pool_x)} samples but pool_y has {len(self.pool_y)}")
        if self.index.ndim != 2 or self.count.shape != self.index.shape[:1]:
            raise ValueError(f"index must be [N, M] and count [N]; got {self.index.shape} and {self.count.shape}")
        if self.count.min(initial=0) < 0 or self.count.max(initial=0) > self.index.shape[1]:
            raise ValueError(f"counts must be in [0, M={self.index.shape[1]}]")
        used = np.arange(self.index.shape[1])[None, :] < self.count[:, None]
        bad = np.flatnonzero(((self.index < 0) | (self.index >= len(self.pool_x))) & used)
        if bad.size:
            node = bad[0] // self.index.shape[1]
            raise ValueError(f"node {node} indexes pool row {self.index.flat[bad[0]]}, outside [0, {len(self.pool_x)})")

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.pool_x.shape[1:])

    def gather(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The nodes' padded samples ``x [K, M, ...]`` (float, zero padding), ``y [K, M]``, ``count [K]``."""
        nodes = np.asarray(nodes)
        rows, count = self.index[nodes], self.count[nodes]
        used = np.arange(rows.shape[-1]) < count[..., None]
        x = self.pool_x[rows].astype(self.dtype) * self.dtype.type(self.scale)
        x *= used.reshape(used.shape + (1,) * (x.ndim - used.ndim))
        y = np.where(used, self.pool_y[rows], 0).astype(self.pool_y.dtype)
        return x, y, count

    def real_samples(self):
        """Every pool row some node owns, once: ``(x, y)`` (what ``check_data`` reads)."""
        used = np.arange(self.index.shape[1])[None, :] < self.count[:, None]
        rows = np.unique(self.index[used])
        return self.pool_x[rows].astype(self.dtype) * self.dtype.type(self.scale), self.pool_y[rows]


@jax.tree_util.register_pytree_node_class
class HostNodeData:
    """``FederatedData.train`` whose samples stay on the host (see the module docstring):
    a pytree with the device ``count [N]`` as its only leaf and the ``HostSamples`` as
    static data."""

    def __init__(self, count: jax.Array, source: HostSamples, mesh=None):
        self.count, self.source, self.mesh = count, source, mesh

    def tree_flatten(self):
        return (self.count,), (self.source, self.mesh)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return cls(leaves[0], *aux)

    def on_mesh(self, mesh) -> "HostNodeData":
        """The same data, its cohorts gathered per device of ``mesh``'s ``nodes`` axis (``take``)."""
        return HostNodeData(self.count, self.source, mesh)

    @property
    def num_nodes(self) -> int:
        return self.source.index.shape[0]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self.source.feature_shape

    @property
    def node_bytes(self) -> int:
        """Bytes of one node's padded samples once on the device."""
        return self.source.index.shape[1] * (int(np.prod(self.feature_shape)) * self.source.dtype.itemsize
                                             + self.source.pool_y.dtype.itemsize)

    def take(self, nodes: jax.Array) -> NodeData:
        """The cohort's ``NodeData [K, M, ...]``, copied from the host inside the compiled program;
        with a node mesh (``on_mesh``) every device fetches its own share of the cohort (the
        cohort padded to a multiple of the devices with node 0, sliced off after)."""
        if self.mesh is None:
            return NodeData(*self._fetch(nodes))
        return NodeData(*shard_rows(self._fetch, self.mesh, nodes))

    def _fetch(self, nodes: jax.Array):
        k, m = nodes.shape[0], self.source.index.shape[1]
        shapes = (jax.ShapeDtypeStruct((k, m, *self.feature_shape), self.source.dtype),
                  jax.ShapeDtypeStruct((k, m), self.source.pool_y.dtype), jax.ShapeDtypeStruct((k,), jnp.int32))
        return jax.pure_callback(self.source.gather, shapes, nodes, vmap_method="sequential")


def cohort_data(train, nodes: jax.Array, full: bool):
    """The cohort's node data: ``train`` itself for a full cohort of device data, its rows
    ``nodes`` otherwise; host data (``HostNodeData``) is always streamed."""
    if isinstance(train, HostNodeData):
        return train.take(nodes)
    return train if full else tree_take(train, nodes)


def host_federate(pool_x: np.ndarray, pool_y: np.ndarray, parts: Sequence[np.ndarray] | np.ndarray,
                  test_x: np.ndarray, test_y: np.ndarray, num_classes: int, *, scale: float = 1.0,
                  name: str = "host", dtype=np.float32) -> FederatedData:
    """``FederatedData`` with host-resident training data: node ``i`` owns pool rows
    ``parts[i]`` (a list of index arrays, or an ``[N, M]`` array when every node has M
    samples); the global test set ``test_x``, ``test_y`` goes to the device as usual
    (features times ``scale``).  No per-node test split (``local_test`` is ``None``)."""
    if isinstance(parts, np.ndarray) and parts.ndim == 2:
        index, count = parts.astype(np.int32), np.full(len(parts), parts.shape[1], np.int32)
    else:
        count = np.array([len(p) for p in parts], np.int32)
        index = np.zeros((len(parts), int(count.max(initial=1))), np.int32)
        for i, p in enumerate(parts):
            index[i, :len(p)] = p
    if len(index) == 0:
        raise ValueError("host_federate needs at least one node")
    source = HostSamples(pool_x, pool_y, index, count, scale, dtype)
    dtype = np.dtype(dtype)
    test = pad_test(np.asarray(test_x).astype(dtype) * dtype.type(scale), np.asarray(test_y))
    return FederatedData(train=HostNodeData(jnp.asarray(count), source), local_test=None, test=test,
                         num_classes=num_classes, name=name)
