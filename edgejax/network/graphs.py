"""Communication graphs as boolean adjacency matrices (host NumPy).

Convention: ``adj[i, j] == True`` means an edge **from i to j** (node i sends to node j).
Undirected graphs are symmetric matrices.  There are no self loops: a node's own value is
handled by the mixing weights (:mod:`edgejax.network.weights`), not by the graph.  With a
mixing matrix acting as ``x_i <- sum_j W_ij x_j``, ``W_ij`` may be non-zero only where
``adj[j, i]`` (j sends to i) or ``i == j``.

Graphs are built on the host once per run (they are static structure); random families take
an integer ``seed`` and are reproducible from it.

Families: :func:`ring`, :func:`torus`, :func:`exponential` (static exponential graph),
:func:`one_peer_exponential` (its time-varying one-peer version), :func:`random_regular`,
:func:`erdos_renyi`, :func:`star`, :func:`complete`, :func:`from_adjacency`,
:func:`from_edges`.  Exponential graphs follow Ying et al. 2021, "Exponential Graph is
Provably Efficient for Decentralized Deep Training" (NeurIPS).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["complete", "components", "erdos_renyi", "exponential", "from_adjacency", "from_edges",
           "in_degrees", "is_connected", "is_symmetric", "num_edges", "one_peer_exponential",
           "out_degrees", "random_regular", "ring", "star", "torus"]


def _check_n(n: int, name: str = "n", minimum: int = 1) -> int:
    if int(n) != n or n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


def _empty(n: int) -> np.ndarray:
    return np.zeros((n, n), dtype=bool)


def _symmetrize(adj: np.ndarray) -> np.ndarray:
    adj = adj | adj.T
    np.fill_diagonal(adj, False)
    return adj


# ----------------------------------------------------------------------------- properties

def is_symmetric(adj: np.ndarray) -> bool:
    """Whether the graph is undirected (``adj == adj.T``)."""
    adj = np.asarray(adj)
    return bool(np.array_equal(adj, adj.T))


def out_degrees(adj: np.ndarray) -> np.ndarray:
    """Number of nodes each node sends to, ``[N]`` int."""
    return np.asarray(adj, dtype=bool).sum(axis=1).astype(np.int64)


def in_degrees(adj: np.ndarray) -> np.ndarray:
    """Number of nodes each node receives from, ``[N]`` int (the degree for undirected graphs)."""
    return np.asarray(adj, dtype=bool).sum(axis=0).astype(np.int64)


def num_edges(adj: np.ndarray) -> int:
    """Edges of the graph: unordered pairs when it is symmetric, ordered pairs otherwise."""
    adj = np.asarray(adj, dtype=bool)
    total = int(adj.sum())
    return total // 2 if is_symmetric(adj) else total


def components(adj: np.ndarray) -> list[list[int]]:
    """Connected components as sorted node lists, the one holding node 0 first.

    Undirected graphs: ordinary connected components.  Directed graphs: *strongly*
    connected components (every node of a component reaches every other along edges).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    adj = np.asarray(adj, dtype=bool)
    n = adj.shape[0]
    if n == 0:
        return []
    _, labels = connected_components(csr_matrix(adj), directed=not is_symmetric(adj), connection="strong")
    groups: dict[int, list[int]] = {}
    for node, lab in enumerate(labels):
        groups.setdefault(int(lab), []).append(node)
    return sorted(groups.values(), key=lambda g: g[0])


def is_connected(adj: np.ndarray) -> bool:
    """Connected (undirected) or strongly connected (directed)."""
    adj = np.asarray(adj, dtype=bool)
    return adj.shape[0] <= 1 or len(components(adj)) == 1


# ----------------------------------------------------------------------------- builders

def from_adjacency(a) -> np.ndarray:
    """Validate a user adjacency matrix and return it as a boolean ``[N, N]`` array.

    Accepts booleans or 0/1 numbers; entry ``[i, j]`` is the edge i -> j.  Raises a
    ``ValueError`` for a non-square matrix, values other than 0/1, or self loops (naming the
    offending nodes).
    """
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"adjacency matrix must be square [N, N], got shape {a.shape}")
    if a.dtype != bool:
        bad = ~np.isin(a, (0, 1))
        if bad.any():
            i, j = map(int, np.argwhere(bad)[0])
            raise ValueError(f"adjacency matrix must hold 0/1 or booleans; entry [{i}, {j}] is {a[i, j]!r}")
        a = a.astype(bool)
    loops = np.flatnonzero(np.diag(a))
    if loops.size:
        raise ValueError(f"adjacency matrix has self loops at nodes {loops.tolist()}; "
                         "self weights belong to the mixing matrix, not the graph")
    return a.copy()


