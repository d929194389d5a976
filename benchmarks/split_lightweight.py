"""Split learning and lightweight models on tiered devices: accuracy against device FLOPs, bytes and simulated time.

Two sections:

1. **Accuracy** on MNIST (the 10,000 t10k digits at ``../shared/data``: the first 8,000
   train, the last 2,000 are the global test set), ``Dirichlet(0.5, min_size=5)`` over 100
   nodes, 10 a round (uniform), an MLP 784-200-200-100-10 (four dense layers, so cuts 1, 2
   and 3 exist), 1 local epoch of batch 10, SGD client lr 0.05, one seed (0).  Devices:
   ``edgejax.system.tiered_profiles(100)`` (20% / 50% / 30% fast / medium / slow: 400 / 100 /
   20 samples per second, 4 MB/s / 1 MB/s / 200 kB/s up, 10x that down, 50 ms latency).
   Rows: FedAvg; ``SplitLearning``, ``SplitFed`` v1 and v2 at cuts 1, 2, 3; ``PrunedFedAvg``
   (unstructured) at final sparsity 0.5 / 0.8 / 0.9 (prune every 2 rounds, 10 steps: final
   sparsity from round 20); ``QuantizedFedAvg`` int8 and int4 (per channel); FedAvg on
   ``quantization_aware(model, bits=8)``.  Columns: final test accuracy, the device's share of
   the full model's training FLOPs, device training TFLOPs in total, bytes up + down per round,
   simulated seconds (the run's ``sim_time_s``), rounds / simulated seconds to a target accuracy.
   What the clock charges: the nodes only (download + compute + upload of the slowest node in a
   round; vanilla SL, which serves its nodes one after another, the sum of its nodes' times).
   The split algorithms' server compute is not charged.
2. **Vectorized cost**: one jitted SplitFed v2 round (cut 1) with all 100 nodes in the cohort
   against a plain NumPy (float32) loop running the same 100 clients' client-forward /
   server-step / client-backward sequence one after another (the v2 order: for every local step,
   the nodes in turn), same model, same data, same local steps of batch 10.  Each side is a fresh
   process pinned to core 1 (``taskset -c 1``), the sides alternate A B A B; the jitted side is
   timed on its second call (compilation excluded, reported apart).

Run::

    python benchmarks/split_lightweight.py            # the default run (about 6 min on a shared 2-core CPU)
    python benchmarks/split_lightweight.py --quick    # smoke run (*-quick files)
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NODES, COHORT, BATCH, LR, EPOCHS = 100, 10, 10, 0.05, 1
HIDDEN = (200, 200, 100)
TARGET = 0.85
COST_CUT = 1


def _mnist_federated(seed: int = 0):
    import edgejax as ej
    dataset = ej.data.load_mnist()
    data, _ = ej.federate(dataset, NODES, ej.data.Dirichlet(0.5, min_size=5), seed=seed)
    return data


# ----------------------------------------------------------------------------------------------- accuracy section

def configurations(model, rows):
    """(label, group, algorithm, model trained) for every row of the accuracy table."""
    import edgejax as ej
    out = [("FedAvg", "fedavg", ej.FedAvg(), model)]
    for cut in (1, 2, 3):
        out += [(f"SL, cut {cut}", "split", ej.SplitLearning(model, cut, rows), model),
                (f"SFL-V1, cut {cut}", "split", ej.SplitFed(model, cut, rows, variant="v1"), model),
                (f"SFL-V2, cut {cut}", "split", ej.SplitFed(model, cut, rows, variant="v2"), model)]
    for s in (0.5, 0.8, 0.9):
        out.append((f"PrunedFedAvg {s:.0%}", "pruned",
                    ej.PrunedFedAvg(model, final_sparsity=s, prune_every=2, prune_steps=10), model))
    for bits in (8, 4):
        out.append((f"QuantizedFedAvg int{bits}", "quantized", ej.QuantizedFedAvg(bits=bits, granularity="channel"),
                    model))
    out.append(("FedAvg, QAT int8 model", "quantized", ej.FedAvg(), ej.models.quantization_aware(model, bits=8)))
    return out


def run_accuracy(rounds: int, eval_every: int) -> dict:
    import jax

    import edgejax as ej
    from edgejax import system
    from edgejax.models.layout import TRAIN_FACTOR, full_forward_flops, gemm_layout

    data = _mnist_federated()
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=HIDDEN)
    local = ej.LocalTraining(batch_size=BATCH, epochs=EPOCHS)
    rows = ej.algorithms.activation_rows(local, data.node_counts())
    profiles = system.tiered_profiles(NODES)
    params = model.init(jax.random.PRNGKey(0))
    train_flops_per_sample = TRAIN_FACTOR * full_forward_flops(gemm_layout(model))
    runs = []
    for label, group, alg, trained in configurations(model, rows):
        sim = ej.Simulation(trained, data, alg, local, clients_per_round=COHORT,
                            system=ej.SystemModel(profiles=profiles))
        start = time.perf_counter()
        res = sim.run(rounds, seed=0, eval_every=eval_every, hparams={"client_lr": LR})
        wall = time.perf_counter() - start
        r, e = res.rounds, res.evals
        payload = alg.payload(params, NODES) if hasattr(alg, "payload") else None
        if "compute_fraction" in r:
            frac_rounds = np.asarray(r["compute_fraction"], float)
        else:
            c = 1.0 if payload is None else float(np.mean(np.asarray(payload.compute, float)))
            frac_rounds = np.full(rounds, c)
        steps = np.asarray(r["local_steps"], float)
        tflops = float(np.sum(steps * BATCH * train_flops_per_sample * frac_rounds) / 1e12)
        acc, at = np.asarray(e["test_accuracy"], float), np.asarray(e["round"]).astype(int)
        sim_time = np.asarray(r["sim_time_s"], float)
        hit = np.flatnonzero(acc >= TARGET)
        first = int(at[hit[0]]) if hit.size else None
        out = {"label": label, "group": group, "algorithm": alg.name, "wall_s": wall,
               "eval_rounds": at.tolist(), "test_accuracy": acc.tolist(), "final_accuracy": float(acc[-1]),
               "best_accuracy": float(acc.max()), "compute_fraction": float(frac_rounds.mean()),
               "compute_fraction_final": float(frac_rounds[-1]), "device_tflops": tflops,
               "mb_up_per_round": float(np.mean(r["bytes_up"]) / 1e6),
               "mb_down_per_round": float(np.mean(r["bytes_down"]) / 1e6),
               "sim_time_s": float(sim_time[-1]), "rounds_to_target": first,
               "sim_s_to_target": None if first is None else float(sim_time[first - 1])}
        runs.append(out)
        print(f"  {label:<24} acc {out['final_accuracy']:.4f}  compute {out['compute_fraction']:.3f}  "
              f"MB up+down/round {out['mb_up_per_round'] + out['mb_down_per_round']:.2f}  sim {out['sim_time_s']:.0f} s"
              f"  to {TARGET:.0%}: {first}  ({wall:.0f} s wall)", flush=True)
    return {"runs": runs, "model_bytes": int(ej.models.num_parameters(params) * 4),
            "samples_per_node": {"min": int(np.min(data.node_counts())), "max": int(np.max(data.node_counts())),
                                 "mean": float(np.mean(data.node_counts()))}}


# ---------------------------------------------------------------------------------------------------- cost section

def _cost_data():
    data = _mnist_federated()
    x = np.asarray(data.train.x, np.float32).reshape(NODES, data.train.x.shape[1], -1)
    return data, x, np.asarray(data.train.y), np.asarray(data.train.count)


def worker_jax() -> dict:
    import jax

    import edgejax as ej
    data, _, _, counts = _cost_data()
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=HIDDEN)
    local = ej.LocalTraining(batch_size=BATCH, epochs=EPOCHS)
    rows = ej.algorithms.activation_rows(local, data.node_counts())
    sim = ej.Simulation(model, data, ej.SplitFed(model, COST_CUT, rows, variant="v2"), local, clients_per_round=NODES)
    hp = sim.hparams({"client_lr": LR})
    chunk = jax.jit(sim.run_rounds, static_argnums=3)
    start = time.perf_counter()
    state = sim.init(jax.random.PRNGKey(0), hp)
    state, _ = jax.block_until_ready(chunk(state, sim.data, hp, 1))
    first = time.perf_counter() - start
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(chunk(state, sim.data, hp, 1))
    timed = time.perf_counter() - start
    return {"round_s": timed, "first_call_s": first, "local_steps": float(np.sum(metrics["local_steps"])),
            "max_steps": int(np.max(-(-counts // BATCH)))}


def worker_numpy() -> dict:
    """The plain loop: for every local step t, nodes k = 0..99 one after another: device forward,
    server forward + backward + SGD step, device backward + SGD step; device parts averaged."""
    _, x, y, counts = _cost_data()
    rng = np.random.default_rng(0)
    widths = (x.shape[2], *HIDDEN, 10)
    params = [(rng.normal(size=(a, b)).astype(np.float32) * np.float32(np.sqrt(2.0 / a)), np.zeros(b, np.float32))
              for a, b in zip(widths[:-1], widths[1:])]
    lr = np.float32(LR)

    def forward(layers, a, last_linear):
        cache = []
        for i, (w, b) in enumerate(layers):
            cache.append(a)
            a = a @ w + b
            if not (last_linear and i == len(layers) - 1):
                a = np.maximum(a, 0)
            cache.append(a)
        return a, cache

    def backward(layers, cache, g, last_linear):
        grads = []
        for i in range(len(layers) - 1, -1, -1):
            w, _ = layers[i]
            a_in, a_out = cache[2 * i], cache[2 * i + 1]
            if not (last_linear and i == len(layers) - 1):
                g = g * (a_out > 0)
            grads.append((a_in.T @ g, g.sum(0)))
            g = g @ w.T
        return grads[::-1], g

    def sgd(layers, grads):
        return [(w - lr * gw, b - lr * gb) for (w, b), (gw, gb) in zip(layers, grads)]

    start = time.perf_counter()
    d0, server = params[:COST_CUT], params[COST_CUT:]
    devices = [list(d0) for _ in range(NODES)]
    steps = EPOCHS * np.maximum(-(-counts // BATCH), 1)
    done = 0
    for t in range(int(steps.max())):
        for k in range(NODES):
            if t >= steps[k]:
                continue
            lo = (t * BATCH) % max(counts[k], 1)
            xb, yb = x[k, lo:lo + BATCH], y[k, lo:lo + BATCH]
            a, dcache = forward(devices[k], xb, last_linear=False)
            logits, scache = forward(server, a, last_linear=True)
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(yb)), yb] -= 1.0
            g_s, g_a = backward(server, scache, p / np.float32(len(yb)), last_linear=True)
            server = sgd(server, g_s)
            g_d, _ = backward(devices[k], dcache, g_a, last_linear=False)
            devices[k] = sgd(devices[k], g_d)
            done += 1
    w = counts / counts.sum()
    d_avg = [(sum(np.float32(w[k]) * devices[k][i][0] for k in range(NODES)),
              sum(np.float32(w[k]) * devices[k][i][1] for k in range(NODES))) for i in range(len(d0))]
    timed = time.perf_counter() - start
    assert all(np.isfinite(a).all() for a, _ in d_avg)
    return {"round_s": timed, "local_steps": float(done), "max_steps": int(steps.max())}


def _side(side: str) -> dict:
    prefix = ["taskset", "-c", "1"] if shutil.which("taskset") else []
    out = subprocess.run([*prefix, sys.executable, str(Path(__file__).resolve()), "--worker", side],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_cost(repeats: int) -> dict:
    runs = {"jax": [], "numpy": []}
    for _ in range(repeats):
        for side in ("jax", "numpy"):
            runs[side].append(_side(side))
            print(f"  {side:<6} {runs[side][-1]['round_s']:.3f} s / round", flush=True)
    jax_s = [r["round_s"] for r in runs["jax"]]
    np_s = [r["round_s"] for r in runs["numpy"]]
    return {"jax_round_s": jax_s, "numpy_round_s": np_s, "jax_first_call_s": [r["first_call_s"] for r in runs["jax"]],
            "ratio": float(np.median(np_s) / np.median(jax_s)), "local_steps": runs["numpy"][0]["local_steps"],
            "max_steps": runs["numpy"][0]["max_steps"], "pinned": bool(shutil.which("taskset"))}


# ---------------------------------------------------------------------------------------------------------- report

def _fmt(v, f):
    return "n/a" if v is None else format(v, f)


def markdown_report(report: dict) -> str:
    from common import report_header
    lines = report_header("split learning and lightweight models", report)
    a = report.get("accuracy")
    if a:
        spn = a["samples_per_node"]
        lines += ["## Accuracy against device compute, bytes and simulated time (MNIST, tiered devices)", "",
                  f"MNIST t10k (8,000 train / 2,000 global test), Dirichlet(0.5, min 5) over {NODES} nodes, each "
                  f"keeping 20% of its samples as a local test split (`federate`'s default), so "
                  f"{spn['mean'] * NODES:,.0f} training samples ({spn['min']} - {spn['max']} a node, mean "
                  f"{spn['mean']:.0f}), {COHORT} a round (uniform), MLP "
                  f"784-{'-'.join(map(str, HIDDEN))}-10 ({a['model_bytes']:,} bytes float32), {report['rounds']} rounds "
                  f"of {EPOCHS} local epoch (batch {BATCH}, SGD lr {LR}), evaluation every {report['eval_every']} "
                  "rounds, **one seed (0)**. Devices: `tiered_profiles(100)` (20/50/30% at 400/100/20 samples/s, "
                  "up 4e6/1e6/2e5 B/s, down 10x). Device compute: the share of the full model's training FLOPs a "
                  "device runs (split: the device part's; pruned: the kept multiply-adds, averaged over the rounds; "
                  "QAT: fake quantization still computes in float, 1.0). Device TFLOPs: over the run, all "
                  "participating devices. Bytes: per round, summed over the cohort. Simulated s: the run's "
                  f"`sim_time_s` after the last round. \"To {TARGET:.0%}\": the first evaluation at that test "
                  "accuracy (rounds / simulated s).", "",
                  "| method | final acc | best acc | device compute | device TFLOPs | MB up + down / round | "
                  f"simulated s | to {TARGET:.0%}: rounds / sim s | wall s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in a["runs"]:
            to = "not reached" if r["rounds_to_target"] is None else \
                f"{r['rounds_to_target']} / {r['sim_s_to_target']:.0f}"
            lines.append(f"| {r['label']} | {r['final_accuracy']:.4f} | {r['best_accuracy']:.4f} | "
                         f"{r['compute_fraction']:.3f} | {r['device_tflops']:.3f} | "
                         f"{r['mb_up_per_round']:.2f} + {r['mb_down_per_round']:.2f} | {r['sim_time_s']:.0f} | {to} | "
                         f"{r['wall_s']:.0f} |")
        lines.append("")
        lines += ["What the clock charges: every round's time is the slowest cohort node's download + compute + "
                  "upload; vanilla SL serves its nodes one after another (`Traits(sequential=True)`), so its round "
                  "takes the sum of its active nodes' times. The split algorithms' server compute is not charged.",
                  "", "PrunedFedAvg: the system model plans and charges the *final* sparsity's payload from round 0 "
                  "(documented), so its simulated seconds are those of the sparse model in every round, also "
                  "before the mask reaches it; its bytes column is the rounds' real (growing-sparsity) bytes.", ""]
        lines += _findings(a)
    c = report.get("cost")
    if c:
        lines += ["## Vectorized cost: one SplitFed V2 round for 100 clients", "",
                  f"One jitted `SplitFed(variant=\"v2\")` round, cut {COST_CUT}, all {NODES} nodes in the cohort "
                  f"({c['local_steps']:.0f} client steps of batch {BATCH}; the jitted round pads every node to the "
                  f"longest node's {c['max_steps']} steps, masked), against a plain NumPy float32 loop doing the same "
                  "nodes' client-forward / server-step / client-backward one after another (v2 order: per local step "
                  "the nodes in turn; hand-written backward, SGD) and the device-part average. Each side a fresh "
                  f"process{' pinned to core 1 (`taskset -c 1`)' if c['pinned'] else ' (taskset not found: unpinned)'},"
                  " alternating A B A B; the jitted side timed on its second call.", "",
                  "| side | round s (each run) | median |", "|---|---|---|",
                  f"| edgejax jitted SFL-V2 | {', '.join(f'{v:.3f}' for v in c['jax_round_s'])} | "
                  f"{np.median(c['jax_round_s']):.3f} |",
                  f"| NumPy sequential loop | {', '.join(f'{v:.3f}' for v in c['numpy_round_s'])} | "
                  f"{np.median(c['numpy_round_s']):.3f} |", "",
                  f"Ratio (NumPy loop / jitted, medians): **{c['ratio']:.2f}x**. The jitted side's first call "
                  f"(compilation included): {', '.join(f'{v:.1f}' for v in c['jax_first_call_s'])} s.", ""]
    return "\n".join(lines)


def _findings(a: dict) -> list[str]:
    by = {r["label"]: r for r in a["runs"]}
    fed = by["FedAvg"]
    out = ["Read off the table (one seed; differences of a point or less are within what another seed could move):", ""]
    for cut in (1, 2, 3):
        sl, v1, v2 = by[f"SL, cut {cut}"], by[f"SFL-V1, cut {cut}"], by[f"SFL-V2, cut {cut}"]
        out.append(f"- cut {cut} (device share {v1['compute_fraction']:.3f}): final accuracy SL {sl['final_accuracy']:.4f}, "
                   f"SFL-V1 {v1['final_accuracy']:.4f} (FedAvg {fed['final_accuracy']:.4f}), SFL-V2 "
                   f"{v2['final_accuracy']:.4f}; simulated s SFL {v1['sim_time_s']:.0f} vs FedAvg {fed['sim_time_s']:.0f}; "
                   f"SL's (nodes in sequence) {sl['sim_time_s']:.0f} s is {sl['sim_time_s'] / v2['sim_time_s']:.1f}x "
                   f"SFL-V2's {v2['sim_time_s']:.0f} s.")
    sl1, v2_1 = by["SL, cut 1"], by["SFL-V2, cut 1"]
    if sl1["rounds_to_target"] is not None and v2_1["rounds_to_target"] is not None:
        out.append(f"- To {TARGET:.0%} at cut 1: SL {sl1['rounds_to_target']} rounds, {sl1['sim_s_to_target']:.0f} "
                   f"simulated s; SFL-V2 {v2_1['rounds_to_target']} rounds, {v2_1['sim_s_to_target']:.0f} simulated s.")
    out += ["- SL's rows are the same at every cut: with plain SGD (no optimizer state) and the full gradient at "
            "every step, serving the nodes one after another is sequential SGD over the cohort's data whatever "
            "the cut; only the bytes and the device share change. SFL-V1's accuracy equals FedAvg's by "
            "construction (the module docstring: SFLV1 is FedAvg on the full model); only its bytes, device share "
            "and so its simulated time differ. SFL-V2 differs by cut: the server part is updated sequentially "
            "(10 nodes' batches per local step), the device parts are averaged, so a deeper cut moves it towards "
            "FedAvg."]
    for r in a["runs"]:
        if r["group"] in ("pruned", "quantized"):
            out.append(f"- {r['label']}: {100 * (r['final_accuracy'] - fed['final_accuracy']):+.1f} points vs FedAvg, "
                       f"{(r['mb_up_per_round'] + r['mb_down_per_round']) / (fed['mb_up_per_round'] + fed['mb_down_per_round']):.3f}"
                       f"x its bytes, {r['sim_time_s'] / fed['sim_time_s']:.3f}x its simulated time.")
    return [*out, ""]


def main(argv: Sequence[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, one cost repeat")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2, help="cost section: A B repeats")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--render", type=Path, help="only re-write the Markdown report from this stored JSON")
    p.add_argument("--worker", choices=("jax", "numpy"), help=argparse.SUPPRESS)
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.render:   # re-write the .md from a stored .json (the report text changed, not the numbers)
        from common import write_report
        report = json.loads(args.render.read_text())
        write_report("split-lightweight", report, markdown_report, args.out_dir, args.render.stem.endswith("-quick"))
        return report
    if args.worker:
        print(json.dumps(worker_jax() if args.worker == "jax" else worker_numpy()), flush=True)
        return None
    from common import device_info, finish_report, load_average
    rounds, eval_every, repeats = (2, 1, 1) if args.quick else (args.rounds, args.eval_every, args.repeats)
    start, load_start = time.perf_counter(), load_average()
    command = " ".join(["python", "benchmarks/split_lightweight.py", *(sys.argv[1:] if argv is None else argv)])
    report = {"device": device_info(), "command": command,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "rounds": rounds, "eval_every": eval_every, "target": TARGET, "seed": 0}
    print("Accuracy on MNIST, tiered devices:", flush=True)
    report["accuracy"] = run_accuracy(rounds, eval_every)
    if not args.skip_cost:
        print("Cost: one SFL-V2 round for 100 clients vs a NumPy loop:", flush=True)
        report["cost"] = run_cost(repeats)
    return finish_report("split-lightweight", report, markdown_report, args.out_dir, args.quick, start, load_start)


if __name__ == "__main__":
    main()
