"""Simulation state pytrees and the per-round plan.

Every per-node leaf has the node axis ``N`` first.  The layout is shared by all
algorithms; each fills in only what it needs and leaves the rest as ``()``:

``SimState``
    ``round`` (int32 scalar, rounds finished), ``rng`` (the run's key),
    ``nodes`` (``NodeState``), ``server`` (``ServerState``), ``system`` (the system
    model's state: device profiles, availability, simulated clock, busy-until times) and
    ``network`` (the communication graph's arrays for decentralized algorithms).
``NodeState``
    ``rng [N, 2]``: each node's key; round ``t`` uses ``fold_in(rng[i], t)``.
    ``params [N, ...]``: persistent node models (decentralized training); ``()`` where
    nodes restart from the server model every round (FedAvg family).
    ``opt_state [N, ...]``: local optimizer states where they persist across rounds.
    ``extra``: the algorithm's typed per-node state, a ``NamedTuple`` documented with the
    algorithm (SCAFFOLD's ``Control(c)``, FedDyn's ``GradientMemory(g)``, push-sum's
    ``PushSumWeight(w)``, CHOCO's ``PublicCopy(xhat)``).
``ServerState``
    ``params`` (the global model), ``opt_state`` (server optimizer), ``extra`` (the
    algorithm's typed global state: SCAFFOLD's ``Control(c)``, FedDyn's ``DynamicState(h)``),
    ``aggregator`` (the aggregator's state, ``edgejax.algorithms.aggregation``; ``()`` for the mean).

A round reads a ``RoundPlan`` made by the system model (or given by the user:
``Simulation.round_with_plan``): which ``K`` nodes form the cohort, which of them take
part, how many local steps each may run, and which links are up.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class NodeState(NamedTuple):
    rng: jax.Array
    params: PyTree = ()
    opt_state: PyTree = ()
    extra: PyTree = ()


class ServerState(NamedTuple):
    params: PyTree
    opt_state: PyTree = ()
    extra: PyTree = ()
    aggregator: PyTree = ()


class SimState(NamedTuple):
    round: jax.Array
    rng: jax.Array
    nodes: NodeState
    server: ServerState
    system: PyTree = ()
    network: PyTree = ()


class RoundPlan(NamedTuple):
    """What the system model decided for one round (all arrays of length ``K``, the cohort size).

    ``nodes``: node ids of the cohort; ``active``: 1.0 where the node takes part and
    its update is aggregated, 0.0 where it is absent (a mask, never a branch);
    ``step_budget``: the most local steps the node may run (partial work);
    ``live_links``: with link failures, the live-edge mask ``[N, K_graph]`` of the
    communication graph's neighbour table (``()`` otherwise).
    Asynchronous training (a tick of the event clock, ``edgejax.system.events``): ``time``,
    the simulated time of the tick's arrivals, and ``restart [N]``, the nodes that download
    the current model at the end of the tick (``()`` in synchronous rounds).
    ``minibatches``: ``()``, or explicit ``(slots [K, S, B], weights [K, S, B])`` for the
    cohort's local updates (``Simulation.make_plan``).
    """

    nodes: jax.Array
    active: jax.Array
    step_budget: jax.Array
    live_links: jax.Array | tuple = ()
    restart: jax.Array | tuple = ()
    time: jax.Array | tuple = ()
    minibatches: tuple = ()


def default_float():
    """The default float dtype: float64 under ``jax.enable_x64``, else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def tree_where(cond: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """Leafwise ``where(cond, new, old)`` with a scalar ``cond``."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(cond, a, b), new, old)


def tree_broadcast(tree: PyTree, n: int) -> PyTree:
    """Every leaf repeated along a new leading (node) axis of length ``n``."""
    return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n, *jnp.shape(a))), tree)


def round_keys(node_rng: jax.Array, round_) -> jax.Array:
    """Each node's key for round ``round_``: ``fold_in(node_rng[i], round_)``."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(node_rng, round_)


def tree_take(tree: PyTree, idx: jax.Array) -> PyTree:
    """Rows ``idx`` of every leaf's leading (node) axis."""
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), tree)
