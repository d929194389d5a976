"""Past one device: the node axis over 1, 2, 4, 8 devices, and clients kept on the host.

1. **Strong and weak scaling** of a cross-device FedAvg round (MLP 64-128-10 on sklearn
   digits, per-node execution, a quarter of the nodes a round, 4 steps of batch 8) and a
   gossip round (D-PSGD on a sparse ring, same model and schedule, every node every
   round), each run with its node axis on ``node_mesh()`` over D host CPU devices
   (``--xla_force_host_platform_device_count=D``, one process per D) next to the same
   simulation without a mesh.  Strong: N fixed; weak: N = ``--nodes-per-device`` x D.
   Every number is ms per round of the compiled chunk (the median of ``--repeats``
   timed chunks of ``--rounds`` rounds, after one warm-up chunk that compiles).
2. **Host-resident clients** (``edgejax.data.host``): cross-device FedAvg with 100
   clients a round, 4 steps of batch 4, each client holding 16 MNIST images (indices
   into the 8,000-image pool of ``../shared/data``'s MNIST test file, uint8; a
   uniform-random pool when the file is absent), for logistic regression and the GEMM
   CNN at each N in ``--host-nodes``: ms per round, the process's peak memory and the
   bytes each client costs (host indices + device state).
3. **Gossip at large N**: D-PSGD on a sparse ring at each N in ``--gossip-nodes``
   (device-resident data, 8 digits samples per node): ms per round and peak memory.

Results go to ``benchmarks/results/scaling-<device>.json`` and ``.md``.  Run::

    python benchmarks/scaling.py              # about 5-10 min on a 2-core CPU
    python benchmarks/scaling.py --quick      # a smoke run
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--worker" in sys.argv:   # XLA_FLAGS must be set before jax starts
    _devices = sys.argv[sys.argv.index("--worker") + 1]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={_devices}"

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import edgejax as ej  # noqa: E402
from common import device_info, finish_report, load_average, report_header  # noqa: E402
from edgejax.data.datasets import default_data_dir, read_idx  # noqa: E402
from edgejax.data.federated import pad_nodes, pad_test  # noqa: E402
from edgejax.data.host import host_federate  # noqa: E402
from edgejax.models.base import num_bytes  # noqa: E402

HERE = Path(__file__).parent


def time_rounds(sim: ej.Simulation, rounds: int, repeats: int) -> float:
    """Median ms per round of the compiled chunk (one warm-up chunk first)."""
    hp = sim.default_hparams()
    state = sim._jit_init(jax.random.PRNGKey(0), hp)
    chunk, data = sim._jit_chunk, sim.stored_data
    state = jax.block_until_ready(chunk(state, data, hp, rounds, rounds))[0]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state = jax.block_until_ready(chunk(state, data, hp, rounds, rounds))[0]
        times.append((time.perf_counter() - start) / rounds * 1e3)
    return statistics.median(times)


def digits_data(nodes: int):
    return ej.federate(ej.data.load_dataset("digits"), nodes, "iid", seed=0)[0]


def build(kind: str, nodes: int, mesh) -> ej.Simulation:
    data = digits_data(nodes)
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(128,))
    local = ej.LocalTraining(batch_size=8, steps=4, execution="per_node", group_size=None)
    if kind == "fedavg":
        return ej.Simulation(model, data, ej.FedAvg(), local, clients_per_round=nodes // 4, mesh=mesh)
    return ej.Simulation(model, data, ej.DPSGD(ej.Topology("ring", representation="sparse")), local, mesh=mesh)


def worker(devices: int, args) -> dict:
    """Strong and weak scaling rows for D = ``devices`` (this process sees D host devices)."""
    mesh = ej.parallel.node_mesh()
    rows = []
    for kind in ("fedavg", "gossip"):
        for regime, nodes in (("strong", args.strong_nodes), ("weak", args.nodes_per_device * devices)):
            row = {"kind": kind, "regime": regime, "devices": devices, "nodes": nodes}
            row["sharded_ms"] = time_rounds(build(kind, nodes, mesh), args.rounds, args.repeats)
            row["one_device_ms"] = time_rounds(build(kind, nodes, None), args.rounds, args.repeats)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return {"rows": rows}


def mnist_pool(rng: np.random.Generator):
    """MNIST test images as uint8 (8,000 train pool, 2,000 test), or a random pool if absent."""
    path = default_data_dir() / "mnist-t10k-images-idx3-ubyte.gz"
    if path.exists():
        x = read_idx(path)[..., None]
        y = read_idx(default_data_dir() / "mnist-t10k-labels-idx1-ubyte.gz").astype(np.int32)
        source = "MNIST t10k (../shared/data)"
    else:
        x = rng.integers(0, 256, size=(10000, 28, 28, 1)).astype(np.uint8)
        y = rng.integers(0, 10, size=10000).astype(np.int32)
        source = "random uint8 pool (MNIST file absent)"
    return x[:8000], y[:8000], x[8000:], y[8000:], source


def host_scale(args) -> dict:
    rng = np.random.default_rng(0)
    pool_x, pool_y, test_x, test_y, source = mnist_pool(rng)
    rows = []
    for model_name in ("logreg", "cnn"):
        for nodes in args.host_nodes:
            parts = rng.integers(0, len(pool_x), size=(nodes, 16), dtype=np.int32)
            data = host_federate(pool_x, pool_y, parts, test_x, test_y, 10, scale=1 / 255, name="mnist-host")
            model = ej.models.get_model(model_name, data.feature_shape, 10)
            sim = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=4, steps=4),
                                clients_per_round=100)
            ms = time_rounds(sim, args.rounds, args.repeats)
            state_bytes = num_bytes(sim.state_shape) - num_bytes(sim.params_shape)   # minus the server model
            rows.append({"model": model_name, "nodes": nodes, "ms_per_round": ms,
                         "host_bytes_per_node": data.train.source.index.nbytes / nodes + 4,
                         "device_state_bytes_per_node": state_bytes / nodes,
                         "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"rows": rows, "pool": source}


def gossip_scale(args) -> dict:
    """D-PSGD on a sparse ring at large N: device-resident data, every node 8 digits images."""
    digits = ej.data.load_dataset("digits")
    rng = np.random.default_rng(0)
    rows = []
    for nodes in args.gossip_nodes:
        parts = list(rng.integers(0, len(digits.x_train), size=(nodes, 8)))
        data = ej.FederatedData(train=pad_nodes(digits.x_train, digits.y_train, parts),
                                local_test=pad_nodes(digits.x_train, digits.y_train, [p[:1] for p in parts]),
                                test=pad_test(digits.x_test, digits.y_test), num_classes=10, name="digits-pool")
        model = ej.models.logistic_regression(data.feature_shape, 10)
        sim = ej.Simulation(model, data, ej.DPSGD(ej.Topology("ring", representation="sparse")),
                            ej.LocalTraining(batch_size=4, steps=2))
        rows.append({"nodes": nodes, "ms_per_round": time_rounds(sim, args.rounds, args.repeats),
                     "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"rows": rows}


def findings(report: dict) -> list[str]:
    """Plain statements computed from the tables above."""
    out = []
    for kind in ("fedavg", "gossip"):
        rows = [r for r in report["scaling"] if r["kind"] == kind]
        ratios = [r["sharded_ms"] / r["one_device_ms"] for r in rows]
        out.append(f"- {kind}: the sharded round took {min(ratios):.2f}x to {max(ratios):.2f}x the one-device round "
                   f"over D = {sorted({r['devices'] for r in rows})} on the same cores.")
    for model in sorted({r["model"] for r in report["host"]["rows"]}):
        rows = [r for r in report["host"]["rows"] if r["model"] == model]
        big = max(rows, key=lambda r: r["nodes"])
        out.append(f"- host-resident clients, {model}: the largest N tried ran: {big['nodes']:,} "
                   f"({big['ms_per_round']:.0f} ms/round); a client costs {big['host_bytes_per_node']:.0f} B on the "
                   f"host and {big['device_state_bytes_per_node']:.0f} B of device state.")
    big = max(report["gossip"]["rows"], key=lambda r: r["nodes"])
    out.append(f"- gossip: D-PSGD on a sparse ring ran at N = {big['nodes']:,} in {big['ms_per_round']:.0f} ms/round.")
    return out


def markdown(report: dict) -> str:
    lines = report_header("scaling", report)
    lines += ["## Node axis over D host CPU devices", "",
              f"The D devices are XLA's forced host devices (`--xla_force_host_platform_device_count=D`): they "
              f"share this machine's {report['device']['host_cpu_count']} cores, so this measures the sharded "
              f"program's overhead (collectives, padding, resharding the gathered cohort), not a speed-up; on a "
              f"real multi-GPU host each device brings its own compute. ms per round (median of "
              f"{report['repeats']} chunks of {report['rounds']} rounds).", "",
              "| round | regime | D | N | mesh over D devices (ms) | no mesh (ms) | ratio |", "|---|---|---|---|---|---|---|"]
    for r in report["scaling"]:
        lines.append(f"| {r['kind']} | {r['regime']} | {r['devices']} | {r['nodes']} | {r['sharded_ms']:.2f} | "
                     f"{r['one_device_ms']:.2f} | {r['sharded_ms'] / r['one_device_ms']:.2f}x |")
    host = report["host"]
    lines += ["", "## Clients kept on the host (edgejax.data.host)", "",
              f"Cross-device FedAvg, 100 clients a round, 4 steps of batch 4, 16 images per client from {host['pool']}; "
              "the cohort's images are gathered on the host and streamed into the compiled round each round.", "",
              "| model | N clients | ms / round | host bytes / client | device state bytes / client | "
              "process peak RSS so far (GiB) |",
              "|---|---|---|---|---|---|"]
    for r in host["rows"]:
        lines.append(f"| {r['model']} | {r['nodes']:,} | {r['ms_per_round']:.1f} | {r['host_bytes_per_node']:.0f} | "
                     f"{r['device_state_bytes_per_node']:.1f} | {r['peak_rss_gib']:.2f} |")
    lines += ["", "## Gossip at large N", "",
              "D-PSGD on a sparse ring (neighbour lists), logistic regression, every node 8 sklearn-digits samples "
              "(device-resident), 2 steps of batch 4, evaluation excluded.", "",
              "| N nodes | ms / round | peak RSS (GiB) |", "|---|---|---|"]
    lines += [f"| {r['nodes']:,} | {r['ms_per_round']:.1f} | {r['peak_rss_gib']:.2f} |" for r in report["gossip"]["rows"]]
    lines += ["", "## Findings", ""] + findings(report)
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--strong-nodes", type=int, default=512)
    parser.add_argument("--nodes-per-device", type=int, default=128)
    parser.add_argument("--host-nodes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--gossip-nodes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--host-scale", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gossip-scale", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.strong_nodes, args.nodes_per_device, args.host_nodes = [1, 2], 64, 32, [1000]
        args.gossip_nodes = [1000]
        args.rounds, args.repeats = 2, 1
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args)))
        return
    if args.host_scale or args.gossip_scale:
        print(json.dumps(host_scale(args) if args.host_scale else gossip_scale(args)))
        return
    start, load_start = time.perf_counter(), load_average()
    passed = [a for a in sys.argv[1:] if a != "--quick"]
    if args.quick:
        passed += ["--devices", "1", "2", "--strong-nodes", "64", "--nodes-per-device", "32", "--host-nodes", "1000",
                   "--gossip-nodes", "1000", "--rounds", "2", "--repeats", "1"]

    def child(*extra) -> dict:
        done = subprocess.run([sys.executable, __file__, *passed, *extra], capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    scaling = [row for d in args.devices for row in child("--worker", str(d))["rows"]]
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]]), "device": device_info(),
              "rounds": args.rounds, "repeats": args.repeats, "scaling": scaling, "host": child("--host-scale"),
              "gossip": child("--gossip-scale")}
    finish_report("scaling", report, markdown, args.out, args.quick, start, load_start)


if __name__ == "__main__":
    main()
