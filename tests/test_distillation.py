"""FedMD (federated distillation) against a float64 NumPy reference of Li & Wang's Algorithm 1, and
its invariants: no digest or one node is local training, masks hold, bytes are logits."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.algorithms.distillation import FedMD
from edgejax.algorithms.widths import WidthScaled
from conftest import make_data
from references import fedmd_round, local_gd

C = 3


def _logreg(data, algorithm_options, public, steps=2, cohort=None):
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    batch = int(np.max(data.node_counts()))
    return ej.Simulation(model, data, FedMD(model, public, **algorithm_options),
                         ej.LocalTraining(batch_size=batch, steps=steps), clients_per_round=cohort)


def _node_models(state):
    p = state.nodes.params["out"]
    return [(np.asarray(w), np.asarray(b)) for w, b in zip(p["w"], p["b"])]


def _with_models(state, models):
    w = jnp.asarray(np.stack([m[0] for m in models]))
    b = jnp.asarray(np.stack([m[1] for m in models]))
    return state._replace(nodes=state.nodes._replace(params={"out": {"w": w, "b": b}}))


def _distinct_start(sim, hp, seed):
    """The initial state with every node given its own random model (FedMD's independent models)."""
    state = sim.init(jax.random.PRNGKey(seed), hp)
    rng = np.random.default_rng(seed)
    shapes = _node_models(state)[0]
    return _with_models(state, [(rng.normal(size=shapes[0].shape), rng.normal(size=shapes[1].shape))
                                for _ in range(sim.num_nodes)])


@pytest.mark.parametrize("kind", ["l1", "l2", "kl"])
def test_fedmd_rounds_match_the_numpy_reference(x64, kind):
    data, xs, ys = make_data([5, 3, 6], seed=11)
    public = np.random.default_rng(12).normal(size=(6, 5))
    sim = _logreg(data, {"distill_steps": 3, "distill_batch": 4, "distill_loss": kind}, public)
    values = {"client_lr": 0.2, "distill_lr": 0.5} | ({"distill_temperature": 2.0} if kind == "kl" else {})
    hp = sim.hparams(values)
    state = _distinct_start(sim, hp, seed=13)
    models = _node_models(state)
    step = jax.jit(lambda s, plan: sim.round_with_plan(s, data, plan, hp))
    for active in ([1, 1, 1], [1, 0, 1]):
        models = fedmd_round(models, public, list(zip(xs, ys)), active, C, kind, 0.5, 3, 4, 0.2, 2,
                             temperature=2.0)
        state, metrics = step(state, sim.make_plan(active=active))
        for (w, b), (w_ref, b_ref) in zip(_node_models(state), models):
            np.testing.assert_allclose(w, w_ref, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(b, b_ref, rtol=1e-10, atol=1e-12)
        # logits up, consensus down: 6 public samples x 3 classes x 8 bytes (float64) per participant
        assert float(metrics["bytes_up"]) == float(metrics["bytes_down"]) == sum(active) * 6 * C * 8
        assert float(metrics["participants"]) == sum(active)


def test_no_digest_or_a_single_node_is_plain_local_training(x64):
    data, xs, ys = make_data([5, 3, 6], seed=14)
    public = np.random.default_rng(15).normal(size=(4, 5))
    sim = _logreg(data, {"distill_steps": 0}, public)
    hp = sim.hparams({"client_lr": 0.3})
    state = _distinct_start(sim, hp, seed=16)
    start = _node_models(state)
    state, metrics = jax.jit(sim.round)(state, data, hp)
    for (w, b), (w0, b0), x, y in zip(_node_models(state), start, xs, ys):
        w_ref, b_ref = local_gd(w0, b0, x, y, C, 0.3, 2)
        np.testing.assert_allclose(w, w_ref, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(b, b_ref, rtol=1e-12, atol=1e-13)
    assert float(metrics["distill_loss"]) == 0.0

    one, x1, y1 = make_data([6], seed=17)
    # the consensus of one node is its own logits: the digest is a no-op (l1's subgradient sign(0) would
    # turn rounding noise between two evaluations of the same logits into steps, so l2 and kl)
    for kind in ("l2", "kl"):
        sim = _logreg(one, {"distill_steps": 3, "distill_loss": kind}, public)
        hp = sim.hparams({"client_lr": 0.3, "distill_lr": 1.0})
        state = _distinct_start(sim, hp, seed=18)
        (w0, b0), = _node_models(state)
        state, metrics = jax.jit(sim.round)(state, one, hp)
        w_ref, b_ref = local_gd(w0, b0, x1[0], y1[0], C, 0.3, 2)
        np.testing.assert_allclose(_node_models(state)[0][0], w_ref, rtol=1e-12, atol=1e-13)
        assert float(metrics["distill_loss"]) == pytest.approx(0.0, abs=1e-12)


def test_width_scaled_nodes_distill_only_their_own_entries():
    data, _, _ = make_data([4, 5, 4], seed=19, dtype=np.float32)
    model = ej.models.mlp(data.feature_shape, C, hidden=(6,))
    public = np.random.default_rng(20).normal(size=(8, 5)).astype(np.float32)
    local = ej.LocalTraining(batch_size=2, steps=2)
    sim = ej.Simulation(model, data, FedMD(model, public, distill_steps=2, scheme=WidthScaled(model, (1.0, 0.5, 1.0))),
                        local)
    hp = sim.hparams({"distill_lr": 0.5})
    state = sim.init(jax.random.PRNGKey(0), hp)
    new = state
    for _ in range(2):
        new, _ = jax.jit(sim.round)(new, data, hp)
    old, now = state.nodes.params["dense_0"], new.nodes.params["dense_0"]
    np.testing.assert_array_equal(now["w"][1][:, 3:], old["w"][1][:, 3:])      # node 1 holds 3 of 6 units
    np.testing.assert_array_equal(new.nodes.params["dense_1"]["w"][1][3:], state.nodes.params["dense_1"]["w"][1][3:])
    assert not np.allclose(now["w"][0][:, 3:], old["w"][0][:, 3:])
    # one digest step: its loss is the start's distance to the consensus; every node starts from the
    # same model, so all-ones masks give (float-rounding) zero, node 1's half width does not
    first = {}
    for widths in ((1.0, 1.0, 1.0), (1.0, 0.5, 1.0)):
        one_step = ej.Simulation(model, data, FedMD(model, public, distill_steps=1, scheme=WidthScaled(model, widths)),
                                 local)
        _, m = jax.jit(one_step.round)(one_step.init(jax.random.PRNGKey(0), hp), data, hp)
        first[widths[1]] = float(m["distill_loss"])
    assert first[1.0] < 1e-6 and first[0.5] > 1e-3, first
    # the clock charges node 1 its sub-model's compute; the bytes are logits whatever the width
    np.testing.assert_allclose(sim.payload.compute, [1.0, (5 * 3 + 3 * 3) / (5 * 6 + 6 * 3), 1.0], rtol=1e-12)
    assert sim.payload.up == sim.payload.down == 8 * C * 4
    # all-ones masks give the unmasked numbers
    results = []
    for scheme in (None, WidthScaled(model, (1.0,) * 3)):
        s = ej.Simulation(model, data, FedMD(model, public, distill_steps=2, scheme=scheme), local)
        results.append(s.run(2, seed=0, eval_every=2, hparams={"distill_lr": 0.5}).final_state.nodes.params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), *results)


def test_a_public_subset_per_round_counts_its_logits_and_equals_the_whole_set_when_it_is_all(x64):
    data, _, _ = make_data([4, 4, 4, 4], seed=21)
    public = np.random.default_rng(22).normal(size=(10, 5))
    subset = _logreg(data, {"public_per_round": 4, "distill_steps": 2}, public, cohort=2)
    assert subset.payload.up == 4 * C * 8
    metrics = subset.run(2, seed=0, eval_every=2).rounds
    np.testing.assert_array_equal(metrics["bytes_up"], [2 * 4 * C * 8] * 2)
    # every public sample, drawn in a random order: with full-batch digest steps the same numbers
    runs = [_logreg(data, {"public_per_round": p, "distill_steps": 2, "distill_loss": "l2"}, public)
            .run(2, seed=0, eval_every=2, hparams={"distill_lr": 0.3}).final_state.nodes.params for p in (None, 10)]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13), *runs)


def test_fedmd_checks_its_inputs_and_is_registered():
    model = ej.models.logistic_regression((5,), C)
    public = np.zeros((6, 5), np.float32)
    with pytest.raises(ValueError, match=r"public_x must have shape \[P >= 1, \*\(5,\)\].*got \(6, 4\)"):
        FedMD(model, np.zeros((6, 4)))
    with pytest.raises(ValueError, match=r"public_per_round=7 must be an integer in \[1, P=6\]"):
        FedMD(model, public, public_per_round=7)
    with pytest.raises(ValueError, match=r"distill_batch=5 must be an integer in \[1, 4\]"):
        FedMD(model, public, public_per_round=4, distill_batch=5)
    with pytest.raises(ValueError, match="distill_steps=-1"):
        FedMD(model, public, distill_steps=-1)
    with pytest.raises(ValueError, match="distill_loss"):
        FedMD(model, public, distill_loss="js")
    algorithm = ej.get_algorithm("fedmd", model=model, public_x=public, distill_loss="kl")
    assert isinstance(algorithm, FedMD) and set(algorithm.default_hparams()) == {"distill_lr", "distill_temperature"}
    assert algorithm.describe()["public_x"] == [6, 5]
