"""Heterogeneous models per device: masked local updates, width-scaled and class-subset sub-models,
their aggregation and FLOP counts, against float64 NumPy references and hand-computed values."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.algorithms.class_subsets import ClassSubsets
from edgejax.algorithms.heterogeneous import SubmodelFedAvg
from edgejax.algorithms.submodels import masked_average_change
from edgejax.algorithms.widths import WidthScaled, tier_rates
from edgejax.core.execution import Needs, SharedBase, resolve_execution
from edgejax.core.local import LocalTraining, SubModelMask, make_local_update
from edgejax.data.federated import FederatedData, pad_nodes, pad_test
from edgejax.models.layout import forward_flops, full_forward_flops, gemm_layout
from edgejax.system import tiered_profiles
from conftest import make_data
from references import masked_mlp_loss_grad

C = 3


def _np_params(params):
    return [np.asarray(params[k][p], np.float64) for k in ("dense_0", "dense_1") for p in ("w", "b")]


def _as_tree(values):
    w0, b0, w1, b1 = (jnp.asarray(v) for v in values)
    return {"dense_0": {"w": w0, "b": b0}, "dense_1": {"w": w1, "b": b1}}


def _labelled_data(labels_per_node, dim=5, seed=0):
    """Nodes whose training labels are drawn from the given label sets (3 classes)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for labels in labels_per_node:
        n = int(rng.integers(3, 7))
        xs.append(rng.normal(size=(n, dim)))
        ys.append(rng.choice(labels, size=n).astype(np.int32))
    x, y = np.concatenate(xs), np.concatenate(ys)
    bounds = np.cumsum([0, *map(len, xs)])
    parts = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(xs))]
    data = FederatedData(train=pad_nodes(x, y, parts), local_test=pad_nodes(x, y, parts),
                         test=pad_test(x, y), num_classes=C, name="labelled")
    return data, xs, ys


# ----- the hook: a masked local update ----------------------------------------------------------

def test_a_masked_local_update_matches_a_numpy_loop_and_leaves_unheld_entries_exactly(x64):
    """Forward with params * mask, restricted softmax, gradient masked, weight decay applied only
    to held entries; entries outside the mask keep their start value bit for bit."""
    rng = np.random.default_rng(1)
    model = ej.models.mlp((5,), C, hidden=(4,))
    x, y = rng.normal(size=(6, 5)), np.array([0, 2, 2, 0, 2, 0], np.int32)
    params = model.init(jax.random.PRNGKey(0))
    masks = [rng.integers(0, 2, size=np.shape(p)).astype(np.float64) for p in _np_params(params)]
    outputs = np.array([1.0, 0.0, 1.0])
    spec = LocalTraining(batch_size=6, steps=3, weight_decay=True)
    update = make_local_update(model, spec, max_steps=3, shuffles=1)
    lr, decay = 0.3, 0.05
    hp = {"client_lr": jnp.asarray(lr), "client_weight_decay": jnp.asarray(decay)}
    result = update(params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(6), jax.random.PRNGKey(3), jnp.asarray(3),
                    hp, mask=SubModelMask(_as_tree(masks), jnp.asarray(outputs)))
    ref = _np_params(params)
    start = [r.copy() for r in ref]
    for _ in range(3):
        _, grads = masked_mlp_loss_grad(ref, masks, x, y, C, outputs)
        ref = [np.where(m != 0, w - lr * (g + decay * w), w) for w, g, m in zip(ref, grads, masks)]
    for got, want, m, w0 in zip(_np_params(result.params), ref, masks, start):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)
        np.testing.assert_array_equal(got[m == 0], w0[m == 0])
        assert not np.allclose(got[m != 0], w0[m != 0])


def test_masked_training_never_runs_shared_base():
    model = ej.models.mlp((5,), C, hidden=(4,))
    assert resolve_execution(model, LocalTraining(), 4, Needs(masked=True)) == "per_node"
    with pytest.raises(ValueError, match="per-node parameter mask"):
        resolve_execution(model, LocalTraining(execution="shared_base"), 4, Needs(masked=True))
    with pytest.raises(ValueError, match="cannot train per-node sub-models"):
        SharedBase(local_delta=None).delta(None, None, None, None, None, {}, mask=SubModelMask({}))


# ----- full masks are FedAvg; unheld entries stay ----------------------------------------------

