"""APFL (Deng, Kamani & Mahdavi 2020, "Adaptive Personalized Federated Learning", Algorithm 1).

Every node keeps a personal model ``v_i`` (``nodes.params [N, ...]``, starting at the initial
global model) and a mixing weight ``alpha_i`` (``nodes.extra.alpha [N]``, starting at the traced
``apfl_alpha``); its personalized model is the mixture ``vbar_i = alpha_i v_i + (1 - alpha_i) w``.
One round, for the active nodes of the cohort, starting from ``w_i = w^t``, every local step on one
minibatch ``xi`` (SGD with ``client_lr`` = eta)::

    vbar   = alpha v_i + (1 - alpha) w_i                     (with the values before the step)
    w_i   <- w_i - eta grad f_i(w_i; xi)
    v_i   <- v_i - eta alpha grad f_i(vbar; xi)              (the gradient of f_i(vbar) in v)
    alpha <- clip(alpha - eta_alpha <v_i - w_i, grad f_i(vbar; xi)>, 0, 1)   (adaptive=True only)

    server: w^{t+1} = w^t + sum_i p_i (w_i - w^t)

``eta_alpha`` is the traced ``apfl_alpha_lr``.  The local steps follow the local schedule's
batches and step budget; the optimizer is plain SGD as in the paper (``LocalTraining(optimizer=
"sgd")``; other optimizers raise).  Nodes that do not take part keep ``v_i`` and ``alpha_i``.
``eval_models`` returns the global model and every node's ``vbar_i`` built with the current
global model (``own_accuracy_*``).  ``train_loss`` is the loss of the ``w_i`` steps;
``personal_loss`` that of ``vbar``.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from edgejax.algorithms.base import Payload, Traits, check_same_model
from edgejax.algorithms.personalized import scan_minibatches, static_schedule
from edgejax.algorithms.server import (WEIGHTINGS, cohort_inputs, gather, normalize, scatter, server_metrics,
                                       weighted_change)
from edgejax.core.execution import Needs
from edgejax.core.local import map_nodes, masked_weighted_sum
from edgejax.core.state import NodeState, ServerState, SimState, tree_broadcast, tree_where
from edgejax.core.validation import check_choice
from edgejax.models.base import Model, num_bytes


class Mixing(NamedTuple):
    """APFL's per-node state beside ``nodes.params`` (the ``v_i``): ``alpha [N]``."""

    alpha: jax.Array


def mixture(alpha, v, w):
    """``alpha v + (1 - alpha) w`` leafwise (``alpha`` a scalar, or ``[N]`` over stacked ``v``)."""
    def mix(vi, wi):
        a = jnp.reshape(alpha, jnp.shape(alpha) + (1,) * (vi.ndim - jnp.ndim(alpha)))
        return a * vi + (1 - a) * wi
    return jax.tree_util.tree_map(mix, v, w)


