"""User-level DP (DP-FedAvg's Gaussian mechanism on the aggregator seam): clipping against a float64
NumPy reference, the noise's standard deviation, epsilon equal to dp-accounting called directly,
and the accounting's refusals."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.algorithms.privacy import GaussianDP, epsilon
from conftest import make_data

dp_accounting = pytest.importorskip("dp_accounting", reason="dp-accounting is the optional [privacy] extra")
KEY = jax.random.PRNGKey(0)


def test_without_noise_the_aggregate_is_the_clipped_sum_over_the_cohort_size(x64):
    rng = np.random.default_rng(1)
    u = {"a": rng.normal(size=(5, 3, 4)) * np.array([0.1, 3, 1, 10, 2])[:, None, None], "b": rng.normal(size=(5, 4))}
    mask = np.array([1, 1, 0, 1, 1], bool)
    hp = {"dp_clip": 2.0, "dp_noise_multiplier": 0.0}
    out, _, metrics = GaussianDP().update(jax.tree_util.tree_map(jnp.asarray, u), jnp.full(5, 0.2), jnp.asarray(mask),
                                          (), KEY, hp)
    norms = np.sqrt((u["a"] ** 2).sum((1, 2)) + (u["b"] ** 2).sum(1))        # the whole update's norm
    factor = np.minimum(1.0, 2.0 / norms) * mask
    assert np.all(np.sqrt(((factor[:, None, None] * u["a"]) ** 2).sum((1, 2))
                          + ((factor[:, None] * u["b"]) ** 2).sum(1)) <= 2.0 + 1e-12)   # every node's bound holds
    np.testing.assert_allclose(out["a"], np.einsum("k,kij->ij", factor, u["a"]) / 5, rtol=1e-13)
    np.testing.assert_allclose(out["b"], factor @ u["b"] / 5, rtol=1e-13)
    assert float(metrics["dp_clipped"]) == np.sum(mask & (norms > 2.0))


def test_the_noise_has_standard_deviation_z_times_clip_over_k():
    """All updates zero: the aggregate is the noise / K; over 200,000 coordinates the sample standard
    deviation of a Gaussian is within 0.5% of the truth with overwhelming probability (its relative
    standard error is 1/sqrt(2 n) = 0.16%)."""
    k, z, clip = 8, 1.7, 0.3
    zeros = {"w": jnp.zeros((k, 400, 250), jnp.float32), "b": jnp.zeros((k, 250), jnp.float32)}
    out, _, _ = GaussianDP().update(zeros, jnp.full(k, 1 / k), jnp.ones(k, bool), (), KEY,
                                    {"dp_clip": clip, "dp_noise_multiplier": z})
    noise = np.concatenate([np.asarray(out["w"]).ravel(), np.asarray(out["b"]).ravel()]) * k
    assert abs(noise.std() / (z * clip) - 1) < 5e-3 and abs(noise.mean()) < 5 * z * clip / np.sqrt(noise.size)
    again, _, _ = GaussianDP().update(zeros, jnp.full(k, 1 / k), jnp.ones(k, bool), (), jax.random.PRNGKey(1),
                                      {"dp_clip": clip, "dp_noise_multiplier": z})
    assert not np.allclose(again["w"], out["w"])    # a fresh key, fresh noise


def _sim(aggregator, **system):
    data, _, _ = make_data([6] * 20, seed=2, dtype=np.float32)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    return ej.Simulation(model, data, ej.FedAvg(aggregator=aggregator, weighting="uniform"),
                         ej.LocalTraining(batch_size=3), clients_per_round=5, system=ej.SystemModel(**system))


def test_every_round_reports_the_epsilon_dp_accounting_gives_directly():
    sim = _sim(GaussianDP(clip=0.5, noise_multiplier=1.3, delta=1e-5))
    results = sim.run(6, eval_every=3)
    direct, z = [], float(np.float32(1.3))   # the noise multiplier as the run holds it (float32)
    orders = list(range(2, 65)) + [80, 96, 128, 192, 256, 512]
    for t in range(1, 7):
        accountant = dp_accounting.rdp.RdpAccountant(orders)
        accountant.compose(dp_accounting.PoissonSampledDpEvent(5 / 20, dp_accounting.GaussianDpEvent(z)), t)
        direct.append(accountant.get_epsilon(1e-5))
    np.testing.assert_allclose(results.rounds["epsilon"], direct, rtol=1e-12)
    assert np.all(np.diff(results.rounds["epsilon"]) > 0)
    assert results.config["privacy"]["sampling"].startswith("Poisson, q = K/N = 5/20")
    # a traced noise multiplier: more noise, less epsilon
    quieter = sim.run(6, eval_every=3, hparams={"dp_noise_multiplier": 3.0})
    assert quieter.rounds["epsilon"][-1] < results.rounds["epsilon"][-1]
    assert epsilon(z, 0.25, [6], 1e-5)[0] == pytest.approx(direct[-1], rel=1e-12)


def test_with_no_noise_and_a_clip_no_update_reaches_dp_fedavg_is_uniform_fedavg(x64):
    """z = 0 and C above every update's norm: (sum_i u_i) / K is FedAvg's uniform mean when all K take part."""
    dp = _sim(GaussianDP(clip=1e6, noise_multiplier=0.0))
    plain = _sim(ej.Mean())
    a = dp.run(3, eval_every=3).final_state.server.params["out"]["w"]
    b = plain.run(3, eval_every=3).final_state.server.params["out"]["w"]
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_the_accounting_is_refused_where_the_cohort_is_not_a_uniform_sample():
    with pytest.raises(ValueError, match="assumes a uniformly sampled cohort.*availability 'bernoulli'"):
        _sim(GaussianDP(), availability=ej.Availability("bernoulli")).run(2)
    with pytest.raises(ValueError, match=r"GaussianDP: clip=0 must be a finite positive number"):
        GaussianDP(clip=0)
    with pytest.raises(ValueError, match=r"delta=1 must be a float in \(0, 1\)"):
        GaussianDP(delta=1)
