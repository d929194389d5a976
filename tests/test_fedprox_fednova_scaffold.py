"""FedProx, FedNova and SCAFFOLD against float64 NumPy references of their papers' equations."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.core.state import RoundPlan
from conftest import make_data
from references import logreg_loss_grad


def _sim(data, alg, *, steps=3, optimizer="sgd", cohort=None):
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    local = ej.LocalTraining(batch_size=int(np.max(data.node_counts())), steps=steps, optimizer=optimizer,
                             execution="per_node")
    return ej.Simulation(model, data, alg, local, clients_per_round=cohort)


def _wb(params):
    return np.asarray(params["out"]["w"]), np.asarray(params["out"]["b"])


def _local(w, b, x, y, lr, steps, mu=0.0, momentum=0.0, corr=None):
    """Full-batch local steps: SGD (optionally heavy-ball momentum, optax's trace) on
    CE + mu/2 ||v - v0||^2 + <corr, v>."""
    w0, b0 = w, b
    mw, mb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(steps):
        _, gw, gb = logreg_loss_grad(w, b, x, y, 3)
        gw, gb = gw + mu * (w - w0), gb + mu * (b - b0)
        if corr is not None:
            gw, gb = gw + corr[0], gb + corr[1]
        mw, mb = gw + momentum * mw, gb + momentum * mb
        w, b = w - lr * mw, b - lr * mb
    return w, b


def _plan(k, active, budget):
    return RoundPlan(jnp.arange(k, dtype=jnp.int32), jnp.asarray(active, jnp.float64), jnp.asarray(budget, jnp.int32))


def test_fedprox_with_mu_zero_equals_fedavg(x64):
    data, _, _ = make_data([4, 6, 5], seed=1)
    runs = [_sim(data, alg).run(3, seed=0, hparams=hp, eval_every=3).final_state.server.params
            for alg, hp in ((ej.get_algorithm("fedprox"), {"mu": 0.0}), (ej.FedAvg(), {}))]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14), *runs)


def test_fedprox_matches_reference(x64):
    data, xs, ys = make_data([4, 6, 5], seed=2)
    sim = _sim(data, ej.get_algorithm("fedprox"))
    hp = sim.hparams({"client_lr": 0.2, "mu": 0.7})
    state = sim.init(jax.random.PRNGKey(2), hp)
    w0, b0 = _wb(state.server.params)
    new, _ = jax.jit(sim.round)(state, data, hp)
    sizes = np.array([len(y) for y in ys], float)
    outs = [_local(w0, b0, xs[i], ys[i], 0.2, 3, mu=0.7) for i in range(3)]
    w_ref = w0 + sum(s * (o[0] - w0) for s, o in zip(sizes / sizes.sum(), outs))
    np.testing.assert_allclose(_wb(new.server.params)[0], w_ref, rtol=1e-11, atol=1e-12)


def test_fednova_equals_fedavg_when_every_node_runs_the_same_steps(x64):
    data, _, _ = make_data([5, 5, 5, 5], seed=3)
    runs = [_sim(data, alg, optimizer="momentum").run(3, seed=0, eval_every=3).final_state.server.params
            for alg in (ej.get_algorithm("fednova"), ej.FedAvg())]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12), *runs)


@pytest.mark.parametrize("variant", ["sgd", "momentum", "prox", "prox-steps"])
def test_fednova_matches_reference_with_unequal_steps(x64, variant):
    data, xs, ys = make_data([4, 6, 5], seed=4)
    optimizer = "momentum" if variant == "momentum" else "sgd"
    alg = ej.FedAvg(normalized=True, prox=variant.startswith("prox"),
                    tau_eff="steps" if variant == "prox-steps" else "paper")
    sim = _sim(data, alg, steps=5, optimizer=optimizer)
    lr, rho, mu = 0.1, 0.8, 0.5
    hp = sim.hparams({"client_lr": lr, **({"client_momentum": rho} if optimizer == "momentum" else {}),
                      **({"mu": mu} if alg.prox else {})})
    state = sim.init(jax.random.PRNGKey(4), hp)
    w0, b0 = _wb(state.server.params)
    budget = [5, 2, 3]
    new, _ = sim.round_with_plan(state, data, _plan(3, [1, 1, 1], budget), hp)
    sizes = np.array([len(y) for y in ys], float)
    p = sizes / sizes.sum()
    tau = np.array(budget, float)
    if variant == "momentum":
        a = (tau - rho * (1 - rho ** tau) / (1 - rho)) / (1 - rho)
    elif alg.prox:
        a = (1 - (1 - lr * mu) ** tau) / (lr * mu)
    else:
        a = tau
    tau_eff = np.sum(p * (tau if variant == "prox-steps" else a))
    outs = [_local(w0, b0, xs[i], ys[i], lr, budget[i], mu=mu if alg.prox else 0.0,
                   momentum=rho if variant == "momentum" else 0.0) for i in range(3)]
    w_ref = w0 + tau_eff * sum(p[i] * (outs[i][0] - w0) / a[i] for i in range(3))
    np.testing.assert_allclose(_wb(new.server.params)[0], w_ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("control_average", ["paper", "cohort"])
def test_scaffold_matches_reference(x64, control_average):
    data, xs, ys = make_data([4, 6, 5, 3], seed=5)
    alg = ej.SCAFFOLD(control_average=control_average)
    sim = _sim(data, alg, steps=3)
    lr, eta_g = 0.15, 0.8
    hp = sim.hparams({"client_lr": lr, "server_lr": eta_g})
    state = sim.init(jax.random.PRNGKey(5), hp)
    w, b = _wb(state.server.params)
    c = (np.zeros_like(w), np.zeros_like(b))
    ci = [(np.zeros_like(w), np.zeros_like(b)) for _ in range(4)]
    round_fn = jax.jit(lambda s, plan: sim.round_with_plan(s, data, plan, hp))
    for active in ([1, 1, 0, 1], [0, 1, 1, 1], [1, 0, 1, 0]):
        chosen = [i for i in range(4) if active[i]]
        dy_w, dy_b, dc_w, dc_b = 0, 0, 0, 0
        for i in chosen:
            corr = (c[0] - ci[i][0], c[1] - ci[i][1])
            yw, yb = _local(w, b, xs[i], ys[i], lr, 3, corr=corr)
            new_ci = (ci[i][0] - c[0] + (w - yw) / (3 * lr), ci[i][1] - c[1] + (b - yb) / (3 * lr))
            dy_w, dy_b = dy_w + (yw - w) / len(chosen), dy_b + (yb - b) / len(chosen)
            dc_w, dc_b = dc_w + new_ci[0] - ci[i][0], dc_b + new_ci[1] - ci[i][1]
            ci[i] = new_ci
        div = 4 if control_average == "paper" else len(chosen)
        w, b = w + eta_g * dy_w, b + eta_g * dy_b
        c = (c[0] + dc_w / div, c[1] + dc_b / div)
        state, _ = round_fn(state, _plan(4, active, [3, 3, 3, 3]))
        np.testing.assert_allclose(_wb(state.server.params)[0], w, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(state.server.extra.c["out"]["w"]), c[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(state.nodes.extra.c["out"]["b"][2]), ci[2][1], rtol=1e-10, atol=1e-12)


def test_variants_that_are_not_defined_are_rejected():
    data, _, _ = make_data([4, 4], dtype=np.float32, seed=6)
    with pytest.raises(ValueError, match="'adam'"):
        _sim(data, ej.SCAFFOLD(), optimizer="adam").run(1)
    with pytest.raises(ValueError, match="'nesterov'"):
        _sim(data, ej.get_algorithm("fednova"), optimizer="nesterov").run(1)
    with pytest.raises(ValueError, match="tau_eff"):
        ej.FedAvg(normalized=True, tau_eff="mean")
