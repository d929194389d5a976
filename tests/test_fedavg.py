"""FedAvg and its server optimizers against float64 NumPy references of the papers' equations."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.core.state import RoundPlan
from references import fedavg_delta, logreg_loss_grad, momentum_server, reddi_server
from conftest import make_data


def _logreg_sim(data, *, steps=1, batch_size=None, server="sgd", cohort=None, weighting="samples", **local):
    batch_size = batch_size or int(np.max(data.node_counts()))
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    return ej.Simulation(model, data, ej.FedAvg(server_optimizer=server, weighting=weighting),
                         ej.LocalTraining(batch_size=batch_size, steps=steps, epochs=None, **local),
                         clients_per_round=cohort)


def _wb(state):
    p = state.server.params["out"]
    return np.asarray(p["w"]), np.asarray(p["b"])


def test_one_local_step_full_participation_equals_large_batch_sgd(x64):
    data, xs, ys = make_data([6, 6, 6, 6])
    sim = _logreg_sim(data)
    hp = sim.hparams({"client_lr": 0.3})
    state = sim.init(jax.random.PRNGKey(0), hp)
    w0, b0 = _wb(state)
    new_state, metrics = jax.jit(sim.round)(state, data, hp)
    loss, gw, gb = logreg_loss_grad(w0, b0, np.concatenate(xs), np.concatenate(ys), 3)
    w1, b1 = _wb(new_state)
    np.testing.assert_allclose(w1, w0 - 0.3 * gw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b1, b0 - 0.3 * gb, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(metrics["train_loss"]), loss, rtol=1e-12)
    assert int(new_state.round) == 1


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
def test_partial_participation_multi_step_matches_reference(x64, weighting):
    data, xs, ys = make_data([3, 5, 7, 4, 6], seed=1)
    sim = _logreg_sim(data, steps=3, cohort=3, weighting=weighting)
    hp = sim.hparams({"client_lr": 0.2, "clients_per_round": 2})
    state = sim.init(jax.random.PRNGKey(1), hp)
    round_fn = jax.jit(sim.round)
    seen = set()
    for _ in range(3):
        w0, b0 = _wb(state)
        plan = sim.plan(state, hp)
        chosen = [int(i) for i, a in zip(plan.nodes, plan.active) if a > 0]
        assert len(chosen) == 2 and len(set(np.asarray(plan.nodes).tolist())) == 3
        seen.update(chosen)
        weights = [len(ys[i]) if weighting == "samples" else 1.0 for i in chosen]
        dw, db = fedavg_delta(w0, b0, [(xs[i], ys[i]) for i in chosen], weights, 3, 0.2, 3)
        state, metrics = round_fn(state, data, hp)
        w1, b1 = _wb(state)
        np.testing.assert_allclose(w1, w0 + dw, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(b1, b0 + db, rtol=1e-11, atol=1e-12)
        assert float(metrics["participants"]) == 2
    assert len(seen) > 2, "the cohort should change between rounds"


def _custom_round(sim, state, data, hp, active, budget):
    k = sim.cohort_size
    plan = RoundPlan(nodes=jnp.arange(k, dtype=jnp.int32), active=jnp.asarray(active, jnp.float64),
                     step_budget=jnp.asarray(budget, jnp.int32))
    return sim.round_with_plan(state, data, plan, hp)


def test_inactive_node_contributes_nothing_and_budget_caps_steps(x64):
    data, xs, ys = make_data([4, 4, 4], seed=2)
    sim = _logreg_sim(data, steps=4)
    hp = sim.hparams({"client_lr": 0.1})
    state = sim.init(jax.random.PRNGKey(2), hp)
    w0, b0 = _wb(state)
    new, _ = _custom_round(sim, state, data, hp, active=[1, 0, 1], budget=[4, 4, 1])
    # node 0 runs 4 steps, node 2 only 1 (partial work), node 1 is absent
    w_ref, b_ref = w0.copy(), b0.copy()
    for i, steps in ((0, 4), (2, 1)):
        from references import local_gd
        wi, bi = local_gd(w0, b0, xs[i], ys[i], 3, 0.1, steps)
        w_ref, b_ref = w_ref + 0.5 * (wi - w0), b_ref + 0.5 * (bi - b0)
    np.testing.assert_allclose(_wb(new)[0], w_ref, rtol=1e-11, atol=1e-12)
    # the absent node's data is never read: poisoning it changes nothing
    poisoned = data.replace(train=data.train._replace(x=data.train.x.at[1].set(jnp.nan)))
    new2, _ = _custom_round(sim, state, poisoned, hp, active=[1, 0, 1], budget=[4, 4, 1])
    np.testing.assert_array_equal(_wb(new2)[0], _wb(new)[0])


def test_no_active_node_leaves_server_unchanged(x64):
    data, _, _ = make_data([4, 4], seed=3)
    sim = _logreg_sim(data, server="adam")
    hp = sim.hparams()
    state = sim.init(jax.random.PRNGKey(3), hp)
    new, metrics = _custom_round(sim, state, data, hp, active=[0, 0], budget=[1, 1])
    jax.tree_util.tree_map(np.testing.assert_array_equal, new.server, state.server)
    assert float(metrics["participants"]) == 0


@pytest.mark.parametrize("kind", ["adagrad", "adam", "yogi"])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_adaptive_server_optimizers_match_reddi_equations(x64, kind, bias_correction):
    rng = np.random.default_rng(4)
    x0 = rng.normal(size=7)
    deltas = [rng.normal(scale=s, size=7) for s in (0.5, 0.1, 1.0, 0.01, 0.3)]
    hp = {"server_lr": 0.05, "server_b1": 0.9, "server_b2": 0.99, "server_tau": 1e-3}
    opt = ej.algorithms.make_server_optimizer(kind, hp, bias_correction)
    x, state = jnp.asarray(x0), opt.init(jnp.asarray(x0))
    for d in deltas:
        updates, state = opt.update(-jnp.asarray(d), state, x)
        x = x + updates
    expected = reddi_server(kind, deltas, x0, 0.05, 0.9, 0.99, 1e-3, bias_correction)
    np.testing.assert_allclose(np.asarray(x), expected, rtol=1e-12, atol=1e-14)


def test_fedavgm_matches_momentum_reference(x64):
    rng = np.random.default_rng(5)
    x0, deltas = rng.normal(size=4), [rng.normal(size=4) for _ in range(4)]
    opt = ej.algorithms.make_server_optimizer("momentum", {"server_lr": 0.7, "server_momentum": 0.9})
    x, state = jnp.asarray(x0), opt.init(jnp.asarray(x0))
    for d in deltas:
        updates, state = opt.update(-jnp.asarray(d), state, x)
        x = x + updates
    np.testing.assert_allclose(np.asarray(x), momentum_server(deltas, x0, 0.7, 0.9), rtol=1e-12)


def test_fedyogi_rounds_end_to_end_match_reference(x64):
    data, xs, ys = make_data([5, 3, 6], seed=6)
    sim = _logreg_sim(data, steps=2, server="yogi")
    hp = sim.hparams({"client_lr": 0.1, "server_lr": 0.03})
    state = sim.init(jax.random.PRNGKey(6), hp)
    w0, b0 = _wb(state)
    x0 = np.concatenate([w0.ravel(), b0])
    w, b, deltas = w0, b0, []
    round_fn = jax.jit(sim.round)
    for _ in range(3):
        dw, db = fedavg_delta(w, b, list(zip(xs, ys)), [len(y) for y in ys], 3, 0.1, 2)
        deltas.append(np.concatenate([dw.ravel(), db]))
        x = reddi_server("yogi", deltas, x0, 0.03, 0.9, 0.99, 1e-3)
        w, b = x[: w0.size].reshape(w0.shape), x[w0.size:]
        state, _ = round_fn(state, data, hp)
        np.testing.assert_allclose(_wb(state)[0], w, rtol=1e-10, atol=1e-12)


def test_lax_map_groups_give_the_same_numbers_as_vmap(x64):
    data, _, _ = make_data([5, 3, 6, 2, 4], seed=7)
    results = []
    for group in (None, 2):
        model = ej.models.mlp(data.feature_shape, 3, hidden=(8,))
        local = ej.LocalTraining(batch_size=2, epochs=2, group_size=group, execution="per_node")
        sim = ej.Simulation(model, data, ej.FedAvg(), local, clients_per_round=4)
        assert sim.context.group_size == group
        results.append(sim.run(3, seed=0, eval_every=3).final_state.server.params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13), *results)


def test_a_server_optimizer_given_as_an_optax_factory_equals_the_named_one(x64):
    """``server_optimizer`` also takes ``hparams -> optax.GradientTransformation`` (fed -Delta), as the
    local optimizer does: heavy-ball momentum written by hand is FedAvgM."""
    import optax

    data, _, _ = make_data([6, 5, 7, 4], seed=12)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)

    def heavy_ball(h):
        return optax.sgd(h["server_lr"], momentum=0.9)

    finals = []
    for server in ("momentum", heavy_ball):
        sim = ej.Simulation(model, data, ej.FedAvg(server_optimizer=server), ej.LocalTraining(batch_size=4),
                            clients_per_round=3)
        hp = sim.hparams({"server_lr": 0.7})
        finals.append(sim.run(4, hparams=hp, eval_every=4))
    np.testing.assert_array_equal(finals[0].final_state.server.params["out"]["w"],
                                  finals[1].final_state.server.params["out"]["w"])
    assert finals[1].config["algorithm"]["server_optimizer"] == "heavy_ball"
    assert ej.FedAvg(server_optimizer=heavy_ball).name == "fedheavy_ball"
    with pytest.raises(ValueError, match="unknown server optimizer 'nesterov'.*or pass a callable"):
        ej.FedAvg(server_optimizer="nesterov")