def _run(sim, data, plans, hp):
    state = sim.init(jax.random.PRNGKey(0), hp)
    step = jax.jit(lambda s, plan: sim.round_with_plan(s, data, plan, hp))
    for active in plans:
        state, metrics = step(state, sim.make_plan(active=active))
    return state, metrics


def test_full_width_and_all_class_submodels_are_fedavg_with_the_same_numbers(x64):
    data, _, _ = make_data([5, 3, 6, 4], seed=21)
    model = ej.models.mlp(data.feature_shape, C, hidden=(4,))
    local = LocalTraining(batch_size=2, epochs=2, execution="per_node")
    plans = ([1, 1, 0, 1], [1, 1, 1, 1])
    fedavg = ej.Simulation(model, data, ej.FedAvg(), local)
    hp = fedavg.hparams({"client_lr": 0.2})
    want, want_metrics = _run(fedavg, data, plans, hp)
    for scheme in (WidthScaled(model, (1.0,) * 4), ClassSubsets(model, ((0, 1, 2),) * 4, depth=1)):
        sim = ej.Simulation(model, data, SubmodelFedAvg(scheme), local)
        got, metrics = _run(sim, data, plans, hp)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14),
                               got.server.params, want.server.params)
        assert float(metrics["train_loss"]) == pytest.approx(float(want_metrics["train_loss"]), rel=1e-12)
        assert float(metrics["flops"]) == float(metrics["full_model_flops"])
        assert float(metrics["bytes_up"]) == float(want_metrics["bytes_up"])


def test_a_parameter_no_active_node_holds_is_unchanged(x64):
    data, _, _ = make_data([4, 4, 4], seed=22)
    model = ej.models.mlp(data.feature_shape, C, hidden=(6,))
    # nodes 0 and 1 hold 3 of the 6 hidden units; node 2 holds all but is absent this round
    sim = ej.Simulation(model, data, SubmodelFedAvg(WidthScaled(model, (0.5, 0.5, 1.0))),
                        LocalTraining(batch_size=4, steps=2))
    hp = sim.hparams({"client_lr": 0.5})
    state = sim.init(jax.random.PRNGKey(1), hp)
    new, _ = jax.jit(sim.round_with_plan)(state, data, sim.make_plan(active=[1, 1, 0]), hp)
    old, now = state.server.params, new.server.params
    np.testing.assert_array_equal(now["dense_0"]["w"][:, 3:], old["dense_0"]["w"][:, 3:])
    np.testing.assert_array_equal(now["dense_0"]["b"][3:], old["dense_0"]["b"][3:])
    np.testing.assert_array_equal(now["dense_1"]["w"][3:], old["dense_1"]["w"][3:])
    assert not np.allclose(now["dense_0"]["w"][:, :3], old["dense_0"]["w"][:, :3])
    # the helper alone: an entry held only by a node of weight 0 gets no change
    change = {"a": jnp.array([1.0, 2.0])}
    masks = {"a": jnp.array([[1.0, 0.0], [1.0, 1.0]])}
    np.testing.assert_array_equal(masked_average_change(change, jnp.array([1.0, 0.0]), masks)["a"], [1.0, 0.0])


# ----- harvest and reassembly against a NumPy reference ---------------------------------------

