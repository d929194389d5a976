"""Mixing operators of shift-structured graphs built as neighbour lists, never as N x N.

The ring, the torus and the static exponential graph are circulant (node ``i`` links to
``i + offset`` for a fixed set of offsets), so their neighbour lists cost ``O(N K)`` to
build where the dense builders of ``graphs`` / ``weights`` need ``N^2`` memory (80 GB in
float64 at N = 10^5).  ``circulant_operator`` returns the same ``Sparse`` operator that
``mixing_operator(Topology.matrix(n), "sparse")`` gives: the same neighbours in the same
order (self first, then ascending node ids) and the same weights, up to the summation
order of a diagonal entry ``1 - sum_j W_ij`` (a few ulps).

Weights (``edgejax.network.weights``): ``metropolis`` ``W_ij = 1/(1 + max(deg_i, deg_j))``,
``lazy_metropolis`` ``(I + W) / 2``, ``uniform`` ``1/(indeg_i + 1)`` over self and
in-neighbours, ``column`` ``1/(outdeg_j + 1)`` (push-sum).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from edgejax.network.graphs import _exp_offsets
from edgejax.network.mixing import Sparse, _float

CIRCULANT_GRAPHS = ("ring", "torus", "exponential")


def circulant_edges(n: int, graph: str, *, rows: int = 1, directed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` of every edge ``src -> dst`` (self loops and repeats removed; both
    directions for undirected graphs).  ``rows``: the torus's number of rows (``n = rows * cols``)."""
    i = np.arange(n)
    if graph == "ring":
        targets = [(i + 1) % n, (i - 1) % n]
    elif graph == "torus":
        cols = n // rows
        r, c = np.divmod(i, cols)
        targets = [((r + dr) % rows) * cols + (c + dc) % cols for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    elif graph == "exponential":
        offsets = _exp_offsets(n)
        targets = [(i + off) % n for off in offsets] + ([] if directed else [(i - off) % n for off in offsets])
    else:
        raise ValueError(f"graph must be one of {CIRCULANT_GRAPHS}; got {graph!r}")
    src = np.repeat(i[None, :], len(targets), axis=0).ravel()
    dst = np.concatenate(targets) if targets else np.zeros(0, np.int64)
    keep = src != dst
    pairs = np.unique(np.stack([src[keep], dst[keep]], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _check_strongly_connected(n: int, src: np.ndarray, dst: np.ndarray) -> None:
    from scipy.sparse import coo_matrix   # imported here: scipy.sparse adds 0.1 s to `import edgejax`
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    count, labels = connected_components(graph, directed=True, connection="strong")
    if count > 1:
        cut = np.flatnonzero(labels != labels[0])[:20].tolist()
        raise ValueError(f"graph is not strongly connected: nodes {cut} are not connected to node 0 ({count} components)")


def circulant_operator(n: int, graph: str, weights: str = "metropolis", *, rows: int = 1,
                       directed: bool = False, dtype=None) -> Sparse:
    """The ``Sparse`` mixing operator of a ring, torus or exponential graph of ``n`` nodes
    (row ``i``: node ``i`` receives from itself and its in-neighbours)."""
    src, dst = circulant_edges(n, graph, rows=rows, directed=directed)
    _check_strongly_connected(n, src, dst)
    out_deg = np.bincount(src, minlength=n).astype(np.float64)
    in_deg = np.bincount(dst, minlength=n).astype(np.float64)
    order = np.lexsort((src, dst))            # rows (receivers) first, then senders ascending
    receiver, sender = dst[order], src[order]
    k = int(in_deg.max(initial=0))
    slot = np.arange(len(receiver)) - np.searchsorted(receiver, receiver)
    neighbours = np.repeat(np.arange(n)[:, None], k + 1, axis=1)
    w = np.zeros((n, k + 1))
    neighbours[receiver, 1 + slot] = sender
    if weights in ("metropolis", "lazy_metropolis"):
        if directed:
            raise ValueError("metropolis weights need an undirected graph; use directed=False")
        w[receiver, 1 + slot] = 1.0 / (1.0 + np.maximum(in_deg[receiver], in_deg[sender]))
        w[:, 0] = 1.0 - w[:, 1:].sum(axis=1)
        if weights == "lazy_metropolis":
            w = 0.5 * w
            w[:, 0] += 0.5
    elif weights == "uniform":
        w[receiver, 1 + slot] = 1.0 / (in_deg[receiver] + 1.0)
        w[:, 0] = 1.0 / (in_deg + 1.0)
    elif weights == "column":
        w[receiver, 1 + slot] = 1.0 / (out_deg[sender] + 1.0)
        w[:, 0] = 1.0 / (out_deg + 1.0)
    else:
        raise ValueError(f"unknown weights {weights!r}")
    return Sparse(jnp.asarray(neighbours.astype(np.int32)), jnp.asarray(w, dtype=dtype or _float()))
