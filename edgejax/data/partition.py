"""Partitioners: how the training samples are split among the N nodes.

A partitioner is a small frozen (hashable) dataclass with a method
``split(labels, num_nodes, rng, groups=None) -> list[np.ndarray]`` that returns one sorted
int64 index array per node. All partitioners here assign every sample to exactly one node.
Use :func:`partition` to call one: it validates the inputs before any work and checks the
result. :func:`parse_partition` reads the CLI's short forms ("dirichlet:0.5", ...), and
:func:`partition_summary` tabulates the per-node label counts.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd


@runtime_checkable
class Partitioner(Protocol):
    """Anything with a ``split`` method of this signature can be passed to :func:`partition`."""

    def split(
        self, labels: np.ndarray, num_nodes: int, rng: np.random.Generator, groups: np.ndarray | None = None
    ) -> list[np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class IID:
    """A uniformly random permutation cut into ``num_nodes`` near-equal parts (``np.array_split``)."""

    def split(
        self, labels: np.ndarray, num_nodes: int, rng: np.random.Generator, groups: np.ndarray | None = None
    ) -> list[np.ndarray]:
        return _sorted_parts(np.array_split(rng.permutation(len(labels)), num_nodes))


@dataclasses.dataclass(frozen=True)
class _ResampledDirichlet:
    """Shared by the Dirichlet-based partitioners: ``alpha``, and redraws (at most
    ``max_retries``) until every node holds at least ``min_size`` samples."""

    alpha: float
    min_size: int = 10
    max_retries: int = 1000

    def __post_init__(self) -> None:
        _check_alpha(self, self.alpha)
        _check_min_size(self, self.min_size, self.max_retries)

    def split(
        self, labels: np.ndarray, num_nodes: int, rng: np.random.Generator, groups: np.ndarray | None = None
    ) -> list[np.ndarray]:
        _check_feasible(self, len(labels), num_nodes)
        for _ in range(self.max_retries):
            parts = self._draw(labels, num_nodes, rng)
            if parts is not None and min(len(p) for p in parts) >= self.min_size:
                return _sorted_parts(parts)
        raise _infeasible(self, len(labels), num_nodes)

    def _draw(self, labels: np.ndarray, num_nodes: int, rng: np.random.Generator) -> list[np.ndarray] | None:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Dirichlet(_ResampledDirichlet):
    """Label skew by a Dirichlet prior, NIID-Bench's 'noniid-labeldir'.

    Li et al. 2022, "Federated Learning on Non-IID Data Silos: An Experimental Study"
    (``partition_data`` in Xtra-Computing/NIID-Bench). For each class k, with n samples
    and N nodes::

        p ~ Dir(alpha * 1_N)
        p_j <- p_j * [|idx_j| < n / N]      (nodes already holding n/N samples get no more)
        p <- p / sum(p)
        split the shuffled class-k indices at floor(cumsum(p) * n_k)

    The whole assignment is redrawn until every node holds at least ``min_size`` samples,
    at most ``max_retries`` times (then a ValueError). A draw whose masked proportions
    underflow to all zeros (possible for tiny alpha) counts as a failed draw. Smaller
    alpha gives more skewed per-node label distributions.
    """

    def _draw(self, labels: np.ndarray, num_nodes: int, rng: np.random.Generator) -> list[np.ndarray] | None:
        n = len(labels)
        by_class = [np.flatnonzero(labels == k) for k in np.unique(labels)]
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
        sizes = np.zeros(num_nodes, np.int64)
        for idx_k in by_class:
            idx_k = rng.permutation(idx_k)
            p = rng.dirichlet(np.full(num_nodes, self.alpha)) * (sizes < n / num_nodes)
            total = p.sum()
            if not total > 0:
                return None
            cuts = (np.cumsum(p / total) * len(idx_k)).astype(np.int64)[:-1]
            for j, chunk in enumerate(np.split(idx_k, cuts)):
                chunks[j].append(chunk)
                sizes[j] += len(chunk)
        return [np.concatenate(c) for c in chunks]


@dataclasses.dataclass(frozen=True)
class Shards:
    """Pathological non-IID split of McMahan et al. 2017 ("Communication-Efficient Learning
    of Deep Networks from Decentralized Data", section 3).

    Sort the samples by label (ties in random order), cut them into
    ``num_nodes * shards_per_node`` contiguous shards with ``np.array_split`` (so every
    sample is assigned; shard sizes differ by at most one) and give each node
    ``shards_per_node`` shards drawn without replacement. A node sees at most
    ``shards_per_node`` classes plus one per shard that straddles a class boundary.
    """

    shards_per_node: int = 2

    def __post_init__(self) -> None:
        if not _is_int(self.shards_per_node) or self.shards_per_node < 1:
            raise ValueError(
                f"Shards: shards_per_node must be an int >= 1, got shards_per_node={self.shards_per_node!r}"
            )

    def split(
        self, labels: np.ndarray, num_nodes: int, rng: np.random.Generator, groups: np.ndarray | None = None
    ) -> list[np.ndarray]:
        num_shards = num_nodes * self.shards_per_node
        if num_shards > len(labels):
            raise ValueError(
                f"Shards(shards_per_node={self.shards_per_node}): num_nodes={num_nodes} needs "
                f"{num_shards} shards but only {len(labels)} samples"
            )
        perm = rng.permutation(len(labels))
        order = perm[np.argsort(labels[perm], kind="stable")]
        shards = np.array_split(order, num_shards)
        owners = rng.permutation(num_shards).reshape(num_nodes, self.shards_per_node)
        return _sorted_parts([np.concatenate([shards[s] for s in row]) for row in owners])


@dataclasses.dataclass(frozen=True)
class QuantitySkew(_ResampledDirichlet):
    """Quantity skew with i.i.d. labels, NIID-Bench's 'iid-diff-quantity' (Li et al. 2022).

    Proportions ``q ~ Dir(alpha * 1_N)``; a random permutation of the samples is cut at
    ``floor(cumsum(q) * n)``. ``q`` and the permutation are redrawn until every node
    holds at least ``min_size`` samples, at most ``max_retries`` times. NIID-Bench tests
    ``min(q) * n >= 10`` before the floor; this tests the integer sizes actually produced,
    so ``min_size`` is a guarantee. Smaller alpha gives more unequal node sizes.
    """

    def _draw(self, labels: np.ndarray, num_nodes: int, rng: np.random.Generator) -> list[np.ndarray]:
        n = len(labels)
        q = rng.dirichlet(np.full(num_nodes, self.alpha))
        cuts = (np.cumsum(q) * n).astype(np.int64)[:-1]
        return np.split(rng.permutation(n), cuts)


@dataclasses.dataclass(frozen=True)
class Natural:
    """One node per natural group id (device, speaker, user), nodes in sorted id order.

    Needs ``groups`` (one id per sample) with exactly ``num_nodes`` distinct ids.
    """

    def split(
        self, labels: np.ndarray, num_nodes: int, rng: np.random.Generator, groups: np.ndarray | None = None
    ) -> list[np.ndarray]:
        if groups is None:
            raise ValueError("Natural partition needs groups (one natural id per sample), got groups=None")
        groups = np.asarray(groups)
        if groups.shape != labels.shape:
            raise ValueError(f"Natural partition: groups has shape {groups.shape}, labels {labels.shape}")
        ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        if len(ids) != num_nodes:
            raise ValueError(
                f"Natural partition: num_nodes={num_nodes} but groups has {len(ids)} distinct ids"
            )
        order = np.argsort(inverse, kind="stable")
        return _sorted_parts(np.split(order, np.cumsum(counts)[:-1]))


PARTITIONERS = (IID, Dirichlet, Shards, QuantitySkew, Natural)


def partition(
    labels: np.ndarray,
    scheme: Partitioner | str,
    num_nodes: int,
    *,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Split sample indices ``0..len(labels)-1`` among ``num_nodes`` nodes.

    ``scheme`` is a partitioner or a string for :func:`parse_partition`. Inputs are checked
    before any work; the partitioner runs with ``np.random.default_rng(seed)``; its result is
    checked (one array per node, indices in range, none empty, no index on two nodes).
    Returns one sorted int64 index array per node.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"partition: labels must be 1-D, got shape {labels.shape}")
    if not _is_int(num_nodes) or num_nodes < 1:
        raise ValueError(f"partition: num_nodes must be an int >= 1, got num_nodes={num_nodes!r}")
    if num_nodes > len(labels):
        raise ValueError(f"partition: num_nodes={num_nodes} but only {len(labels)} samples")
    if isinstance(scheme, str):
        scheme = parse_partition(scheme)
    if not isinstance(scheme, Partitioner):
        raise TypeError(
            f"partition: scheme must be a partitioner ({', '.join(c.__name__ for c in PARTITIONERS)}) "
            f"or a string for parse_partition, got {type(scheme).__name__}"
        )
    if groups is not None and np.shape(groups) != labels.shape:
        raise ValueError(f"partition: groups has shape {np.shape(groups)} but labels has {labels.shape}")
    parts = scheme.split(labels, int(num_nodes), np.random.default_rng(seed), groups)
    return _checked(parts, len(labels), int(num_nodes), scheme)


def _checked(parts: list[np.ndarray], n: int, num_nodes: int, scheme: object) -> list[np.ndarray]:
    if len(parts) != num_nodes:
        raise ValueError(f"{scheme!r} returned {len(parts)} parts for num_nodes={num_nodes}")
    parts = [np.asarray(p) for p in parts]
    for j, p in enumerate(parts):
        if p.size == 0:
            raise ValueError(f"{scheme!r}: node {j} got no samples")
        if p.ndim != 1 or p.dtype.kind not in "iu":
            raise ValueError(
                f"{scheme!r}: node {j} got a {p.dtype} array of shape {p.shape}, not 1-D integer indices"
            )
        if p.min() < 0 or p.max() >= n:
            raise ValueError(f"{scheme!r}: node {j} got an index outside [0, {n})")
    seen = np.bincount(np.concatenate(parts), minlength=n)
    if seen.max() > 1:
        dup = int(np.argmax(seen))
        owners = [j for j, p in enumerate(parts) if dup in p]
        raise ValueError(f"{scheme!r}: sample {dup} is assigned {seen[dup]} times (nodes {owners})")
    return _sorted_parts(parts)


def parse_partition(spec: str) -> Partitioner:
    """Partitioner from a short CLI form.

    Accepted: ``iid``, ``dirichlet:<alpha>[:<min size>]``, ``shards:<shards per node>``,
    ``quantity:<alpha>[:<min size>]``, ``natural`` (case and surrounding spaces ignored).
    """
    accepted = ("'iid', 'dirichlet:<alpha>[:<min size>]', 'shards:<shards per node>', "
                "'quantity:<alpha>[:<min size>]', 'natural'")
    kind, _, arg = spec.strip().lower().partition(":")
    no_arg = {"iid": IID, "natural": Natural}
    with_arg = {"dirichlet": (Dirichlet, float), "quantity": (QuantitySkew, float), "shards": (Shards, int)}
    if kind in no_arg and not arg:
        return no_arg[kind]()
    value, _, min_size = arg.partition(":")
    if kind in with_arg and value and not (min_size and kind == "shards"):
        cls, cast = with_arg[kind]
        try:
            return cls(cast(value), int(min_size)) if min_size else cls(cast(value))
        except ValueError as err:
            raise ValueError(f"bad partition spec {spec!r}: {err}") from err
    raise ValueError(f"bad partition spec {spec!r}; accepted forms: {accepted}")


def partition_summary(parts: list[np.ndarray], labels: np.ndarray, num_classes: int) -> pd.DataFrame:
    """One row per node: ``node``, ``samples``, ``classes`` (number present),
    ``dominant_class_share`` (largest class count / samples) and ``class_0`` ..
    ``class_{C-1}`` counts."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise ValueError(f"partition_summary: label {bad} outside [0, {num_classes})")
    counts = np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])
    samples = counts.sum(axis=1)
    table = {
        "node": np.arange(len(parts)),
        "samples": samples,
        "classes": (counts > 0).sum(axis=1),
        "dominant_class_share": counts.max(axis=1) / np.maximum(samples, 1),
    }
    table.update({f"class_{c}": counts[:, c] for c in range(num_classes)})
    return pd.DataFrame(table)


