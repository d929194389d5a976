"""Gossip mixing in JAX: dense matrices and sparse neighbour tables with identical results.

Every leaf of a node pytree has the node axis N first; one mixing step is
``x_i <- sum_j W_ij x_j`` for every node at once.

Two representations (both NamedTuples, so pytrees that pass through ``jit``/``vmap``/``scan``):

- :class:`Dense` ``(matrix [N, N])``: ``jnp.tensordot(W, x, axes=1)``; O(N^2 P) compute for P
  parameters per node, any matrix, best for small N.
- :class:`Sparse` ``(neighbours [N, K] int32, weights [N, K])``: one gather per neighbour
  column, weighted and accumulated; O(N K P) for rings, tori, exponential and random
  regular graphs.  Column 0 is the node itself (its self weight); nodes with fewer than
  ``K - 1`` neighbours are padded with their own index and weight 0.

Both give the same numbers on the same graph (dense uses ``Precision.HIGHEST`` so that GPUs do
not silently drop to TF32).  :func:`mixing_operator` picks one (see
:func:`choose_representation` for the rule).

Link failures and dropouts inside the jitted round: :func:`neighbour_table` keeps the full
graph's neighbour lists, :func:`draw_live_edges` draws a per-round symmetric live-edge mask,
and :func:`live_metropolis_hastings` rebuilds Metropolis-Hastings weights (Xiao & Boyd 2004,
as used by D-PSGD, Lian et al. 2017) on the surviving graph, so every round's matrix stays
symmetric and doubly stochastic.

Randomized pairwise gossip (Boyd et al. 2006, "Randomized gossip algorithms"):
:func:`random_matching` and :func:`pairwise_average`.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.network.graphs import from_adjacency
from edgejax.network.weights import check_column_stochastic, check_doubly_stochastic, check_row_stochastic, \
    check_square

PyTree = Any

__all__ = ["Dense", "NeighbourTable", "Sparse", "choose_representation", "draw_live_edges",
           "live_metropolis_hastings", "mix", "mixing_operator", "neighbour_table", "one_peer_exponential_operator",
           "pairwise_average", "random_matching", "to_dense", "to_sparse"]


def _float():
    return jax.dtypes.canonicalize_dtype(jnp.float64)


class Dense(NamedTuple):
    """A dense mixing matrix ``matrix [N, N]``: ``x_i <- sum_j matrix[i, j] x_j``."""
    matrix: jax.Array

    @property
    def num_nodes(self) -> int:
        return self.matrix.shape[0]


class Sparse(NamedTuple):
    """A mixing matrix as neighbour lists: ``x_i <- sum_k weights[i, k] x[neighbours[i, k]]``.

    ``neighbours [N, K]`` int32 with ``neighbours[i, 0] == i`` (the self weight is
    ``weights[i, 0]``); unused slots hold ``i`` with weight 0.
    """
    neighbours: jax.Array
    weights: jax.Array

    @property
    def num_nodes(self) -> int:
        return self.neighbours.shape[0]


class NeighbourTable(NamedTuple):
    """A graph's in-neighbour lists for building per-round weights inside ``jit``.

    ``neighbours [N, K]`` int32, column 0 the node itself, then the nodes it receives from
    in increasing order, padded with its own index; ``edge_mask [N, K]`` bool is True
    exactly on real edges (False on column 0 and on padding).
    """
    neighbours: jax.Array
    edge_mask: jax.Array


# ----------------------------------------------------------------------------- conversions

def _row_lists(mask: np.ndarray, k: int | None, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Column indices of the True entries of each row (self excluded), first ``K - 1`` slots."""
    n = mask.shape[0]
    mask = mask.copy()
    np.fill_diagonal(mask, False)
    need = int(mask.sum(axis=1).max()) if n else 0
    if k is None:
        k = need
    elif k < need:
        row = int(np.argmax(mask.sum(axis=1)))
        raise ValueError(f"max_degree={k} is too small: row {row} has {need} off-diagonal {what}")
    order = np.argsort(~mask, axis=1, kind="stable")[:, :k]  # True columns first, ascending
    valid = np.take_along_axis(mask, order, axis=1)
    own = np.arange(n)[:, None]
    nb = np.where(valid, order, own)
    if k > nb.shape[1]:  # padding wider than the graph
        extra = k - nb.shape[1]
        nb = np.concatenate([nb, np.repeat(own, extra, axis=1)], axis=1)
        valid = np.concatenate([valid, np.zeros((n, extra), bool)], axis=1)
    return np.concatenate([own, nb], axis=1).astype(np.int32), np.concatenate(
        [np.zeros((n, 1), bool), valid], axis=1), k


