"""Fully decentralized training: no server, every node keeps its own model and gossips.

State layout: ``nodes.params [N, ...]`` are the node models (all start from one model),
``nodes.opt_state [N, ...]`` each node's local optimizer state, kept across rounds (a
node's momentum buffer is its own; it is never mixed), ``nodes.extra`` the algorithm's
typed per-node state (``PushSumWeight``, ``PublicCopy``), ``SimState.network`` the
topology's arrays.  There is no server: ``server`` is empty.
Every round each node runs its local update (``LocalTraining``: ``steps=H`` local steps,
H = 1 being the classic one-gradient-step form) from its own model, then one
communication step.  Evaluation reports the node average (the consensus model) and
every node's own model on its local test split.  Every round also reports
``consensus_distance = mean_i ||x_i - x_bar||^2``.

Absent nodes (``plan.active = 0``) run no local steps; with link failures
(``SystemModel(link_failures=True)``) they also neither send nor receive.  The local update
runs through the simulation's execution strategy (``per_node``: every node starts from its
own model, so ``shared_base`` does not apply).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from edgejax import network as tp
from edgejax.algorithms.base import DescribedByFields, Payload, Traits
from edgejax.network.spec import Topology, messages_sent
from edgejax.compression import Compressor, Identity, compress_tree, tree_payload_bits
from edgejax.core.execution import Needs
from edgejax.core.state import NodeState, ServerState, SimState, round_keys, tree_broadcast
from edgejax.core.streams import stream_key
from edgejax.core.validation import check_choice
from edgejax.models.base import num_bytes

ORDERS = ("lian", "atc")
CHOCO_ORDERS = ("paper", "code")


class PushSumWeight(NamedTuple):
    """Push-sum's per-node scalar weight ``w [N]`` (all 1 at the start, so ``sum_i w_i = N``)."""

    w: jax.Array


class PublicCopy(NamedTuple):
    """CHOCO's per-node public copies ``xhat [N, ...]`` (what every neighbour knows of node i)."""

    xhat: object


def node_mean(tree):
    return jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), tree)


def consensus_distance(node_params, center=None) -> jax.Array:
    """``mean_i ||x_i - c||^2`` over all parameters; ``c`` is ``center`` or the node mean."""
    flat = jax.vmap(lambda p: ravel_pytree(p)[0])(node_params)
    c = flat.mean(axis=0) if center is None else ravel_pytree(center)[0]
    return jnp.mean(jnp.sum((flat - c) ** 2, axis=1))


def _round_metrics(plan, loss, steps, node_params, messages, bytes_per_message, center=None):
    active = plan.active
    messages = messages.astype(active.dtype)
    return {
        "train_loss": jnp.where(jnp.sum(active) > 0,
                                jnp.sum(jnp.where(active > 0, loss, 0.0)) / jnp.maximum(jnp.sum(active), 1.0), jnp.nan),
        "participants": jnp.sum(active),
        "local_steps": jnp.sum(active * steps),
        "consensus_distance": consensus_distance(node_params, center),
        "bytes_up": messages * bytes_per_message,
        "bytes_down": messages * bytes_per_message,
    }


