"""Asynchronous training: convergence on a tiered population, and the kernel's speed per client update.

1. **Convergence** (the FedBuff paper's comparison, Nguyen et al. 2022, at this CPU's
   scale): digits, Dirichlet(0.5, min_size=5) over 100 nodes, an MLP (64-32-10), local SGD
   (1 epoch, batch 10, lr 0.1).  Devices: 90% fast, 10% ten times slower (compute), the same
   links.  Methods, each given the same budget of client updates:

   * synchronous FedAvg and FedAvgM (server momentum 0.9), 10 nodes a round, waiting for all;
   * FedAvg dropping nodes late for a deadline of 1.5x a fast node's round time;
   * FedAsync with the constant, polynomial and hinge staleness functions (alpha 0.6);
   * FedBuff with buffers of 5, 10 and 20 (server lr 1).

   Asynchronous runs have mean-one lognormal jitter 0.3 on every duration, so ties are rare
   and the event clock takes one arrival per tick (``clients_per_round=1``; ties would spill
   into later ticks with the same meaning).  Reported: test accuracy against client updates
   and against simulated time, and the updates and simulated seconds each method needs to
   reach a target accuracy, with the ratios the FedBuff paper reports (FedBuff about 2.5x
   more update-efficient than FedAsync and about 3x than synchronous FedAvgM), whatever
   they come out to here.

2. **Speed per client update** (``benchmarks/async_workers.py``): the W2 population (MNIST,
   MLP 784-200-200-10, 4 local steps of batch 4, durations from U(5, 1000) s) at N = 10^2 ..
   10^5 clients with 100 or 1,000 in flight, FedBuff (K = 10) and FedAsync, the kernel against
   a plain heapq event loop training the same clients on the same kind of schedule, in PyTorch
   (``nn.Sequential``, autograd, ``optim.SGD``; skipped when torch is not installed:
   ``pip install torch --index-url https://download.pytorch.org/whl/cpu``) and in NumPy, each
   side a fresh process pinned to one core, alternating.  Targets (issue: asynchronous speed):
   at least 10x the PyTorch loop at N = 10^3 and 30x at N = 10^4.

Results: ``benchmarks/results/asynchronous-<device>.json`` / ``.md``.  Run::

    python benchmarks/asynchronous.py            # about 10 min on a 2-core CPU
    python benchmarks/asynchronous.py --quick    # a smoke run (*-quick files)
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

import edgejax as ej
from common import device_info, finish_report, load_average, report_header  # noqa: E402  (benchmarks/common.py)
from edgejax.system import SystemModel, profiles_from_arrays

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def tiered(n: int, slow_share: float = 0.1, slowdown: float = 10.0):
    """Fast devices (200 samples/s) and ``slow_share`` of them ``slowdown`` times slower."""
    speed = np.full(n, 200.0)
    speed[: int(round(slow_share * n))] /= slowdown
    return profiles_from_arrays(speed, np.full(n, 1e6), np.full(n, 1e7), latency=0.01, energy_per_sample=1e-3,
                                energy_per_byte=1e-8)


def methods(deadline: float) -> dict:
    """name -> (algorithm, clients_per_round, SystemModel options, hyper-parameters)."""
    sync = {"clients": 10}
    out = {
        "FedAvg (wait all)": (ej.FedAvg(), sync, {}, {}),
        "FedAvgM (wait all)": (ej.FedAvg(server_optimizer="momentum"), sync, {}, {}),
        "FedAvg (drop late)": (ej.FedAvg(), sync, {"deadline_policy": "drop_late"}, {"deadline": deadline}),
    }
    for kind in ("constant", "polynomial", "hinge"):
        out[f"FedAsync ({kind})"] = (ej.FedAsync(staleness=kind), {"clients": 1}, {"jitter": True},
                                     {"alpha": 0.6, "duration_jitter": 0.3})
    for k in (5, 10, 20):
        out[f"FedBuff (K={k})"] = (ej.FedBuff(buffer_size=k), {"clients": 1}, {"jitter": True},
                                   {"duration_jitter": 0.3})
    return out


def to_target(updates, times, accuracy, target):
    """(client updates, simulated seconds) at the first evaluation reaching ``target`` (None if never)."""
    hit = np.flatnonzero(np.asarray(accuracy) >= target)
    return (None, None) if not hit.size else (float(updates[hit[0]]), float(times[hit[0]]))


def convergence(updates_budget: int, eval_updates: int, target: float, seed: int) -> dict:
    dataset = ej.data.load_digits()
    data, _ = ej.federate(dataset, 100, ej.data.Dirichlet(0.5, min_size=5), seed=seed)
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(32,))
    local = ej.LocalTraining(batch_size=10, epochs=1)
    profiles = tiered(100)
    model_bytes = ej.models.num_bytes(jax.eval_shape(model.init, jax.random.PRNGKey(0)))
    steps = int(local.node_steps(np.int32(np.percentile(data.node_counts(), 90))))
    fast = ej.system.uniform_profiles(1, speed=200.0, up_bandwidth=1e6, down_bandwidth=1e7, latency=0.01)
    deadline = 1.5 * float(sum(t[0] for t in ej.system.node_times(fast, steps, 10, model_bytes, model_bytes)))
    out = {"deadline_s": deadline, "target_accuracy": target, "runs": {}}
    for name, (algorithm, cohort, system, hp) in methods(deadline).items():
        sim = ej.Simulation(model, data, algorithm, local, clients_per_round=cohort["clients"],
                            system=SystemModel(profiles=profiles, **system))
        per_round = cohort["clients"]
        rounds = updates_budget // per_round
        start = time.perf_counter()
        res = sim.run(rounds, seed=seed, hparams={"client_lr": 0.1, **hp}, eval_every=max(eval_updates // per_round, 1))
        wall = time.perf_counter() - start
        evals = res.evaluations()
        updates = np.concatenate([[0.0], np.cumsum(res.rounds["participants"])])
        times = np.concatenate([[0.0], res.rounds["sim_time_s"]])
        at = evals["round"].to_numpy()
        entry = {"updates": updates[at].tolist(), "sim_time_s": times[at].tolist(),
                 "test_accuracy": evals["test_accuracy"].tolist(), "wall_s": wall,
                 "final_accuracy": float(evals["test_accuracy"].iloc[-1])}
        entry["updates_to_target"], entry["time_to_target_s"] = to_target(updates[at], times[at],
                                                                          entry["test_accuracy"], target)
        if "staleness_mean" in res.rounds:
            entry["mean_staleness"] = float(np.nanmean(res.rounds["staleness_mean"]))
        out["runs"][name] = entry
        print(f"  {name:<22} final acc {entry['final_accuracy']:.3f}, to {target}: {entry['updates_to_target']} "
              f"updates / {entry['time_to_target_s']} s simulated ({wall:.1f} s wall)", flush=True)
    return out


SPEED_GRID = ((100, 100), (1000, 100), (1000, 1000), (10_000, 100), (10_000, 1000), (100_000, 100), (100_000, 1000))
QUICK_GRID = ((100, 100), (1000, 100))
TARGETS = ((1000, 1000), (10_000, 1000))   # measured a second time (A B A B)


def _side(side: str, nodes: int, concurrency: int, rule: str, updates: int, seed: int) -> dict:
    """One side in a fresh process pinned to core 1 (``benchmarks/async_workers.py``)."""
    command = ["taskset", "-c", "1", sys.executable, str(Path(__file__).with_name("async_workers.py")), side,
               "--nodes", str(nodes), "--concurrency", str(concurrency), "--rule", rule, "--updates", str(updates),
               "--seed", str(seed)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_sentence() -> str:
    """What the PyTorch loop is, with torch's version, or that it was skipped."""
    if importlib.util.find_spec("torch") is None:
        return "No PyTorch loop: torch is not installed."
    from importlib.metadata import version
    return (f"The PyTorch loop (torch {version('torch')}, one thread) is what a PyTorch user writes: nn.Sequential, "
            "autograd, optim.SGD, the downloaded version's weights copied in.")