def to_sparse(W, max_degree: int | None = None, dtype=None) -> Sparse:
    """Neighbour-list form of a dense (NumPy or JAX) mixing matrix.

    ``K = 1 + max_degree`` columns, where ``max_degree`` defaults to the largest number of
    non-zero off-diagonal entries in a row; a larger value pads (e.g. to share shapes
    between graphs), a smaller one raises.
    """
    W = check_square(np.asarray(W), "W")
    nb, valid, _ = _row_lists(W != 0, max_degree, "non-zeros")
    n = W.shape[0]
    w = np.where(valid, W[np.arange(n)[:, None], nb], 0.0)
    w[:, 0] = np.diag(W)
    return Sparse(jnp.asarray(nb), jnp.asarray(w, dtype=dtype or _float()))


@jax.jit
def to_dense(mixing: Sparse | Dense) -> jax.Array:
    """The ``[N, N]`` matrix of a :class:`Sparse` (or :class:`Dense`) operator; jittable."""
    if isinstance(mixing, Dense):
        return mixing.matrix
    n, k = mixing.neighbours.shape
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], (n, k))
    return jnp.zeros((n, n), mixing.weights.dtype).at[rows, mixing.neighbours].add(mixing.weights)


def choose_representation(W, *, sparse_fraction: float = 1 / 8, large_n: int = 512,
                          large_n_fraction: float = 1 / 4) -> str:
    """``"sparse"`` or ``"dense"`` for a matrix W (or a boolean pattern) of N nodes.

    With K the most non-zeros in a row (self included): sparse when ``K <= N *
    sparse_fraction`` (default N/8), or when ``N > large_n`` (512) and ``K <= N *
    large_n_fraction`` (N/4); dense otherwise.  Rationale: the gather reads ``N K P`` values
    while the dense product does ``N^2 P`` multiply-adds at matmul speed, so the gather wins
    once K is a small fraction of N, and at large N the ``N^2`` matrix itself becomes the
    cost.  A heuristic, not a measurement: both forms give the same numbers, so choose
    explicitly where a benchmark says otherwise.
    """
    W = np.asarray(W)
    n = W.shape[0]
    k = int((W != 0).sum(axis=1).max()) + (0 if np.all(np.diag(W) != 0) else 1) if n else 0
    if k <= n * sparse_fraction or (n > large_n and k <= n * large_n_fraction):
        return "sparse"
    return "dense"


def mixing_operator(W, representation: str = "auto", check: str | None = "row", dtype=None) -> Dense | Sparse:
    """Validate a host mixing matrix and turn it into a :class:`Dense` or :class:`Sparse` operator.

    ``representation``: ``"auto"`` (see :func:`choose_representation`), ``"dense"`` or
    ``"sparse"``.  ``check``: ``"row"`` (default), ``"column"`` (push-sum), ``"doubly"`` or
    ``None``; a failed check raises a ``ValueError`` naming the bad row or column.
    """
    checks = {"row": check_row_stochastic, "column": check_column_stochastic, "doubly": check_doubly_stochastic,
              None: check_square}
    if check not in checks:
        raise ValueError(f"check must be one of {list(checks)}, got {check!r}")
    W = checks[check](np.asarray(W))
    if representation == "auto":
        representation = choose_representation(W)
    if representation == "dense":
        return Dense(jnp.asarray(W, dtype=dtype or _float()))
    if representation == "sparse":
        return to_sparse(W, dtype=dtype)
    raise ValueError(f"representation must be 'auto', 'dense' or 'sparse', got {representation!r}")


