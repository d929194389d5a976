"""Training-time pruning: FedAvg under a global magnitude-pruning mask the server grows on a schedule.

Gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of
pruning for model compression") run by the server on the global model: pruning event ``j``
happens in round ``t_j = t0 + j dt`` (``j = 0 .. n``) with target sparsity::

    s_j = s_f + (s_i - s_f) (1 - j / n)^3

and the sparsity in effect in round ``t`` is that of the last event ``t_j <= t`` (0 before
``t0``; ``s_f`` from ``t0 + n dt`` on, when the mask is frozen).  One round ``t``::

    if t = t_j:   m <- Prune(x, m, s_j)                          (the mask only grows)
    x <- m * x                                                    (the model sent down)
    every active cohort node i:  x_i = LocalUpdate(x, D_i; m)   (only kept entries move)
    x <- m * ServerOpt(x, -m * sum_i p_i (x_i - x))              (sgd, lr 1: x + Delta)

The local update trains the sub-model ``m`` (``edgejax.core.local.SubModelMask``: forward on
``x * m``, masked gradient, ``w <- where(m, w + u, w)``), so pruned entries stay exactly zero
through local training and aggregation.  ``Prune`` per layer of the GEMM chain
(``edgejax.models.layout``; counts fixed on the host from ``s_j`` in float64):

* ``unstructured``: in every weight matrix ``W_l`` (``n_l`` entries) the ``floor(s_j n_l)``
  entries of smallest ``|w|`` are zero; entries pruned before rank first, so the mask only
  grows; ties go to the lower flat index (a stable sort).  Biases are not pruned.
* ``structured`` (neurons): in every hidden layer (not the output layer, whose units are the
  outputs) the ``floor(s_j c_l)`` units of smallest ``||W_l[:, u]||_1`` (Li et al. 2017's
  filter norm) are removed: column ``W_l[:, u]``, bias ``b_l[u]`` and the rows of
  ``W_{l+1}`` that read channel ``u`` (``chain_mask``); units removed before rank first.

Bytes (each way, one participant): per tensor of ``n`` entries of which the mask keeps ``k``
(mask entries, not non-zero values), ``n * itemsize`` when ``k = n``, else the kept values
plus the cheaper index code, a bitmap or int32 flat indices: ``k * itemsize + min(ceil(n/8),
4 k)``.  The uplink is counted the same way (a protocol in which the server reuses the mask
it holds could send the values alone).  Compute: the kept fraction of the GEMMs'
multiply-adds, ``forward_flops(m) / forward_flops(full)`` (ideal: unstructured sparsity saves
that only with sparse kernels).  ``payload`` (what the system model plans deadlines with and
charges the clock) is that of the final sparsity ``s_f``, the schedule's steady state, in
every round; the round's metrics ``bytes_up``, ``bytes_down``, ``compute_fraction``,
``target_sparsity`` (``s`` in effect) and ``weight_sparsity`` (pruned fraction of all weight
entries) follow the round's mask.

Not built: PruneFL's adaptive pruning (Jiang et al. 2022, importance from gradients, pruning
and regrowing).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.algorithms.base import EvaluatesServerModel, Payload, Traits, describe_algorithm
from edgejax.algorithms.server import WEIGHTINGS, cohort_inputs, normalize, server_metrics, server_step
from edgejax.algorithms.server_optimizers import check_server_optimizer, make_server_optimizer, server_hparams
from edgejax.core.execution import Needs
from edgejax.core.local import SubModelMask, mask_tree
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState, tree_broadcast
from edgejax.core.validation import check_choice
from edgejax.models.base import Model
from edgejax.models.layout import chain_mask, check_layout, forward_flops, full_forward_flops, gemm_layout

STRUCTURES = ("unstructured", "structured")


class PruningState(NamedTuple):
    """The server's pruning mask ``m`` (``ServerState.extra``): 1 for kept entries, 0 for pruned,
    over the model's parameter structure."""

    mask: Any


def cubic_sparsity(j, initial: float, final: float, steps: int) -> float:
    """Zhu & Gupta's ``s_j = s_f + (s_i - s_f) (1 - j / n)^3`` for pruning event ``j`` (0..n)."""
    return final + (initial - final) * (1 - j / steps) ** 3


