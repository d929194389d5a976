"""Asynchronous updates trained when they are downloaded, kept in factor form until they arrive.

A node's update depends only on the model it downloaded (and its own data and key), so it
can be computed at any time between its download and its arrival.  Under FedBuff the
server model changes only at a flush, so all the downloads between two flushes take the
same model: they are trained together from it by ``shared_base`` (one GEMM per layer for
the whole group, no per-node weight copy), and every update is kept as ``LayerFactors``
(``R (d_in + d_out)`` numbers per dense layer instead of ``d_in d_out``) in its slot.

A window's downloads are queued with the index of the model they took (the window's
models, at most one per flush, are kept ``[V, ...]``) and trained at the start of the next
window, before any of them can arrive: no job started in a window ends inside it (the
lookahead of ``edgejax.system.events``).  The first queue is every slot's download at
time 0.  Each slot's update is trained exactly as the arrival-time training would train it
(the same model, minibatches and key), so only the order of the work changes.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from edgejax.core.state import tree_take
from edgejax.data.host import cohort_data
from edgejax.system.events import restart_ticks


class Queue(NamedTuple):
    """Downloads not trained yet: the first ``count`` of ``slot``, ``node``, ``job`` and ``model``
    (the index into ``Pending.models`` of the model taken), each ``[C]``."""

    slot: jax.Array
    node: jax.Array
    job: jax.Array
    model: jax.Array
    count: jax.Array


class Pending(NamedTuple):
    """Every slot's trained update (``factors``, ``{layer: LayerFactors [C, ...]}``), its
    ``loss`` and ``steps`` ``[C]`` and the server ``version [C]`` it was downloaded at; the
    ``models [V, ...]`` the queued downloads took, and the ``queue``."""

    factors: Any
    loss: jax.Array
    steps: jax.Array
    version: jax.Array
    models: Any
    queue: Queue


def first_downloads(ctx, params, train, events, group: int, num_models: int, hparams) -> Pending:
    """Every slot downloads ``params`` at time 0 (``events``: the ``EventState`` after
    ``start_events``): all of them queued, with room for ``num_models`` models per window.
    The queue holds copies of the events' slot arrays, so no two state leaves share a buffer
    (a chunk that donates its state would refuse that)."""
    slots = events.slot_node.shape[0]
    ids = jnp.zeros((group,), jnp.int32)
    shapes = jax.eval_shape(ctx.execution.node_factors, params, cohort_data(train, ids, full=False),
                            jax.random.split(jax.random.PRNGKey(0), group), ids, None, hparams)[0]
    factors = jax.tree_util.tree_map(lambda s: jnp.zeros((slots, *s.shape[1:]), s.dtype), shapes)
    models = jax.tree_util.tree_map(lambda p: jnp.zeros((num_models, *p.shape), p.dtype).at[0].set(p), params)
    dtype = jnp.result_type(float)
    queue = Queue(jnp.arange(slots, dtype=jnp.int32), jnp.copy(events.slot_node), jnp.copy(events.slot_job),
                  jnp.zeros((slots,), jnp.int32), jnp.asarray(slots, jnp.int32))
    return Pending(factors, jnp.zeros((slots,), dtype), jnp.zeros((slots,), dtype), jnp.zeros((slots,), jnp.int32),
                   models, queue)


def job_inputs(ctx, train, node_rng, nodes, jobs, active):
    """Node ``i``'s job ``j``: its key ``fold_in(node_rng[i], j)`` and its step budget (0 where
    not ``active``), for every ``(nodes, jobs)`` pair."""
    keys = jax.vmap(jax.random.fold_in)(node_rng[nodes], jobs)
    return keys, jnp.where(active, ctx.local.node_steps(train.count[nodes]), 0).astype(jnp.int32)


def group_table(queue: Queue, group: int):
    """The queue cut into groups of at most ``group`` consecutive downloads of one model:
    ``(table [C, group]`` of queue rows, ``C`` where empty, ``number of groups)``."""
    c = queue.slot.shape[0]
    idx = jnp.arange(c, dtype=jnp.int32)
    run_start = (idx == 0) | (queue.model != jnp.roll(queue.model, 1))
    rank = idx - jax.lax.cummax(jnp.where(run_start, idx, 0))
    gid = jnp.cumsum(run_start | (rank % group == 0), dtype=jnp.int32) - 1
    valid = idx < queue.count
    table = jnp.full((c, group), c, jnp.int32).at[jnp.where(valid, gid, c), rank % group].set(idx, mode="drop")
    return table, jnp.where(queue.count > 0, gid[jnp.maximum(queue.count - 1, 0)] + 1, 0)


def train_queue(ctx, train, node_rng, pending: Pending, group: int, hparams) -> Pending:
    """Train the queued downloads: groups of at most ``group`` downloads of one model (the queue
    is in download order, so those are consecutive), each group from its model in one
    ``node_factors`` call (keys and budgets: ``job_inputs``).  Returns the updates stored and
    the queue empty."""
    q = pending.queue
    slots = q.slot.shape[0]
    table, n_groups = group_table(q, group)

    def one_group(g, pending):
        rows = table[g]
        member = rows < slots
        rows = jnp.minimum(rows, slots - 1)
        nodes = q.node[rows]
        keys, budget = job_inputs(ctx, train, node_rng, nodes, q.job[rows], member)
        factors, loss, steps = ctx.execution.node_factors(tree_take(pending.models, q.model[rows[0]]),
                                                          cohort_data(train, nodes, full=False), keys, budget,
                                                          None, hparams)
        at = jnp.where(member, q.slot[rows], slots)

        def put(store, new):
            return store.at[at].set(new.astype(store.dtype), mode="drop")

        return pending._replace(factors=jax.tree_util.tree_map(put, pending.factors, factors),
                                loss=put(pending.loss, loss), steps=put(pending.steps, steps))

    pending = jax.lax.fori_loop(0, n_groups, one_group, pending)
    return pending._replace(queue=q._replace(count=jnp.zeros((), jnp.int32)))


def queue_restarts(pending: Pending, win, tick_model, tick_version) -> Pending:
    """Queue the window's restarts: the slot restarting at the end of tick ``t`` took the model
    ``tick_model[t]`` at server version ``tick_version[t]``."""
    slots = pending.version.shape[0]
    r = jnp.arange(win.restart_slot.shape[0])
    tick = jnp.minimum(restart_ticks(win, r), win.time.shape[0] - 1)
    valid = r < win.n_restarts
    version = pending.version.at[jnp.where(valid, win.restart_slot, slots)].set(tick_version[tick], mode="drop")
    queue = Queue(win.restart_slot, win.restart_node, win.restart_job, tick_model[tick], win.n_restarts)
    return pending._replace(version=version, queue=queue)
