"""Asynchronous training on a parameter server, inside the compiled program.

Semantics (``edgejax.system.events``): every in-flight node downloads the current server
model, computes for its job's duration, pushes its update; the server applies arrivals one
at a time in finish-time order (ties in increasing node id), and all arrivals at a time
are applied before any of those slots starts a new job.  Staleness = server version now -
the version the update was computed from (the freshest update has staleness 0).

Vectorised, a window at a time (``edgejax.core.event_loop``): the event clock schedules a
window of arrivals, every one of which downloaded before the window began; their local
trainings run as one batch through the execution strategy (``per_node``, each from its own
start), and the updates are then applied in order by a cheap loop that advances the server
version and, at the end of each tick, stores the model the restarting slots download.
Those *snapshots* are kept once per tick, shared by all the slots that downloaded them and
freed when the last of those slots arrives, so memory is O(in-flight x model) and a tick
costs O(arrivals x model), whatever the staleness.

FedBuff with a factor form (``shared_base`` chosen, no weight decay) trains each update at
download instead (``edgejax.algorithms.download_training``): the K downloads between two
flushes take one model, so they are trained together from it, and every update waits in its
slot as low-rank factors; the flush is one GEMM per layer over the K buffered factor rows.

State: ``server.extra = AsyncServer(version, starts, rule)``: the ``Snapshots`` (or FedBuff's
``Pending`` updates) and the rule's own state (FedBuff's buffer).

Rules (``x``: server model, ``y_i``: node i's trained model, ``Delta_i = y_i - x_{v_i}``,
``s``: staleness at application):

* ``AsyncSGD`` (Zhang et al. 2016, "Staleness-aware Async-SGD"): ``x <- x + eta c(s) Delta_i``
  with ``c = 1``, or ``1 / max(s, 1)`` when ``staleness_aware``.
* ``FedAsync`` (Xie et al. 2019): ``x <- (1 - a) x + a y_i``, ``a = alpha S(s)``, ``S`` constant,
  polynomial ``(s + 1)^-a`` or hinge (``1`` for ``s <= b``, else ``1 / (a (s - b) + 1)``); the local
  objective adds ``mu/2 ||w - x_{v_i}||^2``.
* ``FedBuff`` (Nguyen et al. 2022): the buffer keeps ``w(s) Delta_i`` with ``w(s) = (1 + s)^-e``
  (traced ``staleness_exponent`` e, the paper's 1/2); every ``buffer_size`` arrivals the buffer
  is flushed, ``x <- x + eta mean(buffer)`` (the paper's mean; ``aggregation="flsim"`` sums
  and normalises the weight at ``s = 1`` as FLSim does, i.e. ``eta K 2^e`` times the mean).
  The buffer holds the K weighted updates themselves, so the flush is one reduction over
  them.  The server version advances once per flush.
* ``DCASGD`` (Zheng et al. 2017): ``g = -Delta_i / lr`` (the gradient, exactly, for one local
  SGD step), ``x <- x - eta (g + lambda g * g * (x - x_{v_i}))``.

Options shared by all rules: ``concurrency`` (how many nodes are in flight; ``None``: all
N), ``window`` (the most arrivals trained in one batch; the results do not depend on it),
``lag_tolerance`` (SAFA-style, Wu et al. 2021: an update staler than the tolerance is
discarded, ``forced_resync``; the node downloads the latest model like every arriving
node), ``buffer_depth`` (a server that keeps only its last D versions: an update computed
from an older one is dropped, ``dropped_stale``; ``None``: nothing is dropped).  Every tick
reports the staleness of the applied updates (``staleness_mean``, ``staleness_max``; a
histogram with ``staleness_bins``), the server version, and, like synchronous rounds, the
simulated time, bytes and energy; ``log_events`` adds each arrival's node, staleness,
downloaded version and the staleness weight applied (``[K]`` per tick, -1 / NaN in unused
slots).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.algorithms.aggregation import Aggregator, Mean, check_aggregator, with_aggregator
from edgejax.algorithms.base import DescribedByFields, EvaluatesServerModel, Payload, Traits
from edgejax.algorithms.download_training import first_downloads, job_inputs, queue_restarts, train_queue
from edgejax.algorithms.server import proximal
from edgejax.core.execution import Needs
from edgejax.core.shared_base import LayerFactors, factor_rows, factor_sum, own_samples, with_samples
from edgejax.core.state import NodeState, ServerState, SimState, tree_take
from edgejax.core.streams import stream_key
from edgejax.core.validation import Range, check_choice
from edgejax.data.host import cohort_data
from edgejax.models.base import num_bytes
from edgejax.system.events import restart_ticks

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")
FEDBUFF_AGGREGATIONS = ("mean", "flsim")


class Snapshots(NamedTuple):
    """The models in-flight jobs started from: ``models [C, ...]`` with the server ``version [C]``
    each was taken at and how many slots still hold it (``holders [C]``), a stack of free
    entries ``free [C]`` (the first ``n_free``), and every slot's entry ``slot_entry [C]``."""

    models: Any
    version: jax.Array
    holders: jax.Array
    free: jax.Array
    n_free: jax.Array
    slot_entry: jax.Array


