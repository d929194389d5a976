"""The round loop: one compilation per run, determinism, divergence handling, results, bad input."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import edgejax as ej
from conftest import make_data


def _sim(data, *, cohort=3, **local):
    local = {"batch_size": 2, "epochs": 1, **local}
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(8,))
    return ej.Simulation(model, data, ej.FedAvg(server_optimizer="adam"), ej.LocalTraining(**local),
                         clients_per_round=cohort)


@pytest.fixture(scope="module")
def data():
    return make_data([5, 3, 6, 2, 4, 7], dtype=np.float32, seed=11)[0]


def test_init_has_the_bits_of_a_plain_jitted_init(data):
    """The init program's compiler options (no fusion emitters on a CPU) change no bit."""
    sim = _sim(data)
    hp, key = sim.hparams(), jax.random.PRNGKey(3)
    same = jax.tree_util.tree_map(lambda a, b: np.array_equal(a, b, equal_nan=True),
                                  sim._jit_init(key, hp), jax.jit(sim.init)(key, hp))
    assert jax.tree_util.tree_all(same)


@pytest.mark.parametrize("execution", ["per_node", "shared_base"])
def test_a_fast_compiled_run_trains_the_same_bits_as_an_optimized_one(data, execution):
    """compile="fast" (no fusion emitters on a CPU) changes the compile, not the training: every
    round's metrics are the same bits; an evaluation's mean may differ in its last bit."""
    sim = _sim(data, execution=execution)
    fast, optimized = (sim.run(6, seed=2, eval_every=3, compile=c).to_dataframe() for c in ("fast", "optimized"))
    assert sim.chunk_program(6, "fast") is not sim.chunk_program(6, "optimized")
    evaluated = [c for c in fast.columns if c.startswith("test_")]
    assert evaluated
    pd.testing.assert_frame_equal(fast.drop(columns=evaluated), optimized.drop(columns=evaluated), check_exact=True)
    pd.testing.assert_frame_equal(fast[evaluated], optimized[evaluated], check_exact=False, rtol=1e-6)


def test_auto_compile_is_fast_only_for_a_small_run(data):
    sim = _sim(data)
    per_round = sim.training_flops(1)
    assert per_round == 6.0 * sum(p.size for p in jax.tree_util.tree_leaves(sim.params_shape)) * 2 * \
        sim.schedule[0] * 3
    small = int(ej.core.simulation.FAST_COMPILE_MAX_FLOPS // per_round)   # the most rounds still under the bound
    large = small + 1
    assert sim.chunk_program(small, "auto") is sim.chunk_program(small, "fast")
    assert sim.chunk_program(large, "auto") is sim.chunk_program(large, "optimized")
    with pytest.raises(ValueError, match="compile.*'quick'"):
        sim.run(2, compile="quick")


def test_a_run_traces_the_algorithms_round_once(data):
    sim = _sim(data)
    algorithm, calls = sim.algorithm, []
    original = type(algorithm).round

    def counting(*args, **kwargs):
        calls.append(1)
        return original(algorithm, *args, **kwargs)

    object.__setattr__(algorithm, "round", counting)
    sim.run(12, eval_every=5)
    assert len(calls) == 1


def test_run_compiles_the_round_chunk_once(data):
    sim = _sim(data)
    traces = []
    original = sim.run_rounds

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    object.__setattr__(sim, "run_rounds", counting)
    results = sim.run(25, eval_every=10)  # chunks of 10, 10 and a shorter 5
    assert len(traces) == 1
    assert results.num_rounds == 25
    assert list(results.evals["round"]) == [0, 10, 20, 25]
    assert list(results.rounds["round"]) == list(range(1, 26))


def test_same_seed_same_numbers_other_seed_differs(data):
    frames = [_sim(data).run(6, seed=s, eval_every=3).to_dataframe() for s in (4, 4, 5)]
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert not np.allclose(frames[0]["train_loss"].dropna(), frames[2]["train_loss"].dropna())


def test_participation_count_is_a_traced_hyperparameter(data):
    sim = _sim(data, cohort=4)
    results = sim.run(4, hparams={"clients_per_round": 2}, eval_every=4)
    assert np.all(results.rounds["participants"] == 2)
    assert np.all(results.rounds["bytes_up"] == 2 * sim.context.model_bytes)


def test_local_steps_follow_epochs_and_batch_size(data):
    sim = _sim(data, cohort=None, batch_size=2, epochs=3)
    results = sim.run(1, hparams={"clients_per_round": 6}, eval_every=1)
    counts = np.asarray(data.train.count)
    assert results.rounds["local_steps"][0] == np.sum(3 * np.ceil(counts / 2))


def test_divergence_stops_with_the_round_named_and_keeps_finished_rounds(data, tmp_path):
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(8,))
    sim = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=2))
    # round 1 trains from a sane model; its huge server step makes round 2's loss overflow
    with pytest.raises(ej.DivergenceError, match="at round 2") as info:
        sim.run(12, hparams={"server_lr": 1e30}, eval_every=1, out_dir=tmp_path)
    bad_round = info.value.round
    assert bad_round == 2
    kept = info.value.results
    assert kept.num_rounds == bad_round - 1
    assert np.all(np.isfinite(kept.rounds["train_loss"]))
    assert kept.status.startswith("diverged")
    on_disk = pd.read_csv(tmp_path / "metrics.csv")
    assert list(on_disk["round"]) == [0, 1]
    assert np.isfinite(on_disk["test_accuracy"]).all()
    assert json.loads((tmp_path / "run.json").read_text())["status"].startswith("diverged")


