"""The algorithm protocol and what plugs into it: FedDyn against its paper, minibatches against a
NumPy loop, a regression loss, payload-consistent deadlines, explicit plans, hyper-parameter owners."""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import edgejax as ej
from edgejax.data.federated import FederatedData, pad_nodes, pad_test
from edgejax.system import SystemModel, uniform_profiles
from conftest import make_data
from references import logreg_loss_grad

C = 3


def _logreg_sim(data, algorithm, cohort=None, **local):
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    return ej.Simulation(model, data, algorithm, ej.LocalTraining(**local), clients_per_round=cohort)


def _wb(params):
    return np.asarray(params["out"]["w"]), np.asarray(params["out"]["b"])


# ----- FedDyn ---------------------------------------------------------------------------------

def test_feddyn_matches_the_papers_algorithm(x64):
    """Acar et al. 2021, Algorithm 1, with full-batch local gradient steps standing in for the argmin."""
    sizes, steps, lr, alpha = [5, 3, 6, 4], 3, 0.2, 0.3
    data, xs, ys = make_data(sizes, seed=11)
    sim = _logreg_sim(data, ej.FedDyn(), batch_size=max(sizes), steps=steps, execution="per_node")
    hp = sim.hparams({"client_lr": lr, "alpha": alpha})
    state = sim.init(jax.random.PRNGKey(0), hp)
    x_w, x_b = _wb(state.server.params)
    g = [(np.zeros_like(x_w), np.zeros_like(x_b)) for _ in sizes]
    h_w, h_b = np.zeros_like(x_w), np.zeros_like(x_b)
    round_fn = jax.jit(lambda s, plan: sim.round_with_plan(s, data, plan, hp))
    for active in ([1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 1, 0]):
        thetas = {}
        for i in np.flatnonzero(active):
            w, b = x_w.copy(), x_b.copy()
            for _ in range(steps):   # grad of L_i(w) - <g_i, w> + alpha/2 ||w - x||^2
                _, gw, gb = logreg_loss_grad(w, b, xs[i], ys[i], C)
                w = w - lr * (gw - g[i][0] + alpha * (w - x_w))
                b = b - lr * (gb - g[i][1] + alpha * (b - x_b))
            thetas[i] = (w, b)
            g[i] = (g[i][0] - alpha * (w - x_w), g[i][1] - alpha * (b - x_b))
        h_w = h_w - alpha / len(sizes) * sum(t[0] - x_w for t in thetas.values())
        h_b = h_b - alpha / len(sizes) * sum(t[1] - x_b for t in thetas.values())
        x_w = np.mean([t[0] for t in thetas.values()], axis=0) - h_w / alpha
        x_b = np.mean([t[1] for t in thetas.values()], axis=0) - h_b / alpha
        state, metrics = round_fn(state, sim.make_plan(active=active))
        np.testing.assert_allclose(_wb(state.server.params)[0], x_w, rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(_wb(state.server.params)[1], x_b, rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(np.asarray(state.server.extra.h["out"]["w"]), h_w, rtol=1e-11, atol=1e-13)
        for i in range(len(sizes)):
            np.testing.assert_allclose(np.asarray(state.nodes.extra.g["out"]["b"][i]), g[i][1], rtol=1e-11,
                                       atol=1e-13)
        assert float(metrics["participants"]) == sum(active)


def test_feddyn_with_zero_alpha_memory_stays_zero_and_no_node_leaves_the_server_unchanged(x64):
    data, _, _ = make_data([4, 4, 4], seed=12)
    sim = _logreg_sim(data, ej.FedDyn(), batch_size=4, steps=2)
    hp = sim.hparams({"client_lr": 0.1})
    state = sim.init(jax.random.PRNGKey(1), hp)
    new, metrics = jax.jit(sim.round_with_plan)(state, data, sim.make_plan(active=[0, 0, 0]), hp)
    jax.tree_util.tree_map(np.testing.assert_array_equal, new.server, state.server)
    assert float(metrics["participants"]) == 0


# ----- minibatches against a NumPy loop -----------------------------------------------------------

def _numpy_orders(key, count, size, shuffles):
    """The on-device shuffle's permutations: the same uniforms, valid slots first, stable sort."""
    scores = np.array(jax.random.uniform(key, (shuffles, size)), dtype=np.float64)
    scores[:, count:] = 2.0
    return np.argsort(scores, axis=-1, kind="stable")


def test_minibatch_fedavg_matches_a_numpy_loop_over_epochs_and_partial_batches(x64):
    """Two epochs of batch 3 on nodes of 7, 5 and 4 samples: every epoch a fresh permutation,
    the last batch of an epoch partial (its mean over the real samples only), batches never
    straddling epochs; then the sample-weighted average."""
    sizes, batch, epochs, lr = [7, 5, 4], 3, 2, 0.4
    data, xs, ys = make_data(sizes, seed=13)
    sim = _logreg_sim(data, ej.FedAvg(), batch_size=batch, epochs=epochs, execution="per_node")
    hp = sim.hparams({"client_lr": lr})
    state = sim.init(jax.random.PRNGKey(2), hp)
    round_fn = jax.jit(sim.round)
    x_w, x_b = _wb(state.server.params)
    for r in range(2):
        new_w, new_b = np.zeros_like(x_w), np.zeros_like(x_b)
        for i, n in enumerate(sizes):
            key = jax.random.fold_in(state.nodes.rng[i], r)
            orders = _numpy_orders(key, n, max(sizes), epochs)
            w, b = x_w.copy(), x_b.copy()
            for e in range(epochs):
                for start in range(0, n, batch):
                    idx = orders[e, start:min(start + batch, n)]
                    _, gw, gb = logreg_loss_grad(w, b, xs[i][idx], ys[i][idx], C)
                    w, b = w - lr * gw, b - lr * gb
            new_w += n / sum(sizes) * w
            new_b += n / sum(sizes) * b
        x_w, x_b = new_w, new_b
        state, metrics = round_fn(state, data, hp)
        np.testing.assert_allclose(_wb(state.server.params)[0], x_w, rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(_wb(state.server.params)[1], x_b, rtol=1e-11, atol=1e-13)
        assert float(metrics["local_steps"]) == epochs * sum(-(-n // batch) for n in sizes)


# ----- a regression loss ---------------------------------------------------------------------------

def test_a_regression_model_trains_end_to_end_and_matches_least_squares_sgd(x64):
    rng = np.random.default_rng(0)
    true_w = rng.normal(size=(4, 1))
    x = rng.normal(size=(60, 4))
    y = (x @ true_w)[:, 0] + 0.01 * rng.normal(size=60)
    parts = [np.arange(0, 20), np.arange(20, 35), np.arange(35, 50)]
    data = FederatedData(train=pad_nodes(x, y, parts), local_test=pad_nodes(x, y, [np.arange(50, 60)] * 3),
                         test=pad_test(x[50:], y[50:]), num_classes=1, name="regression")
    model = ej.models.linear_regression((4,), 1)
    sim = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=20, steps=1, execution="per_node"))
    hp = sim.hparams({"client_lr": 0.1})
    state = sim.init(jax.random.PRNGKey(0), hp)
    w, b = _wb(state.server.params)
    new_w, new_b = np.zeros_like(w), np.zeros_like(b)
    for idx in parts:   # one full-batch step of 1/2 mean squared error per node, sample-weighted mean
        err = x[idx] @ w + b - y[idx][:, None]
        new_w += len(idx) / 50 * (w - 0.1 * x[idx].T @ err / len(idx))
        new_b += len(idx) / 50 * (b - 0.1 * err.mean(axis=0))
    state, _ = jax.jit(sim.round)(state, data, hp)
    np.testing.assert_allclose(_wb(state.server.params)[0], new_w, rtol=1e-12, atol=1e-14)
    results = sim.run(60, hparams=hp, eval_every=20)
    assert "test_accuracy" not in results.evals and "node_loss_mean" in results.evals
    assert results.evals["test_loss"][-1] < 0.01 * results.evals["test_loss"][0]
    # shared_base differentiates the model's own loss too: the same step
    sb = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=20, steps=1, execution="shared_base"))
    sb_state, _ = jax.jit(sb.round)(sb.init(jax.random.PRNGKey(0), hp), data, hp)
    np.testing.assert_allclose(_wb(sb_state.server.params)[0], new_w, rtol=1e-12, atol=1e-14)


# ----- payloads: the system model plans and charges the same bytes ------------------------------------

def test_a_deadline_that_fits_one_model_but_not_two_drops_scaffold_nodes_not_fedavg_nodes():
    data, _, _ = make_data([4] * 4, dtype=np.float32, seed=14)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    model_bytes = ej.models.num_bytes(jax.eval_shape(model.init, jax.random.PRNGKey(0)))
    bandwidth, latency, speed, steps, batch = 1e3, 0.01, 100.0, 2, 4
    profiles = uniform_profiles(4, speed=speed, up_bandwidth=bandwidth, down_bandwidth=bandwidth, latency=latency)
    one = 2 * (model_bytes / bandwidth + latency) + steps * batch / speed
    two = 2 * (2 * model_bytes / bandwidth + latency) + steps * batch / speed
    deadline = (one + two) / 2
    system = SystemModel(profiles=profiles, deadline_policy="drop_late")
    for algorithm, kept in ((ej.FedAvg(), 4), (ej.SCAFFOLD(), 0)):
        sim = ej.Simulation(model, data, algorithm, ej.LocalTraining(batch_size=batch, steps=steps), system=system)
        hp = sim.hparams({"deadline": deadline})
        state, metrics = jax.jit(sim.round)(sim.init(jax.random.PRNGKey(0), hp), data, hp)
        assert float(metrics["participants"]) == kept
        assert float(metrics["round_time_s"]) <= deadline
        payload = sim.context.payload
        assert payload.up == payload.down == (2 if algorithm.name == "scaffold" else 1) * model_bytes
        if kept:
            assert float(metrics["round_time_s"]) == pytest.approx(one, rel=1e-6)
            np.testing.assert_allclose(np.asarray(state.system.busy_until), one, rtol=1e-6)


# ----- explicit plans, hyper-parameter owners, the protocol's checks ----------------------------------

def test_rounds_from_an_explicit_plan_advance_the_round_and_use_fresh_keys(x64):
    data, _, _ = make_data([5, 5, 5, 5], seed=15)
    sim = _logreg_sim(data, ej.FedAvg(), cohort=2, batch_size=2, epochs=1)
    hp = sim.hparams({"client_lr": 0.3})
    state = sim.init(jax.random.PRNGKey(0), hp)
    plan = sim.make_plan(nodes=[3, 1], step_budget=[1, 2])
    step = jax.jit(sim.round_with_plan)
    one, m1 = step(state, data, plan, hp)
    two, m2 = step(one, data, plan, hp)
    assert int(one.round) == 1 and int(two.round) == 2
    assert float(m1["local_steps"]) == 3 and float(m1["participants"]) == 2
    d1 = _wb(one.server.params)[0] - _wb(state.server.params)[0]
    d2 = _wb(two.server.params)[0] - _wb(one.server.params)[0]
    assert not np.allclose(d1, d2)   # round 2 shuffles with round 2's keys
    with pytest.raises(ValueError, match="distinct node ids"):
        sim.make_plan(nodes=[1, 1])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        sim.make_plan(active=[1, 1, 1])


@dataclasses.dataclass(frozen=True)
class _ClashingFedAvg(ej.FedAvg):
    def default_hparams(self):
        return {**super().default_hparams(), "client_lr": 1.0}


def test_hyper_parameter_names_cannot_collide_between_owners():
    data, _, _ = make_data([4, 4], seed=16)
    with pytest.raises(ValueError, match="'client_lr' is defined by both the local and the algorithm"):
        _logreg_sim(data, _ClashingFedAvg(), batch_size=2)
    owners = _logreg_sim(data, ej.FedDyn(), batch_size=2).hparam_owners()
    assert owners["alpha"] == "algorithm" and owners["client_lr"] == "local"


def test_an_object_without_the_protocol_is_rejected_by_name():
    data, _, _ = make_data([4, 4], seed=17)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    with pytest.raises(TypeError, match=r"lacks \['name', 'traits'"):
        ej.Simulation(model, data, object())

    class HalfAsynchronous:   # says it is asynchronous but has none of the event clock's parts
        name = "half"

        def traits(self):
            return ej.algorithms.Traits(asynchronous=True)

    with pytest.raises(TypeError, match=r"lacks \['payload', .*'slots', 'check_nodes', 'window_step', 'window'\]"):
        ej.Simulation(model, data, HalfAsynchronous())
    assert isinstance(ej.FedAvg(), ej.Algorithm) and isinstance(ej.FedBuff(), ej.algorithms.AsynchronousAlgorithm)


def test_an_algorithm_built_over_another_model_is_refused():
    data, _, _ = make_data([4, 4], seed=17)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    other = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(4,))
    algorithm = ej.algorithms.APFL(model=other)
    with pytest.raises(ValueError, match="apfl was built over model 'mlp_4'.*differ.*simulation's model 'logreg'"):
        ej.Simulation(model, data, algorithm, ej.LocalTraining(batch_size=2))


