"""DC-ASGD sending the gradient itself (``ExactDCASGD``) against a float64 NumPy loop of Zheng et
al. 2017's server rule, with a local schedule of several steps (where recovering the gradient
from the trained model, ``DCASGD``, is not the gradient)."""
from __future__ import annotations

import jax
import numpy as np

import edgejax as ej
from edgejax.algorithms.delay_compensation import ExactDCASGD
from edgejax.system import SystemModel, profiles_from_arrays
from conftest import make_data
from references import logreg_loss_grad

SIZES, C, LR = [5, 4, 6, 5, 3, 5], 3, 0.3


def _run(algorithm, steps):
    n = len(SIZES)
    data, xs, ys = make_data(SIZES, seed=30)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    profiles = profiles_from_arrays(np.ones(n), np.full(n, 1e9), np.full(n, 1e9), latency=0.0,
                                    energy_per_sample=1e-3, energy_per_byte=0.0)
    sim = ej.Simulation(model, data, algorithm, ej.LocalTraining(batch_size=max(SIZES), steps=steps),
                        system=SystemModel(profiles=profiles))   # equal speeds: all arrive in the first tick
    hp = sim.hparams({"client_lr": LR, "server_lr": 0.5, "dc_lambda": 0.3})
    state = sim.init(jax.random.PRNGKey(0), hp)
    new, metrics = jax.jit(sim.round)(state, data, hp)
    return state, new, metrics, xs, ys


def test_the_exact_gradient_rule_equals_numpy_with_three_local_steps(x64):
    state, new, metrics, xs, ys = _run(ExactDCASGD(), steps=3)
    w0, b0 = (np.asarray(state.server.params["out"][k]) for k in ("w", "b"))
    w, b = w0.copy(), b0.copy()
    for i in range(len(SIZES)):   # applied in id order, staleness 0, 1, 2, ...; every node downloaded x0
        _, gw, gb = logreg_loss_grad(w0, b0, xs[i], ys[i], C)
        w = w - 0.5 * (gw + 0.3 * gw * gw * (w - w0))
        b = b - 0.5 * (gb + 0.3 * gb * gb * (b - b0))
    np.testing.assert_allclose(new.server.params["out"]["w"], w, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(new.server.params["out"]["b"], b, rtol=1e-11, atol=1e-13)
    assert float(metrics["staleness_max"]) == len(SIZES) - 1 and float(metrics["local_steps"]) == len(SIZES)
    # the recovered gradient (w_bak - y) / lr is that of three steps, not the gradient
    _, recovered, _, _, _ = _run(ej.DCASGD(), steps=3)
    assert not np.allclose(recovered.server.params["out"]["w"], w, rtol=1e-3)


def test_with_one_local_step_the_recovered_and_the_exact_gradient_agree(x64):
    exact = _run(ExactDCASGD(), steps=1)[1].server.params["out"]["w"]
    recovered = _run(ej.DCASGD(), steps=1)[1].server.params["out"]["w"]
    np.testing.assert_allclose(exact, recovered, rtol=1e-12, atol=1e-14)
    assert ej.get_algorithm("dcasgd_exact").name == "dcasgd_exact"
