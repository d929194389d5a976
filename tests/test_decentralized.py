"""Decentralized algorithms against float64 NumPy references of their papers' equations, plus invariants."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax import network as tp
from edgejax.algorithms.decentralized import CHOCO, DPSGD, PairwiseGossip, PushSum
from edgejax.network.spec import Topology
from edgejax.compression import TopK
from conftest import make_data
from references import logreg_loss_grad

N, LR = 6, 0.3


def _setup(alg, sizes=(5,) * N, seed=0, link_failures=False, optimizer="sgd"):
    data, xs, ys = make_data(list(sizes), seed=seed)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    sim = ej.Simulation(model, data, alg, ej.LocalTraining(batch_size=max(sizes), steps=1, optimizer=optimizer),
                        system=ej.SystemModel(link_failures=link_failures))
    hp = sim.hparams({"client_lr": LR})
    state = sim.init(jax.random.PRNGKey(seed), hp)
    # start the nodes from different models so that mixing has work to do
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape)), state.nodes.params)
    state = state._replace(nodes=state.nodes._replace(params=params))
    return sim, hp, state, xs, ys


def _stack(state):
    p = state.nodes.params["out"]
    return np.asarray(p["w"]), np.asarray(p["b"])


def _grads(w, b, xs, ys):
    out = [logreg_loss_grad(w[i], b[i], xs[i], ys[i], 3)[1:] for i in range(len(xs))]
    return np.stack([g[0] for g in out]), np.stack([g[1] for g in out])


@pytest.mark.parametrize("order", ["lian", "atc"])
@pytest.mark.parametrize("representation", ["dense", "sparse"])
def test_dpsgd_matches_reference(x64, order, representation):
    sim, hp, state, xs, ys = _setup(DPSGD(Topology("ring", representation=representation), order=order))
    round_fn = jax.jit(sim.round)  # one compilation for the whole loop
    W = tp.metropolis_hastings(tp.ring(N))
    w, b = _stack(state)
    for _ in range(3):
        gw, gb = _grads(w, b, xs, ys)
        if order == "lian":   # X+ = W X - lr G(X)
            w, b = np.einsum("ij,j...->i...", W, w) - LR * gw, W @ b - LR * gb
        else:                 # X+ = W (X - lr G(X))
            w, b = np.einsum("ij,j...->i...", W, w - LR * gw), W @ (b - LR * gb)
        state, metrics = round_fn(state, sim.data, hp)
        np.testing.assert_allclose(_stack(state)[0], w, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(_stack(state)[1], b, rtol=1e-11, atol=1e-12)
    flat = np.concatenate([w.reshape(N, -1), b], axis=1)
    np.testing.assert_allclose(float(metrics["consensus_distance"]),
                               np.mean(np.sum((flat - flat.mean(0)) ** 2, axis=1)), rtol=1e-10)
    assert float(metrics["bytes_up"]) == 2 * N * sim.context.model_bytes  # a ring: two messages per node


def test_pushsum_matches_sgp_reference_and_keeps_weight_sum(x64):
    sim, hp, state, xs, ys = _setup(PushSum())
    round_fn = jax.jit(sim.round)  # one compilation for the whole loop
    P = tp.column_stochastic(tp.exponential(N, directed=True))
    x_w, x_b = _stack(state)
    weights = np.ones(N)
    for _ in range(3):
        z_w, z_b = x_w / weights[:, None, None], x_b / weights[:, None]
        gw, gb = _grads(z_w, z_b, xs, ys)
        x_w, x_b = np.einsum("ij,j...->i...", P, x_w - LR * gw), P @ (x_b - LR * gb)
        weights = P @ weights
        state, _ = round_fn(state, sim.data, hp)
        np.testing.assert_allclose(_stack(state)[0], x_w, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(np.asarray(state.nodes.extra.w), weights, rtol=1e-12)
        assert float(jnp.sum(state.nodes.extra.w)) == pytest.approx(N, rel=1e-12)


def _topk_np(v, k):
    out = np.zeros_like(v)
    idx = np.argsort(-np.abs(v), kind="stable")[:k]
    out[idx] = v[idx]
    return out


def test_choco_matches_reference_with_topk(x64):
    gamma, fraction = 0.4, 0.5
    sim, hp, state, xs, ys = _setup(CHOCO(Topology("ring"), TopK(fraction=fraction), per_tensor=True))
    round_fn = jax.jit(sim.round)  # one compilation for the whole loop
    hp = {**hp, "consensus_step": jnp.asarray(gamma)}
    W = tp.metropolis_hastings(tp.ring(N))
    w, b = _stack(state)
    hw, hb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(3):
        gw, gb = _grads(w, b, xs, ys)
        w_half, b_half = w - LR * gw, b - LR * gb
        kw, kb = round(fraction * w[0].size), round(fraction * b[0].size)
        hw = hw + np.stack([_topk_np((w_half[i] - hw[i]).ravel(), kw).reshape(w[0].shape) for i in range(N)])
        hb = hb + np.stack([_topk_np(b_half[i] - hb[i], kb) for i in range(N)])
        w = w_half + gamma * (np.einsum("ij,j...->i...", W, hw) - hw)
        b = b_half + gamma * (W @ hb - hb)
        state, metrics = round_fn(state, sim.data, hp)
        np.testing.assert_allclose(_stack(state)[0], w, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(state.nodes.extra.xhat["out"]["b"]), hb, rtol=1e-10, atol=1e-12)
    # payload: k values + k indices per tensor, per message
    kw, kb = round(fraction * w[0].size), round(fraction * b[0].size)
    bits = kw * (32 + int(np.ceil(np.log2(w[0].size)))) + kb * (32 + int(np.ceil(np.log2(b[0].size))))
    assert float(metrics["bytes_up"]) == pytest.approx(2 * N * bits / 8)


@pytest.mark.parametrize("alg, link_failures", [
    (DPSGD(Topology("torus")), False), (DPSGD(Topology("exponential", representation="sparse")), False),
    (DPSGD(Topology("ring")), True), (PairwiseGossip(), False), (PairwiseGossip(order="lian"), False),
    (DPSGD(Topology("one_peer_exponential")), False)],
    ids=["torus", "exponential", "link-failures", "pairwise", "pairwise-lian", "one-peer"])
def test_gossip_without_gradients_preserves_the_average_and_contracts(x64, alg, link_failures):
    sim, hp, state, _, _ = _setup(alg, link_failures=link_failures)
    round_fn = jax.jit(sim.round)  # one compilation for the whole loop
    hp = {**hp, "client_lr": jnp.asarray(0.0)}
    if "link_failure" in hp:
        hp["link_failure"] = jnp.asarray(0.5)
    mean0 = jax.tree_util.tree_map(lambda p: p.mean(0), state.nodes.params)
    distances = []
    for _ in range(8):
        state, metrics = round_fn(state, sim.data, hp)
        distances.append(float(metrics["consensus_distance"]))
        jax.tree_util.tree_map(lambda a, m: np.testing.assert_allclose(a.mean(0), m, atol=1e-12),
                               state.nodes.params, mean0)
    assert distances[-1] < 0.5 * distances[0]


@pytest.mark.parametrize("representation", ["dense", "sparse"])
def test_a_schedule_of_graphs_mixes_with_graph_t_mod_T(x64, representation):
    star = tp.star(N)
    schedule = (tp.ring(N), star, tp.complete(N))
    sim, hp, state, xs, ys = _setup(DPSGD(Topology("schedule", schedule=schedule, representation=representation),
                                          order="atc"))
    round_fn = jax.jit(sim.round)
    w, b = _stack(state)
    for t in range(4):
        W = tp.metropolis_hastings(schedule[t % 3])
        gw, gb = _grads(w, b, xs, ys)
        w, b = np.einsum("ij,j...->i...", W, w - LR * gw), W @ (b - LR * gb)
        state, _ = round_fn(state, sim.data, hp)
        np.testing.assert_allclose(_stack(state)[0], w, rtol=1e-11, atol=1e-12)


def test_link_failures_with_zero_probability_equal_the_fixed_graph(x64):
    a = _setup(DPSGD(Topology("ring")), link_failures=True)
    b = _setup(DPSGD(Topology("ring")))
    sa, sb = a[2], b[2]
    round_a, round_b = jax.jit(a[0].round), jax.jit(b[0].round)
    for _ in range(2):
        sa, _ = round_a(sa, a[0].data, a[1])
        sb, _ = round_b(sb, b[0].data, b[1])
    np.testing.assert_allclose(_stack(sa)[0], _stack(sb)[0], rtol=1e-12, atol=1e-13)


def test_decentralized_run_reports_consensus_and_own_accuracy():
    data, _, _ = make_data([6] * 8, dtype=np.float32, seed=3)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    results = ej.Simulation(model, data, DPSGD(Topology("ring")), ej.LocalTraining(batch_size=3)).run(4, eval_every=2)
    # by hand from the final node models: each one's accuracy on its own local test split, and
    # mean_i ||x_i - x_bar||^2 (the last round's consensus distance, measured after its mixing)
    nodes, local = results.final_state.nodes.params, data.local_test
    own = []
    for i in range(8):
        n = int(local.count[i])
        logits = model.apply(jax.tree_util.tree_map(lambda a: a[i], nodes), local.x[i][:n])
        own.append(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(local.y[i][:n])))
    assert results.evals["own_accuracy_mean"][-1] == pytest.approx(np.mean(own), abs=1e-6)
    assert results.evals["own_accuracy_min"][-1] == pytest.approx(min(own), abs=1e-6)
    flat = np.concatenate([np.asarray(a).reshape(8, -1) for a in jax.tree_util.tree_leaves(nodes)], axis=1)
    spread = np.mean(np.sum((flat - flat.mean(0)) ** 2, axis=1))
    assert results.rounds["consensus_distance"][-1] == pytest.approx(spread, rel=1e-4) and spread > 0


def test_bad_decentralized_configuration_is_rejected():
    data, _, _ = make_data([6] * 8, dtype=np.float32, seed=4)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    with pytest.raises(ValueError, match="clients_per_round=None"):
        ej.Simulation(model, data, DPSGD(), ej.LocalTraining(batch_size=3), clients_per_round=4)
    with pytest.raises(ValueError, match="schedule"):
        Topology("schedule")
    with pytest.raises(ValueError, match="hexagon"):
        Topology("hexagon")
    with pytest.raises(ValueError, match="link failures"):
        ej.Simulation(model, data, DPSGD(Topology("ring", weights="uniform")), ej.LocalTraining(batch_size=3),
                      system=ej.SystemModel(link_failures=True))
    with pytest.raises(ValueError, match="no communication graph"):
        ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=3), system=ej.SystemModel(link_failures=True))
    with pytest.raises(ValueError, match="order"):
        DPSGD(order="cta")
    disconnected = np.zeros((8, 8), bool)
    disconnected[0, 1] = disconnected[1, 0] = True
    with pytest.raises(ValueError, match="not connected"):
        ej.Simulation(model, data, DPSGD(Topology("adjacency", adjacency=disconnected)),
                      ej.LocalTraining(batch_size=3)).run(1)


def test_dpsgd_with_momentum_keeps_each_nodes_buffer(x64):
    """D-PSGD (Lian order) with heavy-ball momentum: node i's buffer m_i <- g_i + mu m_i persists
    across rounds and is never mixed; X+ = W X - lr M."""
    mu = 0.9
    sim, hp, state, xs, ys = _setup(DPSGD(Topology("ring")), optimizer="momentum")
    hp = {**hp, "client_momentum": jnp.asarray(mu)}
    round_fn = jax.jit(sim.round)
    W = tp.metropolis_hastings(tp.ring(N))
    w, b = _stack(state)
    mw, mb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(4):
        gw, gb = _grads(w, b, xs, ys)
        mw, mb = gw + mu * mw, gb + mu * mb
        w, b = np.einsum("ij,j...->i...", W, w) - LR * mw, W @ b - LR * mb
        state, _ = round_fn(state, sim.data, hp)
        np.testing.assert_allclose(_stack(state)[0], w, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(_stack(state)[1], b, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(np.asarray(state.nodes.opt_state[0].trace["out"]["b"]), mb, rtol=1e-11, atol=1e-12)


def test_choco_in_the_authors_code_order(x64):
    """``order="code"`` (convex_code/logistic.py): gossip with the old public copies, then compress
    the gossiped model; xhat starts at the initial model."""
    gamma, fraction = 0.3, 0.5
    sim, hp, state, xs, ys = _setup(CHOCO(Topology("ring"), TopK(fraction=fraction), order="code"))
    hp = {**hp, "consensus_step": jnp.asarray(gamma)}
    round_fn = jax.jit(sim.round)
    W = tp.metropolis_hastings(tp.ring(N))
    w, b = _stack(state)
    first = sim.init(jax.random.PRNGKey(0), hp).nodes.params["out"]
    hw, hb = np.asarray(first["w"]), np.asarray(first["b"])   # the initial (shared) model
    kw, kb = round(fraction * w[0].size), round(fraction * b[0].size)
    for _ in range(3):
        gw, gb = _grads(w, b, xs, ys)
        w = w - LR * gw + gamma * (np.einsum("ij,j...->i...", W, hw) - hw)
        b = b - LR * gb + gamma * (W @ hb - hb)
        hw = hw + np.stack([_topk_np((w[i] - hw[i]).ravel(), kw).reshape(w[0].shape) for i in range(N)])
        hb = hb + np.stack([_topk_np(b[i] - hb[i], kb) for i in range(N)])
        state, _ = round_fn(state, sim.data, hp)
        np.testing.assert_allclose(_stack(state)[0], w, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(state.nodes.extra.xhat["out"]["w"]), hw, rtol=1e-10, atol=1e-12)


def test_pushsum_consensus_distance_is_measured_around_the_network_model(x64):
    sim, hp, state, _, _ = _setup(PushSum())
    state, metrics = jax.jit(sim.round)(state, sim.data, hp)
    w, b = _stack(state)
    weights = np.asarray(state.nodes.extra.w)
    flat = np.concatenate([w.reshape(N, -1), b], axis=1)
    network = flat.sum(axis=0) / weights.sum()           # sum_i x_i / sum_i w_i, the evaluated model
    z = flat / weights[:, None]
    np.testing.assert_allclose(float(metrics["consensus_distance"]), np.mean(np.sum((z - network) ** 2, axis=1)),
                               rtol=1e-10)
    avg, _ = sim.algorithm.eval_models(state)
    np.testing.assert_allclose(np.asarray(avg["out"]["b"]), network[-3:], rtol=1e-12)


def test_a_schedule_of_disconnected_graphs_is_accepted_when_their_union_is_connected(x64):
    """Two perfect matchings as a user schedule: each alone is disconnected, together a ring."""
    graphs = (tp.from_edges(N, [(0, 1), (2, 3), (4, 5)]), tp.from_edges(N, [(1, 2), (3, 4), (5, 0)]))
    assert not any(tp.is_connected(g) for g in graphs)
    sim, hp, state, _, _ = _setup(DPSGD(Topology("schedule", schedule=graphs)))
    state, metrics = jax.jit(sim.round)(state, sim.data, {**hp, "client_lr": jnp.asarray(0.0)})
    assert np.isfinite(float(metrics["consensus_distance"]))
    lonely = np.zeros((N, N), bool)
    lonely[0, 1] = lonely[1, 0] = True
    with pytest.raises(ValueError, match="union of the schedule's graphs is not connected"):
        _setup(DPSGD(Topology("schedule", schedule=(lonely, lonely))))


def test_pairwise_gossip_matches_reference_with_the_documented_matching_key(x64):
    """Round t's matching is ``random_matching(stream_key(fold_in(state.rng, t), "pairwise_matching"), N)``
    (README, Conventions): with it, a float64 NumPy loop of ``X+ = average of partners of (X - lr G(X))``
    equals three rounds."""
    from edgejax.core.streams import stream_key

    sim, hp, state, xs, ys = _setup(PairwiseGossip())
    round_fn = jax.jit(sim.round)
    w, b = _stack(state)
    moved = 0
    for t in range(3):
        partner = np.asarray(tp.random_matching(stream_key(jax.random.fold_in(state.rng, t), "pairwise_matching"), N))
        assert sorted(partner[partner].tolist()) == list(range(N))   # an involution
        moved += int(np.sum(partner != np.arange(N)))
        gw, gb = _grads(w, b, xs, ys)
        w, b = w - LR * gw, b - LR * gb
        w, b = (w + w[partner]) / 2, (b + b[partner]) / 2
        state, _ = round_fn(state, sim.data, hp)
        np.testing.assert_allclose(_stack(state)[0], w, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(_stack(state)[1], b, rtol=1e-11, atol=1e-12)
    assert moved > 0
