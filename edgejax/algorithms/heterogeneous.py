"""Heterogeneous models per device: FedAvg over per-node sub-models of one global model.

One round, for a sub-model scheme (``WidthScaled``: HeteroFL / FjORD / FedRolex;
``ClassSubsets``: Chen & Qin 2020) that gives every cohort node ``i`` a mask ``m_i`` over
the full-size parameter layout::

    every active cohort node i:  x_i = LocalUpdate(x, D_i; m_i)     (only entries in m_i move)
    x[e] <- sum_i p_i m_i[e] x_i[e] / sum_i p_i m_i[e]             (entries no active node holds stay)

with ``p_i`` proportional to ``a_i n_i`` (``weighting="samples"``) or ``a_i``
(``"uniform"``, as HeteroFL's code counts every client holding an entry once).  A node
whose mask is all ones trains the full model, so with every mask all ones a round is
FedAvg's.  The local update and the masked average are ``edgejax.core.local`` and
``edgejax.algorithms.submodels``; the cohort trains through the execution strategy with
``Needs(masked=True)`` (always ``per_node``).

Cost metrics per round, beside the protocol's: ``flops`` (training FLOPs of the sub-models
the active nodes really train: ``TRAIN_FACTOR * forward_flops(m_i) * steps_i * batch_size``,
see ``edgejax.models.layout``), ``full_model_flops`` (the same steps on the full model) and
``bytes_up`` / ``bytes_down`` counting each active node's held entries (a node receives and
sends its sub-model).  ``payload`` (what the system model plans deadlines with and charges
the clock, ``edgejax.system.clock``) is per node: node ``i`` sends and receives the bytes of
the entries its sub-model holds and computes ``compute_i = forward_flops(m_i) /
forward_flops(full)`` of the full model's training FLOPs per sample, so its compute time is
``steps * batch_size * compute_i / speed`` and a narrow node on a slow device can meet a
deadline that the full model would miss.  The planned sub-model is the scheme's
``node_masks``: the same as the round's masks, except for FjORD, which is planned and charged
at each node's widest width ``r_i`` (the metrics count the widths drawn).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from edgejax.algorithms.base import EvaluatesServerModel, Payload, Traits
from edgejax.algorithms.server import WEIGHTINGS, cohort_inputs, normalize, server_metrics, server_step
from edgejax.algorithms.submodels import masked_average_change
from edgejax.core.execution import Needs
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState
from edgejax.core.validation import check_choice
from edgejax.models.layout import TRAIN_FACTOR, check_layout, forward_flops, full_forward_flops

# x <- x + Delta: the server step takes the pseudo-gradient -Delta and adds Delta
_ADD_CHANGE = optax.scale(-1.0)


def held_bytes(mask_params, params) -> jax.Array:
    """Bytes of the entries each mask holds (``[K]`` for stacked masks): the sub-model's size."""
    sizes = [jnp.sum(m != 0, axis=tuple(range(m.ndim - w.ndim, m.ndim))) * w.dtype.itemsize
             for m, w in zip(jax.tree_util.tree_leaves(mask_params), jax.tree_util.tree_leaves(params))]
    return sum(sizes).astype(jnp.result_type(float))


def submodel_costs(scheme, params, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Every node's planned sub-model (``scheme.node_masks``): its held bytes and its training
    FLOPs per sample as a fraction of the full model's, each ``[N]`` (one node's mask at a time)."""
    scheme.check(num_nodes)
    check_layout(scheme.layout, params)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype

    def one(node):
        mask = scheme.node_masks(node[None], dtype).params
        return held_bytes(mask, params)[0], forward_flops(scheme.layout, mask)[0]

    with jax.ensure_compile_time_eval():    # concrete values even when first asked inside a trace
        held, flops = jax.jit(lambda nodes: jax.lax.map(one, nodes))(jnp.arange(num_nodes))
    return np.asarray(held, np.float64), np.asarray(flops, np.float64) / full_forward_flops(scheme.layout)


@dataclasses.dataclass(frozen=True)
class SubmodelFedAvg(EvaluatesServerModel):
    """FedAvg over sub-models (static options; see the module docstring).

    Attributes:
      scheme: a ``WidthScaled`` or ``ClassSubsets``: anything with ``name``, ``model``,
        ``layout`` (its GEMM chain), ``describe()``, ``check(num_nodes)``,
        ``structure(dtype)`` (a mask applied to the initial global model, or ``None``),
        ``masks(round, nodes [K], keys [K, 2], dtype) -> SubModelMask [K, ...]`` and
        ``node_masks(nodes [K], dtype)`` (the sub-models the system model plans with).
      weighting: ``samples`` or ``uniform``.
    """

    scheme: object
    weighting: str = "samples"

    def __post_init__(self):
        check_choice("weighting", self.weighting, WEIGHTINGS)

    @property
    def name(self) -> str:
        return self.scheme.name

    def traits(self) -> Traits:
        return Traits(needs=Needs(masked=True))

    def payload(self, params, num_nodes: int) -> Payload:
        """Per node: its sub-model's bytes each way and its compute fraction (module docstring)."""
        held, compute = submodel_costs(self.scheme, params, num_nodes)
        return Payload(held, held, compute)

    def default_hparams(self) -> dict[str, float]:
        return {}

    def describe(self) -> dict:
        return {"name": self.name, "weighting": self.weighting, "scheme": self.scheme.describe()}

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        """The global model (with the scheme's block structure applied: entries no node may
        hold start, and stay, at zero)."""
        self.scheme.check(node_rng.shape[0])
        check_layout(self.scheme.layout, global_params)
        structure = self.scheme.structure(jax.tree_util.tree_leaves(global_params)[0].dtype)
        if structure is not None:
            global_params = jax.tree_util.tree_map(lambda w, m: w * m, global_params, structure)
        return NodeState(rng=node_rng), ServerState(global_params, _ADD_CHANGE.init(global_params))

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        x = state.server.params
        cohort = cohort_inputs(state, data, plan, self.weighting)
        dtype = jax.tree_util.tree_leaves(x)[0].dtype
        masks = self.scheme.masks(state.round, plan.nodes, cohort.keys, dtype)
        p = normalize(cohort.weights)
        change, node_loss, node_steps = ctx.execution.delta(x, cohort.data, cohort.keys, plan.step_budget, p,
                                                            hparams, mask=masks)
        delta = masked_average_change(change, p, masks.params)
        server = server_step(_ADD_CHANGE, state.server, delta, jnp.sum(cohort.weights) > 0)
        metrics = server_metrics(p, node_loss, node_steps, plan, ctx.payload)
        layout, samples = self.scheme.layout, node_steps * ctx.local.batch_size * plan.active
        node_bytes = jnp.sum(plan.active * held_bytes(masks.params, x))
        metrics.update(flops=jnp.sum(TRAIN_FACTOR * forward_flops(layout, masks.params) * samples),
                       full_model_flops=TRAIN_FACTOR * full_forward_flops(layout) * jnp.sum(samples),
                       bytes_up=node_bytes, bytes_down=node_bytes)
        return state._replace(server=server), metrics
