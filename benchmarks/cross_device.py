"""Cross-device FedAvg on MNIST: the ``shared_base`` local update against ``per_node``.

The setting of the project's reference CPU measurement: MNIST digits (the t10k files in
``../shared/data``: first 8,000 train, last 2,000 test), 1,000 nodes x 8 samples (IID),
100 nodes a round, 2 local epochs of batch 4 (4 SGD steps), client lr 0.05, the MLP
784-200-200-10, evaluation every 20 rounds, through the public API (``federate`` +
``Simulation.run``).  Three executions of the same rounds:

* ``per_node vmap``: ``LocalTraining(execution="per_node", group_size=None)``;
* ``per_node lax.map``: ``execution="per_node", group_size=5`` (the CPU recipe);
* ``shared_base``: ``execution="shared_base"`` (no per-node weights; see
  ``edgejax.core.shared_base``).

Each is compiled by a first (untimed) run, then timed over ``--rounds`` rounds
(``Results.wall_time_s``: the round loop with its evaluations).  The accuracy curves must
agree (same batches, same maths).  Results go to
``benchmarks/results/cross_device-<backend>[-<k>core].json`` and ``.md``.  Run::

    python benchmarks/cross_device.py               # 200 rounds each
    python benchmarks/cross_device.py --rounds 40
    taskset -c 0 python benchmarks/cross_device.py  # pinned to one core: ...-cpu-1core.{json,md}
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Sequence

import numpy as np

import edgejax
from edgejax.core.results import environment
from edgejax.data.partition import IID

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WAYS = {
    "per_node vmap": dict(execution="per_node", group_size=None),
    "per_node lax.map (5)": dict(execution="per_node", group_size=5),
    "shared_base": dict(execution="shared_base"),
}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_way(data, options: dict, rounds: int, eval_every: int, seed: int) -> dict:
    model = edgejax.models.mlp(data.feature_shape, data.num_classes, hidden=(200, 200))
    spec = edgejax.LocalTraining(batch_size=4, epochs=2, **options)
    sim = edgejax.Simulation(model, data, edgejax.FedAvg(), spec, clients_per_round=100)
    hp = {"client_lr": 0.05}
    sim.run(eval_every, seed=seed, hparams=hp, eval_every=eval_every)  # compile (same chunk program)
    res = sim.run(rounds, seed=seed, hparams=hp, eval_every=eval_every)
    return {"options": options, "s_per_round": res.wall_time_s / rounds, "wall_time_s": res.wall_time_s,
            "eval_rounds": np.asarray(res.evals["round"]).tolist(),
            "test_accuracy": np.asarray(res.evals["test_accuracy"]).tolist(),
            "final_train_loss": float(res.rounds["train_loss"][-1])}


def markdown(report: dict) -> str:
    lines = [f"# Cross-device FedAvg on MNIST ({report['device']})", "",
             f"{report['date']}; {report['setting']}; load average before/after: "
             f"{report['load_before']} / {report['load_after']}", "",
             "| execution | ms/round | speed-up vs best per_node | final test accuracy |",
             "|---|---:|---:|---:|"]
    best = min((v["s_per_round"] for k, v in report["ways"].items() if k.startswith("per_node")), default=None)
    for name, v in report["ways"].items():
        lines.append(f"| {name} | {1e3 * v['s_per_round']:.1f} | {(best / v['s_per_round']) if best else float('nan'):.2f}x | "
                     f"{v['test_accuracy'][-1]:.4f} |")
    lines += ["", f"Largest accuracy difference between the executions: {report['max_accuracy_gap']:.2e}", "",
              "Accuracy curves (evaluation round: accuracy per execution):", "",
              "| round | " + " | ".join(report["ways"]) + " |", "|---:|" + "---:|" * len(report["ways"])]
    first = next(iter(report["ways"].values()))
    for i, r in enumerate(first["eval_rounds"]):
        lines.append(f"| {r} | " + " | ".join(f"{v['test_accuracy'][i]:.4f}" for v in report["ways"].values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ways", nargs="*", default=list(WAYS), choices=list(WAYS))
    args = parser.parse_args(argv)
    try:
        dataset = edgejax.data.load_mnist()
    except (FileNotFoundError, OSError) as err:
        print(f"skipping: the MNIST t10k files are not available ({err})")
        return None
    data, _ = edgejax.federate(dataset, 1000, IID(), seed=args.seed, local_test_fraction=0.0)
    load_before = os.getloadavg()[0]
    ways = {}
    for name in args.ways:
        ways[name] = run_way(data, WAYS[name], args.rounds, args.eval_every, args.seed)
        print(f"{name}: {1e3 * ways[name]['s_per_round']:.1f} ms/round, "
              f"final test accuracy {ways[name]['test_accuracy'][-1]:.4f}", flush=True)
    accs = np.array([v["test_accuracy"] for v in ways.values()])
    env = environment()
    cores = len(os.sched_getaffinity(0))
    device = (env["device"] if env["backend"] != "cpu"
              else f"CPU: {cpu_name()}, {os.cpu_count()} cores, this run on {cores}")
    report = {"date": datetime.date.today().isoformat(), "device": device, "environment": env,
              "setting": (f"MNIST t10k (8,000 train / 2,000 test), 1,000 nodes x 8 (IID), 100 a round, "
                          f"2 epochs of batch 4, lr 0.05, MLP 784-200-200-10, {args.rounds} rounds, "
                          f"eval every {args.eval_every}"),
              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
              "ways": ways}
    report["max_accuracy_gap"] = float(np.max(accs.max(axis=0) - accs.min(axis=0)))
    RESULTS_DIR.mkdir(exist_ok=True)
    pinned = env["backend"] == "cpu" and cores < (os.cpu_count() or cores)
    stem = RESULTS_DIR / f"cross_device-{env['backend']}{f'-{cores}core' if pinned else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
