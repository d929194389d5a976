"""FedAvg with quantized models on the links: the server model and the nodes' updates sent as int-b values.

One round, with ``Q`` the uniform symmetric quantizer of ``edgejax.models.quantization``
(``scale = max |w| / (2^(b-1) - 1)`` per tensor or per output channel, round half to even,
levels clipped to ``[-(2^(b-1) - 1), 2^(b-1) - 1]``; deterministic)::

    sent down:                   x_d = Q(x)                      (x itself with downlink=False)
    every active cohort node i:  x_i = LocalUpdate(x_d, D_i)
    sent up:                     u_i = Q(x_i - x_d)              (x_i - x_d with uplink=False)
    server:                      x <- ServerOpt(x, -sum_i p_i u_i)    (sgd, lr 1: x + sum_i p_i u_i)

The server keeps its float model ``x``: the downlink's rounding changes only where the nodes
start, and is not added into ``x`` (FedPAQ, Reisizadeh et al. 2020, quantizes the uplink the
same way with a float downlink).  Every leaf is quantized (biases too; a 1-D leaf has one
scale).  Bytes of a quantized model or update (``quantized_bytes``): per leaf ``ceil(n b / 8)``
plus its scales in the leaf's float dtype; an unquantized direction costs the float model.
With both directions off a round is FedAvg's.  For quantization-aware local training, give the
Simulation ``edgejax.models.quantization_aware(model, ...)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from edgejax.algorithms.base import DescribedByFields, EvaluatesServerModel, Payload, Traits
from edgejax.algorithms.server import WEIGHTINGS, cohort_inputs, normalize, server_metrics, server_step
from edgejax.algorithms.server_optimizers import check_server_optimizer, make_server_optimizer, server_hparams
from edgejax.core.execution import Needs
from edgejax.core.local import masked_weighted_sum
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState
from edgejax.core.validation import check_choice
from edgejax.models.base import num_bytes
from edgejax.models.quantization import check_quantizer, quantize_tree, quantized_bytes


@dataclasses.dataclass(frozen=True)
class QuantizedFedAvg(DescribedByFields, EvaluatesServerModel):
    """FedAvg with int-``bits`` messages (module docstring).

    Attributes:
      bits: bits per value, an integer in ``[2, 16]`` (8: int8, 4: int4).
      granularity: ``tensor`` (one scale per leaf) or ``channel`` (one per output channel,
        the last axis, of every leaf with two or more dimensions).
      downlink: send the server model quantized.
      uplink: send each node's update quantized.
      server_optimizer: as ``FedAvg``'s, fed ``-sum_i p_i u_i``.
      weighting: ``samples`` or ``uniform``.
    """

    bits: int = 8
    granularity: str = "tensor"
    downlink: bool = True
    uplink: bool = True
    server_optimizer: Any = "sgd"
    weighting: str = "samples"

    def __post_init__(self):
        check_quantizer(self.bits, self.granularity)
        check_server_optimizer(self.server_optimizer)
        check_choice("weighting", self.weighting, WEIGHTINGS)

    @property
    def name(self) -> str:
        return f"quantized_fedavg[int{self.bits}]"

    def traits(self) -> Traits:
        return Traits(needs=Needs(output="models" if self.uplink else "delta"))

    def _bytes(self, params, quantized: bool) -> float:
        return float(quantized_bytes(params, self.bits, self.granularity) if quantized else num_bytes(params))

    def payload(self, params, num_nodes: int) -> Payload:
        """Up: one (quantized) update; down: one (quantized) model."""
        return Payload(self._bytes(params, self.uplink), self._bytes(params, self.downlink))

    def default_hparams(self) -> dict[str, float]:
        return server_hparams(self.server_optimizer)

    def quantize(self, tree):
        """``Q`` of every leaf of one model or update."""
        return quantize_tree(tree, self.bits, self.granularity)

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        opt = make_server_optimizer(self.server_optimizer, hparams, False)
        return NodeState(rng=node_rng), ServerState(global_params, opt.init(global_params))

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        x = state.server.params
        start = self.quantize(x) if self.downlink else x
        cohort = cohort_inputs(state, data, plan, self.weighting)
        p = normalize(cohort.weights)
        if self.uplink:
            result = ctx.execution.train(start, cohort.data, cohort.keys, plan.step_budget, hparams)
            sent = jax.vmap(self.quantize)(jax.tree_util.tree_map(jnp.subtract, result.params, start))
            delta = jax.tree_util.tree_map(lambda u: masked_weighted_sum(p, u), sent)
            node_loss, node_steps = result.loss, result.steps
        else:
            delta, node_loss, node_steps = ctx.execution.delta(start, cohort.data, cohort.keys, plan.step_budget, p,
                                                               hparams)
        server = server_step(make_server_optimizer(self.server_optimizer, hparams, False), state.server, delta,
                             jnp.sum(cohort.weights) > 0)
        return state._replace(server=server), server_metrics(p, node_loss, node_steps, plan, ctx.payload)