class AsyncServer(NamedTuple):
    """The server's ``version`` (int32), where the in-flight updates stand (``starts``: the
    ``Snapshots`` they train from at arrival, or FedBuff's ``Pending`` updates trained at
    download) and the rule's own state."""

    version: jax.Array
    starts: Any
    rule: Any = ()


class Trained(NamedTuple):
    """A group of arrivals' local work: their starts, what they send (``params``: the trained
    models, or what the rule's ``local_work`` computes), losses and steps."""

    start: Any
    params: Any
    loss: jax.Array
    steps: jax.Array


def init_snapshots(params, slots: int) -> Snapshots:
    """Every slot holds entry 0, the initial model; the other entries are free."""
    models = jax.tree_util.tree_map(lambda p: jnp.zeros((slots, *p.shape), p.dtype).at[0].set(p), params)
    return Snapshots(models, jnp.zeros((slots,), jnp.int32), jnp.zeros((slots,), jnp.int32).at[0].set(slots),
                     jnp.arange(slots - 1, -1, -1, dtype=jnp.int32), jnp.asarray(slots - 1, jnp.int32),
                     jnp.zeros((slots,), jnp.int32))


def release(snaps: Snapshots, entry) -> Snapshots:
    """One slot stops holding ``entry``; an entry nobody holds goes back on the free stack."""
    holders = snaps.holders[entry] - 1
    free = jnp.where(holders == 0, snaps.free.at[snaps.n_free].set(entry), snaps.free)
    return snaps._replace(holders=snaps.holders.at[entry].set(holders), free=free,
                          n_free=snaps.n_free + (holders == 0).astype(jnp.int32))


def store(snaps: Snapshots, params, version, slots, first, end) -> Snapshots:
    """The slots ``slots[first:end]`` download ``params`` (at ``version``): one new entry."""
    entry = snaps.free[snaps.n_free - 1]
    models = jax.tree_util.tree_map(lambda m, p: m.at[entry].set(p), snaps.models, params)
    slot_entry = jax.lax.fori_loop(first, end, lambda r, se: se.at[slots[r]].set(entry), snaps.slot_entry)
    return Snapshots(models, snaps.version.at[entry].set(version), snaps.holders.at[entry].set(end - first),
                     snaps.free, snaps.n_free - 1, slot_entry)


def train_group_size(ctx, window: int) -> int:
    """How many arrivals are trained together: ``LocalTraining.group_size`` when set, else 4 on
    a CPU (per-node models stream through the cache; measured fastest for an MLP 784-200-200-10)
    and the whole window on an accelerator."""
    size = ctx.local.group_size
    if size == "auto":
        return 4 if jax.default_backend() == "cpu" else window
    return window if size is None else min(size, window)


def train_group(ctx, data, node_rng, win, starts, first, group: int, hparams, local_work) -> Trained:
    """The local work (``local_work``, the rule's) of the window's arrivals ``first .. first + group - 1``
    (those past ``n_events`` get no steps) from ``starts(rows)``: node ``i``'s job ``j`` uses the key
    ``fold_in(node_rng[i], j)``."""
    rows = first + jnp.arange(group)
    safe = jnp.minimum(rows, win.node.shape[0] - 1)
    ids = win.node[safe]
    keys, budget = job_inputs(ctx, data.train, node_rng, ids, win.job[safe], rows < win.n_events)
    start = starts(safe)
    sent, loss, steps = local_work(ctx, start, cohort_data(data.train, ids, full=False), keys, budget, hparams)
    return Trained(start, sent, loss, steps)


def arrival_samples(ctx, train, nodes, dtype):
    """The nodes' own samples as first-layer inputs ``[K, M, d_in]`` (a sample-space layer's ``a``)."""
    return own_samples(cohort_data(train, nodes, full=False), ctx.model.layers[0].d_in, dtype)


def ticks_with_arrivals(win):
    """How many of the window's first ticks have arrivals (the rest only end the window)."""
    return jnp.where(win.n_events > 0, win.tick[jnp.maximum(win.n_events - 1, 0)] + 1, 0)


def train_locally(ctx, start, cohort, keys, budget, hparams):
    """Arrivals' local work by default: their trained models through the execution strategy;
    ``(sent, loss [G], steps [G])``."""
    result = ctx.execution.train(start, cohort, keys, budget, hparams)
    return result.params, result.loss, result.steps


