"""Mixing matrices for gossip averaging (host NumPy, float64), and checks on them.

A mixing matrix acts as ``x_i <- sum_j W_ij x_j``; ``W_ij`` may be non-zero only where the
graph has the edge j -> i (``adj[j, i]``) or ``i == j``.  Rows summing to one make every
node take a weighted average of what it receives; columns summing to one conserve the total
mass (push-sum); both together (doubly stochastic) preserve the node average.

- :func:`metropolis_hastings`: Metropolis-Hastings / "Metropolis" weights of Xiao & Boyd 2004
  ("Fast linear iterations for distributed averaging") and Xiao, Boyd & Lall 2005; symmetric
  and doubly stochastic on any undirected graph using only local degrees.  The usual choice
  for D-PSGD (Lian et al. 2017, "Can decentralized algorithms outperform centralized
  algorithms?").
- :func:`uniform_weights`: equal weights over the in-neighbours and self; row stochastic,
  doubly stochastic on regular graphs (the exponential-graph weights of Ying et al. 2021).
- :func:`column_stochastic`: each sender splits its mass equally among its out-neighbours and
  itself, for push-sum / Stochastic Gradient Push on directed graphs (Kempe et al. 2003;
  Assran et al. 2019, "Stochastic Gradient Push for Distributed Deep Learning").
- :func:`one_peer_exponential_weights`: the 1/2-1/2 weights of the one-peer exponential graph.
- :func:`lazy`, :func:`spectral_gap` and the ``check_*`` validators, which raise a
  ``ValueError`` naming the offending row, column or component before any compute.
"""
from __future__ import annotations

import numpy as np

from edgejax.network.graphs import _one_peer_tau, components, from_adjacency, in_degrees, is_symmetric, \
    out_degrees

__all__ = ["check_column_stochastic", "check_connected", "check_doubly_stochastic", "check_nonnegative",
           "check_row_stochastic", "check_square", "check_symmetric", "column_stochastic", "lazy",
           "metropolis_hastings", "one_peer_exponential_weights", "second_eigenvalue_modulus", "spectral_gap",
           "uniform_weights"]

ATOL = 1e-8


# ----------------------------------------------------------------------------- checks

def check_square(W, name: str = "W") -> np.ndarray:
    """``W`` as a float64 ``[N, N]`` array; ``ValueError`` if it is not square or holds non-finite values."""
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"{name} must be a square [N, N] matrix, got shape {W.shape}")
    bad = ~np.isfinite(W)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise ValueError(f"{name}[{i}, {j}] = {W[i, j]} is not finite")
    return W


def check_nonnegative(W, name: str = "W", atol: float = ATOL) -> np.ndarray:
    """Raise a ``ValueError`` naming the first negative entry."""
    W = check_square(W, name)
    bad = W < -atol
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise ValueError(f"{name}[{i}, {j}] = {W[i, j]:.6g} is negative; mixing weights must be >= 0")
    return W


def _check_sums(W, name: str, atol: float, axis: int) -> np.ndarray:
    """Non-negative with every row (axis=1) or column (axis=0) summing to 1; the error names
    the first bad one and its sum."""
    W = check_nonnegative(W, name)
    what = "row" if axis == 1 else "column"
    sums = W.sum(axis=axis)
    bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} is not {what} stochastic: {what} {i} sums to {sums[i]:.8g}, not 1"
                         + (f" ({bad.size} bad {what}s in all)" if bad.size > 1 else ""))
    return W


def check_row_stochastic(W, name: str = "W", atol: float = 1e-6) -> np.ndarray:
    """Non-negative with every row summing to 1; the error names the first bad row and its sum."""
    return _check_sums(W, name, atol, axis=1)


def check_column_stochastic(W, name: str = "W", atol: float = 1e-6) -> np.ndarray:
    """Non-negative with every column summing to 1; the error names the first bad column and its sum."""
    return _check_sums(W, name, atol, axis=0)


def check_doubly_stochastic(W, name: str = "W", atol: float = 1e-6) -> np.ndarray:
    """Row and column stochastic (rows checked first)."""
    check_row_stochastic(W, name, atol)
    return check_column_stochastic(W, name, atol)


def check_symmetric(W, name: str = "W", atol: float = 1e-8) -> np.ndarray:
    """``W == W.T``; the error names the first asymmetric pair."""
    W = check_square(W, name)
    bad = np.abs(W - W.T) > atol
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise ValueError(f"{name} is not symmetric: {name}[{i}, {j}] = {W[i, j]:.6g} but "
                         f"{name}[{j}, {i}] = {W[j, i]:.6g}")
    return W


