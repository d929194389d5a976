"""Byzantine attacks on the aggregator seam: each attack's rows against float64 NumPy formulas,
the Byzantine count, label flipping, and a claim that can fail: an attack that wrecks the mean is
survived by the coordinate-wise median."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

import edgejax as ej
from edgejax.algorithms.attacks import Attacked, flip_labels

KEY = jax.random.PRNGKey(11)


@pytest.mark.parametrize("attack, strength", [("sign_flip", None), ("scale", 3.0), ("alie", None), ("alie", 1.5),
                                              ("ipm", None)])
def test_each_attack_replaces_its_rows_as_the_paper_says(x64, attack, strength):
    rng = np.random.default_rng(4)
    k = 9
    u = [rng.normal(size=(k, 3, 2)), rng.normal(size=(k, 4))]
    mask = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1], bool)
    weights = np.where(mask, 1 / mask.sum(), 0.0)
    wrapper = Attacked(attack=attack, fraction=0.25, strength=strength)
    out, _, metrics = wrapper.update([jnp.asarray(a) for a in u], jnp.asarray(weights), jnp.asarray(mask), (),
                                     KEY, {})
    bad = np.asarray(wrapper.byzantine(jnp.asarray(mask), jax.random.split(KEY, 3)[0]))
    n, m = mask.sum(), round(0.25 * mask.sum())
    assert bad.sum() == m == float(metrics["byzantine_rows"]) and not np.any(bad & ~mask)
    honest = mask & ~bad
    for got, a in zip(out, u):
        mu, sigma = a[honest].mean(axis=0), a[honest].std(axis=0)
        if attack == "sign_flip":
            sent = -a
        elif attack == "scale":
            sent = 3.0 * a
        elif attack == "ipm":
            sent = np.broadcast_to(-0.5 * mu, a.shape)
        else:
            z = strength if strength is not None else norm.ppf((n - (np.floor(n / 2 + 1) - m)) / n)
            sent = np.broadcast_to(mu - z * sigma, a.shape)
        rows = np.where(bad.reshape((-1,) + (1,) * (a.ndim - 1)), sent, a)
        np.testing.assert_allclose(np.asarray(got), np.tensordot(weights, rows, axes=1), rtol=0, atol=1e-12)


def test_gaussian_rows_have_the_given_standard_deviation():
    k = 10
    wrapper = Attacked(attack="gaussian", fraction=0.5, strength=2.0, inner=ej.TrimmedMean(0.0))
    zeros = {"w": jnp.zeros((k, 200, 100), jnp.float32)}
    out, _, _ = wrapper.update(zeros, jnp.full(k, 1 / k), jnp.ones(k, bool), (), KEY, {})
    # the trimmed mean with no trimming is the plain mean: 5 of 10 rows N(0, 4), the rest zero
    assert abs(np.asarray(out["w"]).std() * 10 / np.sqrt(5) / 2.0 - 1) < 0.01


def test_label_flipping_poisons_only_the_named_nodes_training_labels():
    dataset = ej.data.load_digits()
    data, _ = ej.federate(dataset, 6, ej.data.IID(), seed=0)
    poisoned = flip_labels(data, [1, 4])
    y, y0 = np.asarray(poisoned.train.y), np.asarray(data.train.y)
    np.testing.assert_array_equal(y[[1, 4]], 9 - y0[[1, 4]])
    np.testing.assert_array_equal(y[[0, 2, 3, 5]], y0[[0, 2, 3, 5]])
    np.testing.assert_array_equal(np.asarray(poisoned.local_test.y), np.asarray(data.local_test.y))
    with pytest.raises(ValueError, match=r"ids in \[0, 6\); got \[7\]"):
        flip_labels(data, [7])


def test_a_sign_flip_that_wrecks_the_mean_is_survived_by_the_median():
    """30% of every cohort sends its update reversed and boosted 10x: FedAvg's mean falls to
    chance (measured 0.10; clean 0.87), the coordinate-wise median keeps most of its clean
    accuracy (measured 0.69, against 0.85 unattacked)."""
    dataset = ej.data.load_digits()
    data, _ = ej.federate(dataset, 40, ej.data.IID(), seed=0)
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(32,))
    local = ej.LocalTraining(batch_size=10, epochs=1)

    def accuracy(aggregator):
        sim = ej.Simulation(model, data, ej.FedAvg(aggregator=aggregator), local, clients_per_round=20)
        return float(sim.run(30, eval_every=30, seed=0, hparams={"client_lr": 0.1}).evals["test_accuracy"][-1])

    attack = dict(attack="sign_flip", fraction=0.3, strength=10.0)
    clean, mean, median = accuracy(ej.Mean()), accuracy(Attacked(**attack)), accuracy(
        Attacked(inner=ej.CoordinateMedian(), **attack))
    assert clean > 0.85 and mean < 0.2 and median > 0.6, (clean, mean, median)


def test_attack_options_are_checked():
    for bad, match in ((lambda: Attacked(attack="flip"), "attack"), (lambda: Attacked(fraction=1.0), "fraction=1.0"),
                       (lambda: Attacked(strength=float("nan")), "strength=nan"),
                       (lambda: Attacked(inner="mean"), "aggregator must")):
        with pytest.raises(ValueError, match=match):
            bad()


def test_no_epsilon_is_claimed_for_a_dp_aggregator_under_attack():
    """ALIE's and IPM's rows are computed from the honest updates, so the run says it reports no
    epsilon instead of one the accounting does not cover."""
    dataset = ej.data.load_digits()
    data, _ = ej.federate(dataset, 10, ej.data.IID(), seed=0)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    sim = ej.Simulation(model, data, ej.FedAvg(aggregator=Attacked(ej.GaussianDP(), attack="ipm"),
                                               weighting="uniform"), ej.LocalTraining(batch_size=10),
                        clients_per_round=5)
    with pytest.warns(UserWarning, match="no epsilon is reported under an attack"):
        results = sim.run(2, eval_every=2)
    assert "epsilon" not in results.rounds
