"""Ditto (Li, Hu, Beirami & Smith 2021, "Ditto: Fair and Robust Federated Learning Through
Personalization", Algorithm 1).

Beside the global model ``w`` (trained by FedAvg) every node keeps a personal model ``v_i``
(``nodes.params [N, ...]``, starting at the initial global model).  One round, for the active
nodes of the cohort, with ``w^t`` the global model the round starts from::

    global:    w_i = LocalUpdate(w^t, D_i)                                   (the FedAvg local update)
    personal:  v_i <- LocalUpdate(v_i, D_i) on  F_i(v) + lambda/2 ||v - w^t||^2
    server:    w^{t+1} = ServerOpt(w^t, -sum_i p_i (w_i - w^t))             (sgd with lr 1: FedAvg)

Both local updates run the same local schedule (``LocalTraining``: the paper's ``s`` personal
steps equal the global local steps here), with independent minibatch draws.  ``lambda`` is the
traced ``ditto_lambda`` (``0`` gives independent local training beside FedAvg; large values pull
``v_i`` to ``w``).  Nodes that do not take part keep their ``v_i``.  ``eval_models`` returns
``(w, v)``: ``own_accuracy_*`` is Ditto's personalized accuracy.  The server optimizer and
weighting are FedAvg's options.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from edgejax.algorithms.base import DescribedByFields, Payload, Traits
from edgejax.algorithms.server import (WEIGHTINGS, cohort_inputs, gather, normalize, scatter, server_metrics,
                                       server_step, weighted_change)
from edgejax.algorithms.server_optimizers import check_server_optimizer, make_server_optimizer, server_hparams
from edgejax.core.execution import Needs
from edgejax.core.local import LocalTerm, masked_weighted_sum
from edgejax.core.state import NodeState, ServerState, SimState, tree_broadcast
from edgejax.core.streams import stream_key
from edgejax.core.validation import check_choice
from edgejax.models.base import num_bytes


def _pull_to(params, anchor, target, hparams):
    """``ditto_lambda/2 ||v - target||^2`` with the node's ``target`` (the round's global model)."""
    sq = sum(jnp.sum((v - w) ** 2) for v, w in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(target)))
    return 0.5 * hparams["ditto_lambda"] * sq


DITTO_TERM = LocalTerm("ditto", _pull_to)


@dataclasses.dataclass(frozen=True)
class Ditto(DescribedByFields):
    """Ditto with the traced ``ditto_lambda`` (see the module docstring)."""

    server_optimizer: Any = "sgd"
    weighting: str = "samples"

    def __post_init__(self):
        check_server_optimizer(self.server_optimizer)
        check_choice("weighting", self.weighting, WEIGHTINGS)

    @property
    def name(self) -> str:
        return "ditto"

    def traits(self) -> Traits:
        """The personal update continues each node's own model and is read back."""
        return Traits(needs=Needs(terms=(DITTO_TERM,), start="own", output="models"))

    def payload(self, params, num_nodes: int) -> Payload:
        """One model each way (the personal models never leave the nodes)."""
        return Payload(num_bytes(params), num_bytes(params))

    def default_hparams(self) -> dict[str, float]:
        return {**server_hparams(self.server_optimizer), "ditto_lambda": 0.1}

    def init(self, ctx, global_params, node_rng, hparams):
        opt = make_server_optimizer(self.server_optimizer, hparams)
        return (NodeState(rng=node_rng, params=tree_broadcast(global_params, node_rng.shape[0])),
                ServerState(global_params, opt.init(global_params)))

    def eval_models(self, state: SimState):
        return state.server.params, state.nodes.params

    def round(self, ctx, state: SimState, data, plan, hparams):
        w = state.server.params
        cohort = cohort_inputs(state, data, plan, self.weighting)
        k = plan.nodes.shape[0]
        w_k = tree_broadcast(w, k)
        anchor = {"ditto": w_k}
        no_pull = {**hparams, "ditto_lambda": jnp.zeros_like(hparams["ditto_lambda"])}
        glob = ctx.execution.train(w_k, cohort.data, cohort.keys, plan.step_budget, no_pull, anchor)
        v = gather(state.nodes.params, plan, cohort.full)
        personal_keys = jax.vmap(lambda k: stream_key(k, "ditto_personal"))(cohort.keys)
        pers = ctx.execution.train(v, cohort.data, personal_keys, plan.step_budget, hparams, anchor)
        active = plan.active > 0
        v_new = jax.tree_util.tree_map(
            lambda new, old: jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old), pers.params, v)
        p = normalize(cohort.weights)
        server = server_step(make_server_optimizer(self.server_optimizer, hparams), state.server,
                             weighted_change(p, glob.params, w), jnp.sum(cohort.weights) > 0)
        nodes = state.nodes._replace(params=scatter(state.nodes.params, v_new, plan, cohort.full))
        metrics = server_metrics(p, glob.loss, glob.steps, plan, ctx.payload)
        metrics["personal_loss"] = jnp.where(jnp.sum(plan.active) > 0, masked_weighted_sum(p, pers.loss), jnp.nan)
        return state._replace(server=server, nodes=nodes), metrics