def loop_sides() -> tuple[str, ...]:
    """The plain event loops to time: PyTorch where it is installed, and NumPy."""
    return (("torch",) if importlib.util.find_spec("torch") else ()) + ("loop",)


def speed(grid, updates: int, seed: int) -> list[dict]:
    """ms per client update of the kernel and of the plain event loops, side by side (kernel,
    loops, in turn, per configuration; twice for ``TARGETS``)."""
    rows, loops = [], loop_sides()
    for nodes, concurrency in grid:
        for rule in ("fedbuff", "fedasync"):
            reps = 2 if (nodes, concurrency) in TARGETS else 1
            runs = {side: [] for side in ("kernel", *loops)}
            for _ in range(reps):
                for side in runs:
                    runs[side].append(_side(side, nodes, concurrency, rule, updates, seed))
            ms = {side: [r["ms_per_update"] for r in rs] for side, rs in runs.items()}
            kernel = runs["kernel"]
            row = {"nodes": nodes, "concurrency": min(concurrency, nodes), "rule": rule, "kernel_ms": ms["kernel"],
                   "loop_ms": ms["loop"], "ratio": float(np.median(ms["loop"]) / np.median(ms["kernel"])),
                   "kernel_first_chunk_s": kernel[0]["first_chunk_s"], "execution": kernel[0]["execution"],
                   "kernel_staleness": kernel[0]["mean_staleness"], "loop_staleness": runs["loop"][0]["mean_staleness"],
                   "kernel_test_accuracy": kernel[0]["test_accuracy"]}
            if "torch" in runs:
                row.update(torch_ms=ms["torch"], torch_ratio=float(np.median(ms["torch"]) / np.median(ms["kernel"])),
                           torch_staleness=runs["torch"][0]["mean_staleness"])
            rows.append(row)
            against = f", torch loop {np.median(ms['torch']):.3f} ({row['torch_ratio']:.2f}x)" if "torch" in runs else ""
            print(f"  N={nodes:>6} C={row['concurrency']:>5} {rule:<8}: kernel {np.median(ms['kernel']):.3f} ms/update"
                  f"{against}, NumPy loop {np.median(ms['loop']):.3f} ({row['ratio']:.2f}x); mean staleness "
                  f"{row['kernel_staleness']:.1f} / {row['loop_staleness']:.1f}", flush=True)
    return rows


