"""Asynchronous training: convergence on a tiered population, and the kernel's throughput.

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

2. **Throughput**: simulated updates per second of the asynchronous kernel (FedAsync,
   logistic regression, 4 samples per node, one local step of batch 4; one compiled chunk of
   ticks) for N = 100 ... 4096 nodes, next to a plain Python event loop (heapq + NumPy)
   applying the same kind of updates one at a time, the way event-loop simulators run it.

Results: ``benchmarks/results/asynchronous-<device>.json`` / ``.md``.  Run::

    python benchmarks/asynchronous.py            # about 5-10 min on a 2-core CPU
    python benchmarks/asynchronous.py --quick    # a smoke run (*-quick files)
"""
from __future__ import annotations

import argparse
import datetime
import heapq
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
        out[f"FedAsync ({kind})"] = (ej.FedAsync(staleness=kind, buffer_depth=2048), {"clients": 1}, {"jitter": True},
                                     {"alpha": 0.6, "duration_jitter": 0.3})
    for k in (5, 10, 20):
        out[f"FedBuff (K={k})"] = (ej.FedBuff(buffer_size=k, buffer_depth=2048), {"clients": 1}, {"jitter": True},
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


def _numpy_event_loop(xs, ys, durations, updates: int, lr: float, alpha: float, num_classes: int) -> float:
    """Seconds for a plain Python event loop to apply ``updates`` FedAsync updates (one local
    step of logistic regression per update, versions kept in a dict), as event-loop simulators do."""
    d = xs.shape[-1]
    w = np.zeros((d, num_classes))
    versions, downloaded, version = {0: w}, {}, 0
    heap = [(float(t), i) for i, t in enumerate(durations)]
    heapq.heapify(heap)
    for i in range(len(durations)):
        downloaded[i] = 0
    start = time.perf_counter()
    for _ in range(updates):
        t, i = heapq.heappop(heap)
        stale_w = versions[downloaded[i]]
        z = xs[i] @ stale_w
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(ys[i])), ys[i]] -= 1
        y = stale_w - lr * xs[i].T @ p / len(ys[i])
        s = version - downloaded[i]
        a = alpha * (s + 1.0) ** -0.5
        w = (1 - a) * w + a * y
        version += 1
        versions[version] = w
        downloaded[i] = version
        heapq.heappush(heap, (t + float(durations[i]), i))
    return time.perf_counter() - start


def throughput(sizes: Sequence[int], ticks: int, seed: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(seed)
    for n in sizes:
        x = rng.normal(size=(4 * n + 200, 32)).astype(np.float32)
        y = rng.integers(0, 10, size=len(x)).astype(np.int32)
        dataset = ej.data.from_arrays(x[: 4 * n], y[: 4 * n], x_test=x[4 * n:], y_test=y[4 * n:], num_classes=10)
        data, _ = ej.federate(dataset, n, ej.data.IID(), seed=seed, local_test_fraction=0.0)
        model = ej.models.logistic_regression((32,), 10)
        speeds = rng.uniform(50, 200, size=n)
        profiles = profiles_from_arrays(speeds, np.full(n, 1e6), np.full(n, 1e7), latency=0.01,
                                        energy_per_sample=1e-3, energy_per_byte=1e-8)
        # every node computes at once, so staleness reaches about N: keep 4N versions (no update dropped)
        sim = ej.Simulation(model, data, ej.FedAsync(buffer_depth=4 * n), ej.LocalTraining(batch_size=4, steps=1),
                            clients_per_round=1, system=SystemModel(profiles=profiles))
        hp = sim.hparams({"client_lr": 0.1})
        chunk = jax.jit(sim.run_rounds, static_argnums=3)
        state = sim.init(jax.random.PRNGKey(seed), hp)
        state, _ = jax.block_until_ready(chunk(state, sim.data, hp, ticks))   # compile + warm-up
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(chunk(state, sim.data, hp, ticks))
        kernel_s = time.perf_counter() - start
        applied = float(np.sum(metrics["participants"]))
        assert float(np.sum(metrics["dropped_stale"])) == 0
        xs = np.asarray(data.train.x)[:, :4]
        ys = np.asarray(data.train.y)[:, :4]
        loop_updates = min(ticks, 2000)
        loop_s = _numpy_event_loop(xs, ys, np.asarray(sim.init(jax.random.PRNGKey(seed), hp).system.busy_until),
                                   loop_updates, 0.1, 0.6, 10)
        row = {"nodes": n, "kernel_updates_per_s": applied / kernel_s, "loop_updates_per_s": loop_updates / loop_s}
        row["ratio"] = row["kernel_updates_per_s"] / row["loop_updates_per_s"]
        rows.append(row)
        print(f"  N={n:>5}: kernel {row['kernel_updates_per_s']:,.0f} updates/s, Python event loop "
              f"{row['loop_updates_per_s']:,.0f} updates/s ({row['ratio']:.2f}x)", flush=True)
    return rows


def markdown(report: dict) -> str:
    conv = report["convergence"]
    lines = report_header("asynchronous training", report)
    lines += ["## Convergence on a tiered population (10% of devices 10x slower)", "",
              f"{report['setting']}. Target test accuracy {conv['target_accuracy']}; drop-late deadline "
              f"{conv['deadline_s']:.3f} s.", "",
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
    lines += ["", "## Throughput of the asynchronous kernel", "",
              "| N | kernel updates/s | Python event loop updates/s | ratio |", "| --- | --- | --- | --- |"]
    for r in report["throughput"]:
        lines.append(f"| {r['nodes']} | {r['kernel_updates_per_s']:,.0f} | {r['loop_updates_per_s']:,.0f} | "
                     f"{r['ratio']:.2f}x |")
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
    args = parser.parse_args(argv)
    wall = time.perf_counter()
    load_start = load_average()
    budget, every, sizes, ticks = (400, 100, (100, 400), 200) if args.quick else (4000, 200, (100, 400, 1600, 4096),
                                                                                  2000)
    print("convergence:", flush=True)
    conv = convergence(budget, every, target=0.85, seed=args.seed)
    print("throughput:", flush=True)
    rows = throughput(sizes, ticks, args.seed)
    report = {"date": datetime.date.today().isoformat(), "device": device_info(),
              "command": "python benchmarks/asynchronous.py" + (" --quick" if args.quick else ""),
              "setting": (f"digits, Dirichlet(0.5, min 5) over 100 nodes, MLP 64-32-10, 1 local epoch of batch 10, "
                          f"lr 0.1, {budget} client updates per method, evaluated every {every} updates, seed "
                          f"{args.seed}"),
              "convergence": conv, "ratios": ratios(conv), "throughput": rows,
              "notes": ("One seed; the asynchronous runs apply one arrival per tick. The throughput rows time one "
                        f"compiled chunk of {ticks} ticks after a warm-up chunk; the Python loop applies up to 2,000 "
                        "updates with NumPy. This CPU is shared by other processes: see the load averages.")}
    finish_report("asynchronous", report, markdown, RESULTS_DIR, args.quick, wall, load_start)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
