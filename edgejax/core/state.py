"""Simulation state pytrees and the per-round plan.

Every per-node leaf has the node axis ``N`` first.  The layout is shared by all
algorithms; each fills in only what it needs and leaves the rest as ``()``:

``SimState``
    ``round`` (int32 scalar, rounds finished), ``rng`` (the run's key),
    ``nodes`` (``NodeState``), ``server`` (``ServerState``) and ``system`` (the system
    model's state: device profiles, availability, simulated clock).
``NodeState``
    ``rng [N, 2]``: each node's key; round ``t`` uses ``fold_in(rng[i], t)``.
    ``params [N, ...]`` and ``opt_state [N, ...]``: persistent node models
    (decentralized training); ``()`` where nodes restart from the server model
    every round (FedAvg family).
    ``extra``: per-node algorithm state (control variates, delay buffers ``[D, N, ...]``).
``ServerState``
    ``params`` (the global model), ``opt_state`` (server optimizer), ``extra`` (global
    algorithm state: SCAFFOLD's ``c``, a decentralized run's mixing operator).

A round reads a ``RoundPlan`` made by the system model: which ``K`` nodes form the
cohort, which of them take part, and how many local steps each may run.
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


class SimState(NamedTuple):
    round: jax.Array
    rng: jax.Array
    nodes: NodeState
    server: ServerState
    system: PyTree = ()


class RoundPlan(NamedTuple):
    """What the system model decided for one round (all arrays of length ``K``, the cohort size).

    ``nodes``: node ids of the cohort; ``active``: 1.0 where the node takes part and
    its update is aggregated, 0.0 where it is absent (a mask, never a branch);
    ``step_budget``: the most local steps the node may run (partial work).
    """

    nodes: jax.Array
    active: jax.Array
    step_budget: jax.Array


def default_float():
    """The default float dtype: float64 under ``jax.enable_x64``, else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def tree_where(cond: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """Leafwise ``where(cond, new, old)`` with a scalar ``cond``."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(cond, a, b), new, old)


def tree_take(tree: PyTree, idx: jax.Array) -> PyTree:
    """Rows ``idx`` of every leaf's leading (node) axis."""
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), tree)
