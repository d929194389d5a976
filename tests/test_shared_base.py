"""The shared_base execution against per_node: same batches, same numbers, no per-node weights."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.core.execution import SharedBase, resolve_execution
from edgejax.core.shared_base import make_shared_base_delta
from edgejax.core.state import RoundPlan
from conftest import make_data

SIZES = [5, 3, 9, 2, 7, 4]  # unequal, non-IID (random labels per node)


def _model(kind, data, activation="relu"):
    if kind == "logreg":
        return ej.models.logistic_regression(data.feature_shape, data.num_classes)
    return ej.models.mlp(data.feature_shape, data.num_classes, hidden=(6, 4), activation=activation)


def _pair(model, data, algorithm=None, cohort=None, **local):
    """The same simulation under per_node and shared_base."""
    algorithm = algorithm or ej.FedAvg()
    sims = []
    for execution in ("per_node", "shared_base"):
        spec = ej.LocalTraining(execution=execution, **local)
        sims.append(ej.Simulation(model, data, algorithm, spec, clients_per_round=cohort))
    return sims


def _assert_trees_close(a, b, tol):
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=tol, atol=tol), a, b)


def _run_rounds(sim, data, hp, rounds, seed=0):
    state = sim.init(jax.random.PRNGKey(seed), hp)
    round_fn = jax.jit(sim.round)
    metrics = []
    for _ in range(rounds):
        state, m = round_fn(state, data, hp)
        metrics.append(m)
    return state, metrics


CASES = [
    # model, activation, local-training options, server optimizer
    ("logreg", "relu", dict(batch_size=3, epochs=2), "sgd"),
    ("mlp", "tanh", dict(batch_size=3, epochs=2, optimizer="nesterov"), "adam"),
    ("mlp-fedprox", "relu", dict(batch_size=3, epochs=2), "sgd"),   # FedProx's proximal term, mu = 0.8
    ("logreg", "relu", dict(batch_size=3, epochs=2, weight_decay=True), "yogi"),            # lambda = 0.2
    ("mlp-fedprox", "tanh", dict(batch_size=2, steps=5, weight_decay=True), "sgd"),        # both decays
]


@pytest.mark.parametrize("kind, activation, local, server", CASES)
def test_shared_base_equals_per_node_float64(x64, kind, activation, local, server):
    data, _, _ = make_data(SIZES, dim=5, num_classes=3, seed=1)
    prox = kind.endswith("fedprox")
    model = _model(kind.split("-")[0], data, activation)
    sims = _pair(model, data, ej.FedAvg(server_optimizer=server, prox=prox), cohort=4, **local)
    assert [sim.execution for sim in sims] == ["per_node", "shared_base"]
    assert isinstance(sims[1].context.execution, SharedBase) and not isinstance(sims[0].context.execution, SharedBase)
    hp_over = {"client_lr": 0.3, "clients_per_round": 3}  # partial participation: 3 of a cohort of 4
    if prox:
        hp_over["mu"] = 0.8
    if local.get("weight_decay"):
        hp_over["client_weight_decay"] = 0.2
    if server != "sgd":
        hp_over["server_lr"] = 0.1
    results = []
    for sim in sims:
        hp = sim.hparams(hp_over)
        results.append(_run_rounds(sim, data, hp, rounds=4))
    (s_ref, m_ref), (s_sb, m_sb) = results
    _assert_trees_close(s_sb.server, s_ref.server, 1e-10)
    assert not np.allclose(np.asarray(jax.tree_util.tree_leaves(s_ref.server.params)[0]),
                           np.asarray(jax.tree_util.tree_leaves(sims[0].init(jax.random.PRNGKey(0), hp).server.params)[0]))
    for a, b in zip(m_ref, m_sb):
        _assert_trees_close(a, b, 1e-10)


def test_step_budgets_absent_nodes_and_nan_data(x64):
    data, _, _ = make_data([6, 4, 7, 5], seed=2)
    model = _model("mlp", data)
    sims = _pair(model, data, ej.FedAvg(server_optimizer="yogi"), batch_size=2, epochs=2, optimizer="momentum")
    plan = RoundPlan(nodes=jnp.arange(4, dtype=jnp.int32), active=jnp.asarray([1.0, 0.0, 1.0, 1.0]),
                     step_budget=jnp.asarray([8, 8, 1, 3], jnp.int32))
    poisoned = data.replace(train=data.train._replace(x=data.train.x.at[1].set(jnp.nan)))
    outs = []
    for sim in sims:
        hp = sim.hparams({"client_lr": 0.2})
        state = sim.init(jax.random.PRNGKey(3), hp)
        round_fn = jax.jit(lambda st, d, pl: sim.round_with_plan(st, d, pl, hp))
        for _ in range(2):
            state, metrics = round_fn(state, data, plan)
        clean = state
        bad, bad_metrics = round_fn(state, poisoned, plan)
        good, good_metrics = round_fn(state, data, plan)
        jax.tree_util.tree_map(np.testing.assert_array_equal, bad.server, good.server)
        assert np.isfinite(float(bad_metrics["train_loss"]))
        assert float(good_metrics["local_steps"]) == 6 + 1 + 3  # budgets cap nodes 0 (6 steps), 2, 3
        outs.append((clean, good, good_metrics))
    _assert_trees_close(outs[0][0].server, outs[1][0].server, 1e-10)
    _assert_trees_close(outs[0][1].server, outs[1][1].server, 1e-10)
    _assert_trees_close(outs[0][2], outs[1][2], 1e-10)


def test_node_metrics_match_per_node_in_both_first_layer_forms(x64):
    data, _, _ = make_data(SIZES, seed=4)
    model = _model("mlp", data, "tanh")
    sim = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=4, epochs=2))
    hp = sim.hparams({"client_lr": 0.3})
    x = sim.init(jax.random.PRNGKey(0), hp).server.params
    keys = jax.random.split(jax.random.PRNGKey(5), len(SIZES))
    budget = jnp.asarray([10, 1, 10, 0, 2, 10], jnp.int32)
    p = jnp.asarray([0.2, 0.2, 0.2, 0.0, 0.2, 0.2])
    ref = jax.jit(sim.context.execution.delta)(x, data.train, keys, budget, p, hp)
    for sample_space in (True, False):  # first-layer history as sample slots or as inputs
        fn = make_shared_base_delta(model, sim.local, *sim.schedule, sample_space=sample_space)
        _assert_trees_close(jax.jit(fn)(x, data.train, keys, budget, p, hp), ref, 1e-11)
    np.testing.assert_array_equal(np.asarray(ref[2]), [4, 1, 6, 0, 2, 2])


def test_float32_agrees():
    data, _, _ = make_data(SIZES, seed=6, dtype=np.float32)
    model = _model("mlp", data)
    results = []
    for sim in _pair(model, data, ej.FedAvg(server_optimizer="adam"), cohort=4, batch_size=3, epochs=2):
        hp = sim.hparams({"client_lr": 0.2, "server_lr": 0.05})
        results.append(_run_rounds(sim, data, hp, rounds=5, seed=1))
    (s_ref, m_ref), (s_sb, m_sb) = results
    assert jax.tree_util.tree_leaves(s_sb.server.params)[0].dtype == jnp.float32
    _assert_trees_close(s_ref.server.params, s_sb.server.params, 1e-5)
    for a, b in zip(m_ref, m_sb):
        _assert_trees_close(a, b, 1e-5)


def test_auto_picks_by_model_and_optimizer():
    data, _, _ = make_data([8, 8], dim=64, num_classes=10, seed=7)
    mlp = ej.models.mlp(data.feature_shape, 10, hidden=(32,))
    sgd = ej.LocalTraining(batch_size=4, epochs=1, execution="auto")
    assert resolve_execution(mlp, sgd, max_steps=2) == "shared_base"
    for opt in ("momentum", "nesterov"):
        assert resolve_execution(mlp, dataclasses.replace(sgd, optimizer=opt), 2) == "shared_base"
    assert resolve_execution(mlp, dataclasses.replace(sgd, optimizer="adam"), 2) == "per_node"
    assert resolve_execution(mlp, dataclasses.replace(sgd, optimizer=lambda h: None), 2) == "per_node"
    assert resolve_execution(mlp, dataclasses.replace(sgd, execution="per_node"), 2) == "per_node"
    # a factor history larger than the weights is not cheaper: auto keeps per_node
    assert resolve_execution(mlp, sgd, max_steps=100) == "per_node"
    cnn = ej.models.cnn((8, 8, 1), 10)
    assert cnn.layers is None
    assert resolve_execution(cnn, sgd, 2) == "per_node"
    sim = ej.Simulation(mlp, data, ej.FedAvg(), sgd)
    assert sim.execution == "shared_base" and isinstance(sim.context.execution, SharedBase)
    # algorithms whose local terms or outputs shared_base cannot serve fall back to per_node under auto
    for algorithm in (ej.SCAFFOLD(), ej.FedDyn(), ej.FedAvg(keep_local_optimizer=True)):
        assert ej.Simulation(mlp, data, algorithm, sgd).execution == "per_node"
    assert ej.Simulation(mlp, data, ej.get_algorithm("fedprox"), sgd).execution == "shared_base"


def test_explicit_shared_base_that_cannot_be_exact_raises():
    data, _, _ = make_data([8, 8], dim=5, seed=8)
    mlp = ej.models.mlp(data.feature_shape, 3, hidden=(4,))
    adam = ej.LocalTraining(batch_size=4, optimizer="adam", execution="shared_base")
    with pytest.raises(ValueError, match="'adam' is not SGD-family"):
        ej.Simulation(mlp, data, ej.FedAvg(), adam).context
    custom = ej.LocalTraining(batch_size=4, optimizer=lambda h: None, execution="shared_base")
    with pytest.raises(ValueError, match="callable"):
        resolve_execution(mlp, custom, 2)
    cnn = ej.models.cnn((8, 8, 1), 3)
    with pytest.raises(ValueError, match="not a stack of dense layers"):
        resolve_execution(cnn, ej.LocalTraining(batch_size=4, execution="shared_base"), 2)
    with pytest.raises(ValueError, match="unknown execution"):
        ej.LocalTraining(execution="fast")
    momentum = ej.LocalTraining(batch_size=4, optimizer="momentum", execution="shared_base")
    with pytest.raises(ValueError, match="proximal pulls are supported with local 'sgd' only"):
        ej.Simulation(mlp, data, ej.get_algorithm("fedprox"), momentum).context
    explicit = ej.LocalTraining(batch_size=4, execution="shared_base")
    for algorithm, reason in ((ej.SCAFFOLD(), "reads every node's trained model"),
                              (ej.FedDyn(), "reads every node's trained model"),
                              (ej.DPSGD(), "starts from its own model")):
        with pytest.raises(ValueError, match=reason):
            ej.Simulation(mlp, data, algorithm, explicit).context
    with pytest.raises(ValueError, match="skips biases"):
        ej.Simulation(mlp, data, ej.FedAvg(), dataclasses.replace(explicit, weight_decay="weights")).context