def from_edges(n: int, edges: Iterable[tuple[int, int]], directed: bool = False) -> np.ndarray:
    """Graph on ``n`` nodes from ``(i, j)`` pairs; undirected (both ways) unless ``directed``."""
    n = _check_n(n)
    adj = _empty(n)
    for e in edges:
        i, j = (int(v) for v in e)
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"edge ({i}, {j}) names a node outside 0..{n - 1}")
        if i == j:
            raise ValueError(f"edge ({i}, {j}) is a self loop; self weights belong to the mixing matrix")
        adj[i, j] = True
        if not directed:
            adj[j, i] = True
    return adj


def ring(n: int) -> np.ndarray:
    """Undirected cycle ``i -- i+1 mod n`` (degree 2 for n >= 3; one edge for n = 2)."""
    n = _check_n(n)
    adj = _empty(n)
    i = np.arange(n)
    adj[i, (i + 1) % n] = True
    return _symmetrize(adj)


def torus(rows: int, cols: int) -> np.ndarray:
    """Undirected 2-D torus (wrap-around grid), node ``(r, c)`` has index ``r * cols + c``.

    Every node links to ``(r +- 1 mod rows, c)`` and ``(r, c +- 1 mod cols)``: degree 4 when
    both sides are >= 3.  A side of 2 gives one neighbour along it (not a double edge), a
    side of 1 none, so ``torus(1, n)`` is ``ring(n)`` and ``torus(2, n)`` has degree 3.
    """
    rows, cols = _check_n(rows, "rows"), _check_n(cols, "cols")
    n = rows * cols
    r, c = np.divmod(np.arange(n), cols)
    adj = _empty(n)
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        adj[np.arange(n), ((r + dr) % rows) * cols + (c + dc) % cols] = True
    np.fill_diagonal(adj, False)  # sides of length 1 map a node to itself
    return adj


def _exp_offsets(n: int) -> list[int]:
    """``2^k`` for ``k = 0 .. floor(log2(n - 1))`` (empty for n = 1)."""
    if n <= 1:
        return []
    return [2 ** k for k in range(int(math.floor(math.log2(n - 1))) + 1)]


def exponential(n: int, directed: bool = True) -> np.ndarray:
    """Static exponential graph: edges ``i -> i + 2^k mod n`` for ``k = 0..floor(log2(n-1))``.

    Default ``directed=True`` follows Ying et al. 2021, whose static exponential graph is
    directed: each node sends to the ``ceil(log2 n)`` nodes ``2^0, 2^1, ...`` hops ahead and
    receives from as many behind (the BlueFog ``ExponentialTwoGraph`` used for the paper's
    experiments is a ``networkx.DiGraph`` built the same way).  It is in- and out-regular,
    so uniform weights ``1/(ceil(log2 n)+1)`` (:func:`~edgejax.network.weights.uniform_weights`,
    the paper's weights) are doubly stochastic but not symmetric.
    ``directed=False`` adds the reverse edges (``i -- i +- 2^k``), which Metropolis-Hastings
    weights need; its degree is up to twice as large.
    """
    n = _check_n(n)
    adj = _empty(n)
    i = np.arange(n)
    for off in _exp_offsets(n):
        adj[i, (i + off) % n] = True
    np.fill_diagonal(adj, False)
    return _symmetrize(adj) if not directed else adj


def _one_peer_tau(n: int) -> int:
    return int(math.ceil(math.log2(n))) if n > 1 else 1


