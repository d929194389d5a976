"""FedDF (FedAvg + server-side ensemble distillation) against a float64 NumPy round of Lin et al.
2020's Algorithm 1 (AVGLOGITS teacher, KL distillation by SGD), built on FedAvg's hook."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import edgejax as ej
from edgejax.algorithms.feddf import FedDF
from conftest import make_data
from references import distill_logit_grad, local_gd

LR, STEPS, DISTILL_LR, DISTILL_STEPS, T = 0.2, 3, 0.5, 4, 2.0


def _sim(data, public, batch=None, cohort=4):
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    algorithm = FedDF(public_x=public, distill_steps=DISTILL_STEPS, distill_batch=batch)
    return ej.Simulation(model, data, algorithm, ej.LocalTraining(batch_size=8, steps=STEPS, epochs=None),
                         clients_per_round=cohort)


@pytest.mark.parametrize("batch", [None, 3])
def test_feddf_equals_a_float64_numpy_round(x64, batch):
    data, xs, ys = make_data([5, 3, 6, 4, 7], seed=8)
    public = np.random.default_rng(9).normal(size=(7, 5))
    sim = _sim(data, public, batch)
    assert sim.execution == "per_node" and sim.algorithm.name == "feddf"
    hp = sim.hparams({"client_lr": LR, "distill_lr": DISTILL_LR, "distill_temperature": T})
    state = sim.init(jax.random.PRNGKey(2), hp)
    round_fn = jax.jit(sim.round)
    for _ in range(2):
        p = state.server.params["out"]
        w0, b0 = np.asarray(p["w"]), np.asarray(p["b"])
        plan = sim.plan(state, hp)
        chosen = [int(i) for i, a in zip(plan.nodes, plan.active) if a > 0]
        trained = [local_gd(w0, b0, xs[i], ys[i], 3, LR, STEPS) for i in chosen]
        n = np.asarray([len(ys[i]) for i in chosen], float)
        w = w0 + sum(q * (wi - w0) for q, (wi, _) in zip(n / n.sum(), trained))   # FedAvg, sample weights
        b = b0 + sum(q * (bi - b0) for q, (_, bi) in zip(n / n.sum(), trained))
        teacher = np.mean([public @ wi + bi for wi, bi in trained], axis=0)     # AVGLOGITS
        size = len(public) if batch is None else batch
        for s in range(DISTILL_STEPS):
            idx = (s * size + np.arange(size)) % len(public)
            g = distill_logit_grad("kl", public[idx] @ w + b, teacher[idx], T)
            w, b = w - DISTILL_LR * public[idx].T @ g, b - DISTILL_LR * g.sum(0)
        state, metrics = round_fn(state, data, hp)
        p = state.server.params["out"]
        np.testing.assert_allclose(p["w"], w, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(p["b"], b, rtol=1e-11, atol=1e-12)
        assert np.isfinite(float(metrics["distill_loss"])) and float(metrics["participants"]) == len(chosen)


def test_feddf_with_no_distillation_step_size_is_fedavg(x64):
    data, _, _ = make_data([5, 3, 6, 4, 7], seed=10)
    public = np.random.default_rng(11).normal(size=(6, 5))
    feddf = _sim(data, public)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    fedavg = ej.Simulation(model, data, ej.FedAvg(), feddf.local, clients_per_round=4)
    a = feddf.run(3, hparams=feddf.hparams({"distill_lr": 0.0}), eval_every=3).final_state.server.params["out"]
    b = fedavg.run(3, eval_every=3).final_state.server.params["out"]
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-12, atol=1e-13)


def test_feddf_options_are_checked():
    with pytest.raises(ValueError, match="FedDF needs public_x"):
        FedDF()
    with pytest.raises(ValueError, match="distill_steps=0 must be a positive integer"):
        FedDF(public_x=np.zeros((3, 2)), distill_steps=0)
    with pytest.raises(ValueError, match=r"distill_batch=5 must be an integer in \[1, P=3\]"):
        FedDF(public_x=np.zeros((3, 2)), distill_batch=5)
    assert FedDF(public_x=np.zeros((3, 2)), server_optimizer="adam").name == "feddf[fedadam]"
