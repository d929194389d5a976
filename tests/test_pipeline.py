"""Pipeline partitioning (edgejax.parallel): GPipe gradients and the hybrid execution against the
unpartitioned model on 8 host CPU devices (one subprocess, ``pipeline_checks.py``), the stage
assignment against brute force and hand-computed values, and the refusals."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

import edgejax as ej
from edgejax.core.execution import Needs
from edgejax.models.base import DenseLayer
from edgejax.parallel import Pipelined, StagePlan, pipeline_value_and_grad, plan_stages, stage_value_and_grad
from edgejax.system.profiles import DeviceProfiles
from conftest import make_data

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def checks():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, str(TESTS / "pipeline_checks.py")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.multidevice
@pytest.mark.parametrize("dtype,tol", [("float32", 2e-6), ("float64", 1e-12)])
def test_pipeline_loss_and_every_gradient_equal_the_unpartitioned_model(checks, dtype, tol):
    assert checks["devices"] == 8
    results = checks["pipeline"][dtype]
    assert sorted(results) == ["S2_M1", "S2_M4", "S2_M5", "S4_M1", "S4_M4", "S4_M5"]
    for case in results.values():
        assert case["grad_dtype"] == dtype
        assert case["loss"] <= tol
        assert len(case["grads"]) == 8  # w and b of 4 layers
        assert max(case["grads"].values()) <= tol, case["grads"]


@pytest.mark.multidevice
def test_hybrid_execution_equals_per_node(checks):
    assert sorted(checks["hybrid"]) == ["dpsgd_R2_S4", "dpsgd_R4_S2", "fedavg_R2_S4", "fedavg_R4_S2", "fedprox_R4_S2"]
    for case in checks["hybrid"].values():
        assert case["execution"] == "pipelined"
        assert case["float_leaves"] >= 8
        assert case["state"] <= 1e-6
        assert case["loss"] <= 1e-6 * case["ref_loss"]
        # the padded cohort is sharded over replicas: the smallest weight stack is one device's share
        assert case["weight_stacks"][0] == -(-case["nodes"] // case["replicas"]), case


@pytest.mark.multidevice
def test_a_planned_pipeline_charges_its_time_to_the_simulated_clock(checks):
    clock = checks["clock"]
    assert clock["compute"] == clock["ratio"] != 1.0
    assert abs(clock["pipelined"] - clock["expected"]) <= 1e-5 * clock["expected"], clock


# ----- stage assignment ------------------------------------------------------------------------
HAND_LAYERS = (DenseLayer("a", 2, 3, "relu"), DenseLayer("b", 3, 4, "relu"), DenseLayer("c", 4, 1))
# training FLOPs per sample: 3 * 2 * d_in * d_out = 36, 72, 24 (132 in all)


def test_plan_hand_computed_three_layers():
    # m = 4 / 2 = 2 samples a microbatch; device speeds 36 and 12 FLOP/s; 4-byte activations.
    # split a|bc: T0 = 2*36/36 + 2*(2*3*4)/bw = 2 + 48/bw, T1 = 2*96/12 = 16
    # split ab|c: T0 = 2*108/36 + 2*(2*4*4)/bw = 6 + 64/bw, T1 = 2*24/12 = 4
    plan = plan_stages(HAND_LAYERS, [36.0, 12.0], batch_size=4, microbatches=2, bandwidth=8.0)
    assert plan == StagePlan(stage_of_layer=(0, 0, 1), microbatches=2, microbatch_size=2, compute_s=(6.0, 4.0),
                             transfer_s=(8.0, 0.0), activation_bytes=(32,), single_device_s=4 * 132 / 36)
    assert plan.stage_time_s == (14.0, 4.0) and plan.bottleneck_s == 14.0
    assert plan.bubble_fraction == pytest.approx(1 / 3)
    assert plan.pipeline_time_s == pytest.approx(3 * 14.0)
    assert plan.ratio_to_single_device == pytest.approx(42.0 / (4 * 132 / 36))
    assert plan.step_time_s(4) == pytest.approx(42.0)
    assert plan.step_time_s(6) == pytest.approx((2 + 1) * 3 * 14.0 / 2)     # m = 3
    # a slower link makes the smaller activation (3 units after layer a) worth the compute imbalance
    slow = plan_stages(HAND_LAYERS, [36.0, 12.0], batch_size=4, microbatches=2, bandwidth=4.0)
    assert slow.stage_of_layer == (0, 1, 1) and slow.stage_time_s == (14.0, 16.0)
    assert slow.pipeline_time_s == pytest.approx(48.0)
    # a given split is costed, not searched
    fixed = plan_stages(HAND_LAYERS, [36.0, 12.0], batch_size=4, microbatches=2, bandwidth=8.0, stage_of_layer=(0, 1, 1))
    assert fixed.stage_time_s == (8.0, 16.0)


def _brute_force(flops, d_out, speeds, bw, m, dtype_bytes):
    n, s_count = len(flops), len(speeds)
    best = np.inf
    for cuts in itertools.combinations(range(1, n), s_count - 1):
        bounds = (0, *cuts, n)
        times = []
        for s in range(s_count):
            t = m * sum(flops[bounds[s]:bounds[s + 1]]) / speeds[s]
            if s < s_count - 1:
                t += 2 * m * d_out[bounds[s + 1] - 1] * dtype_bytes / bw[s]
            times.append(t)
        best = min(best, max(times))
    return best


def test_plan_matches_brute_force_on_random_instances():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(1, 8))
        s_count = int(rng.integers(1, min(n, 4) + 1))
        widths = rng.integers(1, 64, size=n + 1)
        layers = tuple(DenseLayer(f"l{i}", int(widths[i]), int(widths[i + 1])) for i in range(n))
        speeds = rng.uniform(1e3, 1e5, size=s_count)
        bw = rng.uniform(1e2, 1e5, size=max(s_count - 1, 1))
        batch, micro = int(rng.integers(1, 33)), int(rng.integers(1, 5))
        micro = min(micro, batch)
        plan = plan_stages(layers, speeds, batch_size=batch, microbatches=micro, bandwidth=bw[:s_count - 1] if
                           s_count > 1 else None)
        m = -(-batch // micro)
        flops = [6.0 * layer.d_in * layer.d_out for layer in layers]
        expected = _brute_force(flops, [layer.d_out for layer in layers], speeds, bw, m, 4)
        assert plan.bottleneck_s == pytest.approx(expected, rel=1e-12)
        # the plan's own split has the bottleneck it reports
        stages = np.asarray(plan.stage_of_layer)
        assert stages[0] == 0 and stages[-1] == s_count - 1 and set(np.diff(stages)) <= {0, 1}
        for s in range(s_count):
            held = np.flatnonzero(stages == s)
            assert plan.compute_s[s] == pytest.approx(m * sum(flops[i] for i in held) / speeds[s], rel=1e-12)
        assert plan.pipeline_time_s == pytest.approx((micro + s_count - 1) * expected, rel=1e-12)


def test_plan_from_device_profiles_converts_samples_per_second():
    layers = HAND_LAYERS
    profiles = DeviceProfiles(speed=np.array([2.0, 0.5]), up_bandwidth=np.array([10.0, 3.0]),
                              down_bandwidth=np.array([7.0, 6.0]), latency=np.zeros(2),
                              energy_per_sample=np.zeros(2), energy_per_byte=np.zeros(2), tier=np.zeros(2, np.int32))
    got = plan_stages(layers, profiles, batch_size=8, microbatches=4)
    want = plan_stages(layers, [2.0 * 132, 0.5 * 132], batch_size=8, microbatches=4, bandwidth=[6.0])
    assert got == want


def test_bad_plans_are_rejected():
    with pytest.raises(ValueError, match="3 layers"):
        plan_stages(HAND_LAYERS, [1.0] * 4, batch_size=4, microbatches=1, bandwidth=1.0)
    with pytest.raises(ValueError, match=r"speeds\[1\] = -1.0"):
        plan_stages(HAND_LAYERS, [1.0, -1.0], batch_size=4, microbatches=1, bandwidth=1.0)
    with pytest.raises(ValueError, match="microbatches=5 exceeds batch_size=4"):
        plan_stages(HAND_LAYERS, [1.0, 1.0], batch_size=4, microbatches=5, bandwidth=1.0)
    with pytest.raises(ValueError, match="not a chain"):
        plan_stages((DenseLayer("a", 2, 3), DenseLayer("b", 4, 1)), [1.0], batch_size=1, microbatches=1)
    with pytest.raises(ValueError, match="not a dense stack"):
        plan_stages(ej.models.cnn((8, 8, 1), 2), [1.0], batch_size=1, microbatches=1)


# ----- refusals (one device suffices) ------------------------------------------------------------
def _mesh(axes=("replicas", "stages")):
    return Mesh(np.array(jax.devices()[:1]).reshape((1,) * len(axes)), axes)


def test_pipeline_rejects_bad_stage_assignments():
    model = ej.models.mlp((6,), 3, hidden=(5,))
    with pytest.raises(ValueError, match=r"3 devices \(stages\) for 2 layers"):
        stage_value_and_grad(model, None, 1, 3)
    with pytest.raises(ValueError, match="3 stages for a model of 2 layers"):
        stage_value_and_grad(model, (0, 1), 1, 3)
    with pytest.raises(ValueError, match=r"stage_of_layer=\(1, 0\)"):
        stage_value_and_grad(model, (1, 0), 1, 2)
    with pytest.raises(ValueError, match="stage_of_layer has 1 entries for 2 layers"):
        stage_value_and_grad(model, (0,), 1, 1)
    with pytest.raises(ValueError, match="needs a 'stages' axis"):
        pipeline_value_and_grad(model, _mesh(("nodes",)))
    with pytest.raises(ValueError, match="microbatches must be a positive integer; got 0"):
        pipeline_value_and_grad(model, _mesh(("stages",)), microbatches=0)


def test_hybrid_refuses_what_it_cannot_do_exactly():
    data = make_data([4, 4], dim=6, num_classes=3)[0]
    cnn = ej.models.cnn((4, 4, 1), 3)
    with pytest.raises(ValueError, match="not a dense stack"):
        Pipelined(_mesh()).build(cnn, ej.LocalTraining(), 1, 1, None, Needs())
    mlp = ej.models.mlp(data.feature_shape, 3, hidden=(5,))
    with pytest.raises(ValueError, match="sub-model"):
        Pipelined(_mesh()).build(mlp, ej.LocalTraining(), 1, 1, None, Needs(masked=True))
    with pytest.raises(ValueError, match="axes \\('replicas', 'stages'\\)"):
        Pipelined(_mesh(("stages",)))
    with pytest.raises(ValueError, match="execution must be one of"):
        ej.LocalTraining(execution=object())
    sim = ej.Simulation(mlp, data, ej.FedAvg(), ej.LocalTraining(batch_size=2, execution=Pipelined(_mesh())))
    assert sim.execution == "pipelined"
    plan = plan_stages(mlp, [1.0], batch_size=2, microbatches=2)
    assert Pipelined.from_plan(_mesh(), plan).step_time_s(2) == plan.step_time_s(2)
    with pytest.raises(ValueError, match="no StagePlan"):
        Pipelined(_mesh()).step_time_s(2)