@dataclasses.dataclass(frozen=True, eq=False)
class _Gossip(DescribedByFields):
    """Shared pieces of the gossip family: traits, state, evaluation, local steps, this round's operator."""

    topology: Topology = Topology()

    def traits(self) -> Traits:
        return Traits(full_cohort=True, needs=Needs(start="own", output="models", keep_optimizer=True),
                      topology=self.topology)

    def message_bytes(self, params) -> float:
        """Bytes of one node-to-node message (``params``: one model, arrays or shape structs)."""
        return float(num_bytes(params))

    def payload(self, params, num_nodes: int) -> Payload:
        """One message to and from each neighbour (the graph's largest degree; one peer on
        the one-peer graph, the schedule's largest degree over its graphs)."""
        if self.topology.graph == "one_peer_exponential":
            degree = 1
        else:
            graphs = self.topology.schedule if self.topology.graph == "schedule" else (None,)
            degree = max(self.topology.max_out_degree(num_nodes, g) for g in graphs)
        size = self.message_bytes(params) * degree
        return Payload(size, size)

    def default_hparams(self) -> dict[str, float]:
        return {}

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        n = node_rng.shape[0]
        local_state = tree_broadcast(ctx.local.make_optimizer(hparams).init(global_params), n)
        nodes = NodeState(rng=node_rng, params=tree_broadcast(global_params, n), opt_state=local_state,
                          extra=self.init_extra(global_params, n))
        return nodes, ServerState(params=())

    def init_extra(self, global_params, n):
        return ()

    def eval_models(self, state: SimState):
        """The node average (consensus model) and every node's own model."""
        return node_mean(state.nodes.params), state.nodes.params

    def local_steps(self, ctx, state: SimState, data, plan, node_params, hparams):
        """Every node's local update from ``node_params``, continuing its own optimizer state;
        returns ``(params, loss [N], steps [N])`` and the state with the new optimizer states."""
        keys = round_keys(state.nodes.rng, state.round)
        result = ctx.execution.train(node_params, data.train, keys, plan.step_budget, hparams,
                                     opt_state=state.nodes.opt_state)
        state = state._replace(nodes=state.nodes._replace(opt_state=result.opt_state))
        return result.params, result.loss, result.steps, state

    def operator(self, state: SimState, plan):
        return self.topology.operator(state.network, state.nodes.rng.shape[0], state.round, plan)


@dataclasses.dataclass(frozen=True, eq=False)
class DPSGD(_Gossip):
    """Decentralized parallel SGD (Lian et al. 2017, "Can Decentralized Algorithms Outperform
    Centralized Algorithms?").

    ``order="lian"`` (the paper): ``X+ = W X - lr G(X)``: the gradient is taken at the
    pre-mixing model, i.e. ``x_i <- sum_j W_ij x_j + (LocalUpdate(x_i) - x_i)``.
    ``order="atc"`` (adapt then combine, as much code does): ``x_i <- sum_j W_ij
    LocalUpdate(x_j)``; with ``LocalTraining(steps=H)`` this is local SGD with gossip
    every H local steps.  With a momentum optimizer every node keeps its own buffer across
    rounds (``nodes.opt_state``), updated by its own gradients and never mixed.
    """

    order: str = "lian"

    def __post_init__(self):
        check_choice("order", self.order, ORDERS)

    @property
    def name(self) -> str:
        return "dpsgd"

    def round(self, ctx, state: SimState, data, plan, hparams):
        x = state.nodes.params
        x_half, loss, steps, state = self.local_steps(ctx, state, data, plan, x, hparams)
        w = self.operator(state, plan)
        if self.order == "lian":
            new = jax.tree_util.tree_map(lambda m, a, b: m + a - b, tp.mix(w, x), x_half, x)
        else:
            new = tp.mix(w, x_half)
        metrics = _round_metrics(plan, loss, steps, new, messages_sent(w), self.message_bytes(ctx.params_shape))
        return state._replace(nodes=state.nodes._replace(params=new)), metrics


