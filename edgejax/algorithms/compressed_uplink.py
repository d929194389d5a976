"""FedAvg with a compressed uplink: quantized, sparsified or low-rank model updates, with error feedback.

One round (the FedAvg family of ``edgejax.algorithms.fedavg`` with the node's update
compressed before it is sent)::

    every active cohort node i:  Delta_i = LocalUpdate(x, D_i) - x
                                 v_i     = Delta_i + e_i        (e_i = 0 without error feedback)
                                 s_i     = C(v_i)               (what the node sends)
                                 e_i    <- v_i - s_i            (error feedback: the residual is kept)
    server:                      x <- ServerOpt(x, -sum_i p_i s_i)

Error feedback follows Stich et al. 2018 ("Sparsified SGD with Memory") and Karimireddy et
al. 2019 ("Error Feedback Fixes SignSGD"): each node's memory ``e_i`` (``nodes.extra``,
``ErrorMemory``) carries what compression dropped into its next message; absent nodes keep
theirs.  Compressors: any of ``edgejax.compression`` (``QSGD(levels=s)``: stochastic
quantization to ``s`` levels, unbiased, ``1 + bit_length(s)`` bits an entry plus a norm;
``TopK``: the ``k`` largest entries with their positions; ``RandomK``, ``Sign``), applied per
tensor or to the whole update, or ``LowRank(rank)`` (each weight matrix replaced by its
best rank-``r`` approximation from the SVD, sent as two factors; vectors sent as they are).
``payload``: up is the compressed message, down one full model.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from edgejax import compression
from edgejax.algorithms.aggregation import Aggregator, Mean, check_aggregator, with_aggregator
from edgejax.algorithms.base import DescribedByFields, EvaluatesServerModel, Payload, Traits
from edgejax.algorithms.server import (WEIGHTINGS, cohort_inputs, gather, normalize, round_aggregator_key, scatter,
                                       server_metrics, server_step)
from edgejax.algorithms.server_optimizers import check_server_optimizer, make_server_optimizer, server_hparams
from edgejax.core.execution import Needs
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState
from edgejax.core.streams import stream_key
from edgejax.core.validation import check_choice
from edgejax.models.base import num_bytes


class ErrorMemory(NamedTuple):
    """Per-node error-feedback memory ``e [N, ...]``: what compression has not yet sent."""

    e: object


@dataclasses.dataclass(frozen=True)
class LowRank:
    """Rank-``r`` compression of every 2-D leaf (Vogels et al. 2019's PowerSGD approximates the
    same target with power iterations; here the exact truncated SVD): ``W ~ U_r diag(s_r) V_r^T``,
    sent as ``U_r diag(s_r) [m, r]`` and ``V_r [n, r]``.  Leaves that are not matrices, or whose
    smaller side is at most ``r``, are sent dense.  Deterministic (the key is ignored)."""

    rank: int

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ValueError(f"LowRank: rank={self.rank!r} must be a positive integer")

    def _reduces(self, shape) -> bool:
        return len(shape) == 2 and min(shape) > self.rank

    def compress_tree(self, key, tree):
        def one(w):
            if not self._reduces(w.shape):
                return w
            u, s, vt = jnp.linalg.svd(w, full_matrices=False)
            return (u[:, :self.rank] * s[:self.rank]) @ vt[:self.rank]

        return jax.tree_util.tree_map(one, tree)

    def payload_bits(self, tree, value_bits: int = 32) -> float:
        sizes = [self.rank * sum(leaf.shape) if self._reduces(leaf.shape) else math.prod(leaf.shape)
                 for leaf in jax.tree_util.tree_leaves(tree)]
        return float(sum(sizes) * value_bits)


@dataclasses.dataclass(frozen=True)
class CompressedFedAvg(DescribedByFields, EvaluatesServerModel):
    """FedAvg whose nodes send compressed updates (see the module docstring).

    Attributes:
      compressor: an ``edgejax.compression.Compressor`` or ``LowRank``.
      error_feedback: keep each node's residual and add it to its next update.
      per_tensor: a vector compressor runs on each leaf (else on the flattened update).
      weighting: ``samples`` or ``uniform``.
      server_optimizer: one of ``SERVER_OPTIMIZERS`` (``sgd`` with lr 1: ``x + sum_i p_i s_i``).
      aggregator: how the messages ``s_i`` are combined (``edgejax.algorithms.aggregation``; the
        weighted sum above by default).
    """

    compressor: object
    error_feedback: bool = False
    per_tensor: bool = True
    weighting: str = "samples"
    server_optimizer: Any = "sgd"
    aggregator: Aggregator = Mean()

    def __post_init__(self):
        check_aggregator(self.aggregator)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_server_optimizer(self.server_optimizer)
        if not isinstance(self.compressor, (compression.Compressor, LowRank)):
            raise ValueError(f"compressor must be an edgejax.compression.Compressor or LowRank; "
                             f"got {self.compressor!r}")

    @property
    def name(self) -> str:
        return ("fedavg+" + type(self.compressor).__name__.lower() + ("+ef" if self.error_feedback else "")
                + with_aggregator(self.aggregator))

    def traits(self) -> Traits:
        """Each node's trained model is read (its own update is compressed)."""
        return Traits(needs=Needs(output="models"))

    def payload(self, params, num_nodes: int) -> Payload:
        """Up: the compressed update; down: one full model."""
        if isinstance(self.compressor, LowRank):
            bits = self.compressor.payload_bits(params)
        else:
            bits = compression.tree_payload_bits(self.compressor, params, self.per_tensor)
        return Payload(bits / 8, num_bytes(params))

    def default_hparams(self) -> dict[str, float]:
        return {**server_hparams(self.server_optimizer), **self.aggregator.default_hparams()}

    def compress(self, key, update):
        """One node's message ``C(update)`` (a pytree like the model)."""
        if isinstance(self.compressor, LowRank):
            return self.compressor.compress_tree(key, update)
        return compression.compress_tree(self.compressor, key, update, self.per_tensor)

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        n = node_rng.shape[0]
        extra = ErrorMemory(jax.tree_util.tree_map(lambda p: jnp.zeros((n, *p.shape), p.dtype), global_params)) \
            if self.error_feedback else ()
        opt = make_server_optimizer(self.server_optimizer, hparams, False)
        return NodeState(rng=node_rng, extra=extra), ServerState(global_params, opt.init(global_params),
                                                                 aggregator=self.aggregator.init(global_params))

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        x = state.server.params
        cohort = cohort_inputs(state, data, plan, self.weighting)
        p = normalize(cohort.weights)
        result = ctx.execution.train(x, cohort.data, cohort.keys, plan.step_budget, hparams)
        update = jax.tree_util.tree_map(lambda xi, x0: xi - x0, result.params, x)
        if self.error_feedback:
            update = jax.tree_util.tree_map(jnp.add, update, gather(state.nodes.extra.e, plan, cohort.full))
        keys = jax.vmap(lambda k: stream_key(k, "uplink_compression"))(cohort.keys)
        sent = jax.vmap(self.compress)(keys, update)
        nodes = state.nodes
        if self.error_feedback:
            active = plan.active > 0

            def residual(v, s, e):
                keep = active.reshape((-1,) + (1,) * (v.ndim - 1))
                return jnp.where(keep, v - s, e)

            old = gather(nodes.extra.e, plan, cohort.full)
            memory = jax.tree_util.tree_map(residual, update, sent, old)
            nodes = nodes._replace(extra=ErrorMemory(scatter(nodes.extra.e, memory, plan, cohort.full)))
        delta, aggregator_state, aggregator_metrics = self.aggregator.update(
            sent, p, p > 0, state.server.aggregator, round_aggregator_key(state), hparams)
        optimizer = make_server_optimizer(self.server_optimizer, hparams, False)
        server = server_step(optimizer, state.server, delta, jnp.sum(cohort.weights) > 0,
                             aggregator=aggregator_state)
        metrics = {**server_metrics(p, result.loss, result.steps, plan, ctx.payload), **aggregator_metrics}
        return state._replace(server=server, nodes=nodes), metrics
