"""The simulated clock: time, energy and deadlines of one round, from device profiles.

All functions take profiles already gathered to the cohort (``profiles_k = tree_take(profiles,
nodes)``, every field ``[K]``) and are pure JAX: jittable, vmappable over a sweep axis, with
``steps``, byte counts and ``deadline`` allowed to be traced.

Timing model of one synchronous round for cohort node ``i`` (independent links, no
contention between nodes; each message pays the node's ``latency`` once):

    download_s = bytes_down_i / down_bandwidth + latency
    compute_s  = steps * batch_size * compute_i / speed
    upload_s   = bytes_up_i / up_bandwidth + latency
    total_s    = download_s + compute_s + upload_s
    energy_j   = energy_per_sample * steps * batch_size * compute_i + energy_per_byte * (bytes_down_i + bytes_up_i)

``speed`` (samples per second) and ``energy_per_sample`` describe training the *full* model;
``compute_i`` is the node's training FLOPs per sample as a fraction of the full model's (1 by
default; a HeteroFL node training a quarter-width sub-model has about 1/16), so a node
training a sub-model is charged that fraction of the full model's compute time and energy.
The byte counts and ``compute_i`` come from the algorithm's ``Payload``: scalars (every node
alike) or one value per node (``Payload.take`` gathers the cohort's).  ``compute_i`` is a
general hook: whatever scales a node's per-sample compute time (a sub-model, a node that
runs only a stage of a pipeline-parallel model) enters here.  With the defaults (scalar
bytes, ``compute = 1``) the numbers are exactly those of ``steps * batch_size / speed``.

and the round's wall-clock is the makespan ``max_i total_s`` over the active nodes (the server
waits for the slowest one it aggregates).  Inactive nodes cost nothing.

``active`` may be bool or float (``> 0`` means active, as in ``RoundPlan.active``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.core.state import default_float
from edgejax.system.profiles import DeviceProfiles

__all__ = ["Payload", "RoundCost", "node_times", "round_cost", "deadline_plan", "POLICIES"]

POLICIES = ("wait_all", "drop_late", "partial")


class Payload(NamedTuple):
    """What one participating node sends (``up``, bytes), receives (``down``, bytes) and
    computes (``compute``: its training FLOPs per sample as a fraction of the full model's;
    it scales compute time and compute energy, see the module docstring) in one round.

    Each field is a scalar (the same for every node) or an array ``[N]`` (node ``i``'s value
    at index ``i``).  The system model plans deadlines and charges the clock with it.
    """

    up: Any
    down: Any
    compute: Any = 1.0

    def take(self, nodes) -> "Payload":
        """The cohort's payload: per-node fields gathered at ``nodes [K]``, scalars unchanged."""
        return Payload(*(v if np.ndim(v) == 0 else jnp.asarray(v)[nodes] for v in self))

    def check(self, num_nodes: int) -> None:
        """Raise ``ValueError`` naming a field that is not a scalar or ``[N]``, not finite,
        negative (bytes) or not positive (``compute``)."""
        for name, value in zip(self._fields, self):
            a = np.asarray(value, dtype=float)
            if a.ndim and a.shape != (num_nodes,):
                raise ValueError(f"Payload.{name} must be a scalar or one value per node [{num_nodes}]; "
                                 f"got shape {a.shape}")
            low = 0.0 if name != "compute" else np.finfo(float).tiny
            bad = np.flatnonzero(~np.isfinite(a.ravel()) | (a.ravel() < low))
            if bad.size:
                where = f"[{bad[0]}]" if a.ndim else ""
                need = "finite and > 0" if name == "compute" else "finite and >= 0"
                raise ValueError(f"Payload.{name}{where} = {float(a.ravel()[bad[0]])!r} must be {need}")


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