@dataclasses.dataclass(frozen=True, eq=False)
class PushSum(_Gossip):
    """Stochastic Gradient Push (Assran et al. 2019), push-sum on a column-stochastic P.

    Each node keeps a numerator ``x_i`` and a scalar weight ``w_i`` (``nodes.extra =
    PushSumWeight(w)``; all 1 at the start, so ``sum_i w_i = N`` forever) and trains the
    de-biased ``z_i = x_i / w_i``::

        x_i <- x_i + (LocalUpdate(z_i) - z_i)          (SGP: x_i - lr grad F_i(z_i))
        x_i <- sum_j P_ij x_j,   w_i <- sum_j P_ij w_j,   z_i = x_i / w_i

    Works on directed graphs (``Topology(weights="column")``, e.g. the directed
    exponential graph) and on the one-peer exponential schedule.  The network model is
    ``sum_i x_i / sum_i w_i``; ``consensus_distance`` is measured around it.
    """

    topology: Topology = Topology(graph="exponential", directed=True, weights="column")

    @property
    def name(self) -> str:
        return "pushsum"

    def message_bytes(self, params) -> float:
        """A model and its push-sum weight (4 bytes)."""
        return float(num_bytes(params)) + 4

    def init_extra(self, global_params, n):
        return PushSumWeight(jnp.ones((n,), jnp.result_type(float)))

    @staticmethod
    def _debiased(nodes: NodeState):
        w = nodes.extra.w
        return jax.tree_util.tree_map(lambda x: x / w.reshape((-1,) + (1,) * (x.ndim - 1)), nodes.params)

    @staticmethod
    def _average(nodes: NodeState):
        total = jnp.sum(nodes.extra.w)
        return jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0) / total, nodes.params)

    def eval_models(self, state: SimState):
        """The network average ``sum_i x_i / sum_i w_i`` and every node's de-biased ``z_i``."""
        return self._average(state.nodes), self._debiased(state.nodes)

    def round(self, ctx, state: SimState, data, plan, hparams):
        x, z = state.nodes.params, self._debiased(state.nodes)
        z_half, loss, steps, state = self.local_steps(ctx, state, data, plan, z, hparams)
        x_half = jax.tree_util.tree_map(lambda a, b, c: a + b - c, x, z_half, z)
        p = self.operator(state, plan)
        nodes = state.nodes._replace(params=tp.mix(p, x_half), extra=PushSumWeight(tp.mix(p, state.nodes.extra.w)))
        metrics = _round_metrics(plan, loss, steps, self._debiased(nodes), messages_sent(p),
                                 self.message_bytes(ctx.params_shape),
                                 center=self._average(nodes))
        return state._replace(nodes=nodes), metrics


@dataclasses.dataclass(frozen=True, eq=False)
class CHOCO(_Gossip):
    """CHOCO-SGD (Koloskova et al. 2019, "Decentralized Stochastic Optimization and Gossip
    Algorithms with Compressed Communication", Algorithm 2).

    ``order="paper"`` (default), with public copies ``xhat`` starting at 0::

        x_i^{t+1/2} = LocalUpdate(x_i^t)                         (x - lr grad F_i(x))
        q_i = Q(x_i^{t+1/2} - xhat_i);   xhat_j <- xhat_j + q_j  (every node sends q_i)
        x_i^{t+1} = x_i^{t+1/2} + gamma sum_j W_ij (xhat_j - xhat_i)

    ``order="code"`` (the authors' ``convex_code/logistic.py``): gossip with the *old* public
    copies, then compress the gossiped model; ``xhat`` starts at the initial model::

        x_i^{t+1/2} = LocalUpdate(x_i^t)
        x_i^{t+1} = x_i^{t+1/2} + gamma sum_j W_ij (xhat_j - xhat_i)
        q_i = Q(x_i^{t+1} - xhat_i);   xhat_j <- xhat_j + q_j

    ``xhat`` is ``nodes.extra = PublicCopy(xhat)``; ``gamma`` is the traced
    hyper-parameter ``consensus_step``; it must shrink as compression grows (measured in
    ``benchmarks/gossip.py``: top-10% on a 32-node ring diverges with 0.5 after about 300
    rounds and is stable with 0.2).  ``per_tensor`` compresses each tensor separately (as
    most code does) or, when False, the whole flattened model (the paper's analysis).
    Bytes count the compressor's real payload (values, indices, norms).
    """

    compressor: Compressor = Identity()
    per_tensor: bool = True
    order: str = "paper"

    def __post_init__(self):
        check_choice("order", self.order, CHOCO_ORDERS)

    @property
    def name(self) -> str:
        return "choco"

    def default_hparams(self) -> dict[str, float]:
        return {"consensus_step": 0.5}

    def message_bytes(self, params) -> float:
        """The compressor's real payload for one model (values, indices, norms)."""
        return tree_payload_bits(self.compressor, params, self.per_tensor) / 8

    def init_extra(self, global_params, n):
        if self.order == "code":
            return PublicCopy(tree_broadcast(global_params, n))
        return PublicCopy(jax.tree_util.tree_map(lambda p: jnp.zeros((n, *p.shape), p.dtype), global_params))

    def _compress(self, state, diff, n):
        keys = jax.random.split(stream_key(jax.random.fold_in(state.rng, state.round), "choco_compression"), n)
        return jax.vmap(lambda k, d: compress_tree(self.compressor, k, d, self.per_tensor))(keys, diff)

    def round(self, ctx, state: SimState, data, plan, hparams):
        x, xhat = state.nodes.params, state.nodes.extra.xhat
        n = plan.active.shape[0]
        x_half, loss, steps, state = self.local_steps(ctx, state, data, plan, x, hparams)
        w = self.operator(state, plan)
        gamma = hparams["consensus_step"]

        def gossip(model, copies):
            return jax.tree_util.tree_map(lambda a, m, h: a + gamma * (m - h), model, tp.mix(w, copies), copies)

        if self.order == "paper":
            xhat = jax.tree_util.tree_map(jnp.add, xhat, self._compress(state, jax.tree_util.tree_map(
                jnp.subtract, x_half, xhat), n))
            new = gossip(x_half, xhat)
        else:
            new = gossip(x_half, xhat)
            xhat = jax.tree_util.tree_map(jnp.add, xhat, self._compress(state, jax.tree_util.tree_map(
                jnp.subtract, new, xhat), n))
        metrics = _round_metrics(plan, loss, steps, new, messages_sent(w), self.message_bytes(ctx.params_shape))
        return state._replace(nodes=state.nodes._replace(params=new, extra=PublicCopy(xhat))), metrics