def test_class_subset_harvest_matches_a_numpy_reference(x64):
    """Hidden layer of 7 units split into contiguous groups 0,0,0 | 1,1 | 2,2 (u * 3 // 7), one per
    class; node i holds its classes' units and output columns, softmax over its classes; every
    entry averaged (sample weights) over the active nodes holding it."""
    subsets = ((0, 1), (1, 2), (2,), (0,))
    data, xs, ys = _labelled_data(subsets, seed=3)
    model = ej.models.mlp(data.feature_shape, C, hidden=(7,))
    sim = ej.Simulation(model, data, SubmodelFedAvg(ClassSubsets(model, subsets, depth=0)),
                        LocalTraining(batch_size=8, steps=2))
    hp = sim.hparams({"client_lr": 0.4})
    state = sim.init(jax.random.PRNGKey(2), hp)

    groups = np.array([0, 0, 0, 1, 1, 2, 2])
    block = (groups[:, None] == np.arange(C)[None, :]).astype(float)          # W1[r, c]: unit r's group is c
    structure = [np.ones((5, 7)), np.ones(7), block, np.ones(C)]
    x = [p * s for p, s in zip(_np_params(model.init(jax.random.split(jax.random.PRNGKey(2), 4)[0])), structure)]
    np.testing.assert_allclose(_np_params(state.server.params)[2], x[2])      # blocks start at zero

    def node_masks(subset):
        cls = np.isin(np.arange(C), subset).astype(float)
        units = np.isin(groups, subset).astype(float)
        return [np.ones((5, 1)) * units, units, block * cls[None, :], cls], cls

    step = jax.jit(lambda s, plan: sim.round_with_plan(s, data, plan, hp))
    for active in ([1, 1, 1, 1], [1, 0, 1, 0]):
        num = [np.zeros_like(p) for p in x]
        den = [np.zeros_like(p) for p in x]
        for i in np.flatnonzero(active):
            masks, cls = node_masks(subsets[i])
            w = [p.copy() for p in x]
            for _ in range(2):
                _, grads = masked_mlp_loss_grad(w, masks, xs[i], ys[i], C, cls)
                w = [np.where(m != 0, p - 0.4 * g, p) for p, g, m in zip(w, grads, masks)]
            for k in range(4):
                num[k] += len(ys[i]) * masks[k] * w[k]
                den[k] += len(ys[i]) * masks[k]
        x = [np.where(d > 0, n / np.where(d > 0, d, 1), p) for n, d, p in zip(num, den, x)]
        state, _ = step(state, sim.make_plan(active=active))
        for got, want in zip(_np_params(state.server.params), x):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.all(_np_params(state.server.params)[2][block == 0] == 0)      # cross-group weights stay zero


def test_class_subsets_check_their_inputs():
    data, _, _ = _labelled_data(((0, 1), (2,)), seed=4)
    model = ej.models.mlp(data.feature_shape, C, hidden=(4,))
    with pytest.raises(ValueError, match=r"node 0 has training labels \[1\] outside its class subset \(0,\)"):
        ClassSubsets(model, ((0,), (2,)), depth=1).check_data(data)
    with pytest.raises(ValueError, match="depth=2 must be in"):
        ClassSubsets(model, ((0,), (2,)), depth=2)
    with pytest.raises(ValueError, match="fewer than the 3 groups"):
        ClassSubsets(ej.models.mlp(data.feature_shape, C, hidden=(2,)), ((0,), (2,)), depth=0)
    with pytest.raises(ValueError, match=r"non-empty labels in \[0, 3\)"):
        ClassSubsets(model, ((0,), (3,)), depth=1)
    assert ClassSubsets.from_data(model, data, depth=1).classes == ((0, 1), (2,))


# ----- which entries a width keeps; FjORD and FedRolex -------------------------------------------

def _tiny_cnn():
    return ej.models.cnn((4, 4, 2), C, channels=(4, 6), kernel=3, hidden=5)


def test_width_masks_keep_the_first_channels_of_every_gemm_layer():
    model = _tiny_cnn()
    m = WidthScaled(model, (0.5,)).masks(0, jnp.array([0]), jax.random.split(jax.random.PRNGKey(0), 1),
                                         jnp.float32).params
    m = jax.tree_util.tree_map(lambda a: np.asarray(a[0]), m)
    rows0, rows1, rows_d = np.arange(18), np.arange(36), np.arange(6)
    np.testing.assert_array_equal(m["conv_0"]["w"], np.ones((18, 1)) * (np.arange(4) < 2))          # data in
    np.testing.assert_array_equal(m["conv_1"]["w"], ((rows1 % 4 < 2)[:, None]) & (np.arange(6) < 3))
    np.testing.assert_array_equal(m["dense"]["w"], ((rows_d % 6 < 3)[:, None]) & (np.arange(5) < 3))
    np.testing.assert_array_equal(m["out"]["w"], (np.arange(5) < 3)[:, None] * np.ones(C))          # all outputs
    np.testing.assert_array_equal(m["out"]["b"], np.ones(C))
    np.testing.assert_array_equal(m["conv_1"]["b"], np.arange(6) < 3)
    assert rows0.size == m["conv_0"]["w"].shape[0]


