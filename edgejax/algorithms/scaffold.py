"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning"), Algorithm 1 with option II control variates.

Server control variate ``c`` (``server.extra``), node control variates ``c_i``
(``nodes.extra [N, ...]``, all zero at the start).  One round, for the sampled set S::

    node i in S:  y_i <- y_i - lr (g_i(y_i) - c_i + c)         K_i local SGD steps from x
                  c_i+ = c_i - c + (x - y_i) / (K_i lr)           (option II)
    server:       x <- x + eta_g sum_{i in S} p_i (y_i - x)       (p_i = 1/|S|: the paper)
                  c <- c + (1/N) sum_{i in S} (c_i+ - c_i)        (the paper divides by N)

The correction ``c - c_i`` enters the local objective as the linear term
``<c - c_i, w>``, whose gradient it is.  Conventions offered: ``weighting="samples"``
weights ``y_i - x`` by sample counts instead of ``1/|S|``; ``control_average="cohort"``
divides the control update by ``|S|`` instead of ``N``.  Option II assumes plain local
SGD, so the local optimizer must be ``sgd``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from edgejax.algorithms.fedavg import WEIGHTINGS, cohort_inputs
from edgejax.algorithms.server_optimizers import SERVER_OPTIMIZERS, make_server_optimizer, server_hparams
from edgejax.core.local import map_nodes, masked_weighted_sum
from edgejax.core.validation import check_choice
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState, tree_take, tree_where

CONTROL_AVERAGES = ("paper", "cohort")


def control_correction(params, anchor, correction, hparams):
    """``<c - c_i, w>``: adds ``c - c_i`` to every local gradient."""
    return sum(jnp.sum(d * w) for d, w in zip(jax.tree_util.tree_leaves(correction),
                                             jax.tree_util.tree_leaves(params)))


@dataclasses.dataclass(frozen=True)
class SCAFFOLD:
    """SCAFFOLD with option II control variates (static options; see the module docstring)."""

    weighting: str = "uniform"
    control_average: str = "paper"
    server_optimizer: str = "sgd"

    def __post_init__(self):
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_choice("control_average", self.control_average, CONTROL_AVERAGES)
        check_choice("server optimizer", self.server_optimizer, SERVER_OPTIMIZERS)

    @property
    def name(self) -> str:
        return "scaffold"

    regularizer = staticmethod(control_correction)

    def default_hparams(self) -> dict[str, float]:
        return server_hparams(self.server_optimizer)

    def init(self, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        n = node_rng.shape[0]
        opt = make_server_optimizer(self.server_optimizer, hparams)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, global_params)
        node_c = jax.tree_util.tree_map(lambda p: jnp.zeros((n, *p.shape), p.dtype), global_params)
        return NodeState(rng=node_rng, extra=node_c), ServerState(global_params, opt.init(global_params), zeros)

    def eval_models(self, state: SimState):
        return state.server.params, None

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        if ctx.local.optimizer != "sgd":
            raise ValueError(f"SCAFFOLD's option II control variates assume local 'sgd'; got {ctx.local.optimizer!r}")
        x, c = state.server.params, state.server.extra
        n = data.train.num_nodes
        full = plan.nodes.shape[0] == n
        cohort, keys, weights = cohort_inputs(state, data, plan, self.weighting)
        c_nodes = state.nodes.extra if full else tree_take(state.nodes.extra, plan.nodes)
        correction = jax.tree_util.tree_map(lambda cg, ci: cg - ci, c, c_nodes)

        def local(args):
            xs, ys, count, key, budget, corr = args
            return ctx.local_update(x, xs, ys, count, key, budget, hparams, corr)

        args = (cohort.x, cohort.y, cohort.count, keys, plan.step_budget, correction)
        y, node_loss, node_steps = map_nodes(local, args, ctx.group_size)

        total = jnp.sum(weights)
        p = weights / jnp.maximum(total, 1e-30)
        delta_y = jax.tree_util.tree_map(lambda yi, x0: masked_weighted_sum(p, yi - x0), y, x)

        updated = (plan.active > 0) & (node_steps > 0)
        scale = jnp.where(updated, 1.0 / (jnp.maximum(node_steps, 1.0) * hparams["client_lr"]), 0.0)

        def new_control(ci, yi, x0, cg):
            s = scale.reshape((-1,) + (1,) * (yi.ndim - 1))
            fresh = ci - cg + s * (x0 - yi)
            return jnp.where(updated.reshape(s.shape), fresh, ci)

        c_new = jax.tree_util.tree_map(new_control, c_nodes, y, x, c)
        divisor = n if self.control_average == "paper" else jnp.maximum(jnp.sum(updated), 1)
        c_server = jax.tree_util.tree_map(
            lambda cg, new, old: cg + jnp.sum(new - old, axis=0) / divisor, c, c_new, c_nodes)

        opt = make_server_optimizer(self.server_optimizer, hparams)
        updates, opt_state = opt.update(jax.tree_util.tree_map(jnp.negative, delta_y), state.server.opt_state, x)
        server = ServerState(optax.apply_updates(x, updates), opt_state, c_server)
        server = tree_where(total > 0, server, state.server)
        all_c = c_new if full else jax.tree_util.tree_map(lambda a, v: a.at[plan.nodes].set(v), state.nodes.extra, c_new)

        participants = jnp.sum(plan.active)
        metrics = {
            "train_loss": masked_weighted_sum(p, node_loss),
            "participants": participants,
            "local_steps": jnp.sum(plan.active * node_steps),
            "bytes_up": participants * 2 * ctx.model_bytes,     # y_i and c_i
            "bytes_down": participants * 2 * ctx.model_bytes,   # x and c
        }
        return state._replace(server=server, nodes=state.nodes._replace(extra=all_c)), metrics
