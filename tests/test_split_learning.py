"""Split learning against its papers: the cut model against the unsplit one, SFLV1 against
centralized SGD and FedAvg, SFLV2 and vanilla split learning against float64 NumPy loops in the
stated order, the payload against a hand count, bad options, and an end-to-end run."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.algorithms.split_learning import SplitFed, SplitLearning, SplitModel, activation_rows
from conftest import make_data

C, HIDDEN = 3, (4, 3)


def _mlp(data, hidden=HIDDEN):
    return ej.models.mlp(data.feature_shape, data.num_classes, hidden=hidden)


def _as_lists(params, model):
    return [(np.asarray(params[l.name]["w"]), np.asarray(params[l.name]["b"])) for l in model.layers]


def _grads(layers, x, y):
    """The full model's weighted cross-entropy gradient (ReLU hidden layers), by hand in float64."""
    acts = [x]
    for i, (w, b) in enumerate(layers):
        z = acts[-1] @ w + b
        acts.append(np.maximum(z, 0.0) if i < len(layers) - 1 else z)
    z = acts[-1] - acts[-1].max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    g = (prob - np.eye(C)[y]) / len(y)
    out = []
    for i in range(len(layers) - 1, -1, -1):
        w, _ = layers[i]
        out.append((acts[i].T @ g, g.sum(axis=0)))
        g = (g @ w.T) * (acts[i] > 0)
    return out[::-1]


def _sgd(layers, grads, lr):
    return [(w - lr * gw, b - lr * gb) for (w, b), (gw, gb) in zip(layers, grads)]


def _batches(key, n, size, batch, epochs):
    """One node's minibatch indices: ``core.local``'s shuffles (the same uniforms, stable sort)."""
    scores = np.array(jax.random.uniform(key, (epochs, size)), dtype=np.float64)
    scores[:, n:] = 2.0
    orders = np.argsort(scores, axis=-1, kind="stable")
    return [orders[e, s:min(s + batch, n)] for e in range(epochs) for s in range(0, n, batch)]


def _close(params, model, ref, rtol=1e-11, atol=1e-13):
    for (w, b), (rw, rb) in zip(_as_lists(params, model), ref):
        np.testing.assert_allclose(w, rw, rtol=rtol, atol=atol)
        np.testing.assert_allclose(b, rb, rtol=rtol, atol=atol)


# ----- the cut ---------------------------------------------------------------------------------

def test_split_forward_and_gradient_equal_the_unsplit_model_at_every_cut(x64):
    data, xs, ys = make_data([7], seed=1)
    model = _mlp(data, hidden=(6, 4, 5))
    params = model.init(jax.random.PRNGKey(0))
    x, y, w = jnp.asarray(xs[0]), jnp.asarray(ys[0]), jnp.ones(7)
    full_grad = jax.grad(lambda p: model.loss.fn(model.apply(p, x), y, w))(params)
    for cut in range(1, len(model.layers)):
        sm = SplitModel(model, cut)
        device, server = sm.split(params)
        assert set(device) == {f"dense_{i}" for i in range(cut)} and sm.width == model.layers[cut].d_in
        a = sm.device(device, x)
        np.testing.assert_array_equal(sm.server(server, a), model.apply(params, x))
        g_s, g_a = jax.grad(lambda s, a_: model.loss.fn(sm.server(s, a_), y, w), argnums=(0, 1))(server, a)
        g_d = jax.vjp(lambda d: sm.device(d, x), device)[1](g_a)[0]
        jax.tree_util.tree_map(np.testing.assert_array_equal, sm.join(g_d, g_s), full_grad)


def test_a_bad_cut_or_variant_raises_naming_it():
    data, _, _ = make_data([4, 4], seed=2)
    model = _mlp(data)
    for cut in (0, 3, -1, 1.5):
        with pytest.raises(ValueError, match=rf"cut={cut!r} must be an integer in \[1, 2\]"):
            SplitFed(model, cut=cut)
    with pytest.raises(ValueError, match=r"cut=1: model 'logreg' has one layer"):
        SplitLearning(ej.models.logistic_regression(data.feature_shape, C), cut=1)
    with pytest.raises(ValueError, match="unknown variant 'v3'"):
        SplitFed(model, cut=1, variant="v3")
    with pytest.raises(ValueError, match="describes no layers"):
        SplitFed(ej.models.cnn((8, 8, 1), C), cut=1)
    with pytest.raises(ValueError, match="rows=None; give rows=activation_rows"):
        ej.Simulation(model, data, SplitFed(model, cut=1), ej.LocalTraining(batch_size=2)).payload
    with pytest.raises(ValueError, match="execution='shared_base' cannot be exact"):   # Needs(output="models")
        sim = ej.Simulation(model, data, SplitFed(model, 1, (4, 4), "v2"),
                            ej.LocalTraining(batch_size=2, execution="shared_base"))
        sim.init(jax.random.PRNGKey(0), sim.hparams())


