"""The event clock of asynchronous training: who arrives next, who downloads, how long they compute.

The meaning simulated (and checked against a plain sequential event loop in the tests):
every node repeatedly downloads the current server model, computes for a duration from the
system model (download + compute + upload under its ``DeviceProfiles``, optionally with
mean-one lognormal jitter), and pushes its update.  The server applies arrivals one at a
time in finish-time order, equal finish times in increasing node id, and all arrivals at a
time T are applied before any of those nodes downloads again.

Vectorised: one *tick* takes the next arrival time ``T`` (the earliest ``busy_until`` of
the nodes that are computing), and up to ``K`` (the static cohort size) of the nodes that
finish at ``T``, in id order.  Nodes that have arrived wait; when no computing node is left
with a finish time ``<= T`` every waiting node downloads (restarts) at ``T``, so ties beyond
``K`` spill into the next tick without breaking the meaning.  A node that is offline when
it would restart stays waiting and is retried every tick.  All of this is ``[N]`` masks and
one ``top_k`` (equal values in increasing index): jittable, no host round-trip.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from edgejax.system.clock import node_times
from edgejax.system.profiles import DeviceProfiles


class Arrivals(NamedTuple):
    """One tick: ``nodes [K]`` (the earliest finishers, sorted by (finish time, id)), ``active [K]``
    (those finishing exactly at ``time``), ``time`` (scalar) and ``restart [N]`` (the nodes that
    download at the end of the tick: the waiting and the arrived, once no computing node is
    left with a finish time ``<= time``)."""

    nodes: jax.Array
    active: jax.Array
    time: jax.Array
    restart: jax.Array


def node_durations(profiles: DeviceProfiles, steps, batch_size, payload, key=None, jitter=0.0) -> jax.Array:
    """Seconds each node needs for one update: ``download + compute + upload`` (``clock.node_times``
    with the ``Payload``'s bytes and compute fraction, scalars or ``[N]``) times
    ``exp(jitter z - jitter^2 / 2)``, ``z ~ N(0, 1)`` (mean one) when ``jitter > 0``."""
    download, compute, upload = node_times(profiles, steps, batch_size, payload.down, payload.up, payload.compute)
    duration = download + compute + upload
    if key is None:
        return duration
    z = jax.random.normal(key, duration.shape, duration.dtype)
    jitter = jnp.asarray(jitter, duration.dtype)
    return duration * jnp.exp(jitter * z - 0.5 * jitter ** 2)


def next_arrivals(busy_until: jax.Array, waiting: jax.Array, clock: jax.Array, k: int) -> Arrivals:
    """The next tick (see the module docstring).  ``busy_until [N]``: finish times of computing
    nodes; ``waiting [N]``: nodes that have arrived and not yet downloaded; ``clock``: now."""
    n = busy_until.shape[0]
    finish = jnp.where(waiting, jnp.inf, busy_until)
    order = jax.lax.top_k(-finish, k)[1].astype(jnp.int32)   # the k earliest; ties in increasing id
    first = finish[order[0]]
    time = jnp.where(jnp.isfinite(first), first, clock)
    active = (finish[order] == first) & jnp.isfinite(first)
    arrived = jnp.zeros((n,), bool).at[order].set(active)
    later_ties = jnp.any(~waiting & ~arrived & (busy_until <= time))
    restart = (waiting | arrived) & ~later_ties
    return Arrivals(order, active.astype(clock.dtype), time, restart)