def test_float64_runs_report_float64_accuracy(x64):
    data, _, _ = make_data([4, 4], seed=18)
    sim = _logreg_sim(data, ej.FedAvg(), batch_size=2)
    metrics = jax.jit(sim.evaluate)(sim.init(jax.random.PRNGKey(0), sim.hparams()), data)
    assert metrics["test_accuracy"].dtype == jnp.float64


def test_keeping_the_local_optimizer_carries_each_nodes_momentum_across_rounds(x64):
    """FedAvg(keep_local_optimizer=True): node i's heavy-ball buffer continues from the last round
    it took part in (a NumPy loop with persistent buffers), absent nodes keep theirs."""
    sizes, lr, mu = [4, 6, 5], 0.2, 0.9
    data, xs, ys = make_data(sizes, seed=19)
    sim = _logreg_sim(data, ej.FedAvg(keep_local_optimizer=True), batch_size=max(sizes), steps=2,
                      optimizer="momentum")
    hp = sim.hparams({"client_lr": lr, "client_momentum": mu})
    state = sim.init(jax.random.PRNGKey(0), hp)
    x_w, x_b = _wb(state.server.params)
    buf = [(np.zeros_like(x_w), np.zeros_like(x_b)) for _ in sizes]
    step = jax.jit(lambda s, plan: sim.round_with_plan(s, data, plan, hp))
    for active in ([1, 1, 1], [1, 0, 1], [1, 1, 0]):
        p = np.asarray(active) * np.asarray(sizes) / np.sum(np.asarray(active) * np.asarray(sizes))
        new_w, new_b = x_w.copy(), x_b.copy()
        for i in np.flatnonzero(active):
            w, b = x_w.copy(), x_b.copy()
            for _ in range(2):
                _, gw, gb = logreg_loss_grad(w, b, xs[i], ys[i], C)
                buf[i] = (gw + mu * buf[i][0], gb + mu * buf[i][1])
                w, b = w - lr * buf[i][0], b - lr * buf[i][1]
            new_w += p[i] * (w - x_w)
            new_b += p[i] * (b - x_b)
        x_w, x_b = new_w, new_b
        state, _ = step(state, sim.make_plan(active=active))
        np.testing.assert_allclose(_wb(state.server.params)[0], x_w, rtol=1e-11, atol=1e-13)
    trace = state.nodes.opt_state[0]
    assert isinstance(trace, optax.TraceState)
    np.testing.assert_allclose(np.asarray(trace.trace["out"]["b"][2]), buf[2][1], rtol=1e-11, atol=1e-13)


