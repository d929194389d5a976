"""System-model building blocks: device profiles, availability, the simulated clock, selection."""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgejax.core.state import default_float, tree_take
from edgejax.system.availability import Availability
from edgejax.system.clock import Payload, RoundCost, deadline_plan, node_times, round_cost
from edgejax.system.profiles import (DeviceProfiles, lognormal_profiles, profiles_from_arrays, profiles_from_csv,
                                     profiles_to_csv, tier_counts, tiered_profiles, uniform_profiles)
from edgejax.system.selection import select_deadline_greedy, select_tier, select_uniform


# ------------------------------------------------------------------------------------------
# profiles
# ------------------------------------------------------------------------------------------
def _check_profile(p: DeviceProfiles, n: int):
    assert isinstance(p, DeviceProfiles)
    for name in ("speed", "up_bandwidth", "down_bandwidth", "latency", "energy_per_sample", "energy_per_byte"):
        a = getattr(p, name)
        assert a.shape == (n,) and a.dtype == default_float(), name
        assert bool(jnp.all(jnp.isfinite(a)))
    assert p.tier.shape == (n,) and p.tier.dtype == jnp.int32
    assert bool(jnp.all(p.speed > 0) & jnp.all(p.up_bandwidth > 0) & jnp.all(p.down_bandwidth > 0))
    assert bool(jnp.all(p.latency >= 0) & jnp.all(p.energy_per_sample >= 0) & jnp.all(p.energy_per_byte >= 0))
    assert p.num_nodes == n


def test_uniform_profiles():
    p = uniform_profiles(7, speed=50.0, latency=0.1)
    _check_profile(p, 7)
    np.testing.assert_allclose(p.speed, 50.0)
    np.testing.assert_allclose(p.down_bandwidth, 1e7)
    np.testing.assert_allclose(p.latency, 0.1)
    assert np.all(np.asarray(p.tier) == 0)


def test_profiles_follow_x64(x64):
    assert uniform_profiles(3).speed.dtype == jnp.float64


def test_lognormal_profiles_median_and_tiers():
    n = 40_000
    p = lognormal_profiles(n, seed=3, speed_median=100.0, speed_sigma=1.0, bandwidth_median=1e6,
                           down_factor=10.0, num_tiers=3)
    _check_profile(p, n)
    speed = np.asarray(p.speed, np.float64)
    # sd of log(sample median) = sigma * sqrt(pi / 2) / sqrt(n) = 0.0063: 3% is ~4.7 sd.
    assert abs(np.median(speed) / 100.0 - 1) < 0.03
    assert abs(np.median(np.asarray(p.up_bandwidth, np.float64)) / 1e6 - 1) < 0.03
    np.testing.assert_allclose(p.down_bandwidth, 10 * p.up_bandwidth, rtol=1e-6)
    # equal-count speed terciles, tier 0 the fastest
    tier = np.asarray(p.tier)
    counts = np.bincount(tier, minlength=3)
    assert counts.max() - counts.min() <= 1 and counts.sum() == n
    for t in range(2):
        assert speed[tier == t].min() >= speed[tier == t + 1].max()
    # seeded: same seed, same profile; another seed differs
    np.testing.assert_array_equal(lognormal_profiles(50, seed=1).speed, lognormal_profiles(50, seed=1).speed)
    assert not np.array_equal(lognormal_profiles(50, seed=1).speed, lognormal_profiles(50, seed=2).speed)


def test_lognormal_tiers_small_n():
    p = lognormal_profiles(10, seed=0, num_tiers=4)
    # rank r (by descending speed) -> tier floor(r * 4 / 10): sizes 3, 2, 3, 2
    assert np.bincount(np.asarray(p.tier), minlength=4).tolist() == [3, 2, 3, 2]