# ----------------------------------------------------------------------------- mixing

def _check_leaf(x: jax.Array, n: int) -> None:
    if x.ndim == 0 or x.shape[0] != n:
        raise ValueError(f"mix: every leaf needs the node axis N={n} first, got a leaf of shape {x.shape}")


def _weights_for(w: jax.Array, x: jax.Array) -> jax.Array:
    return w.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.inexact) else w


def mix(mixing: Dense | Sparse, tree: PyTree) -> PyTree:
    """One gossip step ``x_i <- sum_j W_ij x_j`` on every leaf (node axis first) of ``tree``.

    Dense: ``tensordot(W, x, axes=1)`` at ``Precision.HIGHEST``.  Sparse: for each of the K
    columns, gather ``x[neighbours[:, k]]`` and accumulate ``weights[:, k]`` times it.  Jitted;
    inside an outer ``jit`` it is inlined.
    """
    if not isinstance(mixing, (Dense, Sparse)):
        raise TypeError(f"mix: expected a Dense or Sparse operator, got {type(mixing).__name__}")
    return _mix(mixing, tree)


@jax.jit
def _mix(mixing: Dense | Sparse, tree: PyTree) -> PyTree:
    if isinstance(mixing, Dense):
        n = mixing.matrix.shape[0]

        def f(x):
            _check_leaf(x, n)
            return jnp.tensordot(_weights_for(mixing.matrix, x), x, axes=1, precision=jax.lax.Precision.HIGHEST)
    else:
        n = mixing.neighbours.shape[0]

        def f(x):
            # one gather per neighbour column, accumulated: reads each column once and never
            # materialises [N, K, ...]; the fused gather-multiply-sum form ran 10-105x slower
            # on XLA:CPU (benchmarks/gossip.py).  K is static and small for sparse graphs.
            _check_leaf(x, n)
            w = _weights_for(mixing.weights, x)
            tail = (1,) * (x.ndim - 1)
            out = w[:, 0].reshape((n, *tail)) * jnp.take(x, mixing.neighbours[:, 0], axis=0)
            for k in range(1, mixing.neighbours.shape[1]):
                out = out + w[:, k].reshape((n, *tail)) * jnp.take(x, mixing.neighbours[:, k], axis=0)
            return out
    return jax.tree_util.tree_map(f, tree)


def one_peer_exponential_operator(n: int, t) -> Sparse:
    """:class:`Sparse` form of round ``t``'s one-peer exponential weights; ``t`` may be traced.

    ``x_i <- (x_i + x_{i - 2^(t mod tau)}) / 2``, ``tau = ceil(log2 n)`` (static ``n``),
    matching :func:`~edgejax.network.weights.one_peer_exponential_weights`.
    """
    n = int(n)
    i = jnp.arange(n, dtype=jnp.int32)
    if n == 1:
        return Sparse(jnp.zeros((1, 2), jnp.int32), jnp.array([[1.0, 0.0]], _float()))
    tau = int(math.ceil(math.log2(n)))
    off = jnp.left_shift(jnp.int32(1), jnp.asarray(t, jnp.int32) % tau)
    nb = jnp.stack([i, (i - off) % n], axis=1)
    return Sparse(nb, jnp.full((n, 2), 0.5, _float()))


# ----------------------------------------------------------------------------- link failures

def neighbour_table(adj, max_degree: int | None = None) -> NeighbourTable:
    """The in-neighbour table of a graph (``adj[j, i]``: j sends to i) for per-round weights.

    ``K = 1 + max in-degree`` (or ``1 + max_degree``).  For an undirected graph this is the
    sparsity pattern of :func:`~edgejax.network.weights.metropolis_hastings` in the same
    column order as :func:`to_sparse`.
    """
    adj = from_adjacency(adj)
    nb, valid, _ = _row_lists(adj.T, max_degree, "in-neighbours")
    return NeighbourTable(jnp.asarray(nb), jnp.asarray(valid))


