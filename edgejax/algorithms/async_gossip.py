"""Asynchronous decentralized training: AD-PSGD (Lian et al. 2018, "Asynchronous Decentralized
Parallel Stochastic Gradient Descent", Algorithm 1), on the event clock.

Every node wakes on its own clock (its durations from the system model): when node i
finishes, with ``xhat_i`` the copy of its model it read when it started::

    x_i, x_j <- (x_i + x_j) / 2            (j: a uniformly random neighbour of i, atomically)
    x_i      <- x_i + (LocalUpdate(xhat_i) - xhat_i)      (x_i - lr grad F_i(xhat_i) for one SGD step)

and starts again, reading ``xhat_i = x_i``.  Arrivals are applied one at a time in (finish
time, id) order like the server-based asynchronous algorithms (``edgejax.system.events``),
a window of arrivals trained as one batch from their reads (``edgejax.core.event_loop``).
With ``concurrency`` C < N only C nodes compute at once; a finished node's slot goes to a
node drawn uniformly from the idle ones, which reads its own model when it starts.  The
partner is drawn from the ``Topology``'s neighbour table with the tick's key (any
neighbour, computing or idle: a node's model is always there to average with).  Staleness
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

from edgejax.algorithms.asynchronous import (arrival_metrics, check_concurrency, check_event_options, run_window,
                                             tick_slots, train_group_size)
from edgejax.algorithms.base import DescribedByFields, Payload, Traits
from edgejax.algorithms.decentralized import consensus_distance, node_mean
from edgejax.network.spec import Topology
from edgejax.core.execution import Needs
from edgejax.core.state import NodeState, ServerState, SimState, tree_broadcast, tree_take
from edgejax.core.streams import stream_key
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
class ADPSGD(DescribedByFields):
    """AD-PSGD over ``topology`` (see the module docstring).  ``concurrency``: nodes computing at
    once (``None``: all); ``window``: the most arrivals trained in one batch (the results do not
    depend on it).  ``log_events`` adds each tick's ``event_node``, ``event_partner`` and
    ``event_staleness`` ``[K]`` (-1 in unused slots)."""

    topology: Topology = Topology()
    concurrency: int | None = None
    window: int = 64
    log_events: bool = False

    def __post_init__(self):
        check_event_options(self.concurrency, self.window)

    @property
    def name(self) -> str:
        return "adpsgd"

    def traits(self) -> Traits:
        return Traits(asynchronous=True, topology=self.topology, needs=Needs(start="own", output="models",
                                                                                 factor_starts=True))

    def payload(self, params, num_nodes: int) -> Payload:
        """One model each way with the partner per update."""
        return Payload(num_bytes(params), num_bytes(params))

    def default_hparams(self) -> dict[str, float]:
        return {}

    def slots(self, num_nodes: int) -> int:
        """Nodes computing at once."""
        return num_nodes if self.concurrency is None else self.concurrency

    def check_nodes(self, num_nodes: int) -> None:
        """The options against N, when the simulation is built."""
        check_concurrency(self.concurrency, num_nodes)

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        n = node_rng.shape[0]
        models = tree_broadcast(global_params, n)
        zeros = jnp.zeros((n,), jnp.int32)
        return NodeState(rng=node_rng, params=models, extra=Snapshot(models, zeros, zeros)), ServerState(params=())

    def eval_models(self, state: SimState):
        """The node average and every node's own model."""
        return node_mean(state.nodes.params), state.nodes.params

    def window_step(self, ctx, state: SimState, data, win, hparams):
        """Train the window's arrivals from their reads, apply them in order; ``(state, per-tick metrics)``."""
        snap = state.nodes.extra
        neighbours, edges = state.network.table
        events, ticks = win.node.shape[0], win.time.shape[0]
        dtype = jnp.result_type(float)

        def starts(carry):
            return lambda rows: tree_take(carry[1], win.node[rows])

        def apply_event(e, trained, carry):
            x, xhat, changes, read, partner, staleness, distance = carry
            i = win.node[e]
            tick_key = stream_key(jax.random.fold_in(state.rng, state.round + win.tick[e]), "gossip_partner")
            logits = jnp.where(edges[i], 0.0, -jnp.inf)
            j = neighbours[i, jax.random.categorical(jax.random.fold_in(tick_key, win.position[e]), logits)]
            delta = jax.tree_util.tree_map(jnp.subtract, trained.params, trained.start)
            mean = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, _rows(x, i), _rows(x, j))
            x = _set_rows(_set_rows(x, j, mean), i, jax.tree_util.tree_map(jnp.add, mean, delta))
            staleness = staleness.at[e].set(changes[i] - read[i])
            return x, xhat, changes.at[i].add(1).at[j].add(1), read, partner.at[e].set(j), staleness, distance

        def tick_end(t, carry):   # a node starting a job reads its own model
            x, xhat, changes, read, partner, staleness, distance = carry

            def download(r, c):
                xhat, read = c
                i = win.restart_node[r]
                return _set_rows(xhat, i, _rows(x, i)), read.at[i].set(changes[i])

            xhat, read = jax.lax.fori_loop(jnp.where(t == 0, 0, win.restarts_end[t - 1]), win.restarts_end[t],
                                           download, (xhat, read))
            return x, xhat, changes, read, partner, staleness, distance.at[t].set(consensus_distance(x))

        init = (state.nodes.params, snap.xhat, snap.changes, snap.read, jnp.full((events,), -1, jnp.int32),
                jnp.full((events,), -1, jnp.int32), jnp.zeros((ticks,), dtype))
        (x, xhat, changes, read, partner, staleness, distance), loss, steps = run_window(
            ctx, data, state.nodes.rng, win, starts, hparams, train_group_size(ctx, self.window), apply_event,
            tick_end, init)
        nodes = state.nodes._replace(params=x, extra=Snapshot(xhat, changes, read))
        arrived = jnp.arange(events) < win.n_events
        metrics = arrival_metrics(win, arrived, loss, steps, staleness, ticks)
        metrics |= {"bytes_up": metrics["participants"] * ctx.payload.up,
                    "bytes_down": metrics["participants"] * ctx.payload.down, "consensus_distance": distance}
        if self.log_events:
            k = ctx.cohort_size
            metrics |= {"event_node": tick_slots(jnp.where(arrived, win.node, -1), win, ticks, k, -1),
                        "event_partner": tick_slots(partner, win, ticks, k, -1),
                        "event_staleness": tick_slots(staleness, win, ticks, k, -1)}
        return state._replace(nodes=nodes), metrics