def test_tier_counts_rounding():
    assert tier_counts(10, (0.2, 0.5, 0.3)).tolist() == [2, 5, 3]
    # 7 * (0.2, 0.5, 0.3) = (1.4, 3.5, 2.1): floors (1, 3, 2), one left -> largest remainder (tier 1)
    assert tier_counts(7, (0.2, 0.5, 0.3)).tolist() == [1, 4, 2]
    # 4 * (1/3, 1/3, 1/3): floors (1, 1, 1), one left -> tie broken to the lowest tier
    assert tier_counts(4, (1 / 3, 1 / 3, 1 / 3)).tolist() == [2, 1, 1]
    for n in (1, 2, 3, 11, 97):
        c = tier_counts(n, (0.2, 0.5, 0.3))
        assert c.sum() == n and np.all(np.abs(c - n * np.array([0.2, 0.5, 0.3])) < 1)
    with pytest.raises(ValueError, match="sum to 1"):
        tier_counts(10, (0.5, 0.6))
    with pytest.raises(ValueError, match=r"fractions\[1\]"):
        tier_counts(10, (1.5, -0.5))


def test_tiered_profiles():
    n = 100
    p = tiered_profiles(n, seed=4, fractions=(0.2, 0.5, 0.3), speeds=(400.0, 100.0, 20.0),
                        up_bandwidths=(4e6, 1e6, 2e5), down_factor=10.0, latency=(0.01, 0.05, 0.2))
    _check_profile(p, n)
    tier = np.asarray(p.tier)
    assert np.bincount(tier, minlength=3).tolist() == [20, 50, 30]
    np.testing.assert_allclose(p.speed, np.array([400.0, 100.0, 20.0])[tier])
    np.testing.assert_allclose(p.up_bandwidth, np.array([4e6, 1e6, 2e5])[tier])
    np.testing.assert_allclose(p.down_bandwidth, 10 * np.array([4e6, 1e6, 2e5])[tier])
    np.testing.assert_allclose(p.latency, np.array([0.01, 0.05, 0.2])[tier], rtol=1e-6)
    # the assignment is a seeded permutation, not blocks
    assert not np.array_equal(tier, np.sort(tier))
    np.testing.assert_array_equal(tier, np.asarray(tiered_profiles(n, seed=4).tier))
    assert not np.array_equal(tier, np.asarray(tiered_profiles(n, seed=5).tier))
    # jitter spreads values within a tier but keeps the tier
    pj = tiered_profiles(n, seed=4, jitter=0.2)
    np.testing.assert_array_equal(pj.tier, tier)
    assert not np.allclose(pj.speed, p.speed)
    with pytest.raises(ValueError, match="speeds"):
        tiered_profiles(10, speeds=(1.0, 2.0))


