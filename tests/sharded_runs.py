"""Sharded runs against single-device runs, in a process with 8 host CPU devices.

``python tests/sharded_runs.py OUT.json`` sets ``XLA_FLAGS`` to 8 host devices before jax
starts, runs each configuration of ``CASES`` once on one device and once with its node
axis on ``node_mesh()`` over the 8 devices, and writes, per case, the largest absolute
difference of every round metric, every evaluation metric and the final state, and the
sharding of the stored node state (which the test checks is really split).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import edgejax as ej  # noqa: E402
from edgejax.compression import TopK  # noqa: E402

ROUNDS = 6


def _data(n: int):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_data

    sizes = [3 + (i * 7) % 6 for i in range(n)]
    return make_data(sizes, dtype="float32")[0]


def build(name: str, mesh) -> ej.Simulation:
    """The configurations the issue names (N = 100 does not divide 8: padded)."""
    model = ej.models.logistic_regression((5,), 3)
    local = ej.LocalTraining(batch_size=2, steps=2)
    if name == "fedavg":
        return ej.Simulation(model, _data(100), ej.FedAvg(), local, clients_per_round=10, mesh=mesh)
    if name == "fedavg_mlp_full":
        return ej.Simulation(ej.models.mlp((5,), 3, hidden=(8,)), _data(16), ej.FedAvg(server_optimizer="adam"),
                             ej.LocalTraining(batch_size=2, steps=2, execution="per_node"), mesh=mesh)
    if name == "scaffold":
        return ej.Simulation(model, _data(20), ej.SCAFFOLD(), local, clients_per_round=7, mesh=mesh)
    if name == "dpsgd_dense":
        return ej.Simulation(model, _data(12), ej.DPSGD(ej.Topology("ring", representation="dense")), local,
                             mesh=mesh)
    if name == "dpsgd_sparse":
        return ej.Simulation(model, _data(100), ej.DPSGD(ej.Topology("torus", representation="sparse")), local,
                             mesh=mesh)
    if name == "choco":
        return ej.Simulation(model, _data(16), ej.CHOCO(ej.Topology("ring"), compressor=TopK(4)), local, mesh=mesh)
    if name == "fedbuff":
        return ej.Simulation(model, _data(24), ej.FedBuff(buffer_size=3), local, clients_per_round=6, mesh=mesh)
    if name == "stragglers":
        system = ej.SystemModel(availability=ej.Availability("markov", mean_on=3, mean_off=2))
        return ej.Simulation(model, _data(30), ej.get_algorithm("fedprox"), local, clients_per_round=9, system=system, mesh=mesh)
    if name == "fedavg_host":   # clients on the host (edgejax.data.host), the cohort streamed
        from edgejax.data.host import host_federate

        rng = np.random.default_rng(0)
        pool_x, pool_y = rng.integers(0, 256, size=(60, 5)).astype(np.uint8), rng.integers(0, 3, 60).astype(np.int32)
        parts = [rng.choice(60, size=2 + i % 6, replace=False) for i in range(30)]
        data = host_federate(pool_x, pool_y, parts, pool_x[:20], pool_y[:20], 3, scale=1 / 255)
        return ej.Simulation(model, data, ej.FedAvg(), local, clients_per_round=10, mesh=mesh)
    raise ValueError(name)


CASES = ("fedavg", "fedavg_mlp_full", "scaffold", "dpsgd_dense", "dpsgd_sparse", "choco", "fedbuff", "stragglers",
         "fedavg_host")


def _max_diff(a, b) -> float:
    diffs = [float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
    return max(diffs, default=0.0)


def compare(name: str) -> dict:
    mesh = ej.parallel.node_mesh()
    one = build(name, None).run(ROUNDS, eval_every=3, seed=3)
    sharded_sim = build(name, mesh)
    sharded = sharded_sim.run(ROUNDS, eval_every=3, seed=3)
    stored = sharded_sim._jit_init(jax.random.PRNGKey(0), sharded_sim.default_hparams())
    rng_sharding = stored.nodes.rng.sharding
    same_shapes = jax.tree_util.tree_structure(one.final_state) == jax.tree_util.tree_structure(sharded.final_state) and all(
        np.shape(x) == np.shape(y) for x, y in zip(jax.tree_util.tree_leaves(one.final_state),
                                                  jax.tree_util.tree_leaves(sharded.final_state)))
    return {
        "num_nodes": sharded_sim.num_nodes,
        "devices": len(mesh.devices.flat),
        "rounds": _max_diff(one.rounds, sharded.rounds),
        "evals": _max_diff(one.evals, sharded.evals),
        "state": _max_diff(one.final_state, sharded.final_state) if same_shapes else float("inf"),
        "same_state_shapes": bool(same_shapes),
        "node_state_split": bool(len(rng_sharding.device_set) == 8 and not rng_sharding.is_fully_replicated),
        "train_loss_finite": bool(np.all(np.isfinite(one.rounds["train_loss"]))),
    }


def sweep_over_devices() -> dict:
    """A ``vmap`` sweep whose chunks are split over the 8 devices against the ``loop`` sweep."""
    from edgejax.sweep.runner import _points_over_devices

    sim = build("fedavg", None)
    points = {"client_lr": [0.05, 0.1, 0.2, 0.3, 0.4]}
    split = sim.sweep(4, points, seeds=(0, 1), eval_every=2, strategy="vmap", chunk_size=3)
    loop = sim.sweep(4, points, seeds=(0, 1), eval_every=2, strategy="loop")
    placed = _points_over_devices("vmap", 3)
    seeds, _ = placed(np.arange(placed.chunk), {})
    return {"chunk": placed.chunk, "seed_devices": len(seeds.sharding.device_set), "runs": len(split.runs),
            "rounds": _max_diff(split.rounds, loop.rounds), "evals": _max_diff(split.evals, loop.evals)}


if __name__ == "__main__":
    names = sys.argv[2:] or CASES
    out = {name: compare(name) for name in names}
    if not sys.argv[2:]:
        out["sweep"] = sweep_over_devices()
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
