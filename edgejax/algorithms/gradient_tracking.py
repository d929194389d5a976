"""Gradient tracking: DIGing (Nedić, Olshevsky & Shi 2017, "Achieving Geometric Convergence for
Distributed Optimization over Time-Varying Graphs", eqs. (3a)-(3b)).

Every node keeps its model ``x_i`` and a tracker ``y_i`` of the network's average gradient;
with a doubly stochastic mixing matrix ``W`` (``Topology(weights="metropolis")``)::

    x^{k+1} = W x^k - alpha y^k
    y^{k+1} = W y^k + grad f(x^{k+1}) - grad f(x^k),      y^0 = grad f(x^0)

so ``mean_i y_i = mean_i grad f_i(x_i)`` at every step, and with a fixed step the nodes reach
the exact minimiser of ``sum_i f_i`` (D-PSGD with a fixed step stops at a biased point).
``grad f_i`` is node i's gradient on its first local minibatch of the round
(``RoundContext.value_and_grad``: the node's whole data when ``batch_size >= n_i``, the
paper's deterministic setting); ``alpha`` is the traced ``client_lr``.  The local optimizer
must be ``sgd``; ``LocalTraining``'s steps and epochs are not used (one gradient a round).
An absent node (``plan.active = 0``) mixes but computes no fresh gradient: it keeps its last
one, so the tracker's average still equals the average of the gradients held.

State: ``nodes.params`` (``x [N, ...]``) and ``nodes.extra = Tracking(y, g)`` (the tracker and
the last gradient ``[N, ...]``); ``y`` and ``g`` are filled in the first round.  Each message
carries ``x_i`` and ``y_i``: two models.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from edgejax import network as tp
from edgejax.algorithms.decentralized import _Gossip, _round_metrics
from edgejax.network.spec import messages_sent
from edgejax.core.state import round_keys
from edgejax.models.base import num_bytes


class Tracking(NamedTuple):
    """DIGing's per-node state: the gradient tracker ``y [N, ...]`` and the last gradient ``g [N, ...]``."""

    y: object
    g: object


@dataclasses.dataclass(frozen=True, eq=False)
class DIGing(_Gossip):
    """DIGing gradient tracking over a ``Topology`` (see the module docstring)."""

    @property
    def name(self) -> str:
        return "diging"

    def message_bytes(self, params) -> float:
        """A model and its tracker."""
        return 2.0 * float(num_bytes(params))

    def init_extra(self, global_params, n):
        zeros = jax.tree_util.tree_map(lambda p: jnp.zeros((n, *p.shape), p.dtype), global_params)
        return Tracking(zeros, zeros)

    def init(self, ctx, global_params, node_rng, hparams):
        if ctx.local.optimizer != "sgd":
            raise ValueError(f"DIGing takes plain gradient steps of size client_lr; the local optimizer must be "
                             f"'sgd', got {ctx.local.optimizer!r}")
        return super().init(ctx, global_params, node_rng, hparams)

    def round(self, ctx, state, data, plan, hparams):
        x, tracking = state.nodes.params, state.nodes.extra
        keys = round_keys(state.nodes.rng, state.round)
        active = plan.active > 0

        def fresh_gradient(params, previous):
            loss, grads = ctx.value_and_grad(params, data.train, keys)
            keep = jax.tree_util.tree_map(lambda g, old: jnp.where(
                active.reshape((-1,) + (1,) * (g.ndim - 1)), g, old), grads, previous)
            return loss, keep

        def first(t):   # y^0 = g^0 = grad f(x^0), taken in the first round
            g0 = fresh_gradient(x, t.g)[1]
            return Tracking(g0, g0)

        tracking = jax.lax.cond(state.round == 0, first, lambda t: t, tracking)
        w = self.operator(state, plan)
        lr = hparams["client_lr"]
        new_x = jax.tree_util.tree_map(lambda mixed, y: mixed - lr * y, tp.mix(w, x), tracking.y)
        loss, new_g = fresh_gradient(new_x, tracking.g)
        new_y = jax.tree_util.tree_map(lambda mixed, g1, g: mixed + g1 - g, tp.mix(w, tracking.y), new_g, tracking.g)
        nodes = state.nodes._replace(params=new_x, extra=Tracking(new_y, new_g))
        metrics = _round_metrics(plan, loss, active.astype(plan.active.dtype), new_x, messages_sent(w),
                                 self.message_bytes(ctx.params_shape))
        return state._replace(nodes=nodes), metrics
