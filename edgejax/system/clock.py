"""The simulated clock: time, energy and deadlines of one round, from device profiles.

All functions take profiles already gathered to the cohort (``profiles_k = tree_take(profiles,
nodes)``, every field ``[K]``) and are pure JAX: jittable, vmappable over a sweep axis, with
``steps``, byte counts and ``deadline`` allowed to be traced.

Timing model of one synchronous round for cohort node ``i`` (independent links, no
contention between nodes; each message pays the node's ``latency`` once):

    download_s = bytes_down / down_bandwidth + latency
    compute_s  = steps * batch_size / speed
    upload_s   = bytes_up / up_bandwidth + latency
    total_s    = download_s + compute_s + upload_s
    energy_j   = energy_per_sample * steps * batch_size + energy_per_byte * (bytes_down + bytes_up)

and the round's wall-clock is the makespan ``max_i total_s`` over the active nodes (the server
waits for the slowest one it aggregates).  Inactive nodes cost nothing.

``active`` may be bool or float (``> 0`` means active, as in ``RoundPlan.active``).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from edgejax.core.state import default_float
from edgejax.system.profiles import DeviceProfiles

__all__ = ["RoundCost", "node_times", "round_cost", "deadline_plan", "POLICIES"]

POLICIES = ("wait_all", "drop_late", "partial")


class RoundCost(NamedTuple):
    """Simulated cost of one round; per cohort node ``[K]`` except the scalar makespan."""

    download_s: jax.Array
    compute_s: jax.Array
    upload_s: jax.Array
    total_s: jax.Array
    makespan_s: jax.Array   # scalar: max total_s over active nodes (0 if none)
    energy_j: jax.Array


def _f(x) -> jax.Array:
    return jnp.asarray(x, default_float())


def node_times(profiles_k: DeviceProfiles, steps, batch_size, bytes_down, bytes_up
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(download_s, compute_s, upload_s)``, each ``[K]``, ignoring who is active.

    ``steps``, ``bytes_down``, ``bytes_up`` are scalars or ``[K]``; ``batch_size`` a scalar
    (or ``[K]``).
    """
    download = _f(bytes_down) / profiles_k.down_bandwidth + profiles_k.latency
    compute = _f(steps) * _f(batch_size) / profiles_k.speed
    upload = _f(bytes_up) / profiles_k.up_bandwidth + profiles_k.latency
    shape = profiles_k.speed.shape
    return (jnp.broadcast_to(download, shape), jnp.broadcast_to(compute, shape),
            jnp.broadcast_to(upload, shape))


def round_cost(profiles_k: DeviceProfiles, active, steps, batch_size, bytes_down, bytes_up) -> RoundCost:
    """Time and energy of the round for the cohort; inactive nodes cost 0 and do not count
    in the makespan.  ``steps`` is what each node actually runs (e.g. ``RoundPlan.step_budget``
    or the steps the local update reports)."""
    on = jnp.asarray(active) > 0
    download, compute, upload = node_times(profiles_k, steps, batch_size, bytes_down, bytes_up)
    zero = jnp.zeros((), download.dtype)
    download = jnp.where(on, download, zero)
    compute = jnp.where(on, compute, zero)
    upload = jnp.where(on, upload, zero)
    total = download + compute + upload
    energy = (profiles_k.energy_per_sample * _f(steps) * _f(batch_size)
              + profiles_k.energy_per_byte * (_f(bytes_down) + _f(bytes_up)))
    energy = jnp.where(on, jnp.broadcast_to(energy, total.shape), zero)
    makespan = jnp.max(total, initial=0.0) if total.size else jnp.zeros((), total.dtype)
    return RoundCost(download_s=download, compute_s=compute, upload_s=upload, total_s=total,
                     makespan_s=makespan, energy_j=energy)


def deadline_plan(policy: str, deadline, profiles_k: DeviceProfiles, active, planned_steps, batch_size,
                  bytes_down, bytes_up, *, min_steps: int = 0) -> tuple[jax.Array, jax.Array]:
    """Apply a round deadline (traced scalar, seconds) to the cohort: ``(active, step_budget)``.

    ``policy`` (static):

    ``"wait_all"``
        nothing changes; the makespan is the slowest active node's time.
    ``"drop_late"``
        nodes whose full round time (``planned_steps``) exceeds ``deadline`` become inactive
        (FedAvg with stragglers dropped, as in Bonawitz et al. 2019 / Li et al. 2020).
    ``"partial"``
        late nodes stay active with the whole number of steps that fit,
        ``floor((deadline - download_s - upload_s) * speed / batch_size)`` clipped to
        ``[0, planned_steps]`` (FedProx-style partial work); a node that cannot even finish
        its communication in time (``download_s + upload_s > deadline``) becomes inactive,
        and so does a node left with fewer than ``min_steps`` steps (default 0: a node that
        fits its communication but no step stays active with budget 0 and sends back the
        model it received; pass ``min_steps=1`` to drop it instead).  The floor tolerates a
        few ulps of rounding (``x * (1 + 8 eps)``) so a budget that fits exactly is not lost
        to float error.

    Returns ``active`` in the dtype of the ``active`` given and ``step_budget`` as ``int32
    [K]`` (0 for inactive nodes).  ``planned_steps`` is a scalar or ``[K]``.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown deadline policy {policy!r}; choose one of {list(POLICIES)}")
    active = jnp.asarray(active)
    on = active > 0
    k = profiles_k.speed.shape[0]
    planned = jnp.broadcast_to(jnp.asarray(planned_steps), (k,))
    deadline = _f(deadline)
    if policy == "wait_all":
        new_on = on
        budget = planned
    elif policy == "drop_late":
        download, compute, upload = node_times(profiles_k, planned, batch_size, bytes_down, bytes_up)
        new_on = on & (download + compute + upload <= deadline)
        budget = planned
    else:  # partial
        download, _, upload = node_times(profiles_k, 0.0, batch_size, bytes_down, bytes_up)
        comm = download + upload
        x = (deadline - comm) * profiles_k.speed / _f(batch_size)
        eps = jnp.finfo(x.dtype).eps
        fit = jnp.floor(x * (1 + 8 * eps))
        fit = jnp.clip(fit, 0, planned.astype(x.dtype))   # clip first: deadline may be inf
        budget = fit.astype(jnp.int32)
        new_on = on & (comm <= deadline) & (budget >= min_steps)
    budget = jnp.where(new_on, budget, 0).astype(jnp.int32)
    return new_on.astype(active.dtype), budget
