"""Local DP on the aggregator seam: every row clipped and noised before the inner aggregator,
against a float64 NumPy reference with the same draws; the noise's standard deviation; the
per-node epsilon equal to dp-accounting called directly."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.algorithms.local_privacy import LocalDP, local_epsilon
from conftest import make_data

dp_accounting = pytest.importorskip("dp_accounting", reason="dp-accounting is the optional [privacy] extra")
KEY = jax.random.PRNGKey(3)


def test_every_row_is_clipped_and_noised_before_the_mean(x64):
    rng = np.random.default_rng(2)
    k = 5
    u = [rng.normal(size=(k, 3, 4)) * np.array([0.1, 3, 1, 10, 2])[:, None, None], rng.normal(size=(k, 4))]
    mask = np.array([1, 0, 1, 1, 1], bool)
    weights = np.array([0.1, 0.3, 0.2, 0.25, 0.15])
    hp = {"ldp_clip": 1.5, "ldp_noise_multiplier": 0.7}
    out, _, metrics = LocalDP().update([jnp.asarray(a) for a in u], jnp.asarray(weights), jnp.asarray(mask), (),
                                       KEY, hp)
    noise_key = jax.random.split(KEY)[0]
    draws = [np.asarray(jax.random.normal(jax.random.fold_in(noise_key, i), a.shape, jnp.float64))
             for i, a in enumerate(u)]
    norms = np.sqrt((u[0] ** 2).sum((1, 2)) + (u[1] ** 2).sum(1))
    factor = np.minimum(1.0, 1.5 / norms)
    for got, a, n in zip(out, u, draws):
        rows = factor.reshape((-1,) + (1,) * (a.ndim - 1)) * a + 0.7 * 1.5 * n   # each device's release
        want = np.tensordot(weights * mask, rows, axes=1)
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-13)
    assert float(metrics["ldp_clipped"]) == np.sum(mask & (norms > 1.5))


def test_each_rows_noise_has_standard_deviation_z_times_clip():
    """All updates zero, uniform weights 1/K: the aggregate is the mean of K independent N(0, (z C)^2)
    draws per coordinate, so its standard deviation is z C / sqrt(K) (within 0.5% over 100,000
    coordinates; the relative standard error is 0.22%)."""
    k, z, clip = 8, 1.3, 0.4
    zeros = {"w": jnp.zeros((k, 400, 250), jnp.float32)}
    out, _, _ = LocalDP().update(zeros, jnp.full(k, 1 / k), jnp.ones(k, bool), (), KEY,
                                 {"ldp_clip": clip, "ldp_noise_multiplier": z})
    noise = np.asarray(out["w"]).ravel()
    assert abs(noise.std() * np.sqrt(k) / (z * clip) - 1) < 5e-3


def _sim(aggregator):
    data, _, _ = make_data([6] * 12, seed=9, dtype=np.float32)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    return ej.Simulation(model, data, ej.FedAvg(aggregator=aggregator), ej.LocalTraining(batch_size=3),
                         clients_per_round=4)


def test_a_run_reports_the_per_node_epsilon_of_dp_accounting(tmp_path):
    sim = _sim(LocalDP(clip=0.5, noise_multiplier=2.0, delta=1e-6))
    results = sim.run(5, eval_every=5, out_dir=tmp_path)
    direct = []
    for rounds in range(1, 6):
        accountant = dp_accounting.rdp.RdpAccountant(ej.algorithms.privacy.RDP_ORDERS)
        accountant.compose(dp_accounting.GaussianDpEvent(2.0), rounds)
        direct.append(accountant.get_epsilon(1e-6))
    np.testing.assert_allclose(results.rounds["epsilon"], direct, rtol=1e-12)
    np.testing.assert_allclose(local_epsilon(2.0, [1, 5], 1e-6), [direct[0], direct[4]], rtol=1e-12)
    assert "local DP" in json.loads((tmp_path / "run.json").read_text())["config"]["privacy"]["model"]


def test_a_robust_aggregator_over_the_noised_rows():
    aggregator = LocalDP(noise_multiplier=0.5, inner=ej.CoordinateMedian())
    assert aggregator.name == "local_dp+median"
    results = _sim(aggregator).run(3, eval_every=3)
    assert np.all(np.isfinite(results.rounds["train_loss"])) and "ldp_clipped" in results.rounds
    for bad, match in ((lambda: LocalDP(clip=0), "LocalDP: clip=0 must be"),
                       (lambda: LocalDP(delta=2.0), "delta=2.0"), (lambda: LocalDP(inner="mean"), "aggregator must")):
        with pytest.raises(ValueError, match=match):
            bad()
