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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from edgejax.algorithms.aggregation import Aggregator, Mean, check_aggregator, with_aggregator
from edgejax.algorithms.base import DescribedByFields, EvaluatesServerModel, Payload, Traits
from edgejax.algorithms.server import (WEIGHTINGS, aggregated_change, cohort_inputs, gather, linear, normalize,
                                       scatter, server_metrics, server_step)
from edgejax.algorithms.server_optimizers import check_server_optimizer, make_server_optimizer, server_hparams
from edgejax.core.execution import Needs
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState
from edgejax.core.validation import check_choice
from edgejax.models.base import num_bytes

CONTROL_AVERAGES = ("paper", "cohort")


class Control(NamedTuple):
    """SCAFFOLD's state: a control variate ``c`` (the server's ``c``, or every node's ``c_i [N, ...]``)."""

    c: object


@dataclasses.dataclass(frozen=True)
class SCAFFOLD(DescribedByFields, EvaluatesServerModel):
    """SCAFFOLD with option II control variates (static options; see the module docstring).

    State: ``server.extra = Control(c)``, ``nodes.extra = Control(c_i [N, ...])``.  ``aggregator``
    combines the changes ``y_i - x`` (``edgejax.algorithms.aggregation``; the weighted mean
    of the paper by default); the control update stays the paper's average.
    """

    weighting: str = "uniform"
    control_average: str = "paper"
    server_optimizer: Any = "sgd"
    aggregator: Aggregator = Mean()

    def __post_init__(self):
        check_aggregator(self.aggregator)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_choice("control_average", self.control_average, CONTROL_AVERAGES)
        check_server_optimizer(self.server_optimizer)

    @property
    def name(self) -> str:
        return "scaffold" + with_aggregator(self.aggregator)

    def traits(self) -> Traits:
        """The correction ``c - c_i`` is a linear local term; the control update reads every ``y_i``."""
        return Traits(needs=Needs(terms=(linear("control"),), output="models"))

    def payload(self, params, num_nodes: int) -> Payload:
        """``x`` and ``c`` down, ``y_i`` and ``c_i`` up: two models each way."""
        return Payload(2 * num_bytes(params), 2 * num_bytes(params))

    def default_hparams(self) -> dict[str, float]:
        return {**server_hparams(self.server_optimizer), **self.aggregator.default_hparams()}

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        if ctx.local.optimizer != "sgd":
            raise ValueError(f"SCAFFOLD's option II control variates assume local 'sgd'; got {ctx.local.optimizer!r}")
        n = node_rng.shape[0]
        opt = make_server_optimizer(self.server_optimizer, hparams)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, global_params)
        node_c = jax.tree_util.tree_map(lambda p: jnp.zeros((n, *p.shape), p.dtype), global_params)
        return NodeState(rng=node_rng, extra=Control(node_c)), ServerState(global_params, opt.init(global_params),
                                                                            Control(zeros),
                                                                            self.aggregator.init(global_params))

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        x, c = state.server.params, state.server.extra.c
        cohort = cohort_inputs(state, data, plan, self.weighting)
        c_nodes = gather(state.nodes.extra.c, plan, cohort.full)
        correction = jax.tree_util.tree_map(lambda cg, ci: cg - ci, c, c_nodes)
        y = ctx.execution.train(x, cohort.data, cohort.keys, plan.step_budget, hparams, {"control": correction})
        p = normalize(cohort.weights)
        delta_y, aggregator_state, aggregator_metrics = aggregated_change(self.aggregator, p, y.params, x, state,
                                                                          hparams)

        updated = (plan.active > 0) & (y.steps > 0)
        scale = jnp.where(updated, 1.0 / (jnp.maximum(y.steps, 1.0) * hparams["client_lr"]), 0.0)

        def new_control(ci, yi, x0, cg):
            s = scale.reshape((-1,) + (1,) * (yi.ndim - 1))
            fresh = ci - cg + s * (x0 - yi)
            return jnp.where(updated.reshape(s.shape), fresh, ci)

        c_new = jax.tree_util.tree_map(new_control, c_nodes, y.params, x, c)
        divisor = ctx.num_nodes if self.control_average == "paper" else jnp.maximum(jnp.sum(updated), 1)
        c_server = jax.tree_util.tree_map(
            lambda cg, new, old: cg + jnp.sum(new - old, axis=0) / divisor, c, c_new, c_nodes)

        opt = make_server_optimizer(self.server_optimizer, hparams)
        server = server_step(opt, state.server, delta_y, jnp.sum(cohort.weights) > 0, Control(c_server),
                             aggregator_state)
        nodes = state.nodes._replace(extra=Control(scatter(state.nodes.extra.c, c_new, plan, cohort.full)))
        metrics = {**server_metrics(p, y.loss, y.steps, plan, ctx.payload), **aggregator_metrics}
        return state._replace(server=server, nodes=nodes), metrics
