"""Lightweight training: gradual magnitude pruning (PrunedFedAvg), fake quantization with the
straight-through estimator (quantization_aware) and int-b links (QuantizedFedAvg), against float64
NumPy references and hand-counted bytes."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.algorithms.pruning import PrunedFedAvg, cubic_sparsity, sparse_bytes
from edgejax.algorithms.quantized import QuantizedFedAvg
from edgejax.core.local import LocalTraining
from edgejax.models.quantization import fake_quantize, quantization_aware, quantize, quantized_bytes
from conftest import make_data
from references import masked_mlp_loss_grad

C = 3


def _np_params(params):
    return [np.asarray(params[k][p], np.float64) for k in ("dense_0", "dense_1") for p in ("w", "b")]


def _rounds(sim, data, hp, actives, state=None):
    state = sim.init(jax.random.PRNGKey(0), hp) if state is None else state
    step = jax.jit(lambda s, plan: sim.round_with_plan(s, data, plan, hp))
    out = []
    for active in actives:
        state, metrics = step(state, sim.make_plan(active=active))
        out.append((state, metrics))
    return out


def _np_sgd(params, masks, x, y, lr, steps):
    """``steps`` full-batch SGD steps on the masked one-hidden-layer MLP (every node's batch holds
    all its samples)."""
    w = [p.copy() for p in params]
    for _ in range(steps):
        _, grads = masked_mlp_loss_grad(w, masks, x, y, C)
        w = [p - lr * g for p, g in zip(w, grads)]
    return w


def _np_quantize(w, bits, per_channel):
    level = 2 ** (bits - 1) - 1
    amax = np.max(np.abs(w), axis=tuple(range(w.ndim - 1)), keepdims=True) if per_channel and w.ndim >= 2 \
        else np.max(np.abs(w))
    scale = amax / level
    return np.clip(np.round(w / np.where(scale > 0, scale, 1)), -level, level) * scale


# ----- pruning: schedule, masks, exact zeros ---------------------------------------------------

def test_unstructured_sparsity_follows_the_cubic_schedule_and_pruned_entries_stay_zero(x64):
    data, _, _ = make_data([5, 3, 6, 4], seed=1)
    model = ej.models.mlp(data.feature_shape, C, hidden=(8,))
    alg = PrunedFedAvg(model, 0.8, initial_sparsity=0.1, start_round=1, prune_every=2, prune_steps=3,
                       server_optimizer="momentum")
    sim = ej.Simulation(model, data, alg, LocalTraining(batch_size=2, epochs=1))
    hp = sim.hparams({"client_lr": 0.3, "server_lr": 1.0})
    actives = [[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 1], [1, 1, 1, 1], [1, 1, 1, 1],
               [1, 1, 1, 1], [1, 1, 1, 1]]
    sizes = {"dense_0": 5 * 8, "dense_1": 8 * C}
    previous = None
    for t, (state, metrics) in enumerate(_rounds(sim, data, hp, actives)):
        # events j = 0..3 in rounds 1, 3, 5, 7; the last event's sparsity from then on
        j = None if t < 1 else min((t - 1) // 2, 3)
        s = 0.0 if j is None else 0.8 + (0.1 - 0.8) * (1 - j / 3) ** 3
        assert float(metrics["target_sparsity"]) == pytest.approx(s, abs=1e-12)
        mask = state.server.extra.mask
        pruned = 0
        for name, n in sizes.items():
            w_mask = np.asarray(mask[name]["w"])
            assert int(np.sum(w_mask == 0)) == math.floor(s * n)
            np.testing.assert_array_equal(np.asarray(mask[name]["b"]), 1.0)        # biases are not pruned
            assert np.all(np.asarray(state.server.params[name]["w"])[w_mask == 0] == 0.0)
            pruned += math.floor(s * n)
            if previous is not None:                                               # the mask only grows
                assert np.all(w_mask <= np.asarray(previous[name]["w"]))
        assert float(metrics["weight_sparsity"]) == pytest.approx(pruned / sum(sizes.values()), abs=1e-12)
        previous = mask
    assert float(metrics["target_sparsity"]) == pytest.approx(0.8)
    assert np.isfinite(float(metrics["train_loss"]))


def test_magnitude_pruning_removes_the_smallest_weights_of_each_layer(x64):
    data, _, _ = make_data([4, 4], seed=2)
    model = ej.models.mlp(data.feature_shape, C, hidden=(6,))
    alg = PrunedFedAvg(model, 0.5, initial_sparsity=0.5, prune_steps=1)
    params = model.init(jax.random.PRNGKey(3))
    ones = jax.tree_util.tree_map(jnp.ones_like, params)
    mask = alg.prune(params, ones, alg.pruned_counts()[0])
    for name in ("dense_0", "dense_1"):
        w = np.abs(np.asarray(params[name]["w"])).ravel()
        kept = np.asarray(mask[name]["w"]).ravel() != 0
        assert kept.sum() == w.size - w.size // 2
        assert w[kept].min() >= w[~kept].max()


def test_structured_pruning_removes_whole_neurons_with_their_bias_and_outgoing_rows(x64):
    data, _, _ = make_data([5, 3, 6], seed=3)
    model = ej.models.mlp(data.feature_shape, C, hidden=(8, 6))
    alg = PrunedFedAvg(model, 0.5, initial_sparsity=0.25, prune_steps=2, structure="structured")
    sim = ej.Simulation(model, data, alg, LocalTraining(batch_size=3, steps=2))
    hp = sim.hparams({"client_lr": 0.3})
    for t, (state, metrics) in enumerate(_rounds(sim, data, hp, [[1, 1, 1]] * 4)):
        s = cubic_sparsity(min(t, 2), 0.25, 0.5, 2)
        mask, params = state.server.extra.mask, state.server.params
        units = []
        for l, width in enumerate((8, 6)):
            name, nxt = f"dense_{l}", f"dense_{l + 1}"
            b = np.asarray(mask[name]["b"])
            gone = np.flatnonzero(b == 0)
            assert len(gone) == math.floor(s * width)
            w = np.asarray(mask[name]["w"])
            np.testing.assert_array_equal(w[:, gone], 0.0)                          # the unit's column
            np.testing.assert_array_equal(np.asarray(mask[nxt]["w"])[gone], 0.0)   # the rows reading it
            for entry in (params[name]["w"][:, gone], params[name]["b"][gone], params[nxt]["w"][gone]):
                np.testing.assert_array_equal(np.asarray(entry), 0.0)
            units.append(b != 0)
        np.testing.assert_array_equal(np.asarray(mask["dense_2"]["b"]), 1.0)       # outputs are never pruned
        # every other entry is kept: the mask is exactly the chain of kept units
        np.testing.assert_array_equal(np.asarray(mask["dense_1"]["w"]), np.outer(units[0], units[1]))
        np.testing.assert_array_equal(np.asarray(mask["dense_0"]["w"]), np.outer(np.ones(5), units[0]))
        kept = 5 * units[0].sum() + units[0].sum() * units[1].sum() + units[1].sum() * C
        assert float(metrics["compute_fraction"]) == pytest.approx(kept / (5 * 8 + 8 * 6 + 6 * C), abs=1e-12)


def test_one_pruned_round_matches_a_numpy_reference(x64):
    """Round 0 prunes to s_0 = 0.25 (floor(0.25 * 30) = 7 entries of W0 [5, 6], 4 of W1 [6, 3]),
    every node runs 2 full-batch SGD steps on the masked model, the changes are averaged with
    sample weights over the active nodes and the new model is masked."""
    data, xs, ys = make_data([5, 3, 6, 4], seed=4)
    model = ej.models.mlp(data.feature_shape, C, hidden=(6,))
    alg = PrunedFedAvg(model, 0.5, initial_sparsity=0.25, prune_steps=2)
    sim = ej.Simulation(model, data, alg, LocalTraining(batch_size=8, steps=2))
    hp = sim.hparams({"client_lr": 0.4})
    state = sim.init(jax.random.PRNGKey(5), hp)
    x = _np_params(state.server.params)
    masks = []
    for w in x:
        if w.ndim < 2:
            masks.append(np.ones_like(w))
            continue
        order = np.argsort(np.abs(w).ravel(), kind="stable")
        m = np.ones(w.size)
        m[order[:math.floor(0.25 * w.size)]] = 0
        masks.append(m.reshape(w.shape))
    x = [w * m for w, m in zip(x, masks)]
    active = np.array([1, 0, 1, 1])
    changes = [[a - b for a, b in zip(_np_sgd(x, masks, xs[i], ys[i], 0.4, 2), x)] for i in range(4)]
    p = active * np.array([5, 3, 6, 4]) / np.sum(active * np.array([5, 3, 6, 4]))
    want = [(w + sum(p[i] * changes[i][k] for i in range(4))) * m for k, (w, m) in enumerate(zip(x, masks))]
    [(new, metrics)] = _rounds(sim, data, hp, [active.tolist()], state)
    for got, w in zip(_np_params(new.server.params), want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(np.concatenate([np.ravel(m) for m in masks]),
                                  np.concatenate([np.ravel(m) for m in _np_params(new.server.extra.mask)]))


# ----- pruning: bytes and compute ---------------------------------------------------------------

def test_sparse_bytes_equal_the_hand_count(x64):
    # a tensor of n entries, k kept: n * 8 dense; else 8 k + min(ceil(n / 8), 4 k)
    w = jnp.zeros((64, 32))
    for kept, want in ((2048, 2048 * 8), (1024, 1024 * 8 + 256), (21, 21 * 8 + 84), (64, 64 * 8 + 256)):
        mask = jnp.zeros(2048).at[:kept].set(1.0).reshape(64, 32)
        assert float(sparse_bytes([mask], [w])) == want
    data, _, _ = make_data([5, 3, 6, 4], seed=1)
    model = ej.models.mlp(data.feature_shape, C, hidden=(6,))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    # s_f = 0.5, unstructured: W0 [5, 6] keeps 15 -> 15 * 8 + min(4, 60); b0 dense 48; W1 [6, 3] keeps 9 ->
    # 72 + min(3, 36); b1 dense 24
    pay = PrunedFedAvg(model, 0.5).payload(params, 4)
    assert (pay.up, pay.down, pay.compute) == (124 + 48 + 75 + 24,) * 2 + (pytest.approx(24 / 48),)
    # structured: 3 of 6 hidden units kept: W0 keeps 15 (124), b0 keeps 3 -> 24 + min(1, 12) = 25, W1 keeps 9 (75),
    # b1 dense 24; compute (15 + 9) / (30 + 18)
    pay = PrunedFedAvg(model, 0.5, structure="structured").payload(params, 4)
    assert (pay.up, pay.down, pay.compute) == (124 + 25 + 75 + 24,) * 2 + (pytest.approx(0.5),)
    # the round's metrics count each participant's bytes under the round's mask
    alg = PrunedFedAvg(model, 0.5, initial_sparsity=0.5, prune_steps=1)
    sim = ej.Simulation(model, data, alg, LocalTraining(batch_size=2, steps=1))
    [(_, metrics)] = _rounds(sim, data, sim.hparams({}), [[1, 0, 1, 1]])
    assert float(metrics["bytes_up"]) == float(metrics["bytes_down"]) == 3 * 271


# ----- fake quantization and the straight-through estimator ------------------------------------

@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_fake_quantized_values_lie_on_the_grid(x64, bits, granularity):
    w = jax.random.normal(jax.random.PRNGKey(bits), (7, 5)) * jnp.arange(1.0, 6.0)
    level = 2 ** (bits - 1) - 1
    q, scale = quantize(w, bits, granularity)
    want_scale = (np.max(np.abs(np.asarray(w)), axis=0, keepdims=True) if granularity == "channel"
                  else np.max(np.abs(np.asarray(w))).reshape(1, 1)) / level
    assert scale.shape == ((1, 5) if granularity == "channel" else (1, 1))
    np.testing.assert_allclose(np.asarray(scale), want_scale, rtol=1e-15)
    fq = np.asarray(fake_quantize(w, bits, granularity))
    levels = fq / want_scale
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-9)               # integers times the scale
    assert np.max(np.abs(np.round(levels))) == level                              # max |w| maps to q_max
    assert np.all(np.abs(levels) <= level + 1e-9)
    np.testing.assert_allclose(fq, _np_quantize(np.asarray(w), bits, granularity == "channel"), rtol=1e-15)
    assert np.max(np.abs(fq - np.asarray(w)) / want_scale) <= 0.5 + 1e-9          # round to nearest
    assert np.unique(np.round(levels)).size <= 2 * level + 1
    np.testing.assert_array_equal(np.asarray(fake_quantize(jnp.zeros((3, 2)), bits, granularity)), 0.0)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_the_gradient_is_the_straight_through_one(x64, bits, granularity):
    """grad_w L(Q(w)) = (grad L)(Q(w)): the float model's gradient at the quantized weights;
    biases stay float."""
    data, xs, ys = make_data([8], seed=6)
    model = ej.models.mlp(data.feature_shape, C, hidden=(6,))
    qat = quantization_aware(model, bits, granularity)
    params = model.init(jax.random.PRNGKey(7))
    x, y = jnp.asarray(xs[0]), jnp.asarray(ys[0])
    wts = jnp.ones(len(ys[0]))

    def loss(m, p):
        return m.loss.fn(m.apply(p, x), y, wts)

    quantized = jax.tree_util.tree_map(lambda w: fake_quantize(w, bits, granularity) if w.ndim >= 2 else w, params)
    got_loss, got = jax.value_and_grad(lambda p: loss(qat, p))(params)
    want_loss, want = jax.value_and_grad(lambda p: loss(model, p))(quantized)
    assert float(got_loss) == pytest.approx(float(want_loss), rel=1e-14)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15), got, want)
    # and against the NumPy reference at the NumPy-quantized weights
    qn = [_np_quantize(w, bits, granularity == "channel") if w.ndim >= 2 else w for w in _np_params(params)]
    ref_loss, ref = masked_mlp_loss_grad(qn, [np.ones_like(w) for w in qn], xs[0], ys[0], C)
    assert float(got_loss) == pytest.approx(ref_loss, rel=1e-12)
    for a, b in zip(_np_params(got), ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    assert qat.layers is None and qat.name == f"{model.name}+qat{bits}{'c' if granularity == 'channel' else ''}"


# ----- int-b links -------------------------------------------------------------------------------

def test_quantized_bytes_equal_the_hand_count():
    params = jax.eval_shape(ej.models.mlp((5,), C, hidden=(6,)).init, jax.random.PRNGKey(0))   # float32
    # W0 [5, 6], b0 [6], W1 [6, 3], b1 [3]: int8 one byte a value, a 4-byte scale per tensor or per column
    assert quantized_bytes(params, 8) == (30 + 4) + (6 + 4) + (18 + 4) + (3 + 4)
    assert quantized_bytes(params, 8, "channel") == (30 + 6 * 4) + (6 + 4) + (18 + 3 * 4) + (3 + 4)
    # int4: two values a byte, rounded up per tensor
    assert quantized_bytes(params, 4) == (15 + 4) + (3 + 4) + (9 + 4) + (2 + 4)
    pay = QuantizedFedAvg(bits=4, uplink=False).payload(params, 4)
    assert (pay.up, pay.down) == (57 * 4, 45)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_one_quantized_round_matches_a_numpy_reference(x64, granularity):
    """x_d = Q(x); node i: 2 full-batch SGD steps from x_d; u_i = Q(x_i - x_d); x <- x + sum_i p_i u_i."""
    data, xs, ys = make_data([5, 3, 6, 4], seed=8)
    model = ej.models.mlp(data.feature_shape, C, hidden=(6,))
    sim = ej.Simulation(model, data, QuantizedFedAvg(bits=4, granularity=granularity),
                        LocalTraining(batch_size=8, steps=2))
    hp = sim.hparams({"client_lr": 0.4})
    state = sim.init(jax.random.PRNGKey(9), hp)
    x = _np_params(state.server.params)
    per_channel = granularity == "channel"
    start = [_np_quantize(w, 4, per_channel) for w in x]
    ones = [np.ones_like(w) for w in x]
    active = np.array([1, 1, 0, 1])
    sent = [[_np_quantize(a - b, 4, per_channel) for a, b in zip(_np_sgd(start, ones, xs[i], ys[i], 0.4, 2), start)]
            for i in range(4)]
    p = active * np.array([5, 3, 6, 4]) / np.sum(active * np.array([5, 3, 6, 4]))
    want = [w + sum(p[i] * sent[i][k] for i in range(4)) for k, w in enumerate(x)]
    [(new, metrics)] = _rounds(sim, data, hp, [active.tolist()], state)
    for got, w in zip(_np_params(new.server.params), want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-14)
    per_node = quantized_bytes(state.server.params, 4, granularity)              # float64 scales: 8 bytes each
    assert float(metrics["bytes_up"]) == float(metrics["bytes_down"]) == 3 * per_node


def test_unquantized_links_are_fedavg(x64):
    data, _, _ = make_data([5, 3, 6, 4], seed=10)
    model = ej.models.mlp(data.feature_shape, C, hidden=(4,))
    local = LocalTraining(batch_size=2, epochs=1, execution="per_node")
    fedavg = ej.Simulation(model, data, ej.FedAvg(), local)
    hp = fedavg.hparams({"client_lr": 0.2})
    plain = ej.Simulation(model, data, QuantizedFedAvg(downlink=False, uplink=False), local)
    (want, _), = _rounds(fedavg, data, hp, [[1, 0, 1, 1]])
    (got, _), = _rounds(plain, data, hp, [[1, 0, 1, 1]])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14),
                           got.server.params, want.server.params)


# ----- bad options --------------------------------------------------------------------------------

def test_bad_sparsity_bits_and_granularity_raise_naming_the_value():
    model = ej.models.mlp((5,), C, hidden=(4,))
    for bad in (-0.1, 1.0, 1.5, "0.5", True):
        with pytest.raises(ValueError, match=rf"final_sparsity={bad!r}"):
            PrunedFedAvg(model, bad)
    with pytest.raises(ValueError, match=r"initial_sparsity=1\.0"):
        PrunedFedAvg(model, 0.5, initial_sparsity=1.0)
    with pytest.raises(ValueError, match=r"initial_sparsity=0\.6 exceeds final_sparsity=0\.5"):
        PrunedFedAvg(model, 0.5, initial_sparsity=0.6)
    with pytest.raises(ValueError, match="'channels'"):
        PrunedFedAvg(model, 0.5, structure="channels")
    for name in ("prune_every", "prune_steps"):
        with pytest.raises(ValueError, match=rf"{name}=0"):
            PrunedFedAvg(model, 0.5, **{name: 0})
    for bad in (0, 1, 17, 8.0, True, "8"):
        for build in (lambda b: quantization_aware(model, bits=b), lambda b: QuantizedFedAvg(bits=b),
                      lambda b: fake_quantize(jnp.ones(3), b), lambda b: quantized_bytes({"w": jnp.ones(3)}, b)):
            with pytest.raises(ValueError, match=rf"bits={bad!r}"):
                build(bad)
    for build in (lambda g: quantization_aware(model, 8, g), lambda g: QuantizedFedAvg(granularity=g),
                  lambda g: fake_quantize(jnp.ones(3), 8, g)):
        with pytest.raises(ValueError, match="'row'"):
            build("row")


# ----- registry and end to end ---------------------------------------------------------------------

def test_registry_names():
    model = ej.models.mlp((5,), C, hidden=(4,))
    assert ej.get_algorithm("pruned_fedavg", model=model, final_sparsity=0.5) == PrunedFedAvg(model, 0.5)
    assert ej.get_algorithm("quantized_fedavg", bits=4) == QuantizedFedAvg(bits=4)
    assert ej.PrunedFedAvg is PrunedFedAvg and ej.QuantizedFedAvg is QuantizedFedAvg
    assert PrunedFedAvg(model, 0.5, structure="structured").describe()["model"] == model.name


def test_end_to_end_runs_prune_and_quantize():
    data, _, _ = make_data([12, 9, 15, 10, 8, 11], dim=6, seed=11, dtype=np.float32)
    model = ej.models.mlp(data.feature_shape, C, hidden=(16,))
    local = LocalTraining(batch_size=4, epochs=1)
    runs = {
        "structured": ej.Simulation(model, data, ej.PrunedFedAvg(model, 0.75, prune_every=2, prune_steps=2,
                                                                  structure="structured"), local,
                                    clients_per_round=4),
        "unstructured": ej.Simulation(model, data, ej.get_algorithm("pruned_fedavg", model=model,
                                                                     final_sparsity=0.9, prune_steps=3), local),
        "int4_links": ej.Simulation(model, data, ej.QuantizedFedAvg(bits=4, granularity="channel"), local),
        "qat_int8": ej.Simulation(quantization_aware(model, bits=8), data, ej.QuantizedFedAvg(bits=8), local),
    }
    for name, sim in runs.items():
        results = sim.run(6, seed=0, eval_every=3, hparams={"client_lr": 0.1})
        rounds = results.to_dataframe()
        assert np.all(np.isfinite(rounds["train_loss"].to_numpy()[1:])), name
        assert np.isfinite(results.evals["test_accuracy"]).all(), name
        if name in ("structured", "unstructured"):
            mask = results.final_state.server.extra.mask
            for leaf, m in zip(jax.tree_util.tree_leaves(results.final_state.server.params),
                               jax.tree_util.tree_leaves(mask)):
                assert np.all(np.asarray(leaf)[np.asarray(m) == 0] == 0.0), name
            target = rounds["target_sparsity"].to_numpy()[-1]
            assert target == pytest.approx(0.75 if name == "structured" else 0.9, rel=1e-6), name