def target_lines(rows: list[dict]) -> list[str]:
    """Each speed target against the measured PyTorch ratio (every in-flight count at that N)."""
    lines = []
    for nodes, target in ((1000, 10.0), (10_000, 30.0)):
        found = [r for r in rows if r["nodes"] == nodes and "torch_ratio" in r]
        if not found:
            continue
        cells = ", ".join(f"{r['rule']} C={r['concurrency']:,}: {r['torch_ratio']:.1f}x" for r in found)
        met = all(r["torch_ratio"] >= target for r in found)
        lines.append(f"- N = {nodes:,}, target {target:.0f}x the PyTorch loop: {cells} "
                     f"({'met' if met else 'not met'})")
    return lines


def markdown(report: dict) -> str:
    conv = report["convergence"]
    lines = report_header("asynchronous training", report)
    lines += ["## Convergence on a tiered population (10% of devices 10x slower)", "",
              f"{report['setting']}. Target test accuracy {conv['target_accuracy']}; drop-late deadline "
              f"{conv['deadline_s']:.3f} s." + (f" Kept from the run `{conv['from']}` (this run measured the speed "
                                                 "section only)." if "from" in conv else ""), "",
              "| method | final accuracy | updates to target | simulated s to target | mean staleness |",
              "| --- | --- | --- | --- | --- |"]
    for name, r in conv["runs"].items():
        fmt = lambda v, f: "not reached" if v is None else f.format(v)  # noqa: E731
        lines.append(f"| {name} | {r['final_accuracy']:.3f} | {fmt(r['updates_to_target'], '{:.0f}')} | "
                     f"{fmt(r['time_to_target_s'], '{:.1f}')} | {r.get('mean_staleness', float('nan')):.2f} |")
    lines += ["", "Ratios of client updates to the target (the FedBuff paper: about 2.5x for FedAsync, about 3x "
              "for synchronous FedAvgM, relative to FedBuff):", ""]
    for name, value in report["ratios"].items():
        lines.append(f"- {name}: {'n/a (a method did not reach the target)' if value is None else f'{value:.2f}x'}")
    torch = any("torch_ms" in r for r in report["speed"])
    lines += ["", "## Speed per client update: the kernel against a plain event loop, side by side", "",
              report["speed_setting"], "",
              "| N | in flight | rule | edgejax ms/update |" + (" PyTorch loop ms/update | PyTorch / edgejax |" if torch else "")
              + " NumPy loop ms/update | NumPy / edgejax | first chunk s (compile + first chunk) | mean staleness "
              "(edgejax / loop) |",
              "| --- " * (8 + 2 * torch) + "|"]
    for r in report["speed"]:
        ms = lambda v: " / ".join(f"{x:.3f}" for x in v)  # noqa: E731
        torch_cells = f" {ms(r['torch_ms'])} | {r['torch_ratio']:.2f}x |" if torch else ""
        lines.append(f"| {r['nodes']:,} | {r['concurrency']:,} | {r['rule']} | {ms(r['kernel_ms'])} |{torch_cells} "
                     f"{ms(r['loop_ms'])} | {r['ratio']:.2f}x | {r['kernel_first_chunk_s']:.1f} | "
                     f"{r['kernel_staleness']:.1f} / {r['loop_staleness']:.1f} |")
    if torch:
        lines += ["", "Targets, as ratios measured in this run:", "", *target_lines(report["speed"])]
    lines += ["", report["notes"], ""]
    return "\n".join(lines)