@dataclasses.dataclass(frozen=True, eq=False)
class PairwiseGossip(_Gossip):
    """Randomized pairwise gossip (Boyd et al. 2006) with local training: each round a
    uniformly random matching of the nodes is drawn and matched pairs average their
    models, ``x_i <- (x_i + x_partner(i)) / 2`` (the synchronous form of AD-PSGD-style
    pairwise averaging).  ``order="atc"`` (default) averages the locally updated models;
    ``order="lian"`` averages the pre-update models and adds each node's own update,
    ``x_i <- (x_i + x_partner(i)) / 2 + (LocalUpdate(x_i) - x_i)``, as ``DPSGD`` does.  The
    topology is the complete graph; ``topology`` is unused."""

    order: str = "atc"

    def __post_init__(self):
        check_choice("order", self.order, ORDERS)

    @property
    def name(self) -> str:
        return "pairwise"

    def traits(self) -> Traits:
        """As the gossip family, without a fixed graph (a fresh matching every round)."""
        return super().traits()._replace(topology=None)

    def payload(self, params, num_nodes: int) -> Payload:
        """One model to and from the node's partner."""
        return Payload(self.message_bytes(params), self.message_bytes(params))

    def round(self, ctx, state: SimState, data, plan, hparams):
        x = state.nodes.params
        x_half, loss, steps, state = self.local_steps(ctx, state, data, plan, x, hparams)
        n = plan.active.shape[0]
        partner = tp.random_matching(stream_key(jax.random.fold_in(state.rng, state.round), "pairwise_matching"), n)
        if self.order == "atc":
            new = tp.pairwise_average(x_half, partner)
        else:
            new = jax.tree_util.tree_map(lambda m, a, b: m + a - b, tp.pairwise_average(x, partner), x_half, x)
        messages = jnp.sum(partner != jnp.arange(n))
        metrics = _round_metrics(plan, loss, steps, new, messages, self.message_bytes(ctx.params_shape))
        return state._replace(nodes=state.nodes._replace(params=new)), metrics
