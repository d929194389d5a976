"""Fully decentralized training: no server, every node keeps its own model and gossips.

State layout: ``nodes.params [N, ...]`` are the node models (all start from one model),
``nodes.extra`` the algorithm's per-node state (push-sum weights, CHOCO's public copies),
``server.extra`` the topology's arrays (fixed mixing operator or neighbour table).
Every round each node runs its local update (``LocalTraining``: ``steps=H`` local steps,
H = 1 being the classic one-gradient-step form) from its own model, then one
communication step.  Evaluation reports the node average (the consensus model) and
every node's own model on its local test split.  Every round also reports
``consensus_distance = mean_i ||x_i - x_bar||^2``.

Absent nodes (``plan.active = 0``) run no local steps; with ``Topology(link_failures=True)``
they also neither send nor receive.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from edgejax import topology as tp
from edgejax.algorithms.topology_spec import Topology, messages_sent
from edgejax.compression import Compressor, Identity, compress_tree, tree_payload_bits
from edgejax.core.local import map_nodes
from edgejax.core.validation import check_choice
from edgejax.core.state import NodeState, ServerState, SimState

ORDERS = ("lian", "atc")


def _broadcast(params, n: int):
    return jax.tree_util.tree_map(lambda p: jnp.broadcast_to(p, (n, *p.shape)), params)


def _node_mean(tree):
    return jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), tree)


def consensus_distance(node_params) -> jax.Array:
    """``mean_i ||x_i - x_bar||^2`` over all parameters."""
    flat = jax.vmap(lambda p: ravel_pytree(p)[0])(node_params)
    return jnp.mean(jnp.sum((flat - flat.mean(axis=0)) ** 2, axis=1))


def local_steps(ctx, state: SimState, data, plan, node_params, hparams):
    """Every node's local update from its own parameters; returns (params, loss [N], steps [N])."""
    n = data.train.num_nodes
    if plan.nodes.shape[0] != n:
        raise ValueError(f"decentralized algorithms train every node each round; use clients_per_round=None "
                         f"(got a cohort of {plan.nodes.shape[0]} of N={n})")
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.nodes.rng, state.round)
    train = data.train

    def one(args):
        params, x, y, count, key, budget = args
        return ctx.local_update(params, x, y, count, key, budget, hparams)

    return map_nodes(one, (node_params, train.x, train.y, train.count, keys, plan.step_budget), ctx.group_size)


def _round_metrics(plan, loss, steps, node_params, messages, bytes_per_message):
    active = plan.active
    messages = messages.astype(active.dtype)
    return {
        "train_loss": jnp.sum(jnp.where(active > 0, loss, 0.0)) / jnp.maximum(jnp.sum(active), 1.0),
        "participants": jnp.sum(active),
        "local_steps": jnp.sum(active * steps),
        "consensus_distance": consensus_distance(node_params),
        "bytes_up": messages * bytes_per_message,
        "bytes_down": messages * bytes_per_message,
    }


