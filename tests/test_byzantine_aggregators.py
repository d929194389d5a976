"""Byzantine-robust aggregators over whole updates (Krum, Multi-Krum, RFA's geometric median,
centered clipping, norm bounding) against float64 NumPy loops written from the papers'
equations, with masks (absent rows are NaN: nothing of them may leak) and ties; FedAvg with
two poisoned nodes; centered clipping's state carried round to round; FedBuff's flush."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import edgejax as ej
from conftest import make_data
from edgejax.algorithms.registry import parse_aggregator
from edgejax.system import SystemModel, profiles_from_arrays
from references import local_gd

KEY = jax.random.PRNGKey(0)
MASKS = [[1, 1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1, 1], [0, 0, 1, 1, 0, 0, 0]]


# ----- the references: plain loops over the rows that take part, float64 ----------------------
def _tree(rows, mask):
    """Rows ``[K, d=15]`` as a two-leaf update ``{"a": [K, 3, 4], "b": [K, 3]}``, NaN outside ``mask``."""
    rows = np.where(np.asarray(mask, bool)[:, None], rows, np.nan)
    return {"a": jnp.asarray(rows[:, :12].reshape(-1, 3, 4)), "b": jnp.asarray(rows[:, 12:])}


def _flat(tree):
    """An aggregate ``{"a": [3, 4], "b": [3]}`` as one vector (the same order as ``_tree``)."""
    return np.concatenate([np.asarray(tree["a"]).ravel(), np.asarray(tree["b"]).ravel()])


def _rows(seed, k=7, d=15):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, d)), rng.uniform(0.1, 1.0, size=k)


def krum_scores(rows, f):
    """Blanchard et al. 2017: score(i) = sum of ||u_i - u_j||^2 over the n - f - 2 rows j != i
    closest to u_i (over all n - 1 others when n - f - 2 < 1, edgejax's convention)."""
    n = len(rows)
    closest = n - f - 2 if n - f - 2 >= 1 else n - 1
    scores = []
    for i in range(n):
        others = sorted(float(np.sum((rows[i] - rows[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(others[:closest]))
    return scores


def multi_krum(rows, f, m):
    """The mean of the m rows of least score, the lower index first among equal scores."""
    scores = krum_scores(rows, f)
    order = sorted(range(len(rows)), key=lambda i: (scores[i], i))
    return np.mean([rows[i] for i in order[:m]], axis=0)


def smoothed_weiszfeld(rows, weights, iterations, eps):
    """Pillutla et al. 2022 (RFA): v from the weighted mean, then v <- sum_i beta_i u_i / sum_i beta_i,
    beta_i = alpha_i / max(eps, ||u_i - v||)."""
    alpha = np.asarray(weights) / np.sum(weights)
    v = sum(a * u for a, u in zip(alpha, rows))
    for _ in range(iterations):
        beta = [a / max(eps, np.linalg.norm(u - v)) for a, u in zip(alpha, rows)]
        v = sum(b * u for b, u in zip(beta, rows)) / sum(beta)
    return v


def centered_clipping(rows, v, tau, iterations):
    """Karimireddy et al. 2021: v <- v + (1/n) sum_i (u_i - v) min(1, tau / ||u_i - v||)."""
    for _ in range(iterations):
        v = v + sum((u - v) * min(1.0, tau / np.linalg.norm(u - v)) for u in rows) / len(rows)
    return v


def norm_bounded(rows, weights, bound):
    """Sun et al. 2019: sum_i w_i u_i min(1, M / ||u_i||)."""
    return sum(w * u * min(1.0, bound / np.linalg.norm(u)) for w, u in zip(weights, rows))


def _hparams(aggregator, **values):
    return {name: jnp.asarray(values.get(name, value)) for name, value in aggregator.default_hparams().items()}


@functools.cache
def _compiled(aggregator):
    """One jitted ``update`` per aggregator (the masks, weights and traced radii are its arguments)."""
    return jax.jit(aggregator.update)


def _update(aggregator, rows, weights, mask, state=(), **hparams):
    out, state, metrics = _compiled(aggregator)(_tree(rows, mask), jnp.asarray(weights),
                                                      jnp.asarray(mask, bool), state, KEY,
                                                      _hparams(aggregator, **hparams))
    return _flat(out), state


# ----- the statistics -------------------------------------------------------------------------
@pytest.mark.parametrize("mask", MASKS)
def test_krum_and_multi_krum_equal_numpy_loops_over_the_rows_that_take_part(x64, mask):
    rows, w = _rows(1)
    present = np.asarray(mask, bool)
    total = w[present].sum()
    for f in (0, 1, 2, 4):                     # n - f - 2 < 1 (n = 2, or f = 4): over all other rows
        out, _ = _update(ej.Krum(byzantine=f), rows, w, mask)
        np.testing.assert_allclose(out, total * multi_krum(rows[present], f, 1), rtol=1e-14, atol=1e-15)
    for f, m in ((0, 3), (1, 2), (2, 7)):      # m = 7 > n: the mean of all n rows
        out, _ = _update(ej.MultiKrum(byzantine=f, select=m), rows, w, mask)
        np.testing.assert_allclose(out, total * multi_krum(rows[present], f, m), rtol=1e-13, atol=1e-15)


def test_krum_distances_are_over_the_whole_update_not_per_leaf(x64):
    """Leaf ``a`` alone would pick row 1, leaf ``b`` alone row 2; over the whole update Krum picks row 0."""
    rows = np.zeros((4, 15))
    rows[:, 0] = [0.0, 1.0, -1.0, 1.2]
    rows[:, 12] = [0.0, 10.0, 0.1, 0.2]
    out, _ = _update(ej.Krum(byzantine=0), rows, np.full(4, 0.25), [1, 1, 1, 1])
    np.testing.assert_array_equal(out, rows[0])
    assert multi_krum(rows[:, :12], 0, 1)[0] == 1.0 and multi_krum(rows[:, 12:], 0, 1)[0] == 0.1


@pytest.mark.parametrize("order", [1, -1])
def test_krum_ties_go_to_the_lowest_index(x64, order):
    """Points -2, -1, 1, 2 on a line (f = 0, n = 4, two neighbours): scores 10, 5, 5, 10.  Krum takes
    the first of the two 5s, Multi-Krum(3) the two 5s and the first 10; row 0 is absent (NaN)."""
    rows = np.zeros((5, 15))
    rows[1:, 0] = order * np.array([-2.0, -1.0, 1.0, 2.0])
    mask, w = [0, 1, 1, 1, 1], np.full(5, 0.25)
    assert krum_scores(rows[1:], 0) == [10.0, 5.0, 5.0, 10.0]
    krum, _ = _update(ej.Krum(byzantine=0), rows, w, mask)
    assert krum[0] == order * -1.0 and not np.any(krum[1:])
    multi, _ = _update(ej.MultiKrum(byzantine=0, select=3), rows, w, mask)
    np.testing.assert_allclose(multi[0], order * (-1.0 + 1.0 - 2.0) / 3, rtol=1e-15)


def test_krum_with_too_few_rows_for_its_neighbours_takes_the_medoid(x64):
    """n - f - 2 < 1 (a traced n: absent nodes): every other row counts, Krum is the row of least
    total squared distance; one row is itself; none is zero."""
    rows, w = _rows(2, k=5)
    mask = [1, 1, 0, 1, 1]                     # n = 4, f = 2: no neighbour left to score over
    present = rows[np.asarray(mask, bool)]
    medoid = present[np.argmin([sum(np.sum((a - b) ** 2) for b in present) for a in present])]
    out, _ = _update(ej.Krum(byzantine=2), rows, w, mask)
    np.testing.assert_allclose(out, w[[0, 1, 3, 4]].sum() * medoid, rtol=1e-14)
    out, _ = _update(ej.Krum(byzantine=2), rows, w, [0, 0, 0, 1, 0])
    np.testing.assert_allclose(out, w[3] * rows[3], rtol=1e-15)
    out, _ = _update(ej.MultiKrum(byzantine=1, select=3), rows, w, [0, 0, 0, 0, 0])
    assert not np.any(out) and np.all(np.isfinite(out))


@pytest.mark.parametrize("mask", MASKS)
def test_the_geometric_median_equals_the_smoothed_weiszfeld_loop(x64, mask):
    rows, w = _rows(3)
    rows[2] *= 30.0                            # one far row
    present = np.asarray(mask, bool)
    for iterations, eps in ((0, 1e-6), (1, 1e-6), (4, 1e-6), (10, 1e-3)):
        out, _ = _update(ej.GeometricMedian(iterations=iterations, eps=eps), rows, w, mask)
        expected = w[present].sum() * smoothed_weiszfeld(rows[present], w[present], iterations, eps)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)


def test_the_geometric_median_minimises_the_weighted_sum_of_distances(x64):
    """Many iterations approach ``argmin_v sum_i alpha_i ||u_i - v||`` (SciPy's BFGS from the mean):
    the same point to 1e-5 and an objective no larger than SciPy's + 1e-10."""
    rows, w = _rows(4, k=6, d=15)
    rows[5] += 20.0
    alpha = w / w.sum()

    def objective(v):
        return sum(a * np.linalg.norm(u - v) for a, u in zip(alpha, rows))

    best = optimize.minimize(objective, alpha @ rows, method="BFGS", options={"gtol": 1e-10, "maxiter": 10_000})
    out, _ = _update(ej.GeometricMedian(iterations=500, eps=1e-12), rows, w, [1] * 6)
    v = out / w.sum()
    np.testing.assert_allclose(v, best.x, atol=1e-5)
    assert objective(v) <= best.fun + 1e-10
    assert np.linalg.norm(v - rows[:5].mean(0)) < np.linalg.norm(alpha @ rows - rows[:5].mean(0)) / 5


@pytest.mark.parametrize("mask", MASKS)
def test_centered_clipping_equals_the_numpy_loop_from_its_state(x64, mask):
    rows, w = _rows(5)
    rows[0] *= 10.0
    present = np.asarray(mask, bool)
    v0 = 0.3 * np.random.default_rng(6).normal(size=15)
    state = {"a": jnp.asarray(v0[:12].reshape(3, 4)), "b": jnp.asarray(v0[12:])}
    distances = np.linalg.norm(rows[present] - v0, axis=1)
    for tau in (0.5 * distances.min(), np.median(distances), 2.0 * distances.max()):   # all, some, none clipped
        for iterations in (1, 3):
            out, new = _update(ej.CenteredClipping(iterations=iterations), rows, w, mask, state, cclip_tau=tau)
            v = centered_clipping(rows[present], v0, tau, iterations)
            np.testing.assert_allclose(out, w[present].sum() * v, rtol=1e-13, atol=1e-14)
            np.testing.assert_allclose(_flat(new), v, rtol=1e-13, atol=1e-14)   # the state is the new centre
    assert ej.CenteredClipping().init({"a": jnp.ones(3)})["a"].tolist() == [0.0, 0.0, 0.0]


def test_centered_clipping_with_no_row_keeps_its_state_and_returns_zero(x64):
    rows, w = _rows(7)
    state = {"a": jnp.ones((3, 4)), "b": jnp.ones(3)}
    out, new = _update(ej.CenteredClipping(tau=1.0), rows, w, [0] * 7, state)
    assert not np.any(out) and np.all(_flat(new) == 1.0)


@pytest.mark.parametrize("mask", MASKS)
def test_norm_bounding_equals_the_weighted_sum_of_clipped_rows(x64, mask):
    rows, w = _rows(8)
    rows[3] *= 10.0
    present = np.asarray(mask, bool)
    norms = np.linalg.norm(rows[present], axis=1)
    for bound in (0.5 * norms.min(), np.median(norms), 2.0 * norms.max()):
        out, _ = _update(ej.NormBounded(), rows, w, mask, norm_bound=bound)
        np.testing.assert_allclose(out, norm_bounded(rows[present], w[present], bound), rtol=1e-13, atol=1e-15)
    mean, _ = _update(ej.Mean(), rows, w, mask)
    np.testing.assert_allclose(out, mean, rtol=1e-14)          # nothing clipped: the weighted mean


def test_every_byzantine_aggregator_returns_zero_when_no_row_takes_part():
    rows, w = _rows(9, k=3)
    tree = {"a": jnp.asarray(rows, jnp.float32)}
    for aggregator in (ej.Krum(1), ej.MultiKrum(0, 2), ej.GeometricMedian(), ej.CenteredClipping(), ej.NormBounded()):
        out, _, _ = aggregator.update(tree, jnp.asarray(w, jnp.float32), jnp.zeros(3, bool),
                                      aggregator.init({"a": jnp.zeros(15)}), KEY, _hparams(aggregator))
        assert out["a"].dtype == jnp.float32 and np.all(np.asarray(out["a"]) == 0), aggregator


# ----- in the algorithms ----------------------------------------------------------------------
def _fedavg_sim(data, aggregator, cohort=None, weighting="uniform"):
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    return ej.Simulation(model, data, ej.FedAvg(aggregator=aggregator, weighting=weighting),
                         ej.LocalTraining(batch_size=int(np.max(data.node_counts())), steps=3, epochs=None,
                                          execution="per_node"), clients_per_round=cohort)


@functools.cache
def _poisoned():
    """Nine nodes; nodes 0 and 5 have their features scaled by 1e3 (data-poisoning clients)."""
    data, _, _ = make_data([8] * 9, seed=7, dtype=np.float32, local_test=2)
    x = np.asarray(data.train.x).copy()
    x[[0, 5]] *= 1e3
    return data, data.replace(train=data.train._replace(x=jnp.asarray(x)))


def _final_test_losses(sim, datasets, hparams, rounds=10):
    """The final test loss of ``rounds`` rounds on each data set (one compiled program)."""
    chunk, losses = jax.jit(sim.run_chunk, static_argnums=3), []
    for data in datasets:
        _, _, evals = chunk(sim.init(jax.random.PRNGKey(0), hparams), data, hparams, rounds, rounds)
        losses.append(float(evals["test_loss"]))
    return losses


@functools.cache
def _mean_losses():
    """The mean's final test loss on the poisoned and the clean data (one compiled program)."""
    clean, poisoned = _poisoned()
    sim = _fedavg_sim(poisoned, ej.Mean())
    hp = sim.hparams({"client_lr": 0.1})
    return _final_test_losses(sim, [poisoned, clean], hp)


def test_two_poisoned_nodes_break_the_mean():
    """FedAvg's mean, 10 rounds: it follows the two huge updates (10x the clean run's test loss)."""
    mean, clean = _mean_losses()
    assert mean > 10 * clean, (mean, clean)


@pytest.mark.parametrize("aggregator, hparams", [(ej.Krum(byzantine=2), {}), (ej.GeometricMedian(), {}),
                                                 (ej.CenteredClipping(), {"cclip_tau": 0.3})],
                         ids=["krum", "geomedian", "cclip"])
def test_two_poisoned_nodes_break_the_mean_and_not_the_robust_aggregators(aggregator, hparams):
    """FedAvg, 10 rounds: the mean follows the two huge updates (its test loss is > 10x the robust
    one's), Krum, RFA and centered clipping stay within 1.5x of the clean run's loss."""
    _, poisoned = _poisoned()
    sim = _fedavg_sim(poisoned, aggregator)
    assert sim.execution == "per_node"
    robust, = _final_test_losses(sim, [poisoned], sim.hparams({"client_lr": 0.1, **hparams}))
    mean, clean = _mean_losses()
    assert mean > 10 * robust and robust < 1.5 * clean, (mean, robust, clean)


def _wb(state):
    p = state.server.params["out"]
    return np.asarray(p["w"]), np.asarray(p["b"])


def test_fedavg_carries_centered_clippings_centre_from_round_to_round(x64):
    """x <- x + v_t, v_t = CC(changes of the round's nodes; v_{t-1}), v_0 = 0 (Karimireddy et al.'s
    history): each round against NumPy, ``state.server.aggregator`` the aggregate just applied."""
    data, xs, ys = make_data([5, 3, 6, 4, 7], seed=4)
    sim = _fedavg_sim(data, ej.CenteredClipping(iterations=2), cohort=4, weighting="samples")
    tau = 0.15
    hp = sim.hparams({"client_lr": 0.2, "cclip_tau": tau})
    state = sim.init(jax.random.PRNGKey(1), hp)
    assert not np.any(_flat_wb(state.server.aggregator["out"]))
    round_fn = jax.jit(sim.round)
    v, clipped = np.zeros(18), []
    for _ in range(3):
        w0, b0 = _wb(state)
        plan = sim.plan(state, hp)
        chosen = [int(i) for i, a in zip(plan.nodes, plan.active) if a > 0]
        changes = [np.concatenate([(w - w0).ravel(), b - b0]) for w, b in
                   (local_gd(w0, b0, xs[i], ys[i], 3, 0.2, 3) for i in chosen)]
        clipped += [np.linalg.norm(c - v) > tau for c in changes]
        v = centered_clipping(changes, v, tau, 2)
        state, _ = round_fn(state, data, hp)
        w1, b1 = _wb(state)
        np.testing.assert_allclose(_flat_wb(state.server.aggregator["out"]), v, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(np.concatenate([(w1 - w0).ravel(), b1 - b0]), v, rtol=1e-12, atol=1e-13)
    assert any(clipped) and not all(clipped)   # the radius bites on some rows, not all


def _flat_wb(p):
    return np.concatenate([np.asarray(p["w"]).ravel(), np.asarray(p["b"]).ravel()])


def test_fedbuffs_first_flush_through_krum_equals_numpy(x64):
    """FedBuff(K=4): the first four arrivals (staleness 0, weight 1) fill the buffer; the flush is
    x0 + server_lr * Krum(their changes) (weights 1/K sum to 1; f = 0: two neighbours, no tie)."""
    sizes, speeds = [5, 4, 6, 5, 3, 5], [1.0, 1.3, 0.7, 2.1, 1.7, 0.9]
    data, xs, ys = make_data(sizes, seed=30)
    n = len(sizes)
    profiles = profiles_from_arrays(np.asarray(speeds), np.full(n, 1e9), np.full(n, 1e9), latency=0.0,
                                    energy_per_sample=1e-3, energy_per_byte=0.0)
    sim = ej.Simulation(ej.models.logistic_regression(data.feature_shape, data.num_classes), data,
                        ej.FedBuff(buffer_size=4, log_events=True, aggregator=ej.Krum(byzantine=0)),
                        ej.LocalTraining(batch_size=max(sizes), steps=2, execution="per_node"),
                        system=SystemModel(profiles=profiles))
    hp = sim.hparams({"client_lr": 0.3})
    state = sim.init(jax.random.PRNGKey(0), hp)
    w0, b0 = _wb(state)
    tick, arrivals = jax.jit(sim.round), []
    while len(arrivals) < 4:
        assert np.all(_wb(state)[0] == w0)
        state, metrics = tick(state, data, hp)
        arrivals += [(int(i), int(s)) for i, s in zip(np.asarray(metrics["event_node"]),
                                                       np.asarray(metrics["event_staleness"])) if i >= 0]
    assert len(arrivals) == 4 and all(s == 0 for _, s in arrivals)
    rows = [np.concatenate([(w - w0).ravel(), b - b0]) for w, b in
            (local_gd(w0, b0, xs[i], ys[i], 3, 0.3, 2) for i, _ in arrivals)]
    expected = np.concatenate([w0.ravel(), b0]) + multi_krum(rows, 0, 1)
    np.testing.assert_allclose(_flat_wb(state.server.params["out"]), expected, rtol=1e-11, atol=1e-13)


# ----- options --------------------------------------------------------------------------------
def test_the_spellings_of_the_cli_and_their_traced_hyper_parameters():
    assert parse_aggregator("krum:2") == ej.Krum(byzantine=2)
    assert parse_aggregator("MultiKrum:1:3") == ej.MultiKrum(byzantine=1, select=3)
    assert parse_aggregator("geomedian") == ej.GeometricMedian()
    assert parse_aggregator("cclip") == ej.CenteredClipping() and parse_aggregator("normbound") == ej.NormBounded()
    assert ej.FedAvg(aggregator=ej.CenteredClipping(tau=2.0)).default_hparams()["cclip_tau"] == 2.0
    assert ej.FedBuff(aggregator=ej.NormBounded(0.5)).default_hparams()["norm_bound"] == 0.5
    assert ej.FedAvg(aggregator=ej.Krum(1)).name == "fedavg+krum"
    assert ej.MultiKrum(np.int64(1), np.int64(2)).select == 2      # NumPy integers are integers


@pytest.mark.parametrize("build, message", [
    (lambda: ej.Krum(byzantine=-1), r"Krum: byzantine=-1 must be an integer >= 0"),
    (lambda: ej.Krum(byzantine=1.5), r"Krum: byzantine=1.5 must be an integer >= 0"),
    (lambda: ej.Krum(byzantine=True), r"Krum: byzantine=True must be an integer >= 0"),
    (lambda: ej.MultiKrum(byzantine=1, select=0), r"MultiKrum: select=0 must be an integer >= 1"),
    (lambda: ej.GeometricMedian(iterations=-2), r"GeometricMedian: iterations=-2 must be an integer >= 0"),
    (lambda: ej.GeometricMedian(eps=0.0), r"GeometricMedian: eps=0.0 must be a positive finite number"),
    (lambda: ej.CenteredClipping(tau=-1.0), r"CenteredClipping: tau=-1.0 must be a positive finite number"),
    (lambda: ej.CenteredClipping(iterations=0), r"CenteredClipping: iterations=0 must be an integer >= 1"),
    (lambda: ej.NormBounded(float("inf")), r"NormBounded: max_norm=inf must be a positive finite number"),
    (lambda: parse_aggregator("krum"), r"bad aggregator 'krum'; accepted: .*'krum:<f>', 'multikrum:<f>:<m>'"),
    (lambda: parse_aggregator("krum:two"), r"bad aggregator 'krum:two': 'two' is not an integer"),
    (lambda: parse_aggregator("multikrum:1:0"), r"bad aggregator 'multikrum:1:0': MultiKrum: select=0 must be"),
    (lambda: parse_aggregator("cclip:3"), r"bad aggregator 'cclip:3'; accepted"),
])
def test_bad_options_are_refused_naming_the_value(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_traced_radii_are_refused_before_compute():
    data, _, _ = make_data([5, 3, 6], seed=1, dtype=np.float32)
    with pytest.raises(ValueError, match=r"cclip_tau=-1 is outside its valid range: \(0, inf\)"):
        _fedavg_sim(data, ej.CenteredClipping()).hparams({"cclip_tau": -1.0})
    with pytest.raises(ValueError, match=r"norm_bound=0 is outside its valid range"):
        _fedavg_sim(data, ej.NormBounded()).hparams({"norm_bound": 0.0})