def ratios(conv: dict) -> dict:
    runs = conv["runs"]
    best = lambda prefix: min((r["updates_to_target"] for n, r in runs.items()   # noqa: E731
                               if n.startswith(prefix) and r["updates_to_target"] is not None), default=None)
    fedbuff, fedasync, fedavgm = best("FedBuff"), best("FedAsync"), best("FedAvgM")
    return {"best FedAsync / best FedBuff": None if None in (fedbuff, fedasync) else fedasync / fedbuff,
            "FedAvgM (wait all) / best FedBuff": None if None in (fedbuff, fedavgm) else fedavgm / fedbuff}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-only", action="store_true",
                        help="measure the speed section only, keeping the convergence section of the saved report")
    args = parser.parse_args(argv)
    wall = time.perf_counter()
    load_start = load_average()
    budget, every, grid, updates = (400, 100, QUICK_GRID, 200) if args.quick else (4000, 200, SPEED_GRID, 1000)
    saved = RESULTS_DIR / "asynchronous-cpu.json"
    if args.speed_only:
        if not saved.exists():
            raise SystemExit(f"--speed-only keeps the convergence section of {saved}, which does not exist")
        kept = json.loads(saved.read_text())
        conv = kept["convergence"] | {"from": f"{kept['command']}, {kept['date']}"}
    else:
        print("convergence:", flush=True)
        conv = convergence(budget, every, target=0.85, seed=args.seed)
    print("speed:", flush=True)
    rows = speed(grid, updates, args.seed)
    report = {"date": datetime.date.today().isoformat(), "device": device_info(),
              "command": "python benchmarks/asynchronous.py" + (" --quick" if args.quick else "")
                         + (" --speed-only" if args.speed_only else ""),
              "setting": (f"digits, Dirichlet(0.5, min 5) over 100 nodes, MLP 64-32-10, 1 local epoch of batch 10, "
                          f"lr 0.1, {budget} client updates per method, evaluated every {every} updates, seed "
                          f"{args.seed}"),
              "convergence": conv, "ratios": ratios(conv), "speed": rows,
              "speed_setting": (f"W2 population (benchmarks/async_workers.py): MNIST t10k, 8 images per client, MLP "
                                f"784-200-200-10, 4 local SGD steps of batch 4, every client's duration fixed from "
                                f"U(5, 1000) s, all in-flight clients starting at t = 0, freed slots filled by a "
                                f"uniformly drawn idle client; FedBuff K = 10 or FedAsync (alpha 0.6, polynomial "
                                f"a = 0.5). Each side is a fresh process pinned to core 1 (taskset -c 1), the sides "
                                f"alternating; edgejax runs compiled chunks of {updates} ticks (one arrival each, the state "
                                f"donated as Simulation.run does), the loops blocks of {updates} updates; each side "
                                f"reports the median of the 3 blocks after its first (compile, warm-up). "
                                f"{torch_sentence()} The NumPy loop has a hand-written backward. Two values: the "
                                f"configuration was measured twice, in turn."),
              "notes": ("One seed. The convergence runs apply one arrival per tick. Execution (auto): "
                        + ", ".join(sorted({f"{r['rule']} {r['execution']}" for r in rows}))
                        + "; with shared_base FedBuff trains every update at download (the K downloads between two "
                        "flushes together, from their one model) and keeps it as factors until it arrives, while "
                        "FedAsync, whose model changes at every arrival, trains each arrival from its own "
                        "downloaded snapshot. This CPU may be shared by other processes: see the load averages; "
                        "compare the ratios, measured side by side, not the absolute times.")}
    finish_report("asynchronous", report, markdown, RESULTS_DIR, args.quick, wall, load_start)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