def test_a_run_compiles_its_round_chunk_once():
    data, _, _ = make_data([4, 4, 4], dtype=np.float32, seed=20)
    sim = _logreg_sim(data, ej.FedDyn(), batch_size=2)
    hp = sim.hparams()
    chunk = jax.jit(chex.assert_max_traces(sim.run_chunk, n=1), static_argnums=(3,))
    state = sim.init(jax.random.PRNGKey(0), hp)
    for active in (3, 3, 1):
        state, _, _ = chunk(state, data, hp, 3, active)


def test_a_full_cohort_plan_in_any_order_means_the_same_round(x64):
    """With K = N the cohort is every node and its slots follow node order (as the system
    model's plans do), so a user's plan listing the nodes in another order is the same round."""
    data, _, _ = make_data([5, 3, 6, 4], seed=22)
    sim = _logreg_sim(data, ej.FedAvg(), batch_size=2, epochs=1)
    hp = sim.hparams({"client_lr": 0.3})
    state = sim.init(jax.random.PRNGKey(0), hp)
    step = jax.jit(sim.round_with_plan)
    ordered, m1 = step(state, data, sim.make_plan(active=[1, 0, 1, 1], step_budget=[3, 1, 2, 1]), hp)
    shuffled, m2 = step(state, data, sim.make_plan(nodes=[2, 0, 3, 1], active=[1, 1, 1, 0],
                                                   step_budget=[2, 3, 1, 1]), hp)
    np.testing.assert_array_equal(_wb(shuffled.server.params)[0], _wb(ordered.server.params)[0])
    assert float(m2["local_steps"]) == float(m1["local_steps"]) == 3 + 2 + 1