def run_window(ctx, data, node_rng, win, starts, hparams, group: int, apply_event, tick_end, carry,
               local_work=train_locally):
    """The window's arrivals in order: ``carry = apply_event(e, trained_e, carry)`` for each,
    ``carry = tick_end(t, carry)`` after the last arrival of each tick (and for the ticks
    without arrivals, which only end a window).  Arrivals are trained ``group`` at a time,
    just before the first of the group is applied, from ``starts(carry)(rows)`` (no arrival's
    start changes before it is applied).  Returns the carry and every arrival's loss and steps."""
    events = win.node.shape[0]

    def one_group(g, c):
        carry, loss, steps = c
        first = g * group
        trained = train_group(ctx, data, node_rng, win, starts(carry), first, group, hparams, local_work)

        def one_event(e, c):
            carry, loss, steps = c
            r = e - first
            carry = apply_event(e, jax.tree_util.tree_map(lambda a: a[r], trained), carry)
            tick = win.tick[e]
            carry = jax.lax.cond(e + 1 == win.events_end[tick], lambda c: tick_end(tick, c), lambda c: c, carry)
            return carry, loss.at[e].set(trained.loss[r]), steps.at[e].set(trained.steps[r])

        return jax.lax.fori_loop(first, jnp.minimum(first + group, win.n_events), one_event, (carry, loss, steps))

    init = (carry, jnp.zeros((events,), jnp.result_type(float)), jnp.zeros((events,), jnp.result_type(float)))
    carry, loss, steps = jax.lax.fori_loop(0, (win.n_events + group - 1) // group, one_group, init)
    carry = jax.lax.fori_loop(ticks_with_arrivals(win), win.n_ticks, tick_end, carry)
    return carry, loss, steps


def tick_sum(values, win, size):
    """Per-tick sums of per-arrival ``values`` (arrivals past ``n_events`` ignored)."""
    valid = jnp.arange(values.shape[0]) < win.n_events
    return jax.ops.segment_sum(jnp.where(valid, values, 0), jnp.where(valid, win.tick, size), num_segments=size)


def tick_slots(values, win, size, k, fill):
    """Per-tick ``[size, K]`` table of per-arrival ``values`` at (tick, position); ``fill`` elsewhere."""
    valid = jnp.arange(values.shape[0]) < win.n_events
    table = jnp.full((size, k), fill, values.dtype)
    return table.at[jnp.where(valid, win.tick, size), win.position].set(values, mode="drop")


def tick_restart_sum(values, win, size):
    """Per-tick sums of per-restart ``values``."""
    r = jnp.arange(values.shape[0])
    tick = restart_ticks(win, r)
    valid = r < win.n_restarts
    return jax.ops.segment_sum(jnp.where(valid, values, 0), jnp.where(valid, tick, size), num_segments=size)


def check_event_options(concurrency, window) -> None:
    """``concurrency`` is None or a positive integer, ``window`` a positive integer (every
    asynchronous algorithm's options)."""
    if concurrency is not None and (not isinstance(concurrency, (int, np.integer)) or concurrency < 1):
        raise ValueError(f"concurrency must be None or a positive integer; got {concurrency!r}")
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive integer; got {window!r}")


def check_concurrency(concurrency, num_nodes: int) -> None:
    """No more nodes in flight than there are nodes."""
    if concurrency is not None and concurrency > num_nodes:
        raise ValueError(f"concurrency={concurrency!r} must be in [1, N={num_nodes}] (nodes in flight at once)")


def arrival_metrics(win, counted, loss, steps, staleness, size: int) -> dict:
    """Per-tick ``train_loss`` (NaN in a tick with no ``counted`` arrival), ``participants``,
    ``local_steps``, ``staleness_mean`` and ``staleness_max`` over the ``counted`` arrivals."""
    dtype = loss.dtype
    count = tick_sum(counted.astype(dtype), win, size)
    stale = jnp.where(counted, staleness, 0)
    valid = counted & (jnp.arange(counted.shape[0]) < win.n_events)
    top = jax.ops.segment_max(jnp.where(valid, stale, 0), jnp.where(valid, win.tick, size), num_segments=size)
    return {"train_loss": jnp.where(count > 0, tick_sum(jnp.where(counted, loss, 0), win, size)
                                    / jnp.maximum(count, 1), jnp.nan),
            "participants": count,
            "local_steps": tick_sum(jnp.where(counted, steps, 0).astype(dtype), win, size),
            "staleness_mean": tick_sum(stale.astype(dtype), win, size) / jnp.maximum(count, 1),
            "staleness_max": jnp.maximum(top, 0).astype(dtype)}


def _tree_add_scaled(x, delta, c):
    return jax.tree_util.tree_map(lambda a, d: a + c * d, x, delta)


@dataclasses.dataclass(frozen=True)
class _AsyncServerAlgorithm(DescribedByFields, EvaluatesServerModel):
    """Shared machinery: snapshots, the window's application loop, the metrics (module docstring)."""

    concurrency: int | None = None
    window: int = 64
    lag_tolerance: int | None = None
    buffer_depth: int | None = None
    staleness_bins: int = 0
    log_events: bool = False

    def __post_init__(self):
        check_event_options(self.concurrency, self.window)
        if self.buffer_depth is not None and (not isinstance(self.buffer_depth, (int, np.integer))
                                              or self.buffer_depth < 1):
            raise ValueError(f"buffer_depth must be None or a positive integer; got {self.buffer_depth!r}")
        if self.lag_tolerance is not None and (not isinstance(self.lag_tolerance, int) or self.lag_tolerance < 0):
            raise ValueError(f"lag_tolerance must be None or a non-negative integer; got {self.lag_tolerance!r}")

    # ----- protocol --------------------------------------------------------------------------
    def terms(self) -> tuple:
        return ()

    def traits(self) -> Traits:
        """Every arrival trains from its own (stale) start; the rule reads each trained model."""
        return Traits(asynchronous=True, needs=Needs(terms=self.terms(), start="own", output="models",
                                                    factor_starts=True), ranges=self.ranges())

    def ranges(self) -> tuple:
        """The rule's own hyper-parameter ranges (``Traits.ranges``)."""
        return ()

    def payload(self, params, num_nodes: int) -> Payload:
        """One model down at each download, one update up at each arrival."""
        return Payload(num_bytes(params), num_bytes(params))

    def slots(self, num_nodes: int) -> int:
        """Nodes in flight at once."""
        return num_nodes if self.concurrency is None else self.concurrency

    def check_nodes(self, num_nodes: int) -> None:
        """The options against N, when the simulation is built."""
        check_concurrency(self.concurrency, num_nodes)

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        server = AsyncServer(jnp.zeros((), jnp.int32), init_snapshots(global_params, self.slots(node_rng.shape[0])),
                             self.init_rule(global_params))
        return NodeState(rng=node_rng), ServerState(global_params, (), server)

    def init_rule(self, params):
        return ()

    def local_work(self, ctx, start, cohort, keys, budget, hparams):
        """What the arrivals send, computed from their downloaded ``start [G, ...]`` (a hook):
        ``train_locally`` (their trained models); ``(sent, loss [G], steps [G])``."""
        return train_locally(ctx, start, cohort, keys, budget, hparams)

    def start_downloads(self, ctx, server: ServerState, events, train, hparams) -> ServerState:
        """The downloads at time 0, once the event clock has started (``events``); the arrival-time
        training needs nothing more."""
        return server

    def admits(self, staleness):
        """``(fresh, applies)``: the update is not older than the kept versions (``buffer_depth``)
        and, if fresh, within ``lag_tolerance`` (else the node only re-syncs)."""
        fresh = jnp.asarray(True) if self.buffer_depth is None else staleness < self.buffer_depth
        return fresh, fresh if self.lag_tolerance is None else fresh & (staleness <= self.lag_tolerance)

    # ----- the rule: apply one update ----------------------------------------------------------
    def apply(self, x, y, start, staleness, rule, key, hparams):
        """``(new x, whether the version advances, new rule state, staleness weight)`` for one arrival;
        ``key`` is the server step's (``flush_key``)."""
        raise NotImplementedError

    # ----- one window ----------------------------------------------------------------------------
    def window_step(self, ctx, state: SimState, data, win, hparams):
        """Train the window's arrivals, apply them in order; ``(state, per-tick metrics)``."""
        server = state.server.extra
        entries = server.starts.slot_entry[win.slot]
        downloaded = server.starts.version[entries]
        events, ticks = win.node.shape[0], win.time.shape[0]
        dtype = jnp.result_type(float)

        def starts(carry):
            return lambda rows: tree_take(carry[3].models, entries[rows])

        def apply_event(e, trained, carry):
            x, version, rule, snaps, out, versions = carry
            staleness = version - downloaded[e]
            fresh, applies = self.admits(staleness)

            def apply(args):
                x, version, rule = args
                new_x, advances, rule, weight = self.apply(x, trained.params, trained.start, staleness, rule,
                                                           flush_key(state.rng, version), hparams)
                return new_x, version + jnp.asarray(advances, jnp.int32), rule, jnp.asarray(weight, dtype)

            x, version, rule, weight = jax.lax.cond(
                applies, apply, lambda args: (*args, jnp.asarray(np.nan, dtype)), (x, version, rule))
            out = {"applied": out["applied"].at[e].set(applies), "fresh": out["fresh"].at[e].set(fresh),
                   "staleness": out["staleness"].at[e].set(staleness), "weight": out["weight"].at[e].set(weight)}
            return x, version, rule, release(snaps, entries[e]), out, versions

        def tick_end(t, carry):   # the slots restarting at the end of tick t download x
            x, version, rule, snaps, out, versions = carry
            r0, r1 = jnp.where(t == 0, 0, win.restarts_end[t - 1]), win.restarts_end[t]
            snaps = jax.lax.cond(r1 > r0, lambda s: store(s, x, version, win.restart_slot, r0, r1), lambda s: s, snaps)
            return x, version, rule, snaps, out, versions.at[t].set(version)

        out0 = {"applied": jnp.zeros((events,), bool), "fresh": jnp.zeros((events,), bool),
                "staleness": jnp.zeros((events,), jnp.int32), "weight": jnp.zeros((events,), dtype)}
        carry = (state.server.params, server.version, server.rule, server.starts, out0,
                 jnp.zeros((ticks,), jnp.int32))
        (x, version, rule, snaps, out, versions), loss, steps = run_window(
            ctx, data, state.nodes.rng, win, starts, hparams, train_group_size(ctx, self.window), apply_event,
            tick_end, carry, self.local_work)
        new_state = state._replace(server=state.server._replace(params=x, extra=AsyncServer(version, snaps, rule)))
        return new_state, self._metrics(ctx, win, loss, steps, out, downloaded, versions)

    def _metrics(self, ctx, win, loss, steps, out, downloaded, versions):
        size, dtype = win.time.shape[0], loss.dtype
        applied = out["applied"]
        events = applied.shape[0]
        arrived = jnp.arange(events) < win.n_events
        up = jnp.broadcast_to(jnp.asarray(ctx.payload.take(win.node).up, dtype), (events,))
        down = jnp.broadcast_to(jnp.asarray(ctx.payload.take(win.restart_node).down, dtype), win.restart_node.shape)
        metrics = {
            **arrival_metrics(win, applied, loss, steps, out["staleness"], size),
            "bytes_up": tick_sum(up, win, size),
            "bytes_down": tick_restart_sum(down, win, size),
            "dropped_stale": tick_sum((arrived & ~out["fresh"]).astype(dtype), win, size),
            "forced_resync": tick_sum((out["fresh"] & ~applied).astype(dtype), win, size),
            "server_version": versions.astype(dtype),
        }
        for b in range(self.staleness_bins):
            top = out["staleness"] >= b if b == self.staleness_bins - 1 else out["staleness"] == b
            metrics[f"staleness_hist_{b}"] = tick_sum((applied & top).astype(dtype), win, size)
        if self.log_events:
            k = ctx.cohort_size
            metrics |= {"event_node": tick_slots(jnp.where(applied, win.node, -1), win, size, k, -1),
                        "event_staleness": tick_slots(jnp.where(applied, out["staleness"], -1), win, size, k, -1),
                        "event_download": tick_slots(jnp.where(arrived, downloaded, -1), win, size, k, -1),
                        "event_weight": tick_slots(out["weight"], win, size, k, jnp.nan)}
        return metrics


def staleness_weight(kind: str, staleness, hparams) -> jax.Array:
    """FedAsync's ``S(t - tau)``: ``constant`` 1; ``polynomial`` ``(s + 1)^-a`` (traced
    ``staleness_a``); ``hinge`` 1 for ``s <= b``, else ``1 / (a (s - b) + 1)`` (traced
    ``staleness_a``, ``staleness_b``)."""
    s = jnp.asarray(staleness, jnp.result_type(float))
    if kind == "constant":
        return jnp.ones_like(s)
    a = hparams["staleness_a"]
    if kind == "polynomial":
        return (s + 1) ** (-a)
    return jnp.where(s <= hparams["staleness_b"], 1.0, 1.0 / (a * (s - hparams["staleness_b"]) + 1))


@dataclasses.dataclass(frozen=True)
class AsyncSGD(_AsyncServerAlgorithm):
    """Asynchronous SGD on a parameter server; ``staleness_aware`` divides the step by
    ``max(s, 1)`` (Zhang et al. 2016).  Traced ``server_lr``."""

    staleness_aware: bool = False

    @property
    def name(self) -> str:
        return "async_sgd"

    def default_hparams(self) -> dict[str, float]:
        return {"server_lr": 1.0}

    def apply(self, x, y, start, staleness, rule, key, hparams):
        c = jnp.asarray(hparams["server_lr"], jnp.result_type(float))
        if self.staleness_aware:
            c = c / jnp.maximum(staleness, 1).astype(jnp.result_type(float))
        return _tree_add_scaled(x, jax.tree_util.tree_map(jnp.subtract, y, start), c), True, rule, c


@dataclasses.dataclass(frozen=True)
class FedAsync(_AsyncServerAlgorithm):
    """FedAsync (Xie et al. 2019, "Asynchronous Federated Optimization"): ``x <- (1 - a) x + a y``
    with ``a = alpha S(s + staleness_offset)``.  Convention: the default offset 0 gives the
    freshest update ``S(0)``; Xie et al. index so that the freshest has ``t - tau = 1``
    (``staleness_offset=1``).  Traced ``alpha`` (the paper's mixing weight), ``mu`` (the
    proximal term toward the downloaded model), ``staleness_a``, ``staleness_b``."""

    staleness: str = "polynomial"
    staleness_offset: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_choice("staleness function", self.staleness, STALENESS_FUNCTIONS)
        if not isinstance(self.staleness_offset, (int, np.integer)) or self.staleness_offset < 0:
            raise ValueError(f"staleness_offset must be a non-negative integer (0: the freshest update has "
                             f"S(0); 1: Xie et al.'s indexing); got {self.staleness_offset!r}")

    @property
    def name(self) -> str:
        return f"fedasync_{self.staleness}"

    def terms(self) -> tuple:
        return (proximal("mu"),)

    def ranges(self) -> tuple:
        """The mixing weight ``alpha`` is a convex weight: (0, 1]."""
        return (("alpha", Range(0.0, 1.0, closed_low=False)),)

    def default_hparams(self) -> dict[str, float]:
        hp = {"alpha": 0.6, "mu": 0.0}
        if self.staleness != "constant":
            hp["staleness_a"] = 0.5
        if self.staleness == "hinge":
            hp |= {"staleness_a": 10.0, "staleness_b": 4.0}
        return hp

    def apply(self, x, y, start, staleness, rule, key, hparams):
        a = hparams["alpha"] * staleness_weight(self.staleness, staleness + self.staleness_offset, hparams)
        return jax.tree_util.tree_map(lambda u, v: (1 - a) * u + a * v, x, y), True, rule, a


class Buffer(NamedTuple):
    """FedBuff's server buffer: the ``buffer_size`` weighted updates ``rows [K, ...]``, the
    first ``count`` of them filled, and the aggregator's state."""

    rows: Any
    count: jax.Array
    aggregator: Any = ()


def flush_key(run_key, version):
    """The aggregator's key for the server step that makes version ``version + 1``: ``version``
    folded into the run key's ``flush_aggregator`` stream."""
    return jax.random.fold_in(stream_key(run_key, "flush_aggregator"), version)


@dataclasses.dataclass(frozen=True)
class FedBuff(_AsyncServerAlgorithm):
    """FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous
    Aggregation"): see the module docstring.  Traced ``server_lr`` and ``staleness_exponent``.
    ``aggregator`` combines the K buffered rows at a flush (``edgejax.algorithms.aggregation``;
    ``Mean()``, the paper's mean, by default; e.g. ``CoordinateMedian()``: ``x + eta median``),
    with the key ``flush_key(run key, version)``; its metrics are not reported per tick."""

    buffer_size: int = 10
    aggregation: str = "mean"
    aggregator: Aggregator = Mean()

    def __post_init__(self):
        super().__post_init__()
        check_aggregator(self.aggregator)
        check_choice("aggregation", self.aggregation, FEDBUFF_AGGREGATIONS)
        if not isinstance(self.buffer_size, (int, np.integer)) or self.buffer_size < 1:
            raise ValueError(f"buffer_size must be a positive integer; got {self.buffer_size!r}")

    @property
    def name(self) -> str:
        return f"fedbuff_{self.buffer_size}" + with_aggregator(self.aggregator)

    def default_hparams(self) -> dict[str, float]:
        return {"server_lr": 1.0, "staleness_exponent": 0.5, **self.aggregator.default_hparams()}

    def check_nodes(self, num_nodes: int) -> None:
        """The options against N; a buffer larger than the nodes in flight is allowed but said."""
        super().check_nodes(num_nodes)
        slots = self.slots(num_nodes)
        if self.buffer_size > slots:
            warnings.warn(f"FedBuff(buffer_size={self.buffer_size}) with at most {slots} nodes in flight: every "
                          "flush averages several updates of the same nodes", UserWarning, stacklevel=4)

    def init_rule(self, params):
        rows = jax.tree_util.tree_map(lambda p: jnp.zeros((self.buffer_size, *p.shape), p.dtype), params)
        return Buffer(rows, jnp.zeros((), jnp.int32), self.aggregator.init(params))

    def flush(self, x, total, hparams):
        """The server step from a full buffer whose updates sum to ``total`` (the ``Mean``
        aggregator, fused): ``x + eta total / K`` (the paper's mean; ``flsim``: ``x + eta total``)."""
        scale = hparams["server_lr"] / (self.buffer_size if self.aggregation == "mean" else 1)
        return jax.tree_util.tree_map(lambda a, t: a + scale * t, x, total)

    def flush_rows(self, x, rows, aggregator_state, key, hparams):
        """The server step from the buffer's ``rows [K, ...]`` through the aggregator (weights
        ``1/K``): ``x + eta A(rows)`` (``flsim``: ``x + eta K A(rows)``); the aggregator's new state."""
        k, dtype = self.buffer_size, jnp.result_type(float)
        aggregate, aggregator_state, _ = self.aggregator.update(rows, jnp.full((k,), 1.0 / k, dtype),
                                                                jnp.ones((k,), bool), aggregator_state, key, hparams)
        scale = hparams["server_lr"] * (1 if self.aggregation == "mean" else k)
        return jax.tree_util.tree_map(lambda a, t: a + scale * t, x, aggregate), aggregator_state

    def weight(self, staleness, hparams):
        """The staleness weight ``(1 + s)^-e`` (``flsim``: times ``2^e``)."""
        exponent = hparams["staleness_exponent"]
        weight = (1.0 + staleness.astype(jnp.result_type(float))) ** -exponent
        return weight * 2.0 ** exponent if self.aggregation == "flsim" else weight

    def apply(self, x, y, start, staleness, rule, key, hparams):
        weight = self.weight(staleness, hparams)
        rows = jax.tree_util.tree_map(lambda r, a, b: r.at[rule.count].set(weight * (a - b)), rule.rows, y, start)
        count = rule.count + 1
        full = count == self.buffer_size
        if self.aggregator.fusable:
            total = jax.tree_util.tree_map(lambda r: jnp.sum(r, axis=0), rows)
            x, state = jax.lax.cond(full, lambda a: self.flush(a, total, hparams), lambda a: a, x), rule.aggregator
        else:
            x, state = jax.lax.cond(full, lambda a: self.flush_rows(a[0], rows, a[1], key, hparams), lambda a: a,
                                    (x, rule.aggregator))
        return x, full, Buffer(rows, jnp.where(full, 0, count), state), weight

    def _decide_all(self, win, count0, version, downloaded, hparams):
        """``window_step``'s decisions when every arrival applies (no ``buffer_depth`` nor
        ``lag_tolerance``): arrival e finds ``count0 + e`` updates buffered before it, so its
        staleness is ``version + (count0 + e) // K - downloaded``, and tick t ends with
        ``(count0 + events_end[t]) // K`` flushes; the same values as the loop's, at once."""
        k, events = self.buffer_size, win.node.shape[0]
        e = jnp.arange(events, dtype=jnp.int32)
        arrived = e < win.n_events
        staleness = jnp.where(arrived, version + (count0 + e) // k - downloaded, 0)
        out = {"applied": arrived, "fresh": arrived, "staleness": staleness,
               "weight": jnp.where(arrived, self.weight(staleness, hparams), 0.0), "row": jnp.where(arrived, e, 0)}
        with_arrivals = jnp.arange(win.time.shape[0]) < ticks_with_arrivals(win)
        return win.n_events, out, jnp.where(with_arrivals, (count0 + win.events_end) // k, 0)

    # ----- updates trained at download (edgejax.algorithms.download_training) ------------------
    def trains_at_download(self, ctx) -> bool:
        """Whether the updates are trained at download and kept as factors: when the execution
        has a factor form (``shared_base`` chosen, no weight decay)."""
        return getattr(ctx.execution, "node_factors", None) is not None

    def _group(self, ctx) -> int:
        """Downloads trained together: the K between two flushes take the same model."""
        return max(1, min(self.buffer_size, self.slots(ctx.num_nodes)))

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        if not self.trains_at_download(ctx):
            return super().init(ctx, global_params, node_rng, hparams)
        server = AsyncServer(jnp.zeros((), jnp.int32), (), ())   # filled by start_downloads
        return NodeState(rng=node_rng), ServerState(global_params, (), server)

    def start_downloads(self, ctx, server: ServerState, events, train, hparams) -> ServerState:
        """With updates trained at download: every slot's first download queued, and the buffer
        holding K updates as factors."""
        if not self.trains_at_download(ctx):
            return server
        window = max(self.window, ctx.cohort_size)
        models = (window + self.buffer_size - 1) // self.buffer_size + 1   # the most flushes in a window, + 1
        pending = first_downloads(ctx, server.params, train, events, self._group(ctx), models, hparams)
        k = self.buffer_size
        dtype = jax.tree_util.tree_leaves(pending.factors)[0].dtype
        samples = jax.eval_shape(lambda: arrival_samples(ctx, train, jnp.zeros((k,), jnp.int32), dtype))
        rows = jax.tree_util.tree_map(lambda f: jnp.zeros((k, *f.shape[1:]), f.dtype),
                                      with_samples(pending.factors, samples))
        return server._replace(extra=AsyncServer(server.extra.version, pending,
                                                 Buffer(rows, jnp.zeros((), jnp.int32),
                                                        self.aggregator.init(server.params))))

    def window_step(self, ctx, state: SimState, data, win, hparams):
        """Arrival-time training (``_AsyncServerAlgorithm``), or: train the queued downloads,
        apply the window's arrivals from their stored factors, queue its downloads.

        Which arrivals apply, their staleness and where the flushes fall depend only on the
        schedule, so they are found first by a loop over scalars; the model work is then one
        GEMM per layer and flush, with the flush's K rows gathered from the buffer carried in
        and the window's applied arrivals, in order."""
        if not self.trains_at_download(ctx):
            return super().window_step(ctx, state, data, win, hparams)
        server, k = state.server.extra, self.buffer_size
        pending = train_queue(ctx, data.train, state.nodes.rng, server.starts, self._group(ctx), hparams)
        downloaded = pending.version[win.slot]
        events, ticks = win.node.shape[0], win.time.shape[0]
        dtype = jnp.result_type(float)
        count0 = server.rule.count

        def decide(e, carry):   # scalars only: which arrivals apply, at which buffer position
            applied, out, tick_flushes = carry
            flushes = (count0 + applied) // k
            staleness = server.version + flushes - downloaded[e]
            fresh, applies = self.admits(staleness)
            out = {"applied": out["applied"].at[e].set(applies), "fresh": out["fresh"].at[e].set(fresh),
                   "staleness": out["staleness"].at[e].set(staleness),
                   "weight": out["weight"].at[e].set(jnp.where(applies, self.weight(staleness, hparams), jnp.nan)),
                   "row": out["row"].at[applied].set(jnp.where(applies, e, out["row"][applied]))}
            applied = applied + applies.astype(jnp.int32)
            return applied, out, tick_flushes.at[win.tick[e]].set((count0 + applied) // k)

        out0 = {"applied": jnp.zeros((events,), bool), "fresh": jnp.zeros((events,), bool),
                "staleness": jnp.zeros((events,), jnp.int32), "weight": jnp.zeros((events,), dtype),
                "row": jnp.zeros((events,), jnp.int32)}
        if self.buffer_depth is None and self.lag_tolerance is None:   # every arrival applies: no loop needed
            applied, out, tick_flushes = self._decide_all(win, count0, server.version, downloaded, hparams)
        else:
            applied, out, tick_flushes = jax.lax.fori_loop(
                0, win.n_events, decide, (jnp.zeros((), jnp.int32), out0, jnp.zeros((ticks,), jnp.int32)))
        total = count0 + applied
        n_flushes = total // k

        def rows_at(positions):   # buffer positions: the rows carried in, then the window's arrivals
            carried = positions < count0
            e = out["row"][jnp.clip(positions - count0, 0, events - 1)]
            slot, weight = win.slot[e], out["weight"][e]
            old = jnp.clip(positions, 0, k - 1)
            arrived = {name: f._replace(a=f.a[slot]) if f.a is not None else f for name, f in pending.factors.items()}
            if any(f.a is None for f in arrived.values()):   # sample-space inputs: the arrivals' own samples
                dtype = jax.tree_util.tree_leaves(pending.factors)[0].dtype
                arrived = with_samples(arrived, arrival_samples(ctx, data.train, win.node[e], dtype))
            return {name: LayerFactors(
                jnp.where(carried[:, None, None], buf.a[old], arrived[name].a),
                jnp.where(carried[:, None, None], buf.g[old], weight[:, None, None] * pending.factors[name].g[slot]))
                for name, buf in server.rule.rows.items()}

        def flush(f, carry):
            x, models, aggregator_state = carry
            factors = rows_at(f * k + jnp.arange(k))
            if self.aggregator.fusable:
                x = self.flush(x, factor_sum(factors), hparams)
            else:
                x, aggregator_state = self.flush_rows(x, factor_rows(factors), aggregator_state,
                                                      flush_key(state.rng, server.version + f), hparams)
            return x, jax.tree_util.tree_map(lambda m, p: m.at[f + 1].set(p), models, x), aggregator_state

        models = jax.tree_util.tree_map(lambda m, p: m.at[0].set(p), pending.models, state.server.params)
        x, models, aggregator_state = jax.lax.fori_loop(0, n_flushes, flush,
                                                        (state.server.params, models, server.rule.aggregator))
        buffer = Buffer(rows_at(n_flushes * k + jnp.arange(k)), total - n_flushes * k, aggregator_state)
        empty = jnp.arange(ticks) >= ticks_with_arrivals(win)
        tick_flushes = jnp.where(empty, n_flushes, tick_flushes)   # ticks without arrivals only end a window
        versions = server.version + tick_flushes
        pending = queue_restarts(pending._replace(models=models), win, tick_flushes, versions)
        version = server.version + n_flushes
        new_state = state._replace(server=state.server._replace(params=x, extra=AsyncServer(version, pending, buffer)))
        loss, steps = pending.loss[win.slot], pending.steps[win.slot]
        return new_state, self._metrics(ctx, win, loss, steps, out, downloaded, versions)


@dataclasses.dataclass(frozen=True)
class DCASGD(_AsyncServerAlgorithm):
    """DC-ASGD (Zheng et al. 2017, "Asynchronous SGD with Delay Compensation"), the constant
    ``lambda`` variant (traced ``dc_lambda``) with server step ``server_lr``.  The gradient is
    recovered from the update as ``g = (x_{v_i} - y_i) / client_lr``, exact for one local SGD
    step (``LocalTraining(steps=1, optimizer="sgd")``); with more steps it compensates the
    accumulated update (``ExactDCASGD``, ``edgejax.algorithms.delay_compensation``, sends the
    gradient itself, exact for any schedule).  (It has no staleness weight: ``event_weight`` is 1.)"""

    @property
    def name(self) -> str:
        return "dcasgd"

    def default_hparams(self) -> dict[str, float]:
        return {"server_lr": 0.1, "dc_lambda": 0.04}

    def apply(self, x, y, start, staleness, rule, key, hparams):
        lr, lam = hparams["server_lr"], hparams["dc_lambda"]

        def step(w, yi, w_bak):
            g = (w_bak - yi) / hparams["client_lr"]
            return w - lr * (g + lam * g * g * (w - w_bak))

        return jax.tree_util.tree_map(step, x, y, start), True, rule, 1.0
