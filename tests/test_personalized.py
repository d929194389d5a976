"""Personalized FL (fine-tuning after FedAvg, Ditto, FedRep, APFL) against float64 NumPy references
of the papers' updates, and the personalized evaluation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from conftest import make_data
from references import apfl_node, ditto_personal, fedavg_delta, fedrep_node, local_gd, softmax

SIZES = [4, 6, 5]


def _sim(data, algorithm, model=None, **local):
    model = model or ej.models.logistic_regression(data.feature_shape, data.num_classes)
    local = {"batch_size": int(np.max(data.node_counts())), **local}
    if "epochs" not in local:
        local = {"steps": 2, "epochs": None, **local}
    return ej.Simulation(model, data, algorithm, ej.LocalTraining(**local))


def _wb(tree):
    return np.asarray(tree["out"]["w"]), np.asarray(tree["out"]["b"])


def _node(tree, i):
    return jax.tree_util.tree_map(lambda a: np.asarray(a[i]), tree)


def _plan(sim, active):
    return sim.make_plan(active=active)


def test_finetune_is_fedavg_then_k_local_steps_from_the_new_global_model(x64):
    data, xs, ys = make_data(SIZES, seed=3)
    sim = _sim(data, ej.algorithms.FineTuned(finetune_steps=2), steps=3)
    hp = sim.hparams({"client_lr": 0.3})
    state = sim.init(jax.random.PRNGKey(0), hp)
    w0, b0 = _wb(state.server.params)
    state, metrics = jax.jit(sim.round)(state, data, hp)
    dw, db = fedavg_delta(w0, b0, list(zip(xs, ys)), SIZES, 3, 0.3, 3)
    w1, b1 = _wb(state.server.params)
    np.testing.assert_allclose(w1, w0 + dw, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(b1, b0 + db, rtol=1e-11, atol=1e-12)
    for i in range(3):
        vw, vb = local_gd(w1, b1, xs[i], ys[i], 3, 0.3, 2)
        got = _wb(_node(state.nodes.params, i))
        np.testing.assert_allclose(got[0], vw, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(got[1], vb, rtol=1e-11, atol=1e-12)
    assert ej.get_algorithm("finetune", finetune_steps=2) == ej.algorithms.FineTuned(finetune_steps=2)
    assert "own_accuracy_mean" in jax.jit(sim.evaluate)(state, data)


def test_ditto_matches_algorithm_1(x64):
    data, xs, ys = make_data(SIZES, seed=4)
    sim = _sim(data, ej.algorithms.Ditto())
    hp = sim.hparams({"client_lr": 0.2, "ditto_lambda": 0.7})
    state = sim.init(jax.random.PRNGKey(1), hp)
    w = _wb(state.server.params)
    v = [w for _ in SIZES]
    step = jax.jit(sim.round_with_plan)
    for active in ([1, 1, 1], [1, 0, 1]):
        state, metrics = step(state, data, _plan(sim, active), hp)
        on = [i for i, a in enumerate(active) if a]
        dw, db = fedavg_delta(*w, [(xs[i], ys[i]) for i in on], [SIZES[i] for i in on], 3, 0.2, 2)
        v = [ditto_personal(v[i], w, xs[i], ys[i], 3, 0.2, 0.7, 2) if a else v[i] for i, a in enumerate(active)]
        w = (w[0] + dw, w[1] + db)
        for got, want in zip(_wb(state.server.params), w):
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
        for i in range(3):
            for got, want in zip(_wb(_node(state.nodes.params, i)), v[i]):
                np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
        assert np.isfinite(float(metrics["personal_loss"]))
    assert isinstance(ej.get_algorithm("ditto"), ej.algorithms.Ditto)


def test_fedrep_matches_algorithm_1(x64):
    data, xs, ys = make_data(SIZES, seed=5)
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(4,))
    algorithm = ej.get_algorithm("fedrep", model=model, head=("dense_1",), head_epochs=2)
    sim = _sim(data, algorithm, model, epochs=1)          # batch = the largest node: 1 step an epoch
    hp = sim.hparams({"client_lr": 0.3})
    state = sim.init(jax.random.PRNGKey(2), hp)

    def layers(tree, i=None):
        t = tree if i is None else _node(tree, i)
        return [np.asarray(t[k][p]) for k in ("dense_0", "dense_1") for p in ("w", "b")]

    g = layers(state.server.params)
    body, heads = g[:2], [g[2:] for _ in SIZES]
    step = jax.jit(sim.round_with_plan)
    for active in ([1, 1, 1], [0, 1, 1]):
        state, _ = step(state, data, _plan(sim, active), hp)
        on = [i for i, a in enumerate(active) if a]
        p = np.array([SIZES[i] for i in on], float) / sum(SIZES[i] for i in on)
        trained = {i: fedrep_node(body, heads[i], xs[i], ys[i], 3, 0.3, 2, 1) for i in on}
        body = [b + sum(pi * (trained[i][0][j] - b) for pi, i in zip(p, on)) for j, b in enumerate(body)]
        heads = [trained[i][1] if i in trained else heads[i] for i in range(3)]
        mean_head = [sum(pi * trained[i][1][j] for pi, i in zip(p, on)) for j in range(2)]
        for got, want in zip(layers(state.server.params), [*body, *mean_head]):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        _, personal = sim.algorithm.eval_models(state)
        for i in range(3):
            for got, want in zip(layers(personal, i), [*body, *heads[i]]):
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    body_bytes = sum(a.size * 8 for a in g[:2])
    assert sim.payload.up == body_bytes and sim.payload.down == body_bytes
    with pytest.raises(ValueError, match="some, not all"):
        ej.algorithms.FedRep(model, head=("dense_0", "dense_1"))


@pytest.mark.parametrize("adaptive", [False, True])
def test_apfl_matches_algorithm_1(x64, adaptive):
    data, xs, ys = make_data(SIZES, seed=6)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    sim = _sim(data, ej.algorithms.APFL(model, adaptive=adaptive), model, steps=3)
    hp = sim.hparams({"client_lr": 0.25, "apfl_alpha": 0.3, **({"apfl_alpha_lr": 0.5} if adaptive else {})})
    state = sim.init(jax.random.PRNGKey(3), hp)
    w = _wb(state.server.params)
    v, alpha = [w for _ in SIZES], [0.3 for _ in SIZES]
    step = jax.jit(sim.round_with_plan)
    for active in ([1, 1, 1], [1, 1, 0]):
        state, _ = step(state, data, _plan(sim, active), hp)
        on = [i for i, a in enumerate(active) if a]
        p = np.array([SIZES[i] for i in on], float) / sum(SIZES[i] for i in on)
        out = {i: apfl_node(w, v[i], alpha[i], xs[i], ys[i], 3, 0.25, 3, 0.5 if adaptive else None) for i in on}
        w = tuple(wj + sum(pi * (out[i][0][j] - wj) for pi, i in zip(p, on)) for j, wj in enumerate(w))
        v = [out[i][1] if i in out else v[i] for i in range(3)]
        alpha = [out[i][2] if i in out else alpha[i] for i in range(3)]
        for got, want in zip(_wb(state.server.params), w):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(state.nodes.extra.alpha), alpha, rtol=1e-10, atol=1e-12)
        _, personal = sim.algorithm.eval_models(state)
        for i in range(3):
            mixed = [alpha[i] * vj + (1 - alpha[i]) * wj for vj, wj in zip(v[i], w)]
            for got, want in zip(_wb(_node(personal, i)), mixed):
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if adaptive:
        assert not np.allclose(alpha, 0.3)
    else:
        assert np.allclose(alpha, 0.3)


def test_personalized_report_mean_worst10_and_spread(x64):
    data, xs, ys = make_data([3] * 10, seed=7, local_test=3)
    sim = _sim(data, ej.algorithms.Ditto())
    hp = sim.hparams({"client_lr": 0.5, "ditto_lambda": 0.01})
    state = sim.init(jax.random.PRNGKey(4), hp)
    state, _ = jax.jit(sim.run_rounds, static_argnums=3)(state, data, hp, 3)
    report = ej.algorithms.personalized_report(sim, state)
    lt = data.local_test
    own, glob = [], []
    for i in range(10):
        x, y = np.asarray(lt.x[i, :3]), np.asarray(lt.y[i, :3])
        vw, vb = _wb(_node(state.nodes.params, i))
        own.append(np.mean(np.argmax(softmax(x @ vw + vb), 1) == y))
        gw, gb = _wb(state.server.params)
        glob.append(np.mean(np.argmax(x @ gw + gb, 1) == y))
    for prefix, values in (("personal", np.array(own)), ("global", np.array(glob))):
        np.testing.assert_allclose(np.asarray(report[f"{prefix}_nodes"]), values)
        assert float(report[f"{prefix}_mean"]) == pytest.approx(values.mean())
        assert float(report[f"{prefix}_worst10"]) == pytest.approx(np.sort(values)[0])   # ceil(10% of 10) = 1 node
        assert float(report[f"{prefix}_p10"]) == pytest.approx(np.percentile(values, 10))
        assert float(report[f"{prefix}_std"]) == pytest.approx(values.std())
    metrics = jax.jit(sim.evaluate)(state, data)   # every evaluation has the same distribution columns
    for prefix, values in (("own_accuracy", np.array(own)), ("node_accuracy", np.array(glob))):
        assert float(metrics[f"{prefix}_mean"]) == pytest.approx(values.mean())
        assert float(metrics[f"{prefix}_worst10"]) == pytest.approx(np.sort(values)[0])
        assert float(metrics[f"{prefix}_std"]) == pytest.approx(values.std())
    fedavg = ej.Simulation(sim.model, data, ej.FedAvg(), sim.local)   # no per-node models: the baseline only
    fedavg_state = fedavg.init(jax.random.PRNGKey(0), fedavg.hparams())
    baseline = ej.algorithms.personalized_report(fedavg, fedavg_state)
    assert not any(key.startswith("personal") for key in baseline)
    gw, gb = _wb(fedavg_state.server.params)
    expected = [np.mean(np.argmax(np.asarray(lt.x[i, :3]) @ gw + gb, 1) == np.asarray(lt.y[i, :3])) for i in range(10)]
    np.testing.assert_allclose(np.asarray(baseline["global_nodes"]), expected)


def test_worst_mean_skips_nodes_without_a_split():
    from edgejax.core.evaluate import worst_mean

    values = jnp.array([0.9, jnp.nan, 0.2, 0.5, jnp.nan, 0.7, 0.1, 0.8, 0.6, 0.3, 0.4, jnp.nan])
    assert float(worst_mean(values)) == pytest.approx((0.1 + 0.2) / 2)   # ceil(10% of 12) = 2 nodes
    assert float(worst_mean(jnp.array([jnp.nan, 0.4, jnp.nan]), 1.0)) == pytest.approx(0.4)   # fewer valid: all


def test_personalization_helps_on_label_skewed_nodes():
    """Ditto's and FedRep's personal models beat the global model on strongly skewed nodes."""
    dataset = ej.data.load_digits()
    data, _ = ej.federate(dataset, 10, ej.data.Shards(2), seed=0)
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(32,))
    local = ej.LocalTraining(batch_size=10, epochs=1)
    for algorithm, extra in ((ej.algorithms.Ditto(), {"ditto_lambda": 0.05}),
                             (ej.algorithms.FedRep(model, head=("dense_1",), head_epochs=2), {})):
        sim = ej.Simulation(model, data, algorithm, local)
        hp = sim.hparams({"client_lr": 0.1, **extra})
        state = sim.init(jax.random.PRNGKey(0), hp)
        state, _ = jax.jit(sim.run_rounds, static_argnums=3)(state, data, hp, 8)
        report = ej.algorithms.personalized_report(sim, state)
        assert float(report["personal_mean"]) > float(report["global_mean"]), algorithm.name
        assert float(report["personal_mean"]) > 0.85, algorithm.name
