"""Asynchronous decentralized training: AD-PSGD (Lian et al. 2018, "Asynchronous Decentralized
Parallel Stochastic Gradient Descent", Algorithm 1), on the event clock.

Every node wakes on its own clock (its durations from the system model): when node i
finishes, with ``xhat_i`` the copy of its model it read when it started::

    x_i, x_j <- (x_i + x_j) / 2            (j: a uniformly random neighbour of i, atomically)
    x_i      <- x_i + (LocalUpdate(xhat_i) - xhat_i)      (x_i - lr grad F_i(xhat_i) for one SGD step)

and starts again, reading ``xhat_i = x_i``.  Arrivals are applied one at a time in (finish
time, id) order like the server-based asynchronous algorithms (``edgejax.system.events``).
The partner is drawn from the ``Topology``'s neighbour table with the tick's key.  Staleness
of an update is how many times ``x_i`` changed (its own updates and averagings in which it
was the partner) between its read and its arrival.

State: ``nodes.params [N, ...]`` (the models ``x``), ``nodes.extra = Snapshot(xhat [N, ...],
changes [N], read [N])``; no server.  Evaluation: the node average and every node's model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from edgejax.algorithms.base import Payload, Traits, describe_algorithm
from edgejax.algorithms.decentralized import consensus_distance, node_mean
from edgejax.algorithms.topology_spec import Topology
from edgejax.core.execution import Needs
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState, round_keys, tree_broadcast
from edgejax.data.host import cohort_data
from edgejax.models.base import num_bytes


class Snapshot(NamedTuple):
    """AD-PSGD's per-node state: ``xhat`` (the model read at the start of the current update),
    ``changes [N]`` (how often ``x_i`` has changed) and ``read [N]`` (``changes`` at the read)."""

    xhat: Any
    changes: jax.Array
    read: jax.Array


def _rows(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def _set_rows(tree, i, values):
    return jax.tree_util.tree_map(lambda a, v: a.at[i].set(v), tree, values)


@dataclasses.dataclass(frozen=True, eq=False)
class ADPSGD:
    """AD-PSGD over ``topology`` (see the module docstring).  ``log_events`` adds each tick's
    ``event_node``, ``event_partner`` and ``event_staleness`` ``[K]`` (-1 in unused slots)."""

    topology: Topology = Topology()
    log_events: bool = False

    @property
    def name(self) -> str:
        return "adpsgd"

    def traits(self) -> Traits:
        return Traits(asynchronous=True, topology=self.topology, needs=Needs(start="own", output="models"))

    def payload(self, params, num_nodes: int) -> Payload:
        """One model each way with the partner per update."""
        return Payload(num_bytes(params), num_bytes(params))

    def default_hparams(self) -> dict[str, float]:
        return {}

    def describe(self) -> dict:
        return describe_algorithm(self)

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        n = node_rng.shape[0]
        models = tree_broadcast(global_params, n)
        zeros = jnp.zeros((n,), jnp.int32)
        return NodeState(rng=node_rng, params=models, extra=Snapshot(models, zeros, zeros)), ServerState(params=())

    def eval_models(self, state: SimState):
        """The node average and every node's own model."""
        return node_mean(state.nodes.params), state.nodes.params

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        snap = state.nodes.extra
        cohort = cohort_data(data.train, plan.nodes, full=False)   # in arrival order, so always gathered
        keys = round_keys(state.nodes.rng[plan.nodes], state.round)
        start = _rows(snap.xhat, plan.nodes)
        trained = ctx.execution.train(start, cohort, keys, plan.step_budget, hparams)
        delta = jax.tree_util.tree_map(jnp.subtract, trained.params, start)
        neighbours, edges = state.network.table
        pick_key = jax.random.fold_in(jax.random.fold_in(state.rng, state.round), 6)

        def apply_one(carry, slot):
            x, changes = carry
            i, d, arrives, k = slot
            logits = jnp.where(edges[i], 0.0, -jnp.inf)
            j = neighbours[i, jax.random.categorical(jax.random.fold_in(pick_key, k), logits)]
            mean = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, _rows(x, i), _rows(x, j))
            new_x = _set_rows(_set_rows(x, j, mean), i, jax.tree_util.tree_map(jnp.add, mean, d))
            x = jax.tree_util.tree_map(lambda a, b: jnp.where(arrives, a, b), new_x, x)
            staleness = changes[i] - snap.read[i]
            changes = jnp.where(arrives, changes.at[i].add(1).at[j].add(1), changes)
            return (x, changes), (jnp.where(arrives, j, -1), jnp.where(arrives, staleness, -1))

        slots = (plan.nodes, delta, plan.active > 0, jnp.arange(plan.nodes.shape[0]))
        (x, changes), (partner, staleness) = jax.lax.scan(apply_one, (state.nodes.params, snap.changes), slots)
        restart = plan.restart
        xhat = jax.tree_util.tree_map(lambda new, old: jnp.where(restart.reshape((-1,) + (1,) * (new.ndim - 1)),
                                                                 new, old), x, snap.xhat)
        nodes = state.nodes._replace(params=x, extra=Snapshot(xhat, changes, jnp.where(restart, changes, snap.read)))
        return state._replace(nodes=nodes), self._metrics(ctx, plan, trained, x, partner, staleness)

    def _metrics(self, ctx, plan, trained, x, partner, staleness):
        applied = plan.active > 0
        dtype = trained.loss.dtype
        count = jnp.sum(applied).astype(dtype)
        metrics = {
            "train_loss": jnp.where(count > 0, jnp.sum(jnp.where(applied, trained.loss, 0)) / jnp.maximum(count, 1),
                                    jnp.nan),
            "participants": count,
            "local_steps": jnp.sum(jnp.where(applied, trained.steps, 0)),
            "bytes_up": count * ctx.payload.up,
            "bytes_down": count * ctx.payload.down,
            "staleness_mean": jnp.sum(jnp.where(applied, staleness, 0)).astype(dtype) / jnp.maximum(count, 1),
            "staleness_max": jnp.max(jnp.where(applied, staleness, 0)).astype(dtype),
            "consensus_distance": consensus_distance(x),
        }
        if self.log_events:
            metrics |= {"event_node": jnp.where(applied, plan.nodes, -1), "event_partner": partner,
                        "event_staleness": staleness}
        return metrics