def test_profiles_from_arrays_defaults_and_errors():
    p = profiles_from_arrays([100.0, 50.0], [1e6, 2e6])
    _check_profile(p, 2)
    np.testing.assert_allclose(p.down_bandwidth, p.up_bandwidth)   # symmetric link by default
    np.testing.assert_allclose(p.latency, 0.0)
    assert np.asarray(p.tier).tolist() == [0, 0]
    p = profiles_from_arrays([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], tier=[2, 0, 1], latency=[0.1, 0.2, 0.3])
    assert np.asarray(p.tier).tolist() == [2, 0, 1]

    with pytest.raises(ValueError, match=r"speed\[2\] = -1 must be > 0"):
        profiles_from_arrays([1.0, 2.0, -1.0, -2.0], [1.0] * 4)
    with pytest.raises(ValueError, match=r"up_bandwidth\[1\] = 0 must be > 0"):
        profiles_from_arrays([1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"down_bandwidth\[0\]"):
        profiles_from_arrays([1.0, 2.0], [1.0, 1.0], down_bandwidth=[np.nan, 1.0])
    with pytest.raises(ValueError, match=r"latency\[1\] = -0.5 must be >= 0"):
        profiles_from_arrays([1.0, 2.0], [1.0, 1.0], latency=[0.0, -0.5])
    with pytest.raises(ValueError, match=r"energy_per_byte"):
        profiles_from_arrays([1.0, 2.0], [1.0, 1.0], energy_per_byte=-1.0)
    with pytest.raises(ValueError, match=r"tier\[1\] = 1.5"):
        profiles_from_arrays([1.0, 2.0], [1.0, 1.0], tier=[0, 1.5])
    with pytest.raises(ValueError, match="up_bandwidth has 3 values but speed has 2"):
        profiles_from_arrays([1.0, 2.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="speed must be 1-D"):
        profiles_from_arrays([[1.0, 2.0]], [1.0, 1.0])


def test_profiles_csv_round_trip(tmp_path):
    p = tiered_profiles(13, seed=2, jitter=0.3)
    path = tmp_path / "profiles.csv"
    profiles_to_csv(p, path)
    q = profiles_from_csv(path)
    for a, b in zip(p, q):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_profiles_csv_minimal_and_errors(tmp_path):
    path = tmp_path / "min.csv"
    path.write_text("node_id, speed, up_bandwidth\n0, 100, 1e6\n1, 25, 5e5\n")
    p = profiles_from_csv(path)
    np.testing.assert_allclose(p.speed, [100.0, 25.0])
    np.testing.assert_allclose(p.down_bandwidth, [1e6, 5e5])
    one = tmp_path / "one.csv"
    one.write_text("speed,up_bandwidth,tier\n10,1000,2\n")
    p = profiles_from_csv(one)
    assert p.speed.shape == (1,) and int(p.tier[0]) == 2

    bad = tmp_path / "missing.csv"
    bad.write_text("speed,down_bandwidth\n1,2\n")
    with pytest.raises(ValueError, match="missing required column 'up_bandwidth'"):
        profiles_from_csv(bad)
    typo = tmp_path / "typo.csv"
    typo.write_text("speed,up_bandwidth,latencyy\n1,2,3\n")
    with pytest.raises(ValueError, match="latencyy"):
        profiles_from_csv(typo)
    neg = tmp_path / "neg.csv"
    neg.write_text("speed,up_bandwidth\n1,2\n3,-4\n")
    with pytest.raises(ValueError, match=r"up_bandwidth\[1\] = -4 must be > 0"):
        profiles_from_csv(neg)


# ------------------------------------------------------------------------------------------
# availability
# ------------------------------------------------------------------------------------------
def _simulate(avail: Availability, n: int, rounds: int, hparams=None, seed=0):
    """Availability [rounds, N] from a jitted lax.scan."""
    hparams = hparams if hparams is not None else avail.default_hparams()

    @jax.jit
    def run(key, hp):
        k0, k1 = jax.random.split(key)
        state = avail.init(k0, n)

        def body(state, xs):
            t, k = xs
            available, state = avail.step(k, state, t, hp)
            return state, available

        _, out = jax.lax.scan(body, state, (jnp.arange(rounds), jax.random.split(k1, rounds)))
        return out

    return np.asarray(run(jax.random.key(seed), hparams))


def test_availability_validation():
    with pytest.raises(ValueError, match="unknown availability kind 'sometimes'"):
        Availability("sometimes")
    with pytest.raises(ValueError, match="mean_on = 0.5"):
        Availability("markov", mean_on=0.5)
    with pytest.raises(ValueError, match="mean_off = 0"):
        Availability("markov", mean_off=0)
    with pytest.raises(ValueError, match="needs trace"):
        Availability("trace")
    with pytest.raises(ValueError, match="2-D"):
        Availability("trace", trace=np.ones(4))
    with pytest.raises(ValueError, match=r"trace\[1, 0\] = 2"):
        Availability("trace", trace=np.array([[1, 0], [2, 1]]))
    with pytest.raises(ValueError, match="has 2 nodes"):
        Availability("trace", trace=np.ones((3, 2))).init(jax.random.key(0), 5)


def test_always_available():
    a = Availability()
    assert a.default_hparams() == {} and a.stationary_fraction() == 1.0
    assert _simulate(a, 5, 4).all()


def test_bernoulli_availability():
    a = Availability("bernoulli")
    assert a.default_hparams() == {"dropout": 0.0}
    assert _simulate(a, 20, 10).all()
    out = _simulate(a, 200, 500, {"dropout": jnp.asarray(0.3)})
    # 1e5 independent draws: sd of the mean = sqrt(0.21 / 1e5) = 0.0015; 0.01 is ~7 sd.
    assert abs(out.mean() - 0.7) < 0.01
    assert a.stationary_fraction({"dropout": 0.3}) == pytest.approx(0.7)
    # vmappable over the traced dropout (a sweep axis), one compilation
    step = jax.jit(jax.vmap(lambda d: a.step(jax.random.key(1), jnp.ones(10_000, bool), 0, {"dropout": d})[0]))
    frac = np.asarray(step(jnp.array([0.0, 0.5, 1.0]))).mean(axis=1)
    assert frac[0] == 1.0 and abs(frac[1] - 0.5) < 0.03 and frac[2] == 0.0


def test_markov_availability_stationary_fraction_and_run_lengths():
    mean_on, mean_off = 10.0, 5.0
    a = Availability("markov", mean_on=mean_on, mean_off=mean_off)
    assert a.stationary_fraction() == pytest.approx(2 / 3)
    out = _simulate(a, 200, 500, seed=1)            # [T, N]
    # Long-run fraction.  The chain's autocorrelation at lag 1 is 1 - 1/10 - 1/5 = 0.7, so the
    # variance of one node's time average is p(1-p)/T * (1+0.7)/(1-0.7) = 2.5e-3; over 200
    # nodes the sd is 0.0035: a tolerance of 0.02 is ~5.6 sd.
    assert abs(out.mean() - 2 / 3) < 0.02
    # The first round is already stationary (init draws from the stationary distribution).
    assert abs(out[0].mean() - 2 / 3) < 0.12    # 200 Bernoulli(2/3) draws: sd 0.033
    # Mean run lengths by the censoring-robust estimator: rounds spent on (with a successor) /
    # number of on->off switches.  ~6,700 switches each: relative sd ~1.2%; 6% is ~5 sd.
    prev, nxt = out[:-1], out[1:]
    mean_on_hat = prev.sum() / (prev & ~nxt).sum()
    mean_off_hat = (~prev).sum() / (~prev & nxt).sum()
    assert abs(mean_on_hat / mean_on - 1) < 0.06
    assert abs(mean_off_hat / mean_off - 1) < 0.06


def test_markov_init_is_stationary():
    a = Availability("markov", mean_on=3.0, mean_off=1.0)
    s = np.asarray(jax.jit(a.init, static_argnums=1)(jax.random.key(0), 20_000))
    assert s.dtype == bool and abs(s.mean() - 0.75) < 0.015


def test_trace_availability_wraps_around():
    trace = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0]])
    a = Availability("trace", trace=trace)
    assert a.stationary_fraction() == pytest.approx(trace.mean())
    out = _simulate(a, 3, 7)
    expected = trace[np.arange(7) % 3].astype(bool)
    np.testing.assert_array_equal(out, expected)
    # a traced round index under jit
    step = jax.jit(a.step)
    avail, _ = step(jax.random.key(0), a.init(jax.random.key(0), 3), jnp.asarray(11), {})
    np.testing.assert_array_equal(np.asarray(avail), trace[11 % 3].astype(bool))