def node_times(profiles_k: DeviceProfiles, steps, batch_size, bytes_down, bytes_up, compute_scale=1.0
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(download_s, compute_s, upload_s)``, each ``[K]``, ignoring who is active.

    ``steps``, ``bytes_down``, ``bytes_up`` and ``compute_scale`` (the fraction of the full
    model's training FLOPs per sample) are scalars or ``[K]``; ``batch_size`` a scalar (or ``[K]``).
    """
    download = _f(bytes_down) / profiles_k.down_bandwidth + profiles_k.latency
    compute = _f(steps) * _f(batch_size) * _f(compute_scale) / profiles_k.speed
    upload = _f(bytes_up) / profiles_k.up_bandwidth + profiles_k.latency
    shape = profiles_k.speed.shape
    return (jnp.broadcast_to(download, shape), jnp.broadcast_to(compute, shape),
            jnp.broadcast_to(upload, shape))


def round_cost(profiles_k: DeviceProfiles, active, steps, batch_size, bytes_down, bytes_up,
               compute_scale=1.0) -> RoundCost:
    """Time and energy of the round for the cohort; inactive nodes cost 0 and do not count
    in the makespan.  ``steps`` is what each node actually runs (e.g. ``RoundPlan.step_budget``
    or the steps the local update reports); ``compute_scale`` as in ``node_times``."""
    on = jnp.asarray(active) > 0
    download, compute, upload = node_times(profiles_k, steps, batch_size, bytes_down, bytes_up, compute_scale)
    zero = jnp.zeros((), download.dtype)
    download = jnp.where(on, download, zero)
    compute = jnp.where(on, compute, zero)
    upload = jnp.where(on, upload, zero)
    total = download + compute + upload
    energy = (profiles_k.energy_per_sample * _f(steps) * _f(batch_size) * _f(compute_scale)
              + profiles_k.energy_per_byte * (_f(bytes_down) + _f(bytes_up)))
    energy = jnp.where(on, jnp.broadcast_to(energy, total.shape), zero)
    makespan = jnp.max(total, initial=0.0) if total.size else jnp.zeros((), total.dtype)
    return RoundCost(download_s=download, compute_s=compute, upload_s=upload, total_s=total,
                     makespan_s=makespan, energy_j=energy)


def deadline_plan(policy: str, deadline, profiles_k: DeviceProfiles, active, planned_steps, batch_size,
                  bytes_down, bytes_up, compute_scale=1.0, *, min_steps: int = 0) -> tuple[jax.Array, jax.Array]:
    """Apply a round deadline (traced scalar, seconds) to the cohort: ``(active, step_budget)``.

    ``policy`` (static):

    ``"wait_all"``
        nothing changes; the makespan is the slowest active node's time.
    ``"drop_late"``
        nodes whose full round time (``planned_steps``) exceeds ``deadline`` become inactive
        (FedAvg with stragglers dropped, as in Bonawitz et al. 2019 / Li et al. 2020).
    ``"partial"``
        late nodes stay active with the whole number of steps that fit,
        ``floor((deadline - download_s - upload_s) * speed / (batch_size * compute_scale))`` clipped to
        ``[0, planned_steps]`` (FedProx-style partial work); a node that cannot even finish
        its communication in time (``download_s + upload_s > deadline``) becomes inactive,
        and so does a node left with fewer than ``min_steps`` steps (default 0: a node that
        fits its communication but no step stays active with budget 0 and sends back the
        model it received; pass ``min_steps=1`` to drop it instead).  The floor tolerates a
        few ulps of rounding (``x * (1 + 8 eps)``) so a budget that fits exactly is not lost
        to float error.

    Returns ``active`` in the dtype of the ``active`` given and ``step_budget`` as ``int32
    [K]`` (0 for inactive nodes).  ``planned_steps`` and ``compute_scale`` (as in
    ``node_times``) are scalars or ``[K]``.
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
        download, compute, upload = node_times(profiles_k, planned, batch_size, bytes_down, bytes_up, compute_scale)
        new_on = on & (download + compute + upload <= deadline)
        budget = planned
    else:  # partial
        download, _, upload = node_times(profiles_k, 0.0, batch_size, bytes_down, bytes_up)
        comm = download + upload
        x = (deadline - comm) * profiles_k.speed / (_f(batch_size) * _f(compute_scale))
        eps = jnp.finfo(x.dtype).eps
        fit = jnp.floor(x * (1 + 8 * eps))
        fit = jnp.clip(fit, 0, planned.astype(x.dtype))   # clip first: deadline may be inf
        budget = fit.astype(jnp.int32)
        new_on = on & (comm <= deadline) & (budget >= min_steps)
    budget = jnp.where(new_on, budget, 0).astype(jnp.int32)
    return new_on.astype(active.dtype), budget