# ----- payload -----------------------------------------------------------------------------------

def test_payload_bytes_and_compute_equal_the_hand_count():
    """dim 5 -> 4 -> 3 -> 3, float32, cut 1: d_cut = 4, device part 5*4 + 4 floats; batch 2,
    4 steps: a node of 5 samples sends 2 + 2 + 1 + 2 = 7 rows, one of 1 sample 1 row a step."""
    data, _, _ = make_data([5, 1, 3], seed=3, dtype=np.float32)
    model = _mlp(data)
    local = ej.LocalTraining(batch_size=2, steps=4)
    rows = activation_rows(local, data.node_counts())
    assert rows == (7, 4, 6)
    assert activation_rows(ej.LocalTraining(batch_size=2, epochs=3), [5, 1, 3]) == (15, 3, 9)
    for alg in (SplitFed(model, 1, rows, "v1"), SplitFed(model, 1, rows, "v2"), SplitLearning(model, 1, rows)):
        sim = ej.Simulation(model, data, alg, local, clients_per_round=2)
        hand = np.array([7, 4, 6]) * 4 * 4 + (5 * 4 + 4) * 4
        np.testing.assert_array_equal(sim.payload.up, hand)
        np.testing.assert_array_equal(sim.payload.down, hand)
        assert sim.payload.compute == pytest.approx(20 / (20 + 12 + 9))
        hp = sim.hparams({"client_lr": 0.1})
        plan = sim.make_plan(nodes=[2, 0], active=[1, 1])
        _, metrics = jax.jit(sim.round_with_plan)(sim.init(jax.random.PRNGKey(0), hp), data, plan, hp)
        assert float(metrics["bytes_up"]) == float(metrics["bytes_down"]) == hand[2] + hand[0]
    cut2 = SplitFed(model, 2, 7).payload(jax.eval_shape(model.init, jax.random.PRNGKey(0)), 3)
    assert cut2.up == 7 * 3 * 4 + (5 * 4 + 4 + 4 * 3 + 3) * 4 and cut2.compute == pytest.approx(32 / 41)


# ----- SplitFed V1 ----------------------------------------------------------------------------------

def test_sflv1_with_one_client_is_centralized_sgd_on_its_data(x64):
    n, batch, epochs, lr = 7, 3, 2, 0.3
    data, xs, ys = make_data([n], seed=4)
    model = _mlp(data)
    local = ej.LocalTraining(batch_size=batch, epochs=epochs, execution="per_node")
    sim = ej.Simulation(model, data, SplitFed(model, 1, activation_rows(local, [n])), local)
    hp = sim.hparams({"client_lr": lr})
    state = sim.init(jax.random.PRNGKey(5), hp)
    ref = _as_lists(state.server.params, model)
    round_fn = jax.jit(sim.round)
    for r in range(3):
        for idx in _batches(jax.random.fold_in(state.nodes.rng[0], r), n, n, batch, epochs):
            ref = _sgd(ref, _grads(ref, xs[0][idx], ys[0][idx]), lr)
        state, _ = round_fn(state, data, hp)
        _close(state.server.params, model, ref)


def test_sflv1_equals_fedavg_on_the_full_model_with_partial_participation(x64):
    sizes = [5, 3, 6, 4]
    data, _, _ = make_data(sizes, seed=6)
    model = _mlp(data)
    local = ej.LocalTraining(batch_size=2, epochs=2, execution="per_node")
    rows = activation_rows(local, sizes)
    sims = [ej.Simulation(model, data, alg, local, clients_per_round=3) for alg in (SplitFed(model, 2, rows), ej.FedAvg())]
    hp = [s.hparams({"client_lr": 0.2}) for s in sims]
    states = [s.init(jax.random.PRNGKey(7), h) for s, h in zip(sims, hp)]
    fns = [jax.jit(s.round_with_plan) for s in sims]
    for nodes, active in (([0, 1, 2], [1, 1, 1]), ([3, 1, 0], [1, 0, 1]), ([2, 3, 1], [1, 1, 0])):
        out = [f(st, data, s.make_plan(nodes=nodes, active=active), h) for f, st, s, h in zip(fns, states, sims, hp)]
        states = [o[0] for o in out]
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15),
                               states[0].server.params, states[1].server.params)
        assert float(out[0][1]["train_loss"]) == pytest.approx(float(out[1][1]["train_loss"]), rel=1e-12)
    # the traffic differs: the last round's nodes 2 and 3 send 2 * (6 + 4) rows of 3 activations and the device
    # part (5*4 + 4 + 4*3 + 3 floats) each, where FedAvg sends the whole model (another 3*3 + 3 floats), float64
    assert float(out[0][1]["bytes_up"]) == (20 * 3 + 2 * 39) * 8 and float(out[1][1]["bytes_up"]) == 2 * 51 * 8