def test_fedrolex_shifts_the_window_by_one_unit_per_round_and_fjord_draws_allowed_widths():
    model = ej.models.mlp((5,), C, hidden=(4,))
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    rolling = WidthScaled(model, (0.5,), mode="rolling")
    held = [np.flatnonzero(rolling.masks(t, jnp.array([0]), keys, jnp.float32).params["dense_0"]["b"][0])
            for t in range(4)]
    assert [h.tolist() for h in held] == [[0, 1], [1, 2], [2, 3], [0, 3]]
    fjord = WidthScaled(ej.models.mlp((5,), C, hidden=(8,)), (1.0, 0.25), mode="ordered_dropout",
                        levels=(0.25, 0.5, 1.0))
    draws = np.asarray(jax.vmap(lambda k: fjord.kept_counts(jnp.array([0, 1]), jnp.stack([k, k])))(
        jax.random.split(jax.random.PRNGKey(1), 300)))[:, :, 0]
    assert set(draws[:, 1].tolist()) == {2}
    counts = np.bincount(draws[:, 0], minlength=9)[[2, 4, 8]]
    assert counts.sum() == 300 and counts.min() > 70


def test_rates_come_from_device_tiers_and_bad_rates_are_named():
    profiles = tiered_profiles(6, fractions=(0.5, 0.5), speeds=(100.0, 10.0), up_bandwidths=(1e6, 1e5))
    rates = tier_rates(profiles, {0: 1.0, 1: 0.25})
    assert rates == tuple(1.0 if t == 0 else 0.25 for t in np.asarray(profiles.tier).tolist())
    with pytest.raises(ValueError, match="which the rate table"):
        tier_rates(profiles, [1.0])
    model = ej.models.mlp((5,), C, hidden=(4,))
    with pytest.raises(ValueError, match=r"rates\[1\] = 1.5 must lie in \(0, 1\]"):
        WidthScaled(model, (1.0, 1.5))
    with pytest.raises(ValueError, match="below every level"):
        WidthScaled(model, (1.0, 0.1), mode="ordered_dropout", levels=(0.5, 1.0))
    data, _, _ = make_data([4, 4], seed=24)
    with pytest.raises(ValueError, match=r"layer 'dense_0' with w \[5, 4\].*\(\(5, 6\), \(6,\)\)"):
        sim = ej.Simulation(ej.models.mlp((5,), C, hidden=(6,)), data, SubmodelFedAvg(WidthScaled(model, (1.0, 0.5))))
        sim.init(jax.random.PRNGKey(0), sim.hparams())


# ----- FLOPs ------------------------------------------------------------------------------------------

def test_flop_counts_match_hand_computed_values():
    # MLP 8-6-4-3 at rate 0.5 keeps 3 and 2 hidden units: MACs 8*3 + 3*2 + 2*3 = 36 (full: 48 + 24 + 12)
    mlp = ej.models.mlp((8,), C, hidden=(6, 4))
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    half = WidthScaled(mlp, (0.5,)).masks(0, jnp.array([0]), keys, jnp.float32).params
    assert float(forward_flops(gemm_layout(mlp), half)[0]) == 2 * 36
    assert full_forward_flops(gemm_layout(mlp)) == 2 * 84
    # CNN 4x4x2, 3x3 convs of 4 and 6 channels (16 then 4 positions), dense 6 -> 5, out 5 -> 3
    cnn = _tiny_cnn()
    assert full_forward_flops(gemm_layout(cnn)) == 2 * (16 * 18 * 4 + 4 * 36 * 6 + 6 * 5 + 5 * 3)
    half = WidthScaled(cnn, (0.5,)).masks(0, jnp.array([0]), keys, jnp.float32).params
    assert float(forward_flops(gemm_layout(cnn), half)[0]) == 2 * (16 * 18 * 2 + 4 * 18 * 3 + 3 * 3 + 3 * 3)