def format_partition_summary(df: pd.DataFrame, max_rows: int = 10) -> str:
    """A short text summary of :func:`partition_summary`'s table for a CLI to print."""
    num_classes = sum(c.startswith("class_") for c in df.columns)
    s = df["samples"]
    lines = [
        f"{len(df)} nodes, {int(s.sum())} samples, {num_classes} classes",
        f"samples per node: min {int(s.min())}, median {s.median():g}, max {int(s.max())}",
        f"classes per node: mean {df['classes'].mean():.2f} of {num_classes}; "
        f"dominant class share: mean {df['dominant_class_share'].mean():.2f}",
        df.head(max_rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"),
    ]
    if len(df) > max_rows:
        lines.append(f"... {len(df) - max_rows} more nodes")
    return "\n".join(lines)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _sorted_parts(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _check_alpha(scheme: object, alpha: float) -> None:
    if not alpha > 0 or not np.isfinite(alpha):
        raise ValueError(f"{type(scheme).__name__}: alpha must be a finite number > 0, got alpha={alpha}")


def _check_min_size(scheme: object, min_size: int, max_retries: int) -> None:
    name = type(scheme).__name__
    if not _is_int(min_size) or min_size < 1:
        raise ValueError(f"{name}: min_size must be an int >= 1 (no node may be empty), got {min_size=!r}")
    if not _is_int(max_retries) or max_retries < 1:
        raise ValueError(f"{name}: max_retries must be an int >= 1, got max_retries={max_retries!r}")


def _check_feasible(scheme: Dirichlet | QuantitySkew, n: int, num_nodes: int) -> None:
    if scheme.min_size * num_nodes > n:
        raise ValueError(
            f"{scheme!r} is infeasible: min_size={scheme.min_size} for num_nodes={num_nodes} "
            f"needs {scheme.min_size * num_nodes} samples but only {n} are given"
        )


def _infeasible(scheme: Dirichlet | QuantitySkew, n: int, num_nodes: int) -> ValueError:
    return ValueError(
        f"{scheme!r}: no split with every node >= min_size={scheme.min_size} samples found in "
        f"max_retries={scheme.max_retries} draws (alpha={scheme.alpha}, num_nodes={num_nodes}, "
        f"{n} samples); raise alpha, lower min_size or use fewer nodes"
    )
