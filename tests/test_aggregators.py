"""Aggregators (the server's combining step): the robust statistics against NumPy/SciPy, the
mean through the seam equal to the fused execution, and FedAvg with a coordinate-wise median
against a float64 NumPy round."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import edgejax as ej
from conftest import make_data
from references import local_gd

KEY = jax.random.PRNGKey(0)


def _rows(seed, k=7, shape=(3, 4)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, *shape)), rng.uniform(0.1, 1.0, size=k)


@pytest.mark.parametrize("mask", [[1, 1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1, 1], [0, 0, 1, 1, 0, 0, 0]])
def test_median_and_trimmed_mean_equal_numpy_and_scipy_over_the_rows_that_take_part(x64, mask):
    u, w = _rows(1)
    mask = np.asarray(mask, bool)
    u_nan = np.where(mask[:, None, None], u, np.nan)   # a NaN in a row that does not take part must not leak
    total = w[mask].sum()
    tree = {"a": jnp.asarray(u_nan), "b": jnp.asarray(u_nan[:, 0])}
    median, _, _ = ej.CoordinateMedian().update(tree, jnp.asarray(w), jnp.asarray(mask), (), KEY, {})
    np.testing.assert_allclose(median["a"], total * np.median(u[mask], axis=0), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(median["b"], total * np.median(u[mask][:, 0], axis=0), rtol=1e-14, atol=1e-15)
    for trim in (0.0, 0.2, 0.3, 0.49):
        trimmed, _, _ = ej.TrimmedMean(trim).update(tree, jnp.asarray(w), jnp.asarray(mask), (), KEY, {})
        np.testing.assert_allclose(trimmed["a"], total * stats.trim_mean(u[mask], trim, axis=0), rtol=1e-13)


def test_the_robust_aggregators_return_zero_when_no_row_takes_part():
    u, w = _rows(2, k=3)
    none = jnp.zeros(3, bool)
    for aggregator in (ej.CoordinateMedian(), ej.TrimmedMean(0.2), ej.Mean()):
        out, _, _ = aggregator.update({"a": jnp.asarray(u, jnp.float32)}, jnp.asarray(w, jnp.float32), none, (),
                                      KEY, {})
        assert np.all(np.asarray(out["a"]) == 0), aggregator


def test_the_median_resists_a_row_the_mean_follows():
    """One wild row (a Byzantine node): the mean moves by it / K, the median stays within the honest rows."""
    u, _ = _rows(3, k=9)
    u[4] = 1e6
    w, mask = jnp.full(9, 1 / 9), jnp.ones(9, bool)
    mean, _, _ = ej.Mean().update({"a": jnp.asarray(u)}, w, mask, (), KEY, {})
    median, _, _ = ej.CoordinateMedian().update({"a": jnp.asarray(u)}, w, mask, (), KEY, {})
    honest = np.delete(u, 4, axis=0)
    assert np.all(np.asarray(mean["a"]) > 1e5)
    assert np.all((np.asarray(median["a"]) >= honest.min(0) - 1e-6) & (np.asarray(median["a"]) <= honest.max(0) + 1e-6))


def _fedavg_sim(data, aggregator, cohort=None, weighting="samples", execution="auto", algorithm=ej.FedAvg, **options):
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    return ej.Simulation(model, data, algorithm(aggregator=aggregator, weighting=weighting, **options),
                         ej.LocalTraining(batch_size=int(np.max(data.node_counts())), steps=3, epochs=None,
                                          execution=execution),
                         clients_per_round=cohort)


def _wb(state):
    p = state.server.params["out"]
    return np.asarray(p["w"]), np.asarray(p["b"])


def test_fedavg_with_the_median_equals_a_float64_numpy_round(x64):
    """x <- x + median_i (LocalUpdate(x, D_i) - x) over the round's active nodes (sample weights sum to 1)."""
    data, xs, ys = make_data([5, 3, 6, 4, 7], seed=4)
    sim = _fedavg_sim(data, ej.CoordinateMedian(), cohort=4)
    assert sim.execution == "per_node"        # the median reads every node's change
    hp = sim.hparams({"client_lr": 0.2})
    state = sim.init(jax.random.PRNGKey(1), hp)
    round_fn = jax.jit(sim.round)
    for _ in range(3):
        w0, b0 = _wb(state)
        plan = sim.plan(state, hp)
        chosen = [int(i) for i, a in zip(plan.nodes, plan.active) if a > 0]
        trained = [local_gd(w0, b0, xs[i], ys[i], 3, 0.2, 3) for i in chosen]
        state, metrics = round_fn(state, data, hp)
        w1, b1 = _wb(state)
        np.testing.assert_allclose(w1, w0 + np.median([w - w0 for w, _ in trained], axis=0), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(b1, b0 + np.median([b - b0 for _, b in trained], axis=0), rtol=1e-12, atol=1e-13)
        assert float(metrics["participants"]) == len(chosen) == 4


@pytest.mark.parametrize("execution", ["per_node", "shared_base"])
def test_trimming_nothing_is_the_uniform_mean_whichever_execution_fuses_it(execution):
    """``TrimmedMean(0)`` through the seam (per-node changes) equals the fused mean with uniform
    weights; with sample weights it stays the unweighted mean (the robust statistics ignore sizes)."""
    data, _, _ = make_data([5, 3, 6, 4], seed=5, dtype=np.float32)

    def final(aggregator, weighting, execution="auto"):
        sim = _fedavg_sim(data, aggregator, cohort=3, weighting=weighting, execution=execution)
        assert sim.execution == (execution if aggregator.fusable else "per_node")
        return sim.run(3, hparams=sim.hparams({"client_lr": 0.2}), eval_every=3).final_state.server.params["out"]

    fused, seam = final(ej.Mean(), "uniform", execution), final(ej.TrimmedMean(0.0), "uniform")
    np.testing.assert_allclose(fused["w"], seam["w"], rtol=2e-6, atol=1e-7)
    weighted = final(ej.Mean(), "samples", execution)
    assert not np.allclose(weighted["w"], final(ej.TrimmedMean(0.0), "samples")["w"], rtol=1e-4)


@pytest.mark.parametrize("algorithm", [ej.FedAvg, ej.SCAFFOLD, ej.FedDyn, "compressed"])
def test_the_median_of_two_updates_is_their_uniform_mean_in_every_server_algorithm(x64, algorithm):
    """With two nodes a round and uniform weights the median is the mean: each algorithm's median run
    equals its default run, so the seam sits where the mean was."""
    data, _, _ = make_data([5, 3, 6, 4, 5], seed=6)
    options = {}
    if algorithm == "compressed":
        algorithm, options = ej.algorithms.CompressedFedAvg, {"compressor": ej.compression.TopK(fraction=0.5),
                                                              "error_feedback": True}
    runs = []
    for aggregator in (ej.Mean(), ej.CoordinateMedian()):
        sim = _fedavg_sim(data, aggregator, cohort=2, weighting="uniform", execution="per_node", algorithm=algorithm,
                          **options)
        runs.append(sim.run(4, hparams=sim.hparams({"client_lr": 0.2}), eval_every=4))
    a, b = (r.final_state.server.params["out"] for r in runs)
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(a["b"], b["b"], rtol=1e-12, atol=1e-13)
    assert runs[1].config["algorithm"]["aggregator"] == {"type": "CoordinateMedian"}


def test_a_poisoned_node_breaks_the_mean_and_not_the_median():
    """One node's features scaled by 1e3 (a data-poisoning client): FedAvg's mean follows its huge
    update, the median and the trimmed mean do not."""
    data, _, _ = make_data([8] * 9, seed=7, dtype=np.float32, local_test=2)
    x = np.asarray(data.train.x).copy()
    x[0] *= 1e3
    poisoned = data.replace(train=data.train._replace(x=jnp.asarray(x)))
    losses = {}
    for aggregator in (ej.Mean(), ej.CoordinateMedian(), ej.TrimmedMean(0.2)):
        sim = _fedavg_sim(poisoned, aggregator, weighting="uniform", execution="per_node")
        results = sim.run(10, hparams=sim.hparams({"client_lr": 0.1}), eval_every=10)
        losses[aggregator.name] = float(results.evals["test_loss"][-1])
    clean = _fedavg_sim(data, ej.Mean(), weighting="uniform").run(10, hparams=None, eval_every=10)
    assert losses["mean"] > 10 * losses["median"], losses
    assert losses["median"] < 2 * float(clean.evals["test_loss"][-1]) and losses["trimmed_mean"] < losses["mean"] / 10


def test_bad_aggregators_are_refused_before_compute():
    with pytest.raises(ValueError, match="aggregator must follow"):
        ej.FedAvg(aggregator="median")
    with pytest.raises(ValueError, match="aggregator must follow"):
        ej.FedBuff(aggregator=np.median)
    with pytest.raises(ValueError, match=r"trim=0\.5 must be in \[0, 0\.5\)"):
        ej.TrimmedMean(0.5)