def sparse_bytes(mask, params) -> jax.Array:
    """Bytes of ``params`` sent under ``mask`` (one model; see the module docstring): per tensor
    ``n * itemsize`` if nothing is pruned, else ``k * itemsize + min(ceil(n / 8), 4 k)``."""
    total = 0.0
    for m, w in zip(jax.tree_util.tree_leaves(mask), jax.tree_util.tree_leaves(params)):
        n, k = m.size, jnp.sum(m != 0).astype(jnp.result_type(float))
        itemsize = jnp.dtype(w.dtype).itemsize
        total = total + jnp.where(k == n, n * itemsize, k * itemsize + jnp.minimum(math.ceil(n / 8), 4 * k))
    return total


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name}={value!r} must be a number in [0, 1)")
    return float(value)


def _check_count(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")


@dataclasses.dataclass(frozen=True)
class PrunedFedAvg(EvaluatesServerModel):
    """FedAvg with training-time magnitude pruning of the global model (module docstring).

    Attributes:
      model: the model trained (a GEMM chain, ``edgejax.models.layout.gemm_layout``).
      final_sparsity: ``s_f`` in ``[0, 1)`` (of each weight matrix, or of each hidden layer's units).
      initial_sparsity: ``s_i`` in ``[0, s_f]``, the first event's target.
      start_round: ``t0``, the round of the first pruning event.
      prune_every: ``dt``, rounds between pruning events (re-pruned every ``dt`` rounds).
      prune_steps: ``n``, events after the first; ``s_f`` is reached in round ``t0 + n dt``.
      structure: ``unstructured`` (per weight) or ``structured`` (whole hidden units).
      server_optimizer: as ``FedAvg``'s (the new model is masked after the step).
      weighting: ``samples`` or ``uniform``.
    """

    model: Model
    final_sparsity: float
    initial_sparsity: float = 0.0
    start_round: int = 0
    prune_every: int = 1
    prune_steps: int = 10
    structure: str = "unstructured"
    server_optimizer: Any = "sgd"
    weighting: str = "samples"

    def __post_init__(self):
        final = _check_fraction("final_sparsity", self.final_sparsity)
        initial = _check_fraction("initial_sparsity", self.initial_sparsity)
        if initial > final:
            raise ValueError(f"initial_sparsity={initial!r} exceeds final_sparsity={final!r}: the mask only grows")
        _check_count("start_round", self.start_round, 0)
        _check_count("prune_every", self.prune_every, 1)
        _check_count("prune_steps", self.prune_steps, 1)
        check_choice("structure", self.structure, STRUCTURES)
        check_server_optimizer(self.server_optimizer)
        check_choice("weighting", self.weighting, WEIGHTINGS)

    @functools.cached_property
    def layout(self):
        return gemm_layout(self.model)

    @property
    def name(self) -> str:
        return "pruned_fedavg" if self.structure == "unstructured" else "pruned_fedavg+structured"

    def _pruned_layers(self):
        """The layers pruned: every layer (unstructured) or the hidden ones (structured)."""
        return self.layout if self.structure == "unstructured" else self.layout[:-1]

    def _size(self, layer) -> int:
        return layer.rows * layer.cols if self.structure == "unstructured" else layer.cols

    def pruned_counts(self) -> np.ndarray:
        """Entries (unstructured) or units (structured) pruned per pruned layer at every event:
        ``[n + 1, layers]``, ``floor(s_j * size_l)``."""
        return np.asarray([[math.floor(cubic_sparsity(j, self.initial_sparsity, self.final_sparsity,
                                                      self.prune_steps) * self._size(layer))
                            for layer in self._pruned_layers()] for j in range(self.prune_steps + 1)], np.int32)

    def event(self, round_):
        """``(is a pruning round, j in effect)`` for round ``round_`` (``j = -1`` before ``t0``)."""
        since = round_ - self.start_round
        j = jnp.where(since >= 0, jnp.minimum(since // self.prune_every, self.prune_steps), -1)
        return (since >= 0) & (since % self.prune_every == 0) & (since // self.prune_every <= self.prune_steps), j

    def target_sparsity(self, round_):
        """The sparsity ``s`` in effect in round ``round_`` (0 before ``t0``)."""
        s = jnp.asarray([cubic_sparsity(j, self.initial_sparsity, self.final_sparsity, self.prune_steps)
                         for j in range(self.prune_steps + 1)])
        _, j = self.event(round_)
        return jnp.where(j >= 0, s[jnp.maximum(j, 0)], 0.0)

    def prune(self, params, mask, counts):
        """The new mask: ``counts [layers]`` more-or-equal pruned entries or units per pruned layer,
        smallest magnitude first, the entries or units of ``mask`` already pruned ranking first."""
        def smallest(score, kept, k):
            ranked = jnp.where(kept, score, -1.0)
            rank = jnp.argsort(jnp.argsort(ranked, stable=True), stable=True)
            return rank >= k

        if self.structure == "unstructured":
            new = dict(mask)
            for layer, k in zip(self.layout, counts):
                w, m = params[layer.name]["w"], mask[layer.name]["w"]
                keep = smallest(jnp.abs(w).reshape(-1), m.reshape(-1) != 0, k).reshape(w.shape)
                new[layer.name] = {**mask[layer.name], "w": keep.astype(m.dtype)}
            return new
        keeps = [smallest(jnp.sum(jnp.abs(params[layer.name]["w"]), axis=0), mask[layer.name]["b"] != 0, k)
                 for layer, k in zip(self.layout[:-1], counts)]
        dtype = jax.tree_util.tree_leaves(mask)[0].dtype
        return chain_mask(self.layout, [*keeps, None], dtype=dtype)

    def mask_at(self, params, mask, round_):
        """The mask in effect in round ``round_``: re-pruned at a pruning round, else ``mask``."""
        prune_now, j = self.event(round_)
        new = self.prune(params, mask, jnp.asarray(self.pruned_counts())[jnp.maximum(j, 0)])
        return jax.tree_util.tree_map(lambda a, b: jnp.where(prune_now, a, b), new, mask)

    def costs(self, mask, params) -> tuple[jax.Array, jax.Array]:
        """``(bytes, compute fraction)`` of one participant under ``mask``."""
        return sparse_bytes(mask, params), forward_flops(self.layout, mask) / full_forward_flops(self.layout)

    def traits(self) -> Traits:
        return Traits(needs=Needs(masked=True))

    def payload(self, params, num_nodes: int) -> Payload:
        """At the final sparsity, the same for every node (module docstring)."""
        check_layout(self.layout, params)
        with jax.ensure_compile_time_eval():     # concrete values even when first asked inside a trace
            zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, p.dtype), params)
            ones = jax.tree_util.tree_map(jnp.ones_like, zeros)
            held, compute = self.costs(self.prune(zeros, ones, self.pruned_counts()[-1]), params)
        return Payload(float(held), float(held), float(compute))

    def default_hparams(self) -> dict[str, float]:
        return server_hparams(self.server_optimizer)

    def describe(self) -> dict:
        return {**describe_algorithm(self), "model": self.model.name}

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        """The global model and an all-ones mask (nothing pruned before ``t0``)."""
        check_layout(self.layout, global_params)
        mask = PruningState(jax.tree_util.tree_map(jnp.ones_like, global_params))
        opt = make_server_optimizer(self.server_optimizer, hparams, False)
        return NodeState(rng=node_rng), ServerState(global_params, opt.init(global_params), extra=mask)

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        mask = self.mask_at(state.server.params, state.server.extra.mask, state.round)
        x = mask_tree(state.server.params, SubModelMask(mask))
        cohort = cohort_inputs(state, data, plan, self.weighting)
        p = normalize(cohort.weights)
        masks = SubModelMask(tree_broadcast(mask, plan.nodes.shape[0]))
        change, node_loss, node_steps = ctx.execution.delta(x, cohort.data, cohort.keys, plan.step_budget, p,
                                                            hparams, mask=masks)
        delta = mask_tree(change, SubModelMask(mask))
        pruned = state.server._replace(params=x, extra=PruningState(mask))
        server = server_step(make_server_optimizer(self.server_optimizer, hparams, False), pruned, delta,
                             jnp.sum(cohort.weights) > 0)
        server = server._replace(params=mask_tree(server.params, SubModelMask(mask)))
        held, compute = self.costs(mask, x)
        weights = [mask[layer.name]["w"] for layer in self.layout]
        metrics = server_metrics(p, node_loss, node_steps, plan, ctx.payload)
        participants = jnp.sum(plan.active)
        metrics.update(bytes_up=participants * held, bytes_down=participants * held, compute_fraction=compute,
                       target_sparsity=self.target_sparsity(state.round),
                       weight_sparsity=1 - sum(jnp.sum(w) for w in weights) / sum(w.size for w in weights))
        return state._replace(server=server), metrics
