"""The system model inside the jitted round: stragglers, deadlines, availability, selection, clock."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import edgejax as ej
from edgejax.system import Availability, SystemModel, profiles_from_arrays
from conftest import make_data

SIZES = [6, 8, 10, 6, 8, 10, 6, 8]


def _sim(system, cohort=None, epochs=4):
    data, _, _ = make_data(SIZES, dtype=np.float32, seed=9)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    return ej.Simulation(model, data, ej.get_algorithm("fedprox"), ej.LocalTraining(batch_size=2, epochs=epochs),
                         clients_per_round=cohort, system=system)


def _profiles(speeds, tiers=None):
    return profiles_from_arrays(np.asarray(speeds, float), np.full(len(speeds), 1e6), np.full(len(speeds), 1e7),
                                latency=0.0, energy_per_sample=1e-3, energy_per_byte=0.0, tier=tiers)


def _plans(sim, hp, rounds=6):
    state = sim.init(jax.random.PRNGKey(0), hp)
    round_fn = jax.jit(sim.round)
    plans, metrics = [], []
    for _ in range(rounds):
        plans.append(sim.plan(state, hp))
        state, m = round_fn(state, sim.data, hp)
        metrics.append(m)
    return plans, metrics


def test_the_default_system_reports_time_and_energy():
    sim = _sim(SystemModel())
    results = sim.run(3, eval_every=3)
    speed, steps = 100.0, results.rounds["local_steps"]
    assert np.all(results.rounds["round_time_s"] > 0)
    np.testing.assert_allclose(results.rounds["sim_time_s"], np.cumsum(results.rounds["round_time_s"]), rtol=1e-6)
    # every node trains 4 epochs of batch 2: the slowest (10 samples) computes 20 steps * 2 / speed
    assert results.rounds["round_time_s"][0] >= 20 * 2 / speed
    assert np.all(steps == 4 * sum(-(-n // 2) for n in SIZES))


def test_fedprox_stragglers_run_fewer_epochs_and_fedavg_drops_them():
    counts = np.array(SIZES)
    full = 4 * np.ceil(counts / 2)
    partial = _sim(SystemModel(stragglers="partial_epochs"))
    hp = partial.hparams({"straggler_fraction": 0.5})
    plans, _ = _plans(partial, hp)
    budgets = np.stack([np.asarray(p.step_budget) for p in plans])
    per_epoch = np.ceil(counts / 2)
    assert np.all(budgets % per_epoch == 0) and np.all(budgets >= per_epoch) and np.all(budgets <= full)
    assert 0.2 < np.mean(budgets < full) < 0.8          # about half are stragglers
    assert np.all(np.stack([np.asarray(p.active) for p in plans]) == 1)  # nobody dropped

    drop = _sim(SystemModel(stragglers="drop"))
    plans, metrics = _plans(drop, drop.hparams({"straggler_fraction": 0.5}))
    active = np.stack([np.asarray(p.active) for p in plans])
    assert 0.2 < 1 - active.mean() < 0.8
    assert [float(m["participants"]) for m in metrics] == list(active.sum(axis=1))


@pytest.mark.parametrize("policy", ["wait_all", "drop_late", "partial"])
def test_deadline_policies_on_a_tiered_population(policy):
    speeds = [200, 200, 200, 200, 20, 20, 20, 20]                # the last four are 10x slower
    sim = _sim(SystemModel(profiles=_profiles(speeds), deadline_policy=policy))
    hp = sim.hparams({"deadline": 1.0}) if policy != "wait_all" else sim.hparams()
    plans, metrics = _plans(sim, hp, rounds=2)
    active, budget = np.asarray(plans[0].active), np.asarray(plans[0].step_budget)
    full = 4 * np.ceil(np.array(SIZES) / 2)
    if policy == "wait_all":
        assert np.all(active == 1) and np.all(budget == full)
        assert float(metrics[0]["round_time_s"]) > 1.0     # a slow node needs 20 steps * 2 / 20 = 2 s
    elif policy == "drop_late":
        np.testing.assert_array_equal(active, [1, 1, 1, 1, 0, 0, 0, 0])
        assert float(metrics[0]["round_time_s"]) <= 1.0
    else:
        assert np.all(active == 1)
        assert np.all(budget[4:] < full[4:]) and np.all(budget[:4] == full[:4])
        assert float(metrics[0]["round_time_s"]) <= 1.0 + 1e-6


def test_markov_availability_as_the_round_sees_it_has_the_configured_transitions():
    """With the full cohort (K = N) a node takes part exactly when it is online, so the
    participation masks of consecutive rounds must show the chain's transition
    probabilities: P(on -> on) = 1 - 1/mean_on, P(off -> off) = 1 - 1/mean_off (stationary
    share online mean_on / (mean_on + mean_off)), independently of how the draw is coded."""
    mean_on, mean_off, rounds = 4.0, 2.0, 150
    sim = _sim(SystemModel(availability=Availability("markov", mean_on=mean_on, mean_off=mean_off)), epochs=1)
    hp = sim.hparams()
    state = sim.init(jax.random.PRNGKey(1), hp)
    round_fn = jax.jit(sim.round)
    plan_fn = jax.jit(sim.plan)
    masks = []
    for _ in range(rounds):
        plan = plan_fn(state, hp)
        order = np.argsort(np.asarray(plan.nodes))
        masks.append(np.asarray(plan.active)[order] > 0)
        state, metrics = round_fn(state, sim.data, hp)
        assert float(metrics["participants"]) == masks[-1].sum()
    on = np.array(masks)
    stay_on = (on[1:] & on[:-1]).sum() / on[:-1].sum()
    stay_off = (~on[1:] & ~on[:-1]).sum() / (~on[:-1]).sum()
    assert stay_on == pytest.approx(1 - 1 / mean_on, abs=0.06)
    assert stay_off == pytest.approx(1 - 1 / mean_off, abs=0.08)
    assert on.mean() == pytest.approx(mean_on / (mean_on + mean_off), abs=0.08)


def test_tier_selection_takes_each_cohort_from_one_tier():
    tiers = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    sim = _sim(SystemModel(profiles=_profiles([100.0] * 8, tiers), selection="tier"), cohort=3)
    plans, _ = _plans(sim, sim.hparams({"clients_per_round": 2}), rounds=8)
    seen = set()
    for plan in plans:
        picked = np.asarray(plan.nodes)[np.asarray(plan.active) > 0]
        assert len(set(tiers[picked])) == 1
        seen.add(int(tiers[picked][0]))
    assert len(seen) > 1


def test_bad_system_configuration_is_rejected():
    with pytest.raises(ValueError, match="stragglers"):
        SystemModel(stragglers="some")
    with pytest.raises(ValueError, match="6 nodes"):
        _sim(SystemModel(profiles=_profiles([1.0] * 6))).run(1)
