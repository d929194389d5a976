"""A simple estimate of the memory a simulation needs beyond its (already resident) data,
checked against what the device has before anything is compiled.

The estimate adds (sizes from ``jax.eval_shape``, nothing is computed):

- the simulation state, twice (the scan carries the old and the new state);
- under ``per_node`` execution, the models trained at once (the cohort K, or ``group_size``
  nodes per ``lax.map`` step), each with 4 model-sized buffers (weights, gradient and up
  to two optimizer moments);
- the cohort's training data gathered from the padded node data when K < N (every node is
  padded to the largest node's size M, so one large node makes every row large).

Activations and XLA's scratch space are not counted, so this catches gross misfits (a
cohort or padding far too large), not a few per cent.  The limit is the device's
``bytes_limit`` minus what is in use; on a CPU, the host's ``MemAvailable``
(``/proc/meminfo``); where neither is known the check is skipped.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from edgejax.data.host import HostNodeData
from edgejax.models.base import num_bytes

_GIB = 2**30


class InsufficientMemoryError(ValueError, MemoryError):
    """The configuration needs more memory than the device has (a bad configuration, hence also a ``ValueError``)."""


def estimate(sim) -> dict[str, int]:
    """Estimated bytes per cause (see the module docstring); the data already on the device is left out."""
    params = num_bytes(sim.params_shape)
    state = num_bytes(sim.state_shape)
    k, n = sim.cohort_size, sim.num_nodes
    width = sim.local.resolved_group_size(k) or k
    per_node = sim.execution
    train = sim.data.train
    host = isinstance(train, HostNodeData)
    node_bytes = train.node_bytes if host else ((num_bytes(train) // n) if n else 0)
    return {"simulation state": 2 * state,
            "per-node model copies": 4 * params * width if per_node != "shared_base" else 0,
            "gathered cohort data": node_bytes * k if k < n or host else 0}


def available_bytes() -> int | None:
    """Free memory of this process's first device, the host's available RAM on a CPU, else ``None``."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    meminfo = Path("/proc/meminfo")
    if device.platform == "cpu" and meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def check_memory(sim, available: int | None = None) -> None:
    """``InsufficientMemoryError`` naming the causes and the remedies when the estimate exceeds
    ``available`` (default: ``available_bytes()``)."""
    available = available_bytes() if available is None else available
    if available is None:
        return
    parts = estimate(sim)
    need = sum(parts.values())
    if need <= available:
        return
    detail = ", ".join(f"{name} {size / _GIB:.2f} GiB" for name, size in parts.items() if size)
    largest_node = int(np.asarray(sim.data.train.count).max())
    raise InsufficientMemoryError(
        f"this simulation needs about {need / _GIB:.2f} GiB ({detail}) but only {available / _GIB:.2f} GiB are "
        f"available; the cohort is {sim.cohort_size} nodes and every node is padded to the largest node's "
        f"{largest_node} samples. Remedies: LocalTraining(group_size=g) to train g cohort nodes at a time, a "
        f"smaller clients_per_round, execution='shared_base' (dense models trained by SGD), or a partition "
        f"with less size skew")