@dataclasses.dataclass(frozen=True, eq=False)
class _Gossip:
    """Shared pieces of the gossip family: state, evaluation, this round's operator."""

    topology: Topology = Topology()

    def default_hparams(self) -> dict[str, float]:
        return {"link_failure": 0.0} if self.topology.link_failures else {}

    def init(self, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        n = node_rng.shape[0]
        nodes = NodeState(rng=node_rng, params=_broadcast(global_params, n), extra=self.init_extra(global_params, n))
        return nodes, ServerState(params=(), extra=self.topology.init_state(n))

    def init_extra(self, global_params, n):
        return ()

    def eval_models(self, state: SimState):
        """The node average (consensus model) and every node's own model."""
        return _node_mean(state.nodes.params), state.nodes.params

    def operator(self, state: SimState, plan, hparams):
        n = state.nodes.rng.shape[0]
        key = jax.random.fold_in(jax.random.fold_in(state.rng, state.round), 1)
        return self.topology.operator(state.server.extra, n, state.round, key, plan.active,
                                      hparams.get("link_failure", 0.0))


@dataclasses.dataclass(frozen=True, eq=False)
class DPSGD(_Gossip):
    """Decentralized parallel SGD (Lian et al. 2017, "Can Decentralized Algorithms Outperform
    Centralized Algorithms?").

    ``order="lian"`` (the paper): ``X+ = W X - lr G(X)``: the gradient is taken at the
    pre-mixing model, i.e. ``x_i <- sum_j W_ij x_j + (LocalUpdate(x_i) - x_i)``.
    ``order="atc"`` (adapt then combine, as much code does): ``x_i <- sum_j W_ij
    LocalUpdate(x_j)``; with ``LocalTraining(steps=H)`` this is local SGD with gossip
    every H local steps.
    """

    order: str = "lian"

    def __post_init__(self):
        check_choice("order", self.order, ORDERS)

    @property
    def name(self) -> str:
        return "dpsgd"

    def round(self, ctx, state: SimState, data, plan, hparams):
        x = state.nodes.params
        x_half, loss, steps = local_steps(ctx, state, data, plan, x, hparams)
        w = self.operator(state, plan, hparams)
        if self.order == "lian":
            new = jax.tree_util.tree_map(lambda m, a, b: m + a - b, tp.mix(w, x), x_half, x)
        else:
            new = tp.mix(w, x_half)
        metrics = _round_metrics(plan, loss, steps, new, messages_sent(w), ctx.model_bytes)
        return state._replace(nodes=state.nodes._replace(params=new)), metrics


@dataclasses.dataclass(frozen=True, eq=False)
class PushSum(_Gossip):
    """Stochastic Gradient Push (Assran et al. 2019), push-sum on a column-stochastic P.

    Each node keeps a numerator ``x_i`` and a scalar weight ``w_i`` (``nodes.extra``; all 1
    at the start, so ``sum_i w_i = N`` forever) and trains the de-biased ``z_i = x_i / w_i``::

        x_i <- x_i + (LocalUpdate(z_i) - z_i)          (SGP: x_i - lr grad F_i(z_i))
        x_i <- sum_j P_ij x_j,   w_i <- sum_j P_ij w_j,   z_i = x_i / w_i

    Works on directed graphs (``Topology(weights="column")``, e.g. the directed
    exponential graph) and on the one-peer exponential schedule.
    """

    topology: Topology = Topology(graph="exponential", directed=True, weights="column")

    @property
    def name(self) -> str:
        return "pushsum"

    def init_extra(self, global_params, n):
        return jnp.ones((n,), jnp.result_type(float))

    def _debiased(self, state):
        w = state.nodes.extra
        return jax.tree_util.tree_map(lambda x: x / w.reshape((-1,) + (1,) * (x.ndim - 1)), state.nodes.params)

    def eval_models(self, state: SimState):
        """The network average ``sum_i x_i / sum_i w_i`` and every node's de-biased ``z_i``."""
        total = jnp.sum(state.nodes.extra)
        average = jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0) / total, state.nodes.params)
        return average, self._debiased(state)

    def round(self, ctx, state: SimState, data, plan, hparams):
        x, z = state.nodes.params, self._debiased(state)
        z_half, loss, steps = local_steps(ctx, state, data, plan, z, hparams)
        x_half = jax.tree_util.tree_map(lambda a, b, c: a + b - c, x, z_half, z)
        p = self.operator(state, plan, hparams)
        new_x, new_w = tp.mix(p, x_half), tp.mix(p, state.nodes.extra)
        nodes = state.nodes._replace(params=new_x, extra=new_w)
        new_z = self._debiased(state._replace(nodes=nodes))
        metrics = _round_metrics(plan, loss, steps, new_z, messages_sent(p), ctx.model_bytes + 4)
        return state._replace(nodes=nodes), metrics