def test_results_files_hold_config_versions_and_metrics(data, tmp_path):
    results = _sim(data).run(4, seed=3, eval_every=2, out_dir=tmp_path)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["config"]["seed"] == 3 and info["config"]["num_nodes"] == 6
    assert info["config"]["algorithm"]["name"] == "fedadam"
    assert info["versions"]["jax"] == jax.__version__ and info["device"]
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert list(table["round"]) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(table["test_accuracy"].dropna(), results.evals["test_accuracy"], rtol=1e-6)
    assert {"node_accuracy_mean", "node_accuracy_p10", "train_loss", "bytes_up"} <= set(table.columns)


def test_node_accuracy_summary_matches_a_direct_computation(data):
    sim = _sim(data)
    state = sim.init(jax.random.PRNGKey(0), sim.hparams())
    metrics = sim.evaluate(state, data)
    params = state.server.params
    local = data.local_test
    accs = []
    for i in range(data.num_nodes):
        n = int(local.count[i])
        pred = np.argmax(sim.model.apply(params, local.x[i, :n]), axis=-1)
        accs.append(np.mean(pred == np.asarray(local.y[i, :n])))
    assert float(metrics["node_accuracy_mean"]) == pytest.approx(np.mean(accs), abs=1e-6)
    assert float(metrics["node_accuracy_min"]) == pytest.approx(np.min(accs), abs=1e-6)
    assert float(metrics["node_accuracy_p50"]) == pytest.approx(np.percentile(accs, 50), abs=1e-6)


@pytest.mark.parametrize("make, match", [
    (lambda d: _sim(d, cohort=7), "clients_per_round=7"),
    (lambda d: _sim(d, cohort=0), "clients_per_round=0"),
    (lambda d: ej.Simulation(ej.models.mlp((4,), 3), d, ej.FedAvg()), r"\(4,\)"),
    (lambda d: ej.Simulation(ej.models.mlp(d.feature_shape, 4), d, ej.FedAvg()), "4 classes"),
    (lambda d: _sim(d).hparams({"client_lrr": 0.1}), "client_lrr"),
    (lambda d: _sim(d).hparams({"clients_per_round": 9}), "clients_per_round=9"),
    (lambda d: _sim(d).hparams({"client_lr": float("nan")}), "client_lr=nan"),
    (lambda d: _sim(d).run(0), "rounds"),
    (lambda d: ej.LocalTraining(epochs=2, steps=3), "epochs=2, steps=3"),
    (lambda d: ej.LocalTraining(optimizer="lbfgs"), "lbfgs"),
    (lambda d: ej.LocalTraining(batch_size=0), "batch_size"),
    (lambda d: ej.FedAvg(server_optimizer="adamw"), "adamw"),
    (lambda d: ej.get_algorithm("fedsgd"), "fedsgd"),
    (lambda d: ej.models.get_model("resnet", (4,), 3), "resnet"),
])
def test_bad_input_is_a_clear_error_before_compute(data, make, match):
    with pytest.raises(ValueError, match=match):
        make(data)


def test_more_nodes_than_samples_is_rejected():
    ds = ej.data.from_arrays(np.zeros((10, 3), np.float32), np.arange(10) % 2, test_fraction=0.2)
    with pytest.raises(ValueError, match="num_nodes=50"):
        ej.federate(ds, 50, ej.data.IID())


def test_a_sweep_of_points_equals_separate_runs(data):
    sim = _sim(data)
    points = {"client_lr": [0.02, 0.3], "clients_per_round": [3, 2]}
    res = sim.sweep(4, points, seeds=[0, 1], eval_every=4, strategy="vmap")
    assert res.runs == [(0, 0), (0, 1), (1, 0), (1, 1)] and res.rounds["train_loss"].shape == (4, 4)
    for r, (p, seed) in enumerate(res.runs):
        single = sim.run(4, seed=seed, hparams={k: v[p] for k, v in points.items()}, eval_every=4)
        np.testing.assert_allclose(res.rounds["train_loss"][r], single.rounds["train_loss"], rtol=2e-5, atol=1e-6)
        assert float(res.evals["test_accuracy"][r, -1]) == pytest.approx(single.evals["test_accuracy"][-1], abs=1e-6)


