"""FedDyn (Acar et al. 2021, "Federated Learning Based on Dynamic Regularization", Algorithm 1).

Every node keeps the gradient memory ``g_i = grad L_i(theta_i)`` (zero at the start); the
server keeps ``h`` (zero at the start).  One round, for the active set P of the cohort::

    node i in P:  theta_i = argmin_w  L_i(w) - <g_i, w> + alpha/2 ||w - x||^2
                  g_i    <- g_i - alpha (theta_i - x)
    server:       h      <- h - alpha (1/N) sum_{i in P} (theta_i - x)
                  x      <- (1/|P|) sum_{i in P} theta_i - h / alpha

The argmin is approximated by the local schedule (``LocalTraining``), as in the paper's
experiments.  The local objective is the model's loss plus two ``LocalTerm``s: the
linear ``<-g_i, w>`` and the proximal pull ``alpha/2 ||w - x||^2``.  Conventions: the
paper averages ``theta_i`` uniformly over P (``weighting="samples"`` weights by sample
counts) and divides ``h``'s update by the number of nodes N; the authors' code also
scales ``alpha`` per node by its data share, which is not done here.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from edgejax.algorithms.aggregation import Aggregator, Mean, check_aggregator, with_aggregator
from edgejax.algorithms.base import DescribedByFields, EvaluatesServerModel, Payload, Traits
from edgejax.algorithms.server import (WEIGHTINGS, cohort_inputs, gather, linear, normalize, proximal, scatter,
                                       aggregated_change,
                                       server_metrics, server_step, weighted_change)
from edgejax.core.execution import Needs
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState
from edgejax.core.validation import check_choice
from edgejax.models.base import num_bytes

# x <- x + Delta': the server step takes the pseudo-gradient -Delta' and adds Delta'
_ADD_CHANGE = optax.scale(-1.0)


class GradientMemory(NamedTuple):
    """FedDyn's per-node state: ``g [N, ...]``, each node's ``grad L_i`` at its last model."""

    g: object


class DynamicState(NamedTuple):
    """FedDyn's server state: ``h``, the running correction of the global model."""

    h: object


@dataclasses.dataclass(frozen=True)
class FedDyn(DescribedByFields, EvaluatesServerModel):
    """FedDyn with the traced strength ``alpha`` (see the module docstring); ``aggregator``
    combines the changes ``theta_i - x`` (``edgejax.algorithms.aggregation``; the paper's mean
    by default), the memory ``h`` stays the paper's sum."""

    weighting: str = "uniform"
    aggregator: Aggregator = Mean()

    def __post_init__(self):
        check_aggregator(self.aggregator)
        check_choice("weighting", self.weighting, WEIGHTINGS)

    @property
    def name(self) -> str:
        return "feddyn" + with_aggregator(self.aggregator)

    def traits(self) -> Traits:
        """Two local terms; the memory update reads every node's trained model."""
        return Traits(needs=Needs(terms=(linear("dynamic"), proximal("alpha")), output="models"))

    def payload(self, params, num_nodes: int) -> Payload:
        """One model each way (the memories never leave the nodes)."""
        return Payload(num_bytes(params), num_bytes(params))

    def default_hparams(self) -> dict[str, float]:
        return {"alpha": 0.01, **self.aggregator.default_hparams()}

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        n = node_rng.shape[0]
        memory = jax.tree_util.tree_map(lambda p: jnp.zeros((n, *p.shape), p.dtype), global_params)
        h = jax.tree_util.tree_map(jnp.zeros_like, global_params)
        return NodeState(rng=node_rng, extra=GradientMemory(memory)), ServerState(global_params, _ADD_CHANGE.init(global_params),
                                                                        DynamicState(h),
                                                                        self.aggregator.init(global_params))

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        x, h, alpha = state.server.params, state.server.extra.h, hparams["alpha"]
        cohort = cohort_inputs(state, data, plan, self.weighting)
        g = gather(state.nodes.extra.g, plan, cohort.full)
        minus_g = jax.tree_util.tree_map(jnp.negative, g)
        theta = ctx.execution.train(x, cohort.data, cohort.keys, plan.step_budget, hparams, {"dynamic": minus_g})
        active = plan.active > 0

        def new_memory(gi, ti, x0):
            mask = active.reshape((-1,) + (1,) * (ti.ndim - 1))
            return jnp.where(mask, gi - alpha * (ti - x0), gi)

        g_new = jax.tree_util.tree_map(new_memory, g, theta.params, x)
        moved = weighted_change(active.astype(plan.active.dtype), theta.params, x)   # sum_{i in P} (theta_i - x)
        h_new = jax.tree_util.tree_map(lambda hh, m: hh - alpha * m / ctx.num_nodes, h, moved)
        p = normalize(cohort.weights)
        change, aggregator_state, aggregator_metrics = aggregated_change(self.aggregator, p, theta.params, x, state,
                                                                         hparams)
        delta = jax.tree_util.tree_map(lambda d, hh: d - hh / alpha, change, h_new)
        server = server_step(_ADD_CHANGE, state.server, delta, jnp.sum(cohort.weights) > 0, DynamicState(h_new),
                             aggregator_state)
        nodes = state.nodes._replace(extra=GradientMemory(scatter(state.nodes.extra.g, g_new, plan, cohort.full)))
        metrics = {**server_metrics(p, theta.loss, theta.steps, plan, ctx.payload), **aggregator_metrics}
        return state._replace(server=server, nodes=nodes), metrics
