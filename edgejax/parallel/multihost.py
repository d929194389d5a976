"""Several hosts (GPU servers, a TPU pod, or processes on one machine): one simulation.

Every process runs the same script.  ``initialize`` joins the processes into one jax
runtime (``jax.distributed.initialize``); after it ``jax.devices()`` lists every
process's devices and ``edgejax.parallel.node_mesh()`` spans them, so a ``Simulation``
built with that mesh stores each process's share of the nodes on its own devices and
runs every round as one program over all of them::

    # on every host:  python train.py --coordinator host0:1234 --processes 4 --process-id $RANK
    edgejax.parallel.initialize(args.coordinator, args.processes, args.process_id)
    sim = edgejax.Simulation(model, data, algorithm, local, mesh=edgejax.parallel.node_mesh())
    results = sim.run(rounds, out_dir="runs/x" if edgejax.parallel.is_main_process() else None)

(On a TPU pod or under SLURM/Open MPI the three arguments can be left out: jax finds
them.)  ``edgejax run --coordinator HOST:PORT --num-processes P --process-id I`` does the
same from the command line.  Each process builds the same ``FederatedData`` (same files, same seed) and the
simulation places its own rows; a process that holds only its own nodes' data puts
them together with ``global_node_array`` (``jax.make_array_from_process_local_data``).
The host loop runs in every process and gives every process the same results (metrics
are replicated; the final state is gathered to every host); write them from one
process.  Checkpoints and ``resume`` are single-process only.

On the CPU (tests, or CPU-only hosts) cross-process collectives go through gloo.
"""
from __future__ import annotations

import socket
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from edgejax.parallel.nodes import NODES


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids=None, timeout_s: int = 300) -> None:
    """Join this process to the multi-host run (call before any other jax work).

    The arguments are ``jax.distributed.initialize``'s: the coordinator's ``host:port``
    (process 0's), how many processes, and this one's rank; ``None`` lets jax detect them
    (TPU pods, SLURM, Open MPI).  On CPU devices gloo carries the collectives.  The
    address is checked first (``ValueError``: not HOST:PORT, or the host does not resolve);
    a process other than 0 then waits up to ``timeout_s`` seconds for process 0 to listen
    there (``TimeoutError`` naming it), and jax gives every process as long for all to join.
    """
    if num_processes is not None and not (isinstance(num_processes, int) and num_processes >= 1):
        raise ValueError(f"num_processes must be a positive integer; got {num_processes!r}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}); got {process_id!r}")
    if not (isinstance(timeout_s, int) and timeout_s >= 1):
        raise ValueError(f"timeout_s must be a positive integer; got {timeout_s!r}")
    if coordinator_address is not None:
        host, port = _host_port(coordinator_address)
        if process_id:
            _wait_for_coordinator(host, port, process_id, timeout_s)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids=local_device_ids,
                               initialization_timeout=timeout_s)


def _host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``'HOST:PORT'``; ``ValueError`` naming the address when it is not one
    or its host does not resolve."""
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the coordinator address must be HOST:PORT with a port in 1..65535; got {address!r}")
    host = host.strip("[]")
    try:
        socket.getaddrinfo(host, int(port))
    except socket.gaierror as err:
        raise ValueError(f"cannot resolve the coordinator host {host!r} of {address!r}: {err.strerror}") from None
    return host, int(port)


def _wait_for_coordinator(host: str, port: int, process_id: int, timeout_s: int) -> None:
    """Return once process 0 accepts connections at ``host:port``; ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {process_id} waited {timeout_s} s for process 0 (the coordinator) "
                                   f"to listen at {host}:{port}; start process 0 with the same --coordinator, "
                                   "or check the address and the firewall") from None
            time.sleep(0.5)


def is_main_process() -> bool:
    """True in process 0 (the one that should write results)."""
    return jax.process_index() == 0


def global_node_array(local_rows: np.ndarray, mesh: Mesh, num_rows: int) -> jax.Array:
    """One array ``[num_rows, ...]`` split over ``mesh``'s ``nodes`` axis from the rows each
    process holds (its devices' contiguous block of the node axis, in device order);
    ``num_rows`` must be a multiple of the device count (pad with zero-count nodes)."""
    if num_rows % mesh.shape[NODES]:
        raise ValueError(f"num_rows={num_rows} must be a multiple of the {mesh.shape[NODES]} devices of the mesh")
    return jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec(NODES)), local_rows,
                                                  (num_rows, *np.shape(local_rows)[1:]))