@dataclasses.dataclass(frozen=True, eq=False)
class CHOCO(_Gossip):
    """CHOCO-SGD (Koloskova et al. 2019, "Decentralized Stochastic Optimization and Gossip
    Algorithms with Compressed Communication", Algorithm 2), in the paper's order::

        x_i^{t+1/2} = LocalUpdate(x_i^t)                         (x - lr grad F_i(x))
        q_i = Q(x_i^{t+1/2} - xhat_i);   xhat_j <- xhat_j + q_j  (every node sends q_i)
        x_i^{t+1} = x_i^{t+1/2} + gamma sum_j W_ij (xhat_j - xhat_i)

    ``xhat`` (public copies, ``nodes.extra``) start at 0 as in the paper; ``gamma`` is
    the traced hyper-parameter ``consensus_step``; it must shrink as compression grows
    (measured in ``benchmarks/gossip.py``: top-10% on a 32-node ring diverges with 0.5 after
    about 300 rounds and is stable with 0.2).  Convention: the authors' code gossips
    with the old public copies before the gradient step; this follows the paper.
    ``per_tensor`` compresses each tensor separately (as most code does) or, when False,
    the whole flattened model (the paper's analysis).  Bytes count the compressor's real
    payload (values, indices, norms).
    """

    compressor: Compressor = Identity()
    per_tensor: bool = True

    @property
    def name(self) -> str:
        return "choco"

    def default_hparams(self) -> dict[str, float]:
        return {**super().default_hparams(), "consensus_step": 0.5}

    def init_extra(self, global_params, n):
        return jax.tree_util.tree_map(lambda p: jnp.zeros((n, *p.shape), p.dtype), global_params)

    def round(self, ctx, state: SimState, data, plan, hparams):
        x, xhat = state.nodes.params, state.nodes.extra
        x_half, loss, steps = local_steps(ctx, state, data, plan, x, hparams)
        keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(state.rng, state.round), 2), plan.active.shape[0])
        diff = jax.tree_util.tree_map(jnp.subtract, x_half, xhat)
        q = jax.vmap(lambda k, d: compress_tree(self.compressor, k, d, self.per_tensor))(keys, diff)
        xhat = jax.tree_util.tree_map(jnp.add, xhat, q)
        w = self.operator(state, plan, hparams)
        gamma = hparams["consensus_step"]
        new = jax.tree_util.tree_map(lambda a, m, h: a + gamma * (m - h), x_half, tp.mix(w, xhat), xhat)
        payload = tree_payload_bits(self.compressor, jax.tree_util.tree_map(lambda a: a[0], x), self.per_tensor) / 8
        metrics = _round_metrics(plan, loss, steps, new, messages_sent(w), payload)
        return state._replace(nodes=state.nodes._replace(params=new, extra=xhat)), metrics


@dataclasses.dataclass(frozen=True, eq=False)
class PairwiseGossip(_Gossip):
    """Randomized pairwise gossip (Boyd et al. 2006) after local training: each round a
    uniformly random matching of the nodes is drawn and matched pairs average their
    models, ``x_i <- (x_i + x_partner(i)) / 2`` (the synchronous form of AD-PSGD-style
    pairwise averaging).  The topology is the complete graph; ``topology`` is unused."""

    @property
    def name(self) -> str:
        return "pairwise"

    def init(self, global_params, node_rng, hparams):
        n = node_rng.shape[0]
        return NodeState(rng=node_rng, params=_broadcast(global_params, n)), ServerState(params=())

    def round(self, ctx, state: SimState, data, plan, hparams):
        x_half, loss, steps = local_steps(ctx, state, data, plan, state.nodes.params, hparams)
        n = plan.active.shape[0]
        partner = tp.random_matching(jax.random.fold_in(jax.random.fold_in(state.rng, state.round), 3), n)
        new = tp.pairwise_average(x_half, partner)
        messages = jnp.sum(partner != jnp.arange(n))
        metrics = _round_metrics(plan, loss, steps, new, messages, ctx.model_bytes)
        return state._replace(nodes=state.nodes._replace(params=new)), metrics