@dataclasses.dataclass(frozen=True)
class APFL:
    """APFL over ``model``; ``adaptive`` learns each node's ``alpha`` (see the module docstring)."""

    model: Model
    adaptive: bool = False
    weighting: str = "samples"

    def __post_init__(self):
        check_choice("weighting", self.weighting, WEIGHTINGS)

    @property
    def name(self) -> str:
        return "apfl"

    def traits(self) -> Traits:
        return Traits(needs=Needs(start="own", output="models"))

    def payload(self, params, num_nodes: int) -> Payload:
        """One model each way (``v_i`` and ``alpha_i`` stay on the node)."""
        return Payload(num_bytes(params), num_bytes(params))

    def default_hparams(self) -> dict[str, float]:
        return {"apfl_alpha": 0.25, **({"apfl_alpha_lr": 0.01} if self.adaptive else {})}

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model.name, "adaptive": self.adaptive, "weighting": self.weighting}

    def init(self, ctx, global_params, node_rng, hparams):
        check_same_model(self, self.model, ctx)
        if ctx.local.optimizer != "sgd" or ctx.local.weight_decay:
            raise ValueError(f"APFL's local steps are plain SGD without weight decay (Deng et al. 2020); got "
                             f"LocalTraining(optimizer={ctx.local.optimizer!r}, weight_decay={ctx.local.weight_decay!r})")
        n = node_rng.shape[0]
        alpha = jnp.full((n,), hparams["apfl_alpha"], jnp.result_type(float))
        return (NodeState(rng=node_rng, params=tree_broadcast(global_params, n), extra=Mixing(alpha)),
                ServerState(global_params))

    def eval_models(self, state: SimState):
        w = state.server.params
        n = state.nodes.extra.alpha.shape[0]
        return w, mixture(state.nodes.extra.alpha, state.nodes.params, tree_broadcast(w, n))

    def round(self, ctx, state: SimState, data, plan, hparams):
        spec, model = ctx.local, self.model
        w0 = state.server.params
        cohort = cohort_inputs(state, data, plan, self.weighting)
        v = gather(state.nodes.params, plan, cohort.full)
        alpha = gather(state.nodes.extra.alpha, plan, cohort.full)
        max_steps, shuffles = static_schedule(spec, cohort.data.x.shape[1])
        lr = hparams["client_lr"]

        def loss_fn(params, xb, yb, wb):
            return model.loss.fn(model.apply(params, xb), yb, wb)

        grad = jax.value_and_grad(loss_fn)

        def step(carry, xb, yb, wb):
            """One APFL step; the carry's last entry sums the personal (vbar) losses of the steps taken."""
            w, vi, a, personal_sum = carry
            vbar = mixture(a, vi, w)
            loss_w, g_w = grad(w, xb, yb, wb)
            loss_v, g_bar = grad(vbar, xb, yb, wb)
            new_w = jax.tree_util.tree_map(lambda p, g: p - lr * g, w, g_w)
            new_v = jax.tree_util.tree_map(lambda p, g: p - lr * a * g, vi, g_bar)
            if self.adaptive:
                inner = sum(jnp.sum((pv - pw) * g) for pv, pw, g in zip(
                    jax.tree_util.tree_leaves(vi), jax.tree_util.tree_leaves(w), jax.tree_util.tree_leaves(g_bar)))
                a = jnp.clip(a - hparams["apfl_alpha_lr"] * inner, 0.0, 1.0)
            return (new_w, new_v, a, personal_sum + loss_v), loss_w

        def node(args):
            vi, a, x, y, count, key, budget = args
            n_steps = jnp.minimum(spec.node_steps(count), budget)
            zero = jnp.zeros((), jnp.result_type(float))
            (w, vi, a, lsum), loss = scan_minibatches(step, (w0, vi, a, zero), x, y, count, key, n_steps,
                                                      max_steps, shuffles, spec)
            steps = n_steps.astype(jnp.float32)
            return w, vi, a, loss, lsum / jnp.maximum(steps, 1.0), steps

        c = cohort.data
        w_k, v_k, a_k, loss, personal_loss, steps = map_nodes(
            node, (v, alpha, c.x, c.y, c.count, cohort.keys, plan.step_budget), ctx.group_size)
        active = plan.active > 0

        def keep(new, old):
            return jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

        v_new = jax.tree_util.tree_map(keep, v_k, v)
        a_new = keep(a_k, alpha)
        p = normalize(cohort.weights)
        w_new = jax.tree_util.tree_map(jnp.add, w0, weighted_change(p, w_k, w0))
        server = tree_where(jnp.sum(cohort.weights) > 0, ServerState(w_new), state.server)
        nodes = state.nodes._replace(params=scatter(state.nodes.params, v_new, plan, cohort.full),
                                     extra=Mixing(scatter(state.nodes.extra.alpha, a_new, plan, cohort.full)))
        metrics = server_metrics(p, loss, steps, plan, ctx.payload)
        metrics["personal_loss"] = jnp.where(jnp.sum(plan.active) > 0, masked_weighted_sum(p, personal_loss), jnp.nan)
        return state._replace(server=server, nodes=nodes), metrics