def one_peer_exponential(n: int, t: int) -> np.ndarray:
    """The directed one-peer exponential graph of round ``t`` (Ying et al. 2021).

    Every node i sends to ``i + 2^(t mod tau) mod n`` only, ``tau = ceil(log2 n)``.  Cycling
    through ``t = 0..tau-1`` with the 1/2-1/2 weights of
    :func:`~edgejax.network.weights.one_peer_exponential_weights` averages exactly when n is
    a power of two.
    """
    n = _check_n(n)
    adj = _empty(n)
    if n == 1:
        return adj
    off = 2 ** (int(t) % _one_peer_tau(n))
    i = np.arange(n)
    adj[i, (i + off) % n] = True
    return adj


def star(n: int) -> np.ndarray:
    """Undirected star with hub node 0."""
    n = _check_n(n)
    adj = _empty(n)
    adj[0, 1:] = adj[1:, 0] = True
    return adj


def complete(n: int) -> np.ndarray:
    """Undirected complete graph (every pair linked)."""
    n = _check_n(n)
    adj = ~np.eye(n, dtype=bool)
    return adj


def _pairing_attempt(n: int, d: int, rng: np.random.Generator) -> np.ndarray | None:
    """One attempt of the stub-pairing algorithm for a simple d-regular graph (as in
    Steger & Wormald 1999 / networkx): pair random free stubs, put back conflicting pairs,
    and give up if no valid pair remains among the leftovers."""
    adj = _empty(n)
    stubs = np.repeat(np.arange(n), d)
    while stubs.size:
        rng.shuffle(stubs)
        leftover = []
        for u, v in zip(stubs[0::2].tolist(), stubs[1::2].tolist()):
            if u != v and not adj[u, v]:
                adj[u, v] = adj[v, u] = True
            else:
                leftover += (u, v)
        if leftover:
            nodes = np.unique(leftover)
            sub = adj[np.ix_(nodes, nodes)]
            if not (~sub & ~np.eye(len(nodes), dtype=bool)).any():
                return None  # every leftover pair is a loop or an existing edge: stuck
        stubs = np.asarray(leftover, dtype=np.int64)
    return adj


def random_regular(n: int, d: int, seed: int = 0, connected: bool = True, max_tries: int = 1000) -> np.ndarray:
    """Uniform-ish random simple d-regular undirected graph, reproducible from ``seed``.

    Built by random stub pairing, restarted until the graph is simple and (with
    ``connected=True``, the default) connected; gives up after ``max_tries`` attempts.
    Raises ``ValueError`` when ``n * d`` is odd or ``d >= n`` (no such graph exists).
    """
    n = _check_n(n)
    if int(d) != d or d < 0:
        raise ValueError(f"degree d must be a non-negative integer, got {d!r}")
    d = int(d)
    if d >= n:
        raise ValueError(f"random_regular: degree d={d} must be < n={n} (a simple graph has at most n-1 neighbours)")
    if (n * d) % 2:
        raise ValueError(f"random_regular: n*d = {n}*{d} = {n * d} is odd; a d-regular graph needs n*d even")
    if connected and n > 2 and d < 2:
        raise ValueError(f"random_regular: a {d}-regular graph on n={n} nodes cannot be connected; "
                         "use d >= 2 or connected=False")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        adj = _pairing_attempt(n, d, rng)
        if adj is not None and (not connected or is_connected(adj)):
            return adj
    raise ValueError(f"random_regular: no {'connected ' if connected else ''}simple {d}-regular graph on "
                     f"n={n} nodes after {max_tries} attempts (seed={seed})")


def erdos_renyi(n: int, p: float, seed: int = 0, max_tries: int = 100) -> np.ndarray:
    """Undirected G(n, p) graph resampled until connected, reproducible from ``seed``.

    Raises a ``ValueError`` naming ``p`` and ``n`` after ``max_tries`` disconnected draws
    (connectivity needs roughly ``p > log(n) / n``).
    """
    n = _check_n(n)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"erdos_renyi: p must lie in [0, 1], got p={p}")
    rng = np.random.default_rng(seed)
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    for _ in range(max_tries):
        adj = (rng.random((n, n)) < p) & upper
        adj = adj | adj.T
        if is_connected(adj):
            return adj
    raise ValueError(f"erdos_renyi: no connected graph in {max_tries} draws with p={p}, n={n}; "
                     f"connectivity needs roughly p > log(n)/n = {math.log(max(n, 2)) / n:.3g}")