def test_a_round_reports_the_flops_and_bytes_of_the_submodels_trained():
    data, _, _ = make_data([4, 4, 4], dim=8, seed=23, dtype=np.float32)
    model = ej.models.mlp((8,), C, hidden=(6, 4))
    sim = ej.Simulation(model, data, SubmodelFedAvg(WidthScaled(model, (0.5, 1.0, 0.5))),
                        LocalTraining(batch_size=2, steps=3))
    hp = sim.hparams()
    _, metrics = jax.jit(sim.round_with_plan)(sim.init(jax.random.PRNGKey(0), hp), data,
                                              sim.make_plan(active=[1, 1, 0]), hp)
    samples = 3 * 2
    assert float(metrics["flops"]) == 3 * samples * (2 * 36 + 2 * 84)
    assert float(metrics["full_model_flops"]) == 3 * samples * 2 * (2 * 84)
    held_half = (8 * 3 + 3) + (3 * 2 + 2) + (2 * 3 + 3)
    full = (8 * 6 + 6) + (6 * 4 + 4) + (4 * 3 + 3)
    assert float(metrics["bytes_up"]) == 4 * (held_half + full)


# ----- what the system model charges: each node's own sub-model ---------------------------------------

def _cost_sim(rates, speeds, **system):
    data, _, _ = make_data([4, 4, 4], dim=8, seed=25, dtype=np.float32)
    model = ej.models.mlp((8,), C, hidden=(6, 4))
    profiles = ej.system.profiles_from_arrays(np.asarray(speeds, float), np.full(3, 1e3), np.full(3, 2e3),
                                              energy_per_sample=0.01, energy_per_byte=1e-4)
    return ej.Simulation(model, data, SubmodelFedAvg(WidthScaled(model, rates)), LocalTraining(batch_size=2, steps=3),
                         system=ej.system.SystemModel(profiles=profiles, **system))


def test_a_width_scaled_node_is_charged_its_own_compute_and_bytes():
    sim = _cost_sim((0.5, 1.0, 0.5), [10.0, 20.0, 5.0])
    # MLP 8-6-4-3: rate 0.5 keeps 3 and 2 hidden units, 36 of the 84 multiply-accumulates
    held_half = 4 * ((8 * 3 + 3) + (3 * 2 + 2) + (2 * 3 + 3))
    full = 4 * ((8 * 6 + 6) + (6 * 4 + 4) + (4 * 3 + 3))
    payload = sim.payload
    np.testing.assert_array_equal(payload.up, [held_half, full, held_half])
    np.testing.assert_array_equal(payload.down, payload.up)
    np.testing.assert_allclose(payload.compute, [36 / 84, 1.0, 36 / 84], rtol=1e-12)
    hp = sim.hparams()
    state = sim.init(jax.random.PRNGKey(0), hp)
    round_fn = jax.jit(sim.round_with_plan)
    steps, batch = 3, 2
    for active, node in (([1, 0, 0], 0), ([0, 1, 0], 1), ([0, 0, 1], 2)):
        new, metrics = round_fn(state, sim.data, sim.make_plan(active=active), hp)
        speed, size, fraction = [10.0, 20.0, 5.0][node], payload.up[node], payload.compute[node]
        compute_s = steps * batch * fraction / speed
        assert float(metrics["round_time_s"]) == pytest.approx(size / 2e3 + compute_s + size / 1e3, rel=1e-6)
        assert float(metrics["energy_j"]) == pytest.approx(0.01 * steps * batch * fraction + 1e-4 * 2 * size,
                                                           rel=1e-6)
        assert float(metrics["bytes_up"]) == size and float(metrics["bytes_down"]) == size


def test_a_deadline_keeps_a_slow_node_that_trains_a_small_width():
    speeds = [100.0, 100.0, 1.0]               # node 2 needs 3 steps * 2 samples / 1 = 6 s for the full model
    for rates, kept in (((1.0, 1.0, 1.0), [1, 1, 0]), ((1.0, 1.0, 0.25), [1, 1, 1])):
        sim = _cost_sim(rates, speeds, deadline_policy="drop_late")
        hp = sim.hparams({"deadline": 3.0})   # a quarter width: 2 and 1 hidden units, 21 of 84 MACs: 1.5 s
        plan = sim.plan(sim.init(jax.random.PRNGKey(0), hp), hp)
        np.testing.assert_array_equal(np.asarray(plan.active)[np.argsort(np.asarray(plan.nodes))], kept)


def test_fedavg_payload_stays_one_scalar_model_each_way():
    data, _, _ = make_data([4, 4], seed=26)
    model = ej.models.mlp(data.feature_shape, C, hidden=(4,))
    sim = ej.Simulation(model, data, ej.FedAvg())
    size = ej.models.num_bytes(sim.params_shape)
    assert sim.payload == (size, size, 1.0) and isinstance(sim.payload.up, int)