# ------------------------------------------------------------------------------------------
# clock
# ------------------------------------------------------------------------------------------
# Three hand-built nodes: speeds 100, 50, 10 samples/s.
SPEEDS = np.array([100.0, 50.0, 10.0])
DOWN_BW = np.array([1e6, 1e6, 5e5])       # bytes/s
UP_BW = np.array([1e5, 1e5, 5e4])
LATENCY = 0.05
BYTES_DOWN, BYTES_UP = 1e5, 1e4
BATCH, STEPS = 10, 5
E_SAMPLE, E_BYTE = 1e-3, 1e-6
# download = bytes_down / down_bw + latency; upload = bytes_up / up_bw + latency
DOWNLOAD = np.array([0.1 + 0.05, 0.1 + 0.05, 0.2 + 0.05])
UPLOAD = np.array([0.1 + 0.05, 0.1 + 0.05, 0.2 + 0.05])
COMPUTE = np.array([50 / 100, 50 / 50, 50 / 10])     # STEPS * BATCH / speed = 0.5, 1.0, 5.0
TOTAL = DOWNLOAD + COMPUTE + UPLOAD                  # 0.8, 1.3, 5.5
ENERGY = E_SAMPLE * STEPS * BATCH + E_BYTE * (BYTES_DOWN + BYTES_UP)   # 0.05 + 0.11 = 0.16