def check_connected(adj, name: str = "graph") -> np.ndarray:
    """Connected (strongly, for directed graphs); the error names the nodes cut off from node 0."""
    adj = from_adjacency(adj)
    comps = components(adj)
    if len(comps) > 1:
        others = sorted(v for c in comps[1:] for v in c)
        kind = "strongly connected" if not is_symmetric(adj) else "connected"
        shown = others if len(others) <= 20 else others[:20] + ["..."]
        raise ValueError(f"{name} is not {kind}: nodes {shown} are not connected to node 0 "
                         f"({len(comps)} components; the first other one is {comps[1][:20]})")
    return adj


def _adjacency(adj) -> np.ndarray:
    return from_adjacency(adj)


# ----------------------------------------------------------------------------- weights

def metropolis_hastings(adj) -> np.ndarray:
    """Metropolis-Hastings weights (Xiao & Boyd 2004) on an undirected graph.

    ``W_ij = 1 / (1 + max(deg_i, deg_j))`` for each edge, ``W_ii = 1 - sum_{j != i} W_ij``,
    zero elsewhere.  Symmetric and doubly stochastic with a positive diagonal.
    """
    adj = _adjacency(adj)
    if not is_symmetric(adj):
        i, j = map(int, np.argwhere(adj != adj.T)[0])
        raise ValueError(f"metropolis_hastings needs an undirected graph: edge {i} -> {j} has no reverse; "
                         "use column_stochastic (push-sum) for directed graphs")
    deg = in_degrees(adj).astype(np.float64)
    W = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    return W


def uniform_weights(adj) -> np.ndarray:
    """Equal weights over self and in-neighbours: ``W_ij = 1/(indeg_i + 1)`` for j -> i and j = i.

    Row stochastic always.  Doubly stochastic when all in- and out-degrees are equal, e.g. on
    regular undirected graphs (ring, torus, random regular, complete) and on the directed
    exponential graph, where it is the ``1/(ceil(log2 n)+1)`` weight of Ying et al. 2021.
    Symmetric only on regular undirected graphs.
    """
    adj = _adjacency(adj)
    deg = in_degrees(adj).astype(np.float64)
    A = adj.T | np.eye(adj.shape[0], dtype=bool)  # A[i, j]: i receives from j
    return A / (deg[:, None] + 1.0)


def column_stochastic(adj) -> np.ndarray:
    """Push-sum weights (Assran et al. 2019, SGP): ``W_ij = 1/(outdeg_j + 1)`` for j -> i and i = j.

    Every node j keeps a share of its mass and sends equal shares to its out-neighbours, so
    each column sums to 1 (total mass is conserved) on any directed graph.
    """
    adj = _adjacency(adj)
    deg = out_degrees(adj).astype(np.float64)
    A = adj.T | np.eye(adj.shape[0], dtype=bool)
    return A / (deg[None, :] + 1.0)


def lazy(W, beta: float = 0.5) -> np.ndarray:
    """``(1 - beta) I + beta W``: keeps the stochasticity of W and moves its spectrum into [1-2beta, 1]."""
    W = check_square(W)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"lazy: beta must lie in [0, 1], got {beta}")
    return (1.0 - beta) * np.eye(W.shape[0]) + beta * W


def one_peer_exponential_weights(n: int, t: int) -> np.ndarray:
    """Mixing matrix of round ``t`` on the one-peer exponential graph (Ying et al. 2021).

    ``x_i <- (x_i + x_{i - 2^(t mod tau)}) / 2`` with ``tau = ceil(log2 n)``: node i receives
    from the node that sends to it in :func:`~edgejax.network.graphs.one_peer_exponential`.
    Doubly stochastic (a half identity plus a half cyclic shift); for n a power of two the
    product over ``t = 0..tau-1`` is exactly ``ones((n, n)) / n``.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        return np.ones((1, 1))
    off = 2 ** (int(t) % _one_peer_tau(n))
    W = 0.5 * np.eye(n)
    i = np.arange(n)
    W[i, (i - off) % n] += 0.5
    return W


# ----------------------------------------------------------------------------- spectrum

def second_eigenvalue_modulus(W) -> float:
    """The second-largest eigenvalue modulus ``|lambda_2|`` of W (1 for a disconnected graph)."""
    W = check_square(W)
    if W.shape[0] == 1:
        return 0.0
    ev = np.linalg.eigvalsh(W) if np.allclose(W, W.T, atol=1e-12) else np.linalg.eigvals(W)
    mods = np.sort(np.abs(ev))[::-1]
    return float(mods[1])


def spectral_gap(W) -> float:
    """``1 - |lambda_2(W)|``: how much one mixing step shrinks disagreement (larger mixes faster).

    For a doubly stochastic symmetric W, ``||W x - xbar|| <= |lambda_2| ||x - xbar||``.  For
    non-symmetric W this is the gap of the eigenvalue moduli, a proxy for the asymptotic rate.
    """
    return 1.0 - second_eigenvalue_modulus(W)
