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


def _adaptive_reference(updates, mask, multiplier, clip0, z, gamma, lr, sigma_b, leaf_noise, count_noise):
    """Andrew et al. 2021, Algorithm 1 (geometric update), in float64 NumPy, for one aggregation:
    given the standard normal draws (``leaf_noise`` per leaf, ``count_noise``), returns the aggregate,
    the new clip multiplier and the norm clipped at."""
    k = mask.shape[0]
    clip = clip0 * multiplier
    flat = np.concatenate([u.reshape(k, -1) for u in updates], axis=1) * mask[:, None]
    norms = np.linalg.norm(flat, axis=1)
    factor = np.minimum(1.0, clip / np.maximum(norms, 1e-30))
    z_update = (z ** -2 - (2 * sigma_b) ** -2) ** -0.5
    out = [(np.tensordot(factor, u * mask.reshape((-1,) + (1,) * (u.ndim - 1)), axes=1) + z_update * clip * n) / k
           for u, n in zip(updates, leaf_noise)]
    b = (np.sum(mask * ((norms <= clip) - 0.5)) + sigma_b * count_noise) / k + 0.5
    return out, multiplier * np.exp(-lr * (b - gamma)), clip


def test_adaptive_clipping_follows_andrew_et_al_with_the_update_noise_reduced(x64):
    """Three aggregations in a row against the float64 reference (the same normal draws): the
    clipped sum, the update noise at z_u = (z^-2 - (2 sigma_b)^-2)^-1/2 times the current norm, the
    centred noised count and the geometric step of the norm."""
    rng = np.random.default_rng(5)
    k, gamma, lr, z = 6, 0.5, 0.2, 0.8
    aggregator = GaussianDP(clip=1.0, noise_multiplier=z, target_quantile=gamma, clip_lr=lr, count_noise=1.5)
    hp = {"dp_clip": 1.0, "dp_noise_multiplier": z}
    state, multiplier = aggregator.init(None), 1.0
    mask = np.array([1, 1, 1, 0, 1, 1], bool)
    for step in range(3):
        updates = [rng.normal(size=(k, 3, 2)) * rng.uniform(0.1, 2.0, size=(k, 1, 1)), rng.normal(size=(k, 2))]
        key = jax.random.fold_in(KEY, step)
        out, state, metrics = aggregator.update([jnp.asarray(u) for u in updates], jnp.full(k, 1 / k),
                                                jnp.asarray(mask), state, key, hp)
        leaf_noise = [np.asarray(jax.random.normal(jax.random.fold_in(key, i), u.shape[1:], jnp.float64))
                      for i, u in enumerate(updates)]
        count_noise = float(jax.random.normal(jax.random.fold_in(key, 2), (), jnp.float64))
        want, multiplier, clip = _adaptive_reference(updates, mask, multiplier, 1.0, z, gamma, lr, 1.5, leaf_noise,
                                                     count_noise)
        for got, ref in zip(out, want):
            np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=1e-13)
        assert float(state) == pytest.approx(multiplier, rel=1e-13, abs=0)
        assert float(metrics["dp_clip_norm"]) == pytest.approx(clip, rel=1e-13, abs=0)


def test_adaptive_clipping_settles_at_the_target_quantile_of_the_norms():
    """Without noise (z = 0, sigma_b tiny) the norm's geometric steps settle where a fraction
    gamma of the updates is unclipped: fixed update norms 1..10, gamma = 0.3 -> in [3, 4), where
    the unclipped fraction is exactly gamma, starting from a clip of 50."""
    norms = np.arange(1.0, 11.0)
    updates = {"w": jnp.asarray(norms[:, None], jnp.float32)}   # row i's norm is i + 1
    aggregator = GaussianDP(clip=50.0, noise_multiplier=0.0, target_quantile=0.3, clip_lr=0.2, count_noise=1e-9)
    hp, state = {"dp_clip": 50.0, "dp_noise_multiplier": 0.0}, aggregator.init(None)
    for step in range(300):
        _, state, metrics = aggregator.update(updates, jnp.full(10, 0.1), jnp.ones(10, bool), state,
                                              jax.random.fold_in(KEY, step), hp)
    assert 3.0 <= float(metrics["dp_clip_norm"]) < 4.0


def test_adaptive_clipping_options_are_checked():
    with pytest.raises(ValueError, match="target_quantile=1.5"):
        GaussianDP(target_quantile=1.5)
    with pytest.raises(ValueError, match="clip_lr=-1"):
        GaussianDP(target_quantile=0.5, clip_lr=-1)
    sim = _sim(GaussianDP(noise_multiplier=1.0, target_quantile=0.5))   # sigma_b = 5 / 20: z must stay below 0.5
    with pytest.raises(ValueError, match=r"noise_multiplier 1.0 must be below 2 x count_noise = 0.5"):
        sim.run(2)
    ok = _sim(GaussianDP(noise_multiplier=1.0, target_quantile=0.5, count_noise=2.0))
    results = ok.run(4, eval_every=2)
    assert np.all(np.isfinite(results.rounds["dp_clip_norm"])) and results.rounds["dp_clip_norm"][0] == 1.0
    assert results.rounds["epsilon"][-1] == pytest.approx(epsilon(1.0, 5 / 20, 4, 1e-5)[0])


@pytest.mark.parametrize("target, rounds, q", [(2.0, 100, 0.01), (1.0, 1000, 0.1), (8.0, 50, 0.1)])
def test_noise_for_epsilon_is_the_smallest_noise_within_the_budget(target, rounds, q):
    """The calibrated z reaches the target at delta (as ``epsilon`` accounts it) and a z 0.2% lower
    does not: the search is tight and on the safe side."""
    from edgejax.algorithms.privacy import noise_for_epsilon

    z = noise_for_epsilon(target, rounds, q, 1e-5)
    assert epsilon(z, q, rounds, 1e-5)[0] <= target < epsilon(0.998 * z, q, rounds, 1e-5)[0]


def test_noise_for_epsilon_names_a_bad_value():
    from edgejax.algorithms.privacy import noise_for_epsilon

    for args, match in (((0.0, 10, 0.1, 1e-5), "target_epsilon=0.0"), ((1.0, 0, 0.1, 1e-5), "rounds=0"),
                        ((1.0, 10, 1.5, 1e-5), "sampling_rate=1.5"), ((1.0, 10, 0.1, 2.0), "delta=2.0")):
        with pytest.raises(ValueError, match=match):
            noise_for_epsilon(*args)