def _hand_profiles():
    return profiles_from_arrays(SPEEDS, UP_BW, DOWN_BW, latency=LATENCY, energy_per_sample=E_SAMPLE,
                                energy_per_byte=E_BYTE)


def test_node_times_and_round_cost_by_hand():
    p = _hand_profiles()
    d, c, u = node_times(p, STEPS, BATCH, BYTES_DOWN, BYTES_UP)
    np.testing.assert_allclose(d, DOWNLOAD, rtol=1e-6)
    np.testing.assert_allclose(c, COMPUTE, rtol=1e-6)
    np.testing.assert_allclose(u, UPLOAD, rtol=1e-6)
    cost = jax.jit(round_cost)(p, jnp.ones(3), STEPS, BATCH, BYTES_DOWN, BYTES_UP)
    assert isinstance(cost, RoundCost)
    np.testing.assert_allclose(cost.total_s, TOTAL, rtol=1e-6)
    np.testing.assert_allclose(cost.makespan_s, 5.5, rtol=1e-6)
    np.testing.assert_allclose(cost.energy_j, [ENERGY] * 3, rtol=1e-6)
    # per-node step counts
    cost = round_cost(p, jnp.ones(3), jnp.array([5, 5, 1]), BATCH, BYTES_DOWN, BYTES_UP)
    np.testing.assert_allclose(cost.compute_s, [0.5, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(cost.energy_j, E_SAMPLE * BATCH * np.array([5, 5, 1]) + 0.11, rtol=1e-6)


def test_inactive_nodes_cost_nothing():
    p = _hand_profiles()
    cost = round_cost(p, jnp.array([True, True, False]), STEPS, BATCH, BYTES_DOWN, BYTES_UP)
    for field in (cost.download_s, cost.compute_s, cost.upload_s, cost.total_s, cost.energy_j):
        assert float(field[2]) == 0.0
    np.testing.assert_allclose(cost.makespan_s, 1.3, rtol=1e-6)     # the slow node does not count
    none = round_cost(p, jnp.zeros(3), STEPS, BATCH, BYTES_DOWN, BYTES_UP)
    assert float(none.makespan_s) == 0.0 and float(none.energy_j.sum()) == 0.0


def test_deadline_policies_by_hand():
    p = _hand_profiles()
    deadline = 2.0
    args = (p, jnp.ones(3), STEPS, BATCH, BYTES_DOWN, BYTES_UP)

    def makespan(active, budget):
        return float(round_cost(p, active, budget, BATCH, BYTES_DOWN, BYTES_UP).makespan_s)

    active, budget = deadline_plan("wait_all", deadline, *args)
    np.testing.assert_array_equal(active, [1, 1, 1])
    np.testing.assert_array_equal(budget, [5, 5, 5])
    assert makespan(active, budget) == pytest.approx(5.5)             # the slowest node

    active, budget = deadline_plan("drop_late", deadline, *args)
    np.testing.assert_array_equal(active, [1, 1, 0])                  # 5.5 s > 2 s: dropped
    np.testing.assert_array_equal(budget, [5, 5, 0])
    assert makespan(active, budget) == pytest.approx(1.3)

    active, budget = deadline_plan("partial", deadline, *args)
    # slow node: floor((2.0 - 0.25 - 0.25) * 10 / 10) = floor(1.5) = 1 step
    np.testing.assert_array_equal(active, [1, 1, 1])
    np.testing.assert_array_equal(budget, [5, 5, 1])
    assert budget.dtype == jnp.int32
    assert makespan(active, budget) == pytest.approx(1.5)             # 0.5 + 1.0 for the slow node

    # a step budget that fits exactly is kept despite float rounding: (2.5 - 0.5) * 10 / 10 = 2
    _, budget = deadline_plan("partial", 2.5, *args)
    np.testing.assert_array_equal(budget, [5, 5, 2])
    # the slow node cannot finish its communication (0.5 s) within 0.4 s: inactive
    active, budget = deadline_plan("partial", 0.4, *args)
    np.testing.assert_array_equal(active, [1, 1, 0])
    np.testing.assert_array_equal(budget, [1, 0, 0])   # fast: floor(0.1*100/10)=1; medium: floor(0.1*50/10)=0
    # ... unless asked to drop nodes left with fewer than min_steps steps
    active, budget = deadline_plan("partial", 0.4, *args, min_steps=1)
    np.testing.assert_array_equal(active, [1, 0, 0])
    # already-inactive nodes stay inactive under every policy
    for policy in ("wait_all", "drop_late", "partial"):
        active, budget = deadline_plan(policy, 100.0, p, jnp.array([1.0, 0.0, 1.0]), STEPS, BATCH,
                                       BYTES_DOWN, BYTES_UP)
        np.testing.assert_array_equal(active, [1, 0, 1])
        np.testing.assert_array_equal(budget, [5, 0, 5])
    # an infinite deadline changes nothing
    active, budget = deadline_plan("partial", jnp.inf, *args)
    np.testing.assert_array_equal(budget, [5, 5, 5])
    with pytest.raises(ValueError, match="unknown deadline policy"):
        deadline_plan("hurry", 1.0, *args)


def test_a_compute_scale_multiplies_compute_time_and_compute_energy_only():
    p = _hand_profiles()
    scale = jnp.array([0.5, 0.25, 1.0])
    d, c, u = node_times(p, STEPS, BATCH, BYTES_DOWN, BYTES_UP, scale)
    np.testing.assert_allclose(c, np.asarray(COMPUTE) * np.asarray(scale), rtol=1e-6)
    np.testing.assert_allclose(d, DOWNLOAD, rtol=1e-6)
    np.testing.assert_allclose(u, UPLOAD, rtol=1e-6)
    cost = round_cost(p, jnp.ones(3), STEPS, BATCH, BYTES_DOWN, BYTES_UP, scale)
    np.testing.assert_allclose(cost.energy_j, E_SAMPLE * STEPS * BATCH * np.asarray(scale) + 0.11, rtol=1e-6)
    # the slow node (5 s of compute at full size) fits a 2 s deadline at a quarter of the compute ...
    active, budget = deadline_plan("drop_late", 2.0, p, jnp.ones(3), STEPS, BATCH, BYTES_DOWN, BYTES_UP,
                                   jnp.array([1.0, 1.0, 0.25]))
    np.testing.assert_array_equal(active, [1, 1, 1])
    # ... and partial work counts steps of the scaled size: floor(1.5 * 10 / (10 * 0.5)) = 3
    _, budget = deadline_plan("partial", 2.0, p, jnp.ones(3), STEPS, BATCH, BYTES_DOWN, BYTES_UP,
                              jnp.array([1.0, 1.0, 0.5]))
    np.testing.assert_array_equal(budget, [5, 5, 3])
    # a scale of exactly 1 gives bit for bit the unscaled numbers
    for got, want in zip(node_times(p, STEPS, BATCH, BYTES_DOWN, BYTES_UP, 1.0),
                         node_times(p, STEPS, BATCH, BYTES_DOWN, BYTES_UP)):
        np.testing.assert_array_equal(got, want)


def test_payload_gathers_per_node_fields_and_names_bad_values():
    payload = Payload(np.array([10.0, 20.0, 30.0]), 5.0, np.array([1.0, 0.5, 0.25]))
    cohort = payload.take(jnp.array([2, 0]))
    np.testing.assert_array_equal(cohort.up, [30.0, 10.0])
    np.testing.assert_array_equal(cohort.compute, [0.25, 1.0])
    assert cohort.down == 5.0 and Payload(1.0, 2.0).take(jnp.array([0])) == (1.0, 2.0, 1.0)
    payload.check(3)
    with pytest.raises(ValueError, match=r"Payload.up must be a scalar or one value per node \[4\]; got shape \(3,\)"):
        payload.check(4)
    with pytest.raises(ValueError, match=r"Payload.compute\[1\] = 0.0 must be finite and > 0"):
        Payload(1.0, 1.0, np.array([1.0, 0.0])).check(2)
    with pytest.raises(ValueError, match=r"Payload.down = -1.0 must be finite and >= 0"):
        Payload(1.0, -1.0).check(2)


def test_deadline_plan_vmaps_over_deadline():
    p = _hand_profiles()
    f = jax.jit(jax.vmap(lambda d: deadline_plan("partial", d, p, jnp.ones(3), STEPS, BATCH, BYTES_DOWN,
                                                 BYTES_UP)))
    active, budget = f(jnp.array([0.4, 2.0, 10.0]))
    np.testing.assert_array_equal(budget, [[1, 0, 0], [5, 5, 1], [5, 5, 5]])
    np.testing.assert_array_equal(active, [[1, 1, 0], [1, 1, 1], [1, 1, 1]])


def test_clock_on_a_gathered_cohort():
    p = tiered_profiles(20, seed=0)
    nodes = jnp.array([3, 7, 11])
    pk = tree_take(p, nodes)
    cost = round_cost(pk, jnp.ones(3), 4, 8, 1e5, 1e5)
    expected = (1e5 / np.asarray(p.down_bandwidth)[nodes] + 4 * 8 / np.asarray(p.speed)[nodes]
                + 1e5 / np.asarray(p.up_bandwidth)[nodes] + 2 * np.asarray(p.latency)[nodes])
    np.testing.assert_allclose(cost.total_s, expected, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# selection
# ------------------------------------------------------------------------------------------
AVAILABLE = np.array([1, 0, 1, 1, 0, 1, 1, 0, 1, 0], bool)    # 6 of 10 available


@pytest.mark.parametrize("cohort_size", [5, 10])
def test_select_uniform_respects_availability_and_count(cohort_size):
    f = jax.jit(jax.vmap(lambda k, c: select_uniform(k, jnp.asarray(AVAILABLE), cohort_size, c)))
    keys = jax.random.split(jax.random.key(0), 4000)
    nodes, active = f(keys, jnp.full(4000, 3.0))
    nodes, active = np.asarray(nodes), np.asarray(active)
    assert nodes.dtype == np.int32 and active.dtype == np.dtype(default_float())
    assert nodes.shape == (4000, cohort_size)
    assert (active.sum(axis=1) == 3).all()                          # count respected
    assert AVAILABLE[nodes[active > 0]].all()                       # never an unavailable node
    assert (np.diff(np.sort(nodes, axis=1), axis=1) > 0).all()     # without replacement
    if cohort_size == 10:
        np.testing.assert_array_equal(nodes, np.tile(np.arange(10), (4000, 1)))   # node order
    freq = np.zeros(10)
    np.add.at(freq, nodes[active > 0], 1)
    freq /= 4000
    # each available node: P = 3/6 = 0.5, sd over 4000 draws 0.008; 0.04 is 5 sd
    np.testing.assert_allclose(freq[AVAILABLE], 0.5, atol=0.04)
    assert (freq[~AVAILABLE] == 0).all()


def test_select_uniform_fewer_available_than_count():
    avail = jnp.asarray(AVAILABLE)
    for k in (8, 10):
        nodes, active = select_uniform(jax.random.key(3), avail, k, 8)
        assert float(active.sum()) == 6
        assert AVAILABLE[np.asarray(nodes)[np.asarray(active) > 0]].all()


def test_select_uniform_traced_count_one_compile():
    traces = []

    @jax.jit
    def f(key, count):
        traces.append(1)
        return select_uniform(key, jnp.asarray(AVAILABLE), 5, count)

    for c in (1.0, 2.0, 4.0):
        _, active = f(jax.random.key(0), jnp.asarray(c))
        assert float(active.sum()) == c
    assert len(traces) == 1


EST = np.array([3.0, 0.5, 2.0, 1.0, 9.0, 1.0, 4.0, 0.1, 2.5, 7.0])


@pytest.mark.parametrize("cohort_size", [4, 10])
def test_select_deadline_greedy(cohort_size):
    avail = jnp.asarray(AVAILABLE)
    # available: 0 (3.0), 2 (2.0), 3 (1.0), 5 (1.0), 6 (4.0), 8 (2.5); deadline 3.0 excludes 6
    nodes, active = select_deadline_greedy(jax.random.key(0), jnp.asarray(EST), avail, 3.0, cohort_size, 3)
    chosen = set(np.asarray(nodes)[np.asarray(active) > 0].tolist())
    assert chosen == {3, 5, 2}                         # the three fastest available that fit
    if cohort_size == 10:
        np.testing.assert_array_equal(nodes, np.arange(10))
    else:
        assert set(np.asarray(nodes)[:2].tolist()) == {3, 5}    # fastest first
    # more requested than fit: only the 5 eligible are active
    nodes, active = select_deadline_greedy(jax.random.key(0), jnp.asarray(EST), avail, 3.0, cohort_size, 9)
    chosen = np.asarray(nodes)[np.asarray(active) > 0]
    assert set(chosen.tolist()) <= {0, 2, 3, 5, 8}
    assert len(chosen) == min(5, cohort_size)
    assert (EST[chosen] <= 3.0).all() and AVAILABLE[chosen].all()


def test_select_deadline_greedy_breaks_ties_randomly_and_vmaps_over_deadline():
    avail = jnp.asarray(AVAILABLE)
    f = jax.jit(jax.vmap(lambda k: select_deadline_greedy(k, jnp.asarray(EST), avail, 3.0, 4, 1)))
    nodes, active = f(jax.random.split(jax.random.key(1), 400))
    picked = np.asarray(nodes)[np.asarray(active) > 0]
    # nodes 3 and 5 tie at 1.0 s: each picked about half the time (sd 0.025)
    assert set(picked.tolist()) == {3, 5} and abs((picked == 3).mean() - 0.5) < 0.12
    g = jax.jit(jax.vmap(lambda d: select_deadline_greedy(jax.random.key(0), jnp.asarray(EST), avail, d, 10, 10)))
    _, active = g(jnp.array([0.05, 1.0, 3.0, 100.0]))
    assert np.asarray(active).sum(axis=1).tolist() == [0, 2, 5, 6]


@pytest.mark.parametrize("cohort_size", [3, 12])
def test_select_tier(cohort_size):
    tiers = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], np.int32)
    avail = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0], bool)    # tier 2 has no available node
    f = jax.jit(jax.vmap(lambda k: select_tier(k, jnp.asarray(tiers), jnp.asarray(avail), cohort_size, 2, 3)))
    nodes, active = f(jax.random.split(jax.random.key(2), 2000))
    nodes, active = np.asarray(nodes), np.asarray(active) > 0
    assert (active.sum(axis=1) == 2).all()
    assert avail[nodes[active]].all()
    t = np.where(active, tiers[nodes], -1)
    chosen_tier = t.max(axis=1)
    assert (np.where(active, t, chosen_tier[:, None]) == chosen_tier[:, None]).all()   # one tier per round
    assert (chosen_tier != 2).all()
    assert abs((chosen_tier == 0).mean() - 0.5) < 0.05        # uniform over the 2 usable tiers (sd 0.011)
    if cohort_size == 12:
        np.testing.assert_array_equal(nodes, np.tile(np.arange(12), (2000, 1)))
    # tier weights: only tier 1 may be drawn
    n, act = select_tier(jax.random.key(0), jnp.asarray(tiers), jnp.asarray(avail), cohort_size, 3, 3,
                         tier_weights=jnp.array([0.0, 1.0, 1.0]))
    sel = np.asarray(n)[np.asarray(act) > 0]
    assert set(sel.tolist()) == {4, 6, 7}
    # nobody available: nobody active
    _, act = select_tier(jax.random.key(0), jnp.asarray(tiers), jnp.zeros(12, bool), cohort_size, 2, 3)
    assert float(act.sum()) == 0


def test_selection_bad_sizes():
    with pytest.raises(ValueError, match="cohort_size = 11"):
        select_uniform(jax.random.key(0), jnp.asarray(AVAILABLE), 11, 3)