def test_a_run_can_start_from_given_global_and_per_node_models():
    """``init(params=...)`` starts every algorithm from a given model; ``node_params=`` gives each
    node its own (decentralized training), equal to editing the state by hand; the rest refuse it."""
    data, _, _ = make_data([5] * 4, seed=21, dtype=np.float32)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    rng = np.random.default_rng(0)
    one = {"out": {"w": rng.normal(size=(5, 3)).astype(np.float32), "b": np.ones(3, np.float32)}}
    nodes = {"out": {"w": rng.normal(size=(4, 5, 3)).astype(np.float32), "b": np.zeros((4, 3), np.float32)}}
    fedavg = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=5))
    state = fedavg.init(jax.random.PRNGKey(0), fedavg.hparams(), params=one)
    np.testing.assert_array_equal(state.server.params["out"]["w"], one["out"]["w"])
    with pytest.raises(ValueError, match="fedavg keeps no per-node models"):
        fedavg.init(jax.random.PRNGKey(0), fedavg.hparams(), node_params=nodes)
    with pytest.raises(ValueError, match=r"params must have the model's parameters with shapes .*\(5, 3\)"):
        fedavg.init(jax.random.PRNGKey(0), fedavg.hparams(), params={"out": {"w": np.zeros((3, 5)), "b": np.zeros(3)}})
    gossip = ej.Simulation(model, data, ej.DPSGD(ej.Topology("ring")), ej.LocalTraining(batch_size=5, steps=1))
    hp = gossip.hparams()
    given = gossip.init(jax.random.PRNGKey(0), hp, node_params=nodes)
    by_hand = gossip.init(jax.random.PRNGKey(0), hp)
    by_hand = by_hand._replace(nodes=by_hand.nodes._replace(params=jax.tree_util.tree_map(jnp.asarray, nodes)))
    a, b = (jax.jit(gossip.round)(s, data, hp)[0].nodes.params["out"]["w"] for s in (given, by_hand))
    np.testing.assert_array_equal(a, b)


def _numpy_fedavg_round(server, xs, ys, nodes, slots, weights, runs, lr):
    """A float64 NumPy FedAvg round of logistic regression: node ``nodes[k]`` runs ``runs[k]``
    plain SGD steps, step t on rows ``slots[k, t]`` with loss weights ``weights[k, t]``; the
    sample-weighted mean of the trained models."""
    w0, b0 = (np.asarray(server["out"][k]) for k in ("w", "b"))
    total_w, total_b, total_n = 0.0, 0.0, 0
    for k, node in enumerate(nodes):
        x, y, n = xs[node], ys[node], len(xs[node])
        w, b = w0.copy(), b0.copy()
        for t in range(runs[k]):
            rows, wt = np.minimum(slots[k, t], n - 1), weights[k, t]
            logits = x[rows] @ w + b
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(rows)), y[rows]] -= 1
            g = wt[:, None] * p / wt.sum()
            w, b = w - lr * x[rows].T @ g, b - lr * g.sum(axis=0)
        total_w, total_b, total_n = total_w + n * w, total_b + n * b, total_n + n
    return total_w / total_n, total_b / total_n


def _planned_sim(execution="auto"):
    data, xs, ys = make_data([5, 3, 6, 2, 4, 7], seed=4)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    sim = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=2, epochs=2, execution=execution),
                        clients_per_round=3)
    hp = sim.hparams({"client_lr": 0.3})
    state = sim.init(jax.random.PRNGKey(1), hp)
    state, _ = jax.jit(sim.round)(state, sim.data, hp)   # at round 1 the keys fold in 1
    return sim, hp, state, xs, ys