@jax.jit
def draw_live_edges(key: jax.Array, table: NeighbourTable, p_fail) -> jax.Array:
    """A symmetric per-round live-edge mask ``[N, K]`` bool: each edge fails with ``p_fail``.

    Symmetry without an ``[N, N]`` draw: the uniform for slot ``(i, k)`` with
    ``j = neighbours[i, k]`` is ``uniform(fold_in(fold_in(key, min(i, j)), max(i, j)))``, a
    counter-based hash of the unordered pair, so both ends of an edge see the same number and
    agree on whether it is live.  Cost: three threefry evaluations per table slot, O(N K) time
    and memory, no host round-trip, any N (no ``i * N + j`` overflow).  Padding and self slots
    are never live.  ``p_fail`` may be a traced scalar (a swept hyper-parameter); everything
    is jittable and vmappable over keys.
    """
    nb, mask = table
    n, k = nb.shape
    own = jnp.broadcast_to(jnp.arange(n, dtype=nb.dtype)[:, None], (n, k))
    lo = jnp.minimum(own, nb).reshape(-1)
    hi = jnp.maximum(own, nb).reshape(-1)

    def draw(a, b):
        return jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, a), b))

    u = jax.vmap(draw)(lo, hi).reshape(n, k)
    return mask & (u >= p_fail)


@jax.jit
def live_metropolis_hastings(neighbours: jax.Array, edge_mask: jax.Array, live: jax.Array | None = None,
                             present: jax.Array | None = None) -> Sparse:
    """Metropolis-Hastings weights rebuilt on the live part of a graph, inside ``jit``.

    An edge slot ``(i, k)`` is used when ``edge_mask & live`` and both ends are ``present``.
    Degrees count used edges only; ``w_ik = 1 / (1 + max(deg_i, deg_j))`` on used edges and
    the self weight (column 0) is ``1 - sum_k w_ik``.  With a symmetric live mask (as from
    :func:`draw_live_edges`) on an undirected graph the result is symmetric and doubly
    stochastic every round; a node that is not present has no edges and self weight 1, so it
    neither sends nor receives and keeps its value.  With everything live it equals
    :func:`~edgejax.network.weights.metropolis_hastings`.  Pure ``jnp``: jittable, vmappable.

    ``neighbours``/``edge_mask`` are a :class:`NeighbourTable`'s fields (column 0 must be the
    node itself), so ``live_metropolis_hastings(*table, live, present)`` works.
    """
    used = edge_mask
    if live is not None:
        used = used & live
    if present is not None:
        present = present.astype(bool)
        used = used & present[:, None] & present[neighbours]
    deg = used.sum(axis=1)
    dt = _float()
    w = jnp.where(used, 1.0 / (1.0 + jnp.maximum(deg[:, None], deg[neighbours]).astype(dt)), 0.0).astype(dt)
    w = w.at[:, 0].add(1.0 - w.sum(axis=1))
    return Sparse(neighbours, w)


# ----------------------------------------------------------------------------- pairwise gossip

@partial(jax.jit, static_argnums=1)
def random_matching(key: jax.Array, n: int) -> jax.Array:
    """A uniformly random (near-)perfect matching of ``n`` nodes as ``partner [n]`` int32.

    ``partner[partner[i]] == i``; for odd ``n`` one random node is unmatched and is its own
    partner.  The pairs are drawn over the complete graph (a random permutation cut into
    consecutive pairs), the synchronous variant of randomized pairwise gossip (Boyd et al.
    2006).  Jittable (static ``n``).
    """
    perm = jax.random.permutation(key, n).astype(jnp.int32)
    m = n // 2
    a, b = perm[0:2 * m:2], perm[1:2 * m:2]
    partner = jnp.arange(n, dtype=jnp.int32)
    return partner.at[a].set(b).at[b].set(a)


@jax.jit
def pairwise_average(tree: PyTree, partner: jax.Array) -> PyTree:
    """``x_i <- (x_i + x_partner(i)) / 2`` on every leaf; a node partnered with itself keeps its value.

    With ``partner`` an involution (e.g. from :func:`random_matching`) this is a symmetric
    doubly stochastic step and preserves the node average.
    """
    return jax.tree_util.tree_map(lambda x: (x + x[partner]) / 2, tree)
