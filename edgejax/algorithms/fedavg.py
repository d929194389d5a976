"""FedAvg and its server-optimizer family (FedAvgM, FedAdagrad, FedAdam, FedYogi).

One round (McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data"; Reddi et al. 2021 for adaptive servers)::

    every active cohort node i:  x_i = LocalUpdate(x, D_i)          (from the server model x)
    Delta = sum_i p_i (x_i - x),  p_i = a_i n_i / sum_j a_j n_j      (a_i = active mask;
                                                                    n_i = 1 with weighting="uniform";
                                                                    the ``aggregator``'s Mean)
    x <- ServerOpt(x, -Delta)                                        (sgd with lr 1: x + Delta)

A round with no active node leaves the server state unchanged.

Two variants are options of the same dataclass (a few lines each):

* FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"),
  ``prox=True``: the local objective gains ``mu/2 ||w - x||^2`` (traced ``mu``).  The
  paper's model L2 term is not added (the authors' code declares it but never adds it).
* FedNova (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in
  Heterogeneous Federated Optimization"), ``normalized=True``: node changes are
  normalised by ``||a_i||_1`` and rescaled by ``tau_eff``::

      Delta = tau_eff sum_i p_i (x_i - x) / ||a_i||_1
      ||a_i||_1 = tau_i                                    (SGD, tau_i local steps)
                = [tau_i - rho (1 - rho^tau_i)/(1 - rho)] / (1 - rho)   (momentum rho)
                = (1 - (1 - lr mu)^tau_i) / (lr mu)        (SGD + proximal term)
      tau_eff = sum_i p_i ||a_i||_1  (the paper; ``tau_eff="steps"``: sum_i p_i tau_i,
                                      as the authors' code does when mu > 0)
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from edgejax.algorithms.aggregation import Aggregator, Mean, check_aggregator, with_aggregator
from edgejax.algorithms.base import DescribedByFields, EvaluatesServerModel, Payload, Traits
from edgejax.algorithms.server import (WEIGHTINGS, aggregated_change, cohort_inputs, gather, normalize,
                                       normalized_weights, proximal, scatter, server_metrics, server_step)
from edgejax.algorithms.server_optimizers import (check_server_optimizer, make_server_optimizer, server_hparams,
                                                  server_optimizer_name)
from edgejax.core.execution import Needs
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState, tree_broadcast
from edgejax.core.validation import check_choice
from edgejax.models.base import num_bytes

TAU_EFF = ("paper", "steps")
PRESETS = {"fedavg": {}, "fedavgm": {"server_optimizer": "momentum"}, "fedadagrad": {"server_optimizer": "adagrad"},
           "fedadam": {"server_optimizer": "adam"}, "fedyogi": {"server_optimizer": "yogi"},
           "fedprox": {"prox": True}, "fednova": {"normalized": True}}


@dataclasses.dataclass(frozen=True)
class FedAvg(DescribedByFields, EvaluatesServerModel):
    """FedAvg with a server optimizer on the pseudo-gradient (static options).

    Attributes:
      server_optimizer: one of ``SERVER_OPTIMIZERS`` (``sgd`` is plain FedAvg), or a callable
        ``hparams -> optax.GradientTransformation`` fed the pseudo-gradient ``-Delta``.
      weighting: ``samples`` weights node updates by their sample counts (the paper),
        ``uniform`` weights every active node equally.
      bias_correction: Adam/Yogi-style bias correction on the server (off in Reddi et al.).
      prox: FedProx's proximal term ``mu/2 ||w - x||^2`` in the local objective.
      normalized: FedNova's normalised averaging; ``tau_eff`` picks its convention.
      keep_local_optimizer: every node keeps its local optimizer state (e.g. its momentum
        buffer, ``nodes.opt_state [N, ...]``) from the last round it took part in; the
        default, as in the papers, starts a fresh optimizer every round.  Keeping it reads
        each node's trained model, so it runs ``per_node``.
      aggregator: how the node changes are combined (``edgejax.algorithms.aggregation``):
        ``Mean()`` is the weighted sum ``Delta`` above; any other (e.g. ``CoordinateMedian()``)
        reads every node's change, so it runs ``per_node``.
    """

    server_optimizer: Any = "sgd"
    weighting: str = "samples"
    bias_correction: bool = False
    prox: bool = False
    normalized: bool = False
    tau_eff: str = "paper"
    keep_local_optimizer: bool = False
    aggregator: Aggregator = Mean()

    def __post_init__(self):
        check_aggregator(self.aggregator)
        check_server_optimizer(self.server_optimizer)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_choice("tau_eff", self.tau_eff, TAU_EFF)

    @property
    def name(self) -> str:
        return self._base_name() + with_aggregator(self.aggregator)

    def _base_name(self) -> str:
        server = server_optimizer_name(self.server_optimizer)
        if not (self.prox or self.normalized):
            return {"sgd": "fedavg", "momentum": "fedavgm"}.get(server, f"fed{server}")
        base = "fednova" if self.normalized else "fedprox"
        return base if server == "sgd" else f"{base}+server_{server}"

    def traits(self) -> Traits:
        return Traits(needs=Needs(terms=(proximal("mu"),) if self.prox else (),
                                  output="delta" if self._fused() else "models",
                                  keep_optimizer=self.keep_local_optimizer))

    def _fused(self) -> bool:
        """The execution computes ``Delta`` itself (the mean, with no per-node state read back)."""
        return not self.reads_node_models()

    def reads_node_models(self) -> bool:
        """Whether the round needs every node's trained model (a non-fusable aggregator, a kept
        local optimizer, or a subclass's ``after_aggregate`` that reads them)."""
        return not self.aggregator.fusable or self.keep_local_optimizer

    def after_aggregate(self, ctx, state: SimState, server: ServerState, models, active, hparams):
        """The server's step after aggregation (a hook, e.g. FedDF's distillation): the new
        ``server`` from it, the cohort's trained ``models [K, ...]`` (``None`` unless
        ``reads_node_models()``) and ``active [K]``; returns ``(server, extra metrics)``.
        FedAvg leaves the server as the aggregation made it."""
        return server, {}

    def payload(self, params, num_nodes: int) -> Payload:
        """One model down, one model (change) up."""
        return Payload(num_bytes(params), num_bytes(params))

    def default_hparams(self) -> dict[str, float]:
        return {**server_hparams(self.server_optimizer), **({"mu": 0.01} if self.prox else {}),
                **self.aggregator.default_hparams()}

    def server_optimizer_for(self, hparams):
        """The server step as optax, fed the pseudo-gradient ``-Delta``."""
        return make_server_optimizer(self.server_optimizer, hparams, self.bias_correction)

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        server = ServerState(params=global_params, opt_state=self.server_optimizer_for(hparams).init(global_params),
                             aggregator=self.aggregator.init(global_params))
        if not self.keep_local_optimizer:
            return NodeState(rng=node_rng), server
        local_state = ctx.local.make_optimizer(hparams).init(global_params)
        return NodeState(rng=node_rng, opt_state=tree_broadcast(local_state, node_rng.shape[0])), server

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        """One FedAvg round; returns the new state and this round's scalar metrics."""
        x = state.server.params
        cohort = cohort_inputs(state, data, plan, self.weighting)
        p = normalize(cohort.weights)
        agg = p
        if self.normalized:
            agg = normalized_weights(ctx.local, p, cohort.data.count, plan.step_budget, hparams,
                                     "mu" if self.prox else None, self.tau_eff)
        nodes, aggregator_state, aggregator_metrics, models = state.nodes, None, {}, None
        if self._fused():
            delta, node_loss, node_steps = ctx.execution.delta(x, cohort.data, cohort.keys, plan.step_budget, agg,
                                                               hparams)
        else:
            opt_state = gather(nodes.opt_state, plan, cohort.full) if self.keep_local_optimizer else None
            result = ctx.execution.train(x, cohort.data, cohort.keys, plan.step_budget, hparams, opt_state=opt_state)
            delta, aggregator_state, aggregator_metrics = aggregated_change(self.aggregator, agg, result.params, x,
                                                                            state, hparams)
            node_loss, node_steps, models = result.loss, result.steps, result.params
            if self.keep_local_optimizer:
                nodes = nodes._replace(opt_state=scatter(nodes.opt_state, result.opt_state, plan, cohort.full))
        server = server_step(self.server_optimizer_for(hparams), state.server, delta, jnp.sum(cohort.weights) > 0,
                             aggregator=aggregator_state)
        server, hook_metrics = self.after_aggregate(ctx, state, server, models, cohort.weights > 0, hparams)
        metrics = {**server_metrics(p, node_loss, node_steps, plan, ctx.payload), **aggregator_metrics,
                   **hook_metrics}
        return state._replace(server=server, nodes=nodes), metrics