def test_minibatches_are_the_ones_local_training_uses(x64):
    """``Simulation.minibatches`` gives the slots every cohort node trains on: a float64 NumPy
    FedAvg round (plain SGD on exactly those rows, sample-weighted mean) equals the round."""
    sim, hp, state, xs, ys = _planned_sim()
    plan = sim.make_plan(nodes=[5, 1, 3], step_budget=[7, 4, 3])
    slots, weights = (np.asarray(a) for a in sim.minibatches(state, plan))
    assert slots.shape == weights.shape == (3, sim.schedule[0], 2)
    new, _ = jax.jit(sim.round_with_plan)(state, sim.data, plan, hp)
    runs = []
    for k, node in enumerate([5, 1, 3]):
        n = len(xs[node])
        runs.append(min(2 * -(-n // 2), int(plan.step_budget[k])))
        assert sorted(slots[k, :-(-n // 2)][weights[k, :-(-n // 2)] > 0].tolist()) == list(range(n))  # an epoch
    w, b = _numpy_fedavg_round(state.server.params, xs, ys, [5, 1, 3], slots, weights, runs, 0.3)
    np.testing.assert_allclose(np.asarray(new.server.params["out"]["w"]), w, rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.asarray(new.server.params["out"]["b"]), b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("execution", ["per_node", "shared_base"])
def test_a_plan_can_carry_its_own_minibatches(x64, execution):
    """``make_plan(minibatches=(slots, weights))``: the cohort trains on exactly those rows with
    those loss weights (a float64 NumPy FedAvg round, repeated and partial batches included);
    giving back ``Simulation.minibatches``' own draws reproduces the drawn round bit for bit."""
    sim, hp, state, xs, ys = _planned_sim(execution)
    nodes, budget = [5, 1, 3], [7, 4, 3]
    steps = sim.schedule[0]
    rng = np.random.default_rng(8)
    counts = [len(xs[i]) for i in nodes]
    slots = np.stack([rng.integers(0, n, size=(steps, 2)) for n in counts]).astype(np.int32)
    weights = rng.uniform(0.5, 2.0, size=slots.shape)
    weights[0, 1, 1] = 0.0                      # a partial batch: its slot is then free
    slots[0, 1, 1] = 99
    plan = sim.make_plan(nodes=nodes, step_budget=budget, minibatches=(slots, weights))
    np.testing.assert_array_equal(np.asarray(sim.minibatches(state, plan)[0]), np.minimum(slots, 6))
    new, _ = jax.jit(sim.round_with_plan)(state, sim.data, plan, hp)
    runs = [min(2 * -(-n // 2), b) for n, b in zip(counts, budget)]
    w, b = _numpy_fedavg_round(state.server.params, xs, ys, nodes, slots, weights, runs, 0.3)
    np.testing.assert_allclose(np.asarray(new.server.params["out"]["w"]), w, rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.asarray(new.server.params["out"]["b"]), b, rtol=0, atol=1e-13)

    drawn = sim.make_plan(nodes=nodes, step_budget=budget)
    given = sim.make_plan(nodes=nodes, step_budget=budget, minibatches=sim.minibatches(state, drawn))
    a, b = (jax.jit(sim.round_with_plan)(state, sim.data, p, hp)[0].server.params for p in (drawn, given))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bad_explicit_minibatches_are_named():
    sim, _, _, _, _ = _planned_sim()
    shape = (3, sim.schedule[0], 2)
    good = (np.zeros(shape, np.int32), np.ones(shape))
    cases = (((np.zeros((3, 2, 2), np.int32), np.ones((3, 2, 2))), rf"slots must have shape \(3, {shape[1]}, 2\)"),
             ((good[0].astype(float), good[1]), "slots must be integers"),
             ((good[0], np.where(np.arange(2) == 1, -1.0, 1.0) * np.ones(shape)), r"weights\[0, 0, 1\] = -1.0"),
             ((np.full(shape, 3, np.int32), good[1]), r"slots\[1, 0, 0\] = 3 is not one of node 1's 3 samples"),
             ((good[0], np.zeros(shape)), "step 0 of node 5 has no positive weight"),
             (good[0], r"minibatches must be \(slots"))
    for minibatches, match in cases:
        with pytest.raises(ValueError, match=match):
            sim.make_plan(nodes=[5, 1, 3], minibatches=minibatches)


def test_a_run_can_start_from_a_given_server_optimizer_state():
    """``init(server_opt_state=...)`` equals editing the state by hand (FedAdam's moments from an
    earlier run); a state of another structure or shape is named."""
    data, _, _ = make_data([5] * 4, seed=21, dtype=np.float32)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    sim = ej.Simulation(model, data, ej.FedAvg(server_optimizer="adam"), ej.LocalTraining(batch_size=5))
    hp = sim.hparams()
    step = jax.jit(sim.round)
    earlier = step(sim.init(jax.random.PRNGKey(3), hp), data, hp)[0].server.opt_state
    given = sim.init(jax.random.PRNGKey(0), hp, server_opt_state=earlier)
    by_hand = sim.init(jax.random.PRNGKey(0), hp)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(earlier),
                                                        jax.tree_util.tree_leaves(by_hand.server.opt_state)))
    by_hand = by_hand._replace(server=by_hand.server._replace(opt_state=earlier))
    a, b = (step(s, data, hp)[0].server.params["out"]["w"] for s in (given, by_hand))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="server_opt_state must have the structure"):
        sim.init(jax.random.PRNGKey(0), hp, server_opt_state={"mu": 0})
    wrong = jax.tree_util.tree_map(lambda x: jnp.zeros((2,) + jnp.shape(x)), earlier)
    with pytest.raises(ValueError, match=r"server_opt_state has a leaf of shape \(2,"):
        sim.init(jax.random.PRNGKey(0), hp, server_opt_state=wrong)