# ----- SplitFed V2 and vanilla split learning against NumPy loops -----------------------------------

PLANS = (([0, 1, 2], [1, 1, 1]), ([3, 1, 0], [1, 0, 1]), ([2, 3, 1], [1, 1, 1]))


def _sequential_setup(algorithm_cls, cut, **options):
    sizes, batch, epochs = [5, 3, 6, 4], 2, 2
    data, xs, ys = make_data(sizes, seed=8)
    model = _mlp(data)
    local = ej.LocalTraining(batch_size=batch, epochs=epochs, execution="per_node")
    alg = algorithm_cls(model, cut, activation_rows(local, sizes), **options)
    sim = ej.Simulation(model, data, alg, local, clients_per_round=3)
    return sim, model, sizes, xs, ys, batch, epochs


@pytest.mark.parametrize("cut", [1, 2])
def test_sflv2_matches_a_numpy_loop_step_by_step_clients_in_cohort_order(x64, cut):
    """For every local step t, for the active cohort nodes k in cohort order: the server part
    takes a step on node k's activations, node k's device part a step on the gradient returned
    (both at the models before the step); the round's device parts are sample-weighted averaged."""
    sim, model, sizes, xs, ys, batch, epochs = _sequential_setup(SplitFed, cut, variant="v2")
    lr = 0.3
    hp = sim.hparams({"client_lr": lr})
    state = sim.init(jax.random.PRNGKey(9), hp)
    ref = _as_lists(state.server.params, model)
    round_fn = jax.jit(sim.round_with_plan)
    m = max(sizes)
    for r, (nodes, active) in enumerate(PLANS):
        d, s = ref[:cut], ref[cut:]
        served = [k for k, a in zip(nodes, active) if a]
        batches = {k: _batches(jax.random.fold_in(state.nodes.rng[k], r), sizes[k], m, batch, epochs) for k in served}
        dk = {k: list(d) for k in served}
        for t in range(max(len(b) for b in batches.values())):
            for k in served:
                if t < len(batches[k]):
                    idx = batches[k][t]
                    g = _grads(dk[k] + s, xs[k][idx], ys[k][idx])
                    s, dk[k] = _sgd(s, g[cut:], lr), _sgd(dk[k], g[:cut], lr)
        total = sum(sizes[k] for k in served)
        d = [tuple(p + sum(sizes[k] / total * (dk[k][i][j] - p) for k in served) for j, p in enumerate(layer))
             for i, layer in enumerate(d)]
        ref = d + s
        state, metrics = round_fn(state, sim.data, sim.make_plan(nodes=nodes, active=active), hp)
        _close(state.server.params, model, ref)
        assert float(metrics["participants"]) == len(served)
        assert float(metrics["local_steps"]) == sum(len(batches[k]) for k in served)


def test_vanilla_split_learning_matches_a_numpy_loop_over_the_cohort(x64):
    """Active cohort nodes in cohort order, each running all its local steps on (its received
    device part, the shared server part), then handing the device part on."""
    sim, model, sizes, xs, ys, batch, epochs = _sequential_setup(SplitLearning, 1)
    lr = 0.3
    hp = sim.hparams({"client_lr": lr})
    state = sim.init(jax.random.PRNGKey(10), hp)
    ref = _as_lists(state.server.params, model)
    round_fn = jax.jit(sim.round_with_plan)
    for r, (nodes, active) in enumerate(PLANS):
        for k, a in zip(nodes, active):
            if a:
                for idx in _batches(jax.random.fold_in(state.nodes.rng[k], r), sizes[k], max(sizes), batch, epochs):
                    ref = _sgd(ref, _grads(ref, xs[k][idx], ys[k][idx]), lr)
        state, metrics = round_fn(state, sim.data, sim.make_plan(nodes=nodes, active=active), hp)
        _close(state.server.params, model, ref)
    nobody = sim.make_plan(nodes=[0, 1, 2], active=[0, 0, 0])
    new, metrics = round_fn(state, sim.data, nobody, hp)
    jax.tree_util.tree_map(np.testing.assert_array_equal, new.server.params, state.server.params)
    assert np.isnan(float(metrics["train_loss"]))


