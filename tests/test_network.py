"""edgejax.network: graph families, mixing weights, dense/sparse mixing, link failures, gossip."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgejax import network as T


def _undirected_checks(adj):
    assert adj.dtype == bool
    assert np.array_equal(adj, adj.T)
    assert not np.diag(adj).any()


# ----------------------------------------------------------------------------- graphs

@pytest.mark.parametrize("n", [3, 4, 7, 16])
def test_ring(n):
    adj = T.ring(n)
    _undirected_checks(adj)
    assert (T.in_degrees(adj) == 2).all() and T.num_edges(adj) == n and T.is_connected(adj)
    assert adj[0, 1] and adj[0, n - 1]


def test_ring_small():
    assert T.num_edges(T.ring(2)) == 1 and T.num_edges(T.ring(1)) == 0


@pytest.mark.parametrize("rows,cols,deg", [(4, 5, 4), (3, 3, 4), (2, 6, 3), (6, 2, 3), (2, 2, 2), (1, 7, 2)])
def test_torus(rows, cols, deg):
    adj = T.torus(rows, cols)
    _undirected_checks(adj)
    n = rows * cols
    assert (T.in_degrees(adj) == deg).all()
    assert T.num_edges(adj) == n * deg // 2
    assert T.is_connected(adj)


def test_torus_1xn_is_ring_and_neighbours():
    assert np.array_equal(T.torus(1, 7), T.ring(7))
    assert np.array_equal(T.torus(7, 1), T.ring(7))
    adj = T.torus(4, 5)
    # node (1, 2) = 7 links to (0,2)=2, (2,2)=12, (1,1)=6, (1,3)=8
    assert sorted(np.flatnonzero(adj[7]).tolist()) == [2, 6, 8, 12]


@pytest.mark.parametrize("n", [2, 3, 5, 8, 9, 16, 33])
def test_exponential(n):
    adj = T.exponential(n)  # directed, paper convention
    tau = math.ceil(math.log2(n))
    assert not np.diag(adj).any()
    assert (T.out_degrees(adj) == tau).all() and (T.in_degrees(adj) == tau).all()
    assert T.num_edges(adj) == (n * tau if not T.is_symmetric(adj) else n * tau // 2)
    for k in range(int(math.floor(math.log2(n - 1))) + 1):
        assert adj[0, (2 ** k) % n]
    assert T.is_connected(adj)
    und = T.exponential(n, directed=False)
    _undirected_checks(und)
    assert np.array_equal(und, adj | adj.T)


def test_exponential_directed_default():
    adj = T.exponential(8)
    assert not T.is_symmetric(adj)
    assert sorted(np.flatnonzero(adj[0]).tolist()) == [1, 2, 4]
    assert sorted(np.flatnonzero(T.exponential(8, directed=False)[0]).tolist()) == [1, 2, 4, 6, 7]


def test_one_peer_exponential_graph():
    for t in range(6):
        adj = T.one_peer_exponential(8, t)
        assert (T.out_degrees(adj) == 1).all() and (T.in_degrees(adj) == 1).all()
        assert adj[0, 2 ** (t % 3)]


@pytest.mark.parametrize("n,d", [(10, 3), (20, 4), (31, 2), (50, 6)])
def test_random_regular(n, d):
    adj = T.random_regular(n, d, seed=3)
    _undirected_checks(adj)
    assert (T.in_degrees(adj) == d).all()
    assert T.num_edges(adj) == n * d // 2
    assert T.is_connected(adj)
    assert np.array_equal(adj, T.random_regular(n, d, seed=3))
    assert not np.array_equal(adj, T.random_regular(n, d, seed=4))


def test_random_regular_errors():
    with pytest.raises(ValueError, match=r"n\*d = 5\*3 = 15 is odd"):
        T.random_regular(5, 3)
    with pytest.raises(ValueError, match=r"d=6 must be < n=6"):
        T.random_regular(6, 6)
    with pytest.raises(ValueError, match=r"d=9 must be < n=6"):
        T.random_regular(6, 9)


def test_erdos_renyi():
    adj = T.erdos_renyi(30, 0.2, seed=1)
    _undirected_checks(adj)
    assert T.is_connected(adj)
    assert np.array_equal(adj, T.erdos_renyi(30, 0.2, seed=1))
    assert not np.array_equal(adj, T.erdos_renyi(30, 0.2, seed=2))
    with pytest.raises(ValueError, match=r"p=0.01, n=40"):
        T.erdos_renyi(40, 0.01, seed=0, max_tries=5)


def test_star_complete():
    s = T.star(6)
    _undirected_checks(s)
    assert T.in_degrees(s).tolist() == [5, 1, 1, 1, 1, 1] and T.num_edges(s) == 5
    c = T.complete(6)
    _undirected_checks(c)
    assert (T.in_degrees(c) == 5).all() and T.num_edges(c) == 15


def test_from_edges_and_adjacency():
    adj = T.from_edges(4, [(0, 1), (1, 2)])
    _undirected_checks(adj)
    assert T.num_edges(adj) == 2 and not T.is_connected(adj)
    assert T.components(adj) == [[0, 1, 2], [3]]
    d = T.from_edges(3, [(0, 1), (1, 2)], directed=True)
    assert not T.is_connected(d)  # not strongly connected
    assert T.is_connected(T.from_edges(3, [(0, 1), (1, 2), (2, 0)], directed=True))
    assert np.array_equal(T.from_adjacency(adj.astype(int)), adj)
    with pytest.raises(ValueError, match=r"self loops at nodes \[1\]"):
        T.from_adjacency(np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match="square"):
        T.from_adjacency(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"edge \(0, 5\)"):
        T.from_edges(4, [(0, 5)])


# ----------------------------------------------------------------------------- weights

GRAPHS = {
    "ring": lambda: T.ring(12),
    "torus": lambda: T.torus(3, 5),
    "exponential": lambda: T.exponential(12, directed=False),
    "random_regular": lambda: T.random_regular(14, 3, seed=0),
    "erdos_renyi": lambda: T.erdos_renyi(15, 0.3, seed=0),
    "star": lambda: T.star(9),
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_metropolis_hastings(name):
    adj = GRAPHS[name]()
    W = T.metropolis_hastings(adj)
    T.check_doubly_stochastic(W)
    T.check_symmetric(W)
    assert (W >= 0).all() and (np.diag(W) > 0).all()
    assert np.array_equal((W != 0) & ~np.eye(len(W), dtype=bool), adj)
    i, j = map(int, np.argwhere(adj)[0])
    deg = adj.sum(1)
    assert W[i, j] == pytest.approx(1 / (1 + max(deg[i], deg[j])))


def test_uniform_weights():
    for adj in (T.ring(9), T.torus(3, 4), T.random_regular(12, 5, seed=1), T.complete(5)):
        W = T.uniform_weights(adj)
        T.check_doubly_stochastic(W)
        T.check_symmetric(W)
    W = T.uniform_weights(T.star(5))
    T.check_row_stochastic(W)
    with pytest.raises(ValueError, match="column 0 sums to"):
        T.check_column_stochastic(W)
    # Ying et al. 2021: directed exponential graph with weights 1/(ceil(log2 n)+1), doubly stochastic
    W = T.uniform_weights(T.exponential(12))
    T.check_doubly_stochastic(W)
    assert np.allclose(W[W > 0], 1 / (math.ceil(math.log2(12)) + 1))
    assert W[1, 0] > 0 and W[0, 1] == 0  # node 1 receives from node 0 (edge 0 -> 1)


def test_column_stochastic():
    rng = np.random.default_rng(0)
    a = rng.random((10, 10)) < 0.3
    np.fill_diagonal(a, False)
    for adj in (T.exponential(11), T.one_peer_exponential(6, 1), a, T.star(5)):
        W = T.column_stochastic(adj)
        T.check_column_stochastic(W)
        assert np.all((W > 0) <= (adj.T | np.eye(len(W), dtype=bool)))
    W = T.column_stochastic(a)
    j = int(np.argmax(a.sum(1)))
    assert np.allclose(W[:, j][W[:, j] > 0], 1 / (a[j].sum() + 1))


def test_lazy():
    W = T.metropolis_hastings(T.ring(6))
    L = T.lazy(W, 0.3)
    T.check_doubly_stochastic(L)
    assert np.allclose(L, 0.7 * np.eye(6) + 0.3 * W)
    assert np.linalg.eigvalsh(T.lazy(T.uniform_weights(T.ring(8)))).min() >= -1e-12


def test_spectral_gap():
    assert T.spectral_gap(T.uniform_weights(T.complete(7))) == pytest.approx(1.0, abs=1e-10)
    gaps = []
    for n in (6, 10, 20, 40):
        g = T.spectral_gap(T.uniform_weights(T.ring(n)))
        assert g == pytest.approx(1 - (1 + 2 * np.cos(2 * np.pi / n)) / 3, abs=1e-10)
        gaps.append(g)
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert T.spectral_gap(T.metropolis_hastings(T.from_edges(4, [(0, 1), (2, 3)]))) == pytest.approx(0, abs=1e-10)


def test_check_errors_name_the_culprit():
    W = T.metropolis_hastings(T.ring(5))
    W[3, 3] += 0.1
    with pytest.raises(ValueError, match=r"row 3 sums to 1.1"):
        T.check_row_stochastic(W)
    W = T.metropolis_hastings(T.ring(5))
    W[1, 4] += 0.2
    with pytest.raises(ValueError, match=r"not symmetric: W\[1, 4\]"):
        T.check_symmetric(W)
    with pytest.raises(ValueError, match=r"column 4 sums to 1.2"):
        T.check_column_stochastic(W)
    W = np.eye(3)
    W[0] = [1.5, -0.5, 0]
    with pytest.raises(ValueError, match=r"W\[0, 1\] = -0.5 is negative"):
        T.check_row_stochastic(W)
    with pytest.raises(ValueError, match="square"):
        T.check_row_stochastic(np.ones((2, 3)) / 3)
    adj = T.from_edges(8, [(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7)])
    with pytest.raises(ValueError, match=r"nodes \[5, 6, 7\] are not connected to node 0"):
        T.check_connected(adj)
    T.check_connected(T.ring(8))
    with pytest.raises(ValueError, match=r"undirected graph: edge 0 -> 1"):
        T.metropolis_hastings(T.exponential(8))
    with pytest.raises(ValueError, match="row 0 sums to"):
        T.mixing_operator(np.full((3, 3), 0.5))


# ----------------------------------------------------------------------------- mixing

def _tree(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(n, 3, 4)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(n,)), jnp.float32),
            "nested": [jnp.asarray(rng.normal(size=(n, 5)), jnp.float32)]}


def _assert_tree_close(a, b, tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_dense_sparse_agree_and_preserve_mean(name):
    adj = GRAPHS[name]()
    W = T.metropolis_hastings(adj)
    n = len(W)
    dense, sparse = T.mixing_operator(W, "dense"), T.mixing_operator(W, "sparse")
    assert isinstance(dense, T.Dense) and isinstance(sparse, T.Sparse)
    assert sparse.neighbours.shape == (n, adj.sum(1).max() + 1)
    assert (np.asarray(sparse.neighbours[:, 0]) == np.arange(n)).all()
    np.testing.assert_allclose(np.asarray(T.to_dense(sparse)), W, atol=1e-7)
    tree = _tree(n)
    out_d = jax.jit(T.mix)(dense, tree)
    out_s = jax.jit(T.mix)(sparse, tree)
    _assert_tree_close(out_d, out_s, 1e-6)
    ref = jax.tree_util.tree_map(lambda x: np.tensordot(W, np.asarray(x, np.float64), axes=1), tree)
    _assert_tree_close(out_s, ref, 1e-5)
    for op in (dense, sparse):
        out = T.mix(op, tree)
        _assert_tree_close(jax.tree_util.tree_map(lambda x: x.mean(0), out),
                           jax.tree_util.tree_map(lambda x: x.mean(0), tree), 1e-6)


def test_sparse_padding_and_max_degree():
    W = T.metropolis_hastings(T.star(5))
    s = T.to_sparse(W)
    assert s.neighbours.shape == (5, 5)
    assert np.asarray(s.neighbours)[1].tolist() == [1, 0, 1, 1, 1]
    assert np.asarray(s.weights)[1, 2:].tolist() == [0, 0, 0]
    s2 = T.to_sparse(T.metropolis_hastings(T.ring(6)), max_degree=4)
    assert s2.neighbours.shape == (6, 5)
    np.testing.assert_allclose(np.asarray(T.to_dense(s2)), T.metropolis_hastings(T.ring(6)), atol=1e-7)
    with pytest.raises(ValueError, match="max_degree=1 is too small"):
        T.to_sparse(W, max_degree=1)


def test_choose_representation():
    assert T.choose_representation(T.metropolis_hastings(T.ring(64))) == "sparse"
    assert T.choose_representation(T.metropolis_hastings(T.ring(16))) == "dense"
    assert T.choose_representation(T.uniform_weights(T.complete(600))) == "dense"
    assert T.choose_representation(T.metropolis_hastings(T.exponential(1024, directed=False))) == "sparse"
    assert isinstance(T.mixing_operator(T.metropolis_hastings(T.ring(64))), T.Sparse)
    assert isinstance(T.mixing_operator(T.metropolis_hastings(T.ring(8))), T.Dense)


def test_mix_shape_error():
    op = T.mixing_operator(T.metropolis_hastings(T.ring(5)), "sparse")
    with pytest.raises(ValueError, match="node axis N=5"):
        T.mix(op, jnp.zeros((4, 2)))


@pytest.mark.parametrize("n", [8, 16, 32])
def test_one_peer_exponential_exact_average(n):
    tau = int(math.log2(n))
    x = np.random.default_rng(n).normal(size=(n, 3))
    P = np.eye(n)
    for t in range(tau):
        W = T.one_peer_exponential_weights(n, t)
        T.check_doubly_stochastic(W)
        assert np.array_equal(W > 0, T.one_peer_exponential(n, t).T | np.eye(n, dtype=bool))
        if t < tau - 1:
            P = W @ P
            assert np.abs(P @ x - x.mean(0)).max() > 1e-3  # not yet averaged
    P = T.one_peer_exponential_weights(n, tau - 1) @ P
    np.testing.assert_allclose(P, np.full((n, n), 1 / n), atol=1e-12)

    # the same schedule as a traced-t Sparse operator inside lax.scan
    def step(x, t):
        return T.mix(T.one_peer_exponential_operator(n, t), x), None

    run = jax.jit(lambda x, ts: jax.lax.scan(step, x, ts)[0])
    xj = jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(np.asarray(run(xj, jnp.arange(tau))), np.broadcast_to(x.mean(0), x.shape),
                               atol=1e-5)
    assert np.abs(np.asarray(run(xj, jnp.arange(tau - 1))) - x.mean(0)).max() > 1e-3
    np.testing.assert_allclose(np.asarray(T.to_dense(T.one_peer_exponential_operator(n, 5))),
                               T.one_peer_exponential_weights(n, 5), atol=0)


# ----------------------------------------------------------------------------- link failures

def _live_dense(table, live=None, present=None):
    return np.asarray(T.to_dense(T.live_metropolis_hastings(*table, live, present)), np.float64)


@pytest.mark.parametrize("name", ["ring", "erdos_renyi", "star"])
def test_live_mh_no_failures_equals_mh(name):
    adj = GRAPHS[name]()
    table = T.neighbour_table(adj)
    live = T.draw_live_edges(jax.random.key(0), table, 0.0)
    assert np.array_equal(np.asarray(live), np.asarray(table.edge_mask))
    np.testing.assert_allclose(_live_dense(table, live), T.metropolis_hastings(adj), atol=1e-6)
    if name == "ring":
        np.testing.assert_allclose(_live_dense(table), T.metropolis_hastings(adj), atol=1e-6)
    # same column layout as to_sparse(metropolis_hastings(adj))
    s = T.to_sparse(T.metropolis_hastings(adj))
    assert np.array_equal(np.asarray(s.neighbours), np.asarray(table.neighbours))


def _symmetric_mask(table, live):
    nb, live = np.asarray(table.neighbours), np.asarray(live)
    n = nb.shape[0]
    dense = np.zeros((n, n), bool)
    dense[np.repeat(np.arange(n), nb.shape[1]), nb.ravel()] |= live.ravel()
    return dense


def test_live_edges_symmetric_and_weights_doubly_stochastic():
    adj = T.random_regular(40, 5, seed=2)
    table = T.neighbour_table(adj)
    p_fail = 0.3

    @jax.jit
    def round_weights(key, present):
        live = T.draw_live_edges(key, table, p_fail)
        return live, T.live_metropolis_hastings(table.neighbours, table.edge_mask, live, present)

    keys = jax.random.split(jax.random.key(1), 8)
    fracs = []
    for r, key in enumerate(keys):
        present = jnp.ones(40, bool).at[r].set(False)  # node r drops out this round
        live, sp = round_weights(key, present)
        d = _symmetric_mask(table, live)
        assert np.array_equal(d, d.T), "live mask must agree at both ends of an edge"
        assert not (d & ~adj).any()
        fracs.append(d.sum() / adj.sum())
        W = np.asarray(T.to_dense(sp), np.float64)
        T.check_doubly_stochastic(W, atol=1e-5)
        T.check_symmetric(W, atol=1e-6)
        assert (W >= 0).all()
        assert W[r, r] == 1.0 and np.count_nonzero(W[r]) == 1 and np.count_nonzero(W[:, r]) == 1
        x = _tree(40, seed=r)
        out = T.mix(sp, x)
        _assert_tree_close(jax.tree_util.tree_map(lambda v: v[r], out), jax.tree_util.tree_map(lambda v: v[r], x), 0)
        _assert_tree_close(jax.tree_util.tree_map(lambda v: v.mean(0), out),
                           jax.tree_util.tree_map(lambda v: v.mean(0), x), 1e-6)
    assert 0.6 < np.mean(fracs) < 0.8  # about 1 - p_fail of the edges live


def test_live_edges_vmap_over_keys_and_p_fail():
    table = T.neighbour_table(T.torus(4, 4))
    keys = jax.random.split(jax.random.key(0), 3)
    p = jnp.array([0.0, 0.5, 1.0])
    live = jax.vmap(T.draw_live_edges, in_axes=(0, None, 0))(keys, table, p)
    assert live.shape == (3,) + table.neighbours.shape
    assert np.array_equal(np.asarray(live[0]), np.asarray(table.edge_mask))
    assert not np.asarray(live[2]).any()
    W = jax.vmap(lambda l: T.live_metropolis_hastings(*table, l).weights)(live)
    np.testing.assert_allclose(np.asarray(W[2][:, 0]), 1.0)  # everything failed: identity


# ----------------------------------------------------------------------------- pairwise gossip

@pytest.mark.parametrize("n", [2, 7, 10])
def test_random_matching(n):
    for s in range(5):
        partner = np.asarray(jax.jit(T.random_matching, static_argnums=1)(jax.random.key(s), n))
        assert np.array_equal(partner[partner], np.arange(n))
        assert (partner == np.arange(n)).sum() == n % 2
    x = _tree(n)
    out = T.pairwise_average(x, jnp.asarray(partner))
    _assert_tree_close(jax.tree_util.tree_map(lambda v: v.mean(0), out),
                       jax.tree_util.tree_map(lambda v: v.mean(0), x), 1e-6)
    i = int(np.flatnonzero(partner != np.arange(n))[0])
    np.testing.assert_allclose(np.asarray(out["b"][i]), (np.asarray(x["b"][i]) + np.asarray(x["b"][partner[i]])) / 2,
                               rtol=1e-6)


def test_mix_rejects_non_operator():
    with pytest.raises(TypeError, match="expected a Dense or Sparse operator, got ndarray"):
        T.mix(np.eye(3), jnp.zeros((3, 2)))
