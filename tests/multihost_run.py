"""One process of a two-process run on this machine (CPU, loopback):
``python tests/multihost_run.py PORT PROCESS_ID OUT.json``.  Each process has 2 host CPU
devices, so the node mesh spans 4 devices in 2 processes; process 0 writes the metrics
and the final model.  Without PORT (``- - OUT.json``) it runs the same simulation on one
device in a single process, for comparison."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import edgejax as ej  # noqa: E402


def main(port: str, process_id: str, out: str):
    sharded = port != "-"
    if sharded:
        ej.parallel.initialize(f"localhost:{port}", 2, int(process_id))
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_data

    data = make_data([3 + (i * 5) % 7 for i in range(10)], dtype="float32")[0]
    mesh = ej.parallel.node_mesh() if sharded else None
    sim = ej.Simulation(ej.models.logistic_regression((5,), 3), data, ej.get_algorithm("scaffold"),
                        ej.LocalTraining(batch_size=2, steps=2), clients_per_round=5, mesh=mesh)
    results = sim.run(4, eval_every=2, seed=5)
    if not sharded or ej.parallel.is_main_process():
        Path(out).write_text(json.dumps({
            "devices": jax.device_count(), "processes": jax.process_count(),
            "rounds": {k: np.asarray(v).tolist() for k, v in results.rounds.items()},
            "evals": {k: np.asarray(v).tolist() for k, v in results.evals.items()},
            "server": [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(results.final_state.server.params)],
        }))


if __name__ == "__main__":
    main(*sys.argv[1:4])