# ----- registry and an end-to-end run -----------------------------------------------------------------

def test_registry_names_build_the_split_algorithms():
    data, _, _ = make_data([4, 4], seed=11)
    model = _mlp(data)
    assert ej.get_algorithm("splitfed_v1", model=model, cut=1, rows=4) == SplitFed(model, 1, 4, "v1")
    assert ej.get_algorithm("splitfed_v2", model=model, cut=2, rows=4).name == "splitfed_v2"
    assert isinstance(ej.get_algorithm("split_learning", model=model, cut=1, rows=4), ej.SplitLearning)


@pytest.mark.parametrize("name", ["splitfed_v1", "splitfed_v2", "split_learning"])
def test_split_algorithms_run_end_to_end_and_learn(name):
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3.0, size=(C, 6))
    y = rng.integers(0, C, size=400)
    x = (centers[y] + rng.normal(size=(400, 6))).astype(np.float32)
    dataset = ej.data.from_arrays(x[:300], y[:300], x_test=x[300:], y_test=y[300:], name="blobs")
    data, _ = ej.federate(dataset, 8, ej.data.IID(), seed=0)
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(16,))
    local = ej.LocalTraining(batch_size=8, epochs=1)
    alg = ej.get_algorithm(name, model=model, cut=1, rows=activation_rows(local, data.node_counts()))
    results = ej.Simulation(model, data, alg, local, clients_per_round=4).run(15, seed=0, eval_every=15,
                                                                             hparams={"client_lr": 0.1})
    assert results.evals["test_accuracy"][-1] > 0.9
    assert np.all(results.rounds["bytes_up"] > 0) and np.all(np.isfinite(results.rounds["train_loss"]))


def test_vanilla_split_learning_is_charged_its_nodes_in_sequence():
    """``SplitLearning`` (``Traits(sequential=True)``): the round takes the sum of its active nodes'
    download + device compute + upload and node k is busy until the nodes before it are done;
    SplitFed's round takes the slowest node's time.  Per-node deadlines are refused."""
    sizes = [5, 3, 6, 4]
    data, _, _ = make_data(sizes, seed=8, dtype=np.float32)
    model = _mlp(data)
    local = ej.LocalTraining(batch_size=2, epochs=1)
    profiles = ej.system.tiered_profiles(len(sizes), seed=1)
    rows = activation_rows(local, sizes)
    nodes, active = [2, 0, 3], [1.0, 0.0, 1.0]
    times = {}
    for alg in (SplitLearning(model, 1, rows), SplitFed(model, 1, rows, variant="v2")):
        sim = ej.Simulation(model, data, alg, local, clients_per_round=3, system=ej.SystemModel(profiles=profiles))
        hp = sim.hparams({"client_lr": 0.1})
        state = sim.init(jax.random.PRNGKey(0), hp)
        new, metrics = jax.jit(sim.round_with_plan)(state, sim.data, sim.make_plan(nodes=nodes, active=active), hp)
        pay = alg.payload(sim.params_shape, len(sizes))
        total = []
        for i in nodes:   # by hand, from the profiles' fields
            steps = -(-sizes[i] // 2)
            total.append(float(pay.down[i]) / float(profiles.down_bandwidth[i]) + float(profiles.latency[i])
                         + steps * 2 * pay.compute / float(profiles.speed[i])
                         + float(pay.up[i]) / float(profiles.up_bandwidth[i]) + float(profiles.latency[i]))
        total = np.asarray(total) * np.asarray(active)
        times[alg.name] = (float(metrics["round_time_s"]), np.asarray(new.system.busy_until)[nodes], total)
    seq_time, seq_busy, total = times["split_learning"]
    np.testing.assert_allclose(seq_time, total.sum(), rtol=1e-6)
    np.testing.assert_allclose(seq_busy[[0, 2]], [total[0], total[0] + total[2]], rtol=1e-6)
    par_time, par_busy, _ = times["splitfed_v2"]
    np.testing.assert_allclose(par_time, total.max(), rtol=1e-6)
    np.testing.assert_allclose(par_busy[[0, 2]], total[[0, 2]], rtol=1e-6)
    assert seq_time > par_time
    with pytest.raises(ValueError, match="one after another.*deadline_policy='drop_late'"):
        ej.Simulation(model, data, SplitLearning(model, 1, rows), local, clients_per_round=3,
                      system=ej.SystemModel(profiles=profiles, deadline_policy="drop_late"))
