"""The event clock of asynchronous training, scheduled a window at a time.

The meaning simulated (and checked against a plain sequential event loop in the tests): a
node downloads the current model, computes for its job's duration, pushes its update and
waits.  Arrivals are applied in finish-time order, equal finish times in increasing node
id, and all arrivals at a time T are applied before any of those nodes downloads again.
At most ``concurrency`` nodes are in flight (``None``: all N).  Each in-flight node holds a
*slot*; when a job ends its slot waits for a new job: with every node in flight the node
itself downloads again, with fewer a node drawn uniformly from the idle ones (the one
that just arrived included) takes the slot.  A node that is offline when it would start
stays waiting and is retried at every later tick.

A *tick* is one arrival time T with up to ``K`` (the static cohort size) of the arrivals at
T, in id order; arrivals beyond K at the same T spill into the next tick, and the waiting
slots restart only once no job is left with a finish time ``<= T``.  The availability
process steps once per tick.  Simulated time is ``download + compute + upload`` of the
node's device profile (``edgejax.system.clock``), optionally times mean-one lognormal
jitter ``exp(j z - j^2/2)`` with ``z`` drawn per (node, job), or a user's trace of
durations ``[N, J]`` (node i's job k lasts ``trace[i, k % J]`` seconds).

Vectorised (``schedule_window``): none of this depends on the models, so a window of up
to ``B`` arrivals is scheduled at once, before any training.  The window starts from the
``B + 1`` earliest finishers (one ``top_k`` over the slots, so selection costs O(slots)
per window, not per event) and ends before the first finish time of a job started inside
it (the lookahead of conservative parallel discrete-event simulation): every arrival in a
window was downloaded before the window began, so all of them can be trained as one batch
and then applied in order.  Window boundaries change the schedule of work, never the
meaning: a window of one tick is the one-event-per-tick execution.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.core.state import tree_take
from edgejax.core.streams import stream_key
from edgejax.system.clock import node_times, round_cost
from edgejax.system.profiles import DeviceProfiles


class EventState(NamedTuple):
    """Slots and jobs of asynchronous training.

    ``slot_node [C]`` (the node in each slot), ``finish [C]`` (its job's finish time; inf while
    the slot waits for a job), ``slot_job [C]`` (the job's number for that node),
    ``pending [C + K]`` with ``n_pending`` (the waiting slots, in the order they will restart),
    ``job [N]`` (jobs each node has started), ``idle [N + K]`` with ``n_idle`` (the idle nodes
    under bounded concurrency; empty otherwise), ``base_s [N]`` (each node's duration before
    jitter) and ``key`` (the jitter's and the idle draws' key).
    """

    slot_node: jax.Array
    finish: jax.Array
    slot_job: jax.Array
    pending: jax.Array
    n_pending: jax.Array
    job: jax.Array
    idle: jax.Array
    n_idle: jax.Array
    base_s: jax.Array
    key: jax.Array


class Window(NamedTuple):
    """A scheduled window: ``n_events`` arrivals in application order and ``n_ticks`` ticks.

    Per arrival ``[B + K]``: ``slot``, ``node``, ``job`` (the node's job number), ``tick``
    (index in the window) and ``position`` (index within its tick).  Per tick ``[B + 1]``:
    ``time``, ``elapsed_s`` (since the previous tick), ``energy_j``, ``events_end`` and
    ``restarts_end`` (cumulative counts: tick t owns arrivals ``events_end[t-1]..events_end[t]``
    and restarts likewise).  Per restart ``[C]``: ``restart_slot``, ``restart_node`` (who
    downloads the current model at the end of its tick) and ``restart_job`` (that node's job
    number)."""

    n_events: jax.Array
    n_ticks: jax.Array
    n_restarts: jax.Array
    slot: jax.Array
    node: jax.Array
    job: jax.Array
    tick: jax.Array
    position: jax.Array
    time: jax.Array
    elapsed_s: jax.Array
    energy_j: jax.Array
    events_end: jax.Array
    restarts_end: jax.Array
    restart_slot: jax.Array
    restart_node: jax.Array
    restart_job: jax.Array


def restart_ticks(win: Window, r):
    """The window tick each restart ``r`` belongs to (``restarts_end`` is cumulative over the
    window's ``n_ticks`` ticks; the rows past them are not)."""
    ends = win.restarts_end[:win.time.shape[0]]
    ends = jnp.where(jnp.arange(ends.shape[0]) < win.n_ticks, ends, jnp.iinfo(ends.dtype).max)
    return jnp.searchsorted(ends, r, side="right")


def base_durations(profiles: DeviceProfiles, steps, batch_size, payload) -> jax.Array:
    """Seconds each node needs for one job: ``download + compute + upload`` (``clock.node_times``
    with the ``Payload``'s bytes and compute fraction, scalars or ``[N]``)."""
    download, compute, upload = node_times(profiles, steps, batch_size, payload.down, payload.up, payload.compute)
    return download + compute + upload


def _job_duration(state: EventState, node, job, jitter, trace):
    """Seconds node ``node``'s job number ``job`` lasts (see the module docstring)."""
    if trace is not None:
        trace = jnp.asarray(trace, state.base_s.dtype)
        base = trace[node, job % trace.shape[1]]
    else:
        base = state.base_s[node]
    if jitter is None:
        return base
    z = jax.random.normal(jax.random.fold_in(jax.random.fold_in(state.key, node), job), (), base.dtype)
    jitter = jnp.asarray(jitter, base.dtype)
    return base * jnp.exp(jitter * z - 0.5 * jitter ** 2)


def start_events(key, base_s, num_nodes: int, concurrency: int | None, cohort: int, jitter, trace
                 ) -> tuple[EventState, jax.Array]:
    """Every slot's first job starts at time 0: all nodes, or ``concurrency`` nodes drawn
    uniformly without replacement.  Returns the state and each node's finish time ``[N]``
    (0 for idle nodes)."""
    n = num_nodes
    c = n if concurrency is None else concurrency
    k_draw, k_events = jax.random.split(key)
    if concurrency is None:
        slot_node, idle = jnp.arange(n, dtype=jnp.int32), jnp.zeros((0,), jnp.int32)
    else:
        order = jax.random.permutation(k_draw, n).astype(jnp.int32)
        slot_node, idle = order[:c], jnp.concatenate([order[c:], jnp.zeros((c + cohort,), jnp.int32)])
    state = EventState(slot_node, jnp.zeros((c,), base_s.dtype), jnp.zeros((c,), jnp.int32),
                       jnp.zeros((c + cohort,), jnp.int32), jnp.zeros((), jnp.int32),
                       jnp.zeros((n,), jnp.int32).at[slot_node].set(1), idle,
                       jnp.asarray(n - c, jnp.int32), base_s, k_events)
    finish = jax.vmap(lambda i: _job_duration(state, i, 0, jitter, trace))(slot_node)
    busy = jnp.zeros((n,), base_s.dtype).at[slot_node].set(finish)
    return state._replace(finish=finish), busy


def _candidates(state: EventState, size: int, bounded: bool):
    """The ``size`` earliest finishing slots in (finish time, node id) order, their finish times,
    the finish time of the next slot after them (inf if none) and whether ties at that time are
    ordered by node id (always with every node in flight: slot = node)."""
    c = state.finish.shape[0]
    take = min(size + 1, c)
    neg, slots = jax.lax.top_k(-state.finish, take)
    finish = -neg
    beyond = finish[size] if c > size else jnp.asarray(np.inf, finish.dtype)
    if bounded and c > size:   # one tie group over all candidates: order the whole group by node id
        def exact(_):
            order = jnp.lexsort((state.slot_node, state.finish))[:take].astype(jnp.int32)
            return order, state.finish[order]

        slots, finish = jax.lax.cond(finish[0] == beyond, exact, lambda _: (slots, finish), None)
    order = jnp.lexsort((state.slot_node[slots], finish))
    slots, finish = slots[order], finish[order]
    exact_ties = jnp.asarray(not bounded) | (finish[0] == beyond)
    pad = size - min(size, c)
    if pad:
        slots = jnp.concatenate([slots, jnp.zeros((pad,), slots.dtype)])
        finish = jnp.concatenate([finish, jnp.full((pad,), np.inf, finish.dtype)])
    return slots[:size], finish[:size], beyond, exact_ties


def schedule_window(run_key, first_tick, ticks_left, state: EventState, online_state, clock, profiles,
                    availability, hparams, *, window: int, cohort: int, bounded: bool, steps, batch_size,
                    payload, jitter, trace):
    """Schedule up to ``window`` arrivals (at most ``ticks_left`` ticks), starting at global tick
    ``first_tick``; tick t's availability key is ``stream_key(fold_in(run_key, t), "tick_availability")``
    (``edgejax.core.streams``: ``fold_in(fold_in(run_key, t), 4)``).

    ``steps [N]``: each node's local steps; ``payload``: the algorithm's ``Payload``.  Returns
    ``(Window, new EventState, online_state, clock)``.  A slot restarts at most once per window
    (its new job cannot end inside it), so the jobs started are ``restart_slot``'s finish times.
    """
    b, k = window, cohort
    c = state.finish.shape[0]
    dtype = state.finish.dtype
    cand_slot, cand_finish, beyond, exact_ties = _candidates(state, b, bounded)
    cand_finish = jnp.concatenate([cand_finish, jnp.full((k,), np.inf, dtype)])
    cand_slot = jnp.concatenate([cand_slot, jnp.zeros((k,), jnp.int32)])
    inf = jnp.asarray(np.inf, dtype)
    window0 = Window(
        n_events=jnp.zeros((), jnp.int32), n_ticks=jnp.zeros((), jnp.int32), n_restarts=jnp.zeros((), jnp.int32),
        slot=jnp.zeros((b + k,), jnp.int32), node=jnp.zeros((b + k,), jnp.int32), job=jnp.zeros((b + k,), jnp.int32),
        tick=jnp.zeros((b + k,), jnp.int32), position=jnp.zeros((b + k,), jnp.int32),
        time=jnp.zeros((b + 1,), dtype), elapsed_s=jnp.zeros((b + 1,), dtype), energy_j=jnp.zeros((b + 1,), dtype),
        events_end=jnp.zeros((b + 1,), jnp.int32), restarts_end=jnp.zeros((b + 1,), jnp.int32),
        restart_slot=jnp.zeros((c,), jnp.int32), restart_node=jnp.zeros((c,), jnp.int32),
        restart_job=jnp.zeros((c,), jnp.int32))

    def next_tick(carry):
        """``(time, arrivals, whether the tick can be scheduled in this window)``."""
        st, _, clk, ptr, horizon, win, *_ = carry
        t = cand_finish[ptr]
        group = jax.lax.dynamic_slice(cand_finish, (ptr,), (k,)) == t
        arrivals = jnp.sum(group & jnp.isfinite(t)).astype(jnp.int32)
        nothing_runs = ~jnp.isfinite(t) & ~jnp.isfinite(horizon) & ~jnp.isfinite(beyond)
        full_group = exact_ties & (ptr + k <= b) & (jnp.sum(group) == k)
        ok = jnp.where(nothing_runs, True, jnp.isfinite(t) & (t < horizon) & ((t < beyond) | full_group))
        ok = ok & (win.n_events + k <= b) & (win.n_ticks < b) & (win.n_ticks < ticks_left)
        return jnp.where(nothing_runs, clk, t), arrivals, ok

    def cond(carry):
        return next_tick(carry)[2]

    def body(carry):
        st, online, clk, ptr, horizon, win = carry
        t, a, _ = next_tick(carry)
        tick_key = jax.random.fold_in(run_key, first_tick + win.n_ticks)
        j = jnp.arange(k)
        valid = j < a
        slots = jax.lax.dynamic_slice(cand_slot, (ptr,), (k,))
        nodes = st.slot_node[slots]
        e0 = win.n_events
        win = win._replace(
            slot=jax.lax.dynamic_update_slice(win.slot, slots, (e0,)),
            node=jax.lax.dynamic_update_slice(win.node, nodes, (e0,)),
            job=jax.lax.dynamic_update_slice(win.job, st.slot_job[slots], (e0,)),
            tick=jax.lax.dynamic_update_slice(win.tick, jnp.full((k,), win.n_ticks, jnp.int32), (e0,)),
            position=jax.lax.dynamic_update_slice(win.position, j.astype(jnp.int32), (e0,)))
        st = st._replace(finish=st.finish.at[jnp.where(valid, slots, c)].set(inf, mode="drop"),
                         pending=jax.lax.dynamic_update_slice(st.pending, slots, (st.n_pending,)),
                         n_pending=st.n_pending + a)
        if bounded:
            st = st._replace(idle=jax.lax.dynamic_update_slice(st.idle, nodes, (st.n_idle,)), n_idle=st.n_idle + a)
        sent = payload.take(nodes)
        cost = round_cost(tree_take(profiles, nodes), valid, steps[nodes], batch_size, sent.down, sent.up, sent.compute)
        ptr = ptr + a
        later_ties = (cand_finish[ptr] == t) | (beyond == t)
        if availability.kind == "always":   # every node online: no per-tick O(N) draw
            online_now = None
        else:
            online_now, online = availability.step(stream_key(tick_key, "tick_availability"), online,
                                                   first_tick + win.n_ticks, hparams)
        draw_key = stream_key(jax.random.fold_in(st.key, first_tick + win.n_ticks), "idle_pick")

        def restart(q, inner):
            st, win, kept, horizon = inner
            slot = st.pending[q]
            if bounded:
                pick = jax.random.randint(jax.random.fold_in(draw_key, q), (), 0, jnp.maximum(st.n_idle, 1))
                node = st.idle[pick]
                ok = (st.n_idle > 0) if online_now is None else online_now[node] & (st.n_idle > 0)
                st = st._replace(idle=jnp.where(ok, st.idle.at[pick].set(st.idle[jnp.maximum(st.n_idle - 1, 0)]),
                                                st.idle),
                                 n_idle=st.n_idle - ok.astype(jnp.int32),
                                 slot_node=st.slot_node.at[slot].set(jnp.where(ok, node, st.slot_node[slot])))
            else:
                node = st.slot_node[slot]
                ok = jnp.asarray(True) if online_now is None else online_now[node]
            job = st.job[node]
            finish = t + _job_duration(st, node, job, jitter, trace)
            r = win.n_restarts
            st = st._replace(finish=st.finish.at[slot].set(jnp.where(ok, finish, st.finish[slot])),
                             slot_job=st.slot_job.at[slot].set(jnp.where(ok, job, st.slot_job[slot])),
                             job=st.job.at[node].add(ok.astype(jnp.int32)),
                             pending=st.pending.at[kept].set(slot))
            win = win._replace(restart_slot=win.restart_slot.at[r].set(slot),
                               restart_node=win.restart_node.at[r].set(node),
                               restart_job=win.restart_job.at[r].set(job),
                               n_restarts=r + ok.astype(jnp.int32))
            return st, win, kept + (~ok).astype(jnp.int32), jnp.where(ok, jnp.minimum(horizon, finish), horizon)

        def restarts(args):
            st, win, horizon = args
            st, win, kept, horizon = jax.lax.fori_loop(0, st.n_pending, restart,
                                                        (st, win, jnp.zeros((), jnp.int32), horizon))
            return st._replace(n_pending=kept), win, horizon

        st, win, horizon = jax.lax.cond(later_ties, lambda args: args, restarts, (st, win, horizon))
        tk = win.n_ticks
        win = win._replace(time=win.time.at[tk].set(t), elapsed_s=win.elapsed_s.at[tk].set(t - clk),
                           energy_j=win.energy_j.at[tk].set(jnp.sum(cost.energy_j)),
                           events_end=win.events_end.at[tk].set(e0 + a),
                           restarts_end=win.restarts_end.at[tk].set(win.n_restarts),
                           n_events=e0 + a, n_ticks=tk + 1)
        return st, online, t, ptr, horizon, win

    carry = (state, online_state, clock, jnp.zeros((), jnp.int32), inf, window0)
    state, online_state, clock, _, _, win = jax.lax.while_loop(cond, body, carry)
    return win, state, online_state, clock
