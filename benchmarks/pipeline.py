"""Pipeline partitioning: GPipe step time against the bubble formula, and a heterogeneous stage plan.

1. **GPipe step time vs microbatches** (``edgejax.parallel.pipeline_value_and_grad``): one
   forward+backward of an MLP 256 -> 7 x 256 -> 256 (8 dense layers of 256 x 256, so the
   pipeline's uniform-width padding costs nothing) on a batch of 256, unpartitioned on one
   device and as a pipeline of S = 4 stages (2 layers each) for M in {1, 2, 4, 8}.  Beside the
   measured time: GPipe's bubble ``(S - 1) / (M + S - 1)`` and the time the formula predicts
   for S independent devices, ``t_1 * (M + S - 1) / (M S)`` (``t_1`` the unpartitioned step).
2. **Stage plans on heterogeneous devices** (``edgejax.parallel.plan_stages``, PipeDream-style
   dynamic programming): the MLP above and an MLP 784-512-256-128-64-10 over 4 devices of 2, 1,
   0.5 and 1 GFLOP/s linked at 100 Mbit/s, batch 64: per-stage compute, activation bytes, bubble
   and simulated time for M in {1, 2, 4, 8}, next to a naive split by layer count.

The script sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` for its own process.
Run::

    python benchmarks/pipeline.py            # the default run (about 1-2 min on a shared 2-core CPU)
    python benchmarks/pipeline.py --quick    # smoke run (*-quick files)
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import datetime  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edgejax as ej  # noqa: E402
from common import device_info, finish_report, load_average, report_header  # noqa: E402
from edgejax.parallel import pipeline_value_and_grad, plan_stages  # noqa: E402
from edgejax.parallel.stages import dense_layers, layer_train_flops  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STAGES, WIDTH, DEPTH, BATCH = 4, 256, 8, 256
HETERO_SPEEDS = [2e9, 1e9, 0.5e9, 1e9]          # FLOP/s
HETERO_BANDWIDTH = 100e6 / 8                     # 100 Mbit/s in bytes/s
HETERO_BATCH = 64


def timed(fn, args, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_microbatches(microbatches: Sequence[int], repeats: int) -> dict:
    model = ej.models.mlp((WIDTH,), WIDTH, hidden=(WIDTH,) * (DEPTH - 1))
    params = model.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(BATCH, WIDTH)), jnp.float32)
    y = jnp.asarray(rng.integers(0, WIDTH, BATCH), jnp.int32)
    w = jnp.ones((BATCH,), jnp.float32)
    single = jax.jit(jax.value_and_grad(lambda p, x, y, w: model.loss.fn(model.apply(p, x), y, w)))
    t1 = timed(single, (params, x, y, w), repeats)
    mesh = Mesh(np.array(jax.devices()[:STAGES]), ("stages",))
    rows = []
    for m in microbatches:
        t = timed(jax.jit(pipeline_value_and_grad(model, mesh, None, m)), (params, x, y, w), repeats)
        bubble = (STAGES - 1) / (m + STAGES - 1)
        rows.append({"microbatches": m, "time_s": t, "ratio_to_single": t / t1, "bubble": bubble,
                     "formula_time_s": t1 * (m + STAGES - 1) / (m * STAGES)})
        print(f"  M={m}: {t * 1e3:.1f} ms ({t / t1:.2f}x one device), bubble {bubble:.2f}", flush=True)
    return {"model": model.name, "batch": BATCH, "stages": STAGES, "single_time_s": t1, "rows": rows}


def plan_rows(model, microbatches: Sequence[int]) -> dict:
    """The best plan for every M, and the naive split by layer count at the largest M, same cost model."""
    cost = {"batch_size": HETERO_BATCH, "bandwidth": HETERO_BANDWIDTH}
    plans = []
    for m in microbatches:
        plan = plan_stages(model, HETERO_SPEEDS, microbatches=m, **cost)
        plans.append({"microbatches": m, "stage_of_layer": plan.stage_of_layer, "compute_s": plan.compute_s,
                      "transfer_s": plan.transfer_s, "activation_bytes": plan.activation_bytes,
                      "bubble": plan.bubble_fraction, "pipeline_time_s": plan.pipeline_time_s,
                      "single_device_s": plan.single_device_s, "ratio": plan.ratio_to_single_device})
    groups = np.array_split(np.arange(len(dense_layers(model))), len(HETERO_SPEEDS))
    naive_split = tuple(s for s, group in enumerate(groups) for _ in group)
    naive = plan_stages(model, HETERO_SPEEDS, microbatches=microbatches[-1], stage_of_layer=naive_split, **cost)
    return {"model": model.name, "layer_train_flops": layer_train_flops(dense_layers(model)).tolist(), "plans": plans,
            "naive": {"microbatches": naive.microbatches, "stage_of_layer": naive.stage_of_layer,
                      "stage_time_s": naive.stage_time_s, "pipeline_time_s": naive.pipeline_time_s,
                      "ratio": naive.ratio_to_single_device}}


def markdown_report(report: dict) -> str:
    lines = report_header("pipeline partitioning", report)
    mb = report["microbatches"]
    lines += ["## 1. GPipe step time vs microbatches", "",
              f"{mb['model']}, batch {mb['batch']}, S = {mb['stages']} stages on 4 of the 8 host devices; one "
              f"forward+backward (`value_and_grad`), median of {report['repeats']} calls. Unpartitioned on one device: "
              f"{mb['single_time_s'] * 1e3:.1f} ms.", "",
              "| M | pipeline ms | / one device | bubble (S-1)/(M+S-1) | formula ms, S free devices |",
              "|---|---|---|---|---|"]
    for r in mb["rows"]:
        lines.append(f"| {r['microbatches']} | {r['time_s'] * 1e3:.1f} | {r['ratio_to_single']:.2f}x | "
                     f"{r['bubble']:.3f} | {r['formula_time_s'] * 1e3:.1f} |")
    lines += ["", f"- {report['findings'][0]}", ""]
    lines += ["## 2. Stage plans on heterogeneous devices", "",
              f"Devices of {', '.join(f'{v / 1e9:g}' for v in HETERO_SPEEDS)} GFLOP/s in this order (stage s on "
              f"device s), links of {HETERO_BANDWIDTH * 8 / 1e6:g} Mbit/s, batch {HETERO_BATCH}, float32 activations; "
              "the cost model of `edgejax.parallel.stages` (simulated, not measured).", ""]
    for het in report["plans"]:
        lines += [f"### {het['model']}", "", "Training FLOPs per sample per layer: "
                  f"{', '.join(f'{f / 1e6:.2f}M' for f in het['layer_train_flops'])}.", "",
                  "| M | layer -> stage | compute ms per microbatch | transfer ms | activation bytes | bubble | "
                  "pipeline ms | / fastest device alone |", "|---|---|---|---|---|---|---|---|"]
        for p in het["plans"]:
            lines.append(f"| {p['microbatches']} | {p['stage_of_layer']} | "
                         f"{', '.join(f'{c * 1e3:.2f}' for c in p['compute_s'])} | "
                         f"{', '.join(f'{c * 1e3:.2f}' for c in p['transfer_s'])} | {p['activation_bytes']} | "
                         f"{p['bubble']:.3f} | {p['pipeline_time_s'] * 1e3:.2f} | {p['ratio']:.2f}x |")
        naive = het["naive"]
        lines += ["", f"Naive split by layer count {naive['stage_of_layer']} at M = {naive['microbatches']}: stage "
                  f"times {', '.join(f'{t * 1e3:.2f}' for t in naive['stage_time_s'])} ms, pipeline "
                  f"{naive['pipeline_time_s'] * 1e3:.2f} ms ({naive['ratio']:.2f}x the fastest device alone).", ""]
    lines += [f"- {text}" for text in report["findings"][1:]] + [""]
    return "\n".join(lines)


def findings(report: dict) -> list[str]:
    mb = report["microbatches"]
    rows = mb["rows"]
    best = min(rows, key=lambda r: r["time_s"])
    return [f"Measured on {report['device']['device_count']} XLA host devices that share the host's "
            f"{report['device']['host_cpu_count']} cores: the 4 stage devices cannot run at once, so the wall clock "
            "shows the pipeline's overhead (ppermute copies, the padded schedule's idle-tick filler compute, "
            "the replicated parameters and the gradient psum), not its speed-up. The fastest pipeline "
            f"(M = {best['microbatches']}) took {best['ratio_to_single']:.2f}x the unpartitioned step; the bubble "
            "column is what a pipeline of independent devices would lose, and the formula column the time it would "
            "take. Every tick computes a full stage (idle ticks on masked filler), so the schedule's compute is "
            "(M + S - 1) / M of the real work: more microbatches cut that waste, smaller microbatches cost more "
            "per sample."] + [plan_finding(het) for het in report["plans"]]


def plan_finding(het: dict) -> str:
    best, naive = het["plans"][-1], het["naive"]
    flops = het["layer_train_flops"]
    text = (f"{het['model']} at M = {best['microbatches']}: the plan {best['stage_of_layer']} takes "
            f"{best['pipeline_time_s'] * 1e3:.1f} ms ({best['ratio']:.2f}x the fastest device alone), the naive "
            f"split {naive['pipeline_time_s'] * 1e3:.1f} ms.")
    if max(flops) > 0.5 * sum(flops):
        text += (f" Its largest layer holds {max(flops) / sum(flops):.0%} of the FLOPs and cannot be split, so no "
                 "4-stage pipeline beats the fastest device alone here.")
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 9, --quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run; writes *-quick files")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    command = ["python", "benchmarks/pipeline.py", *(sys.argv[1:] if argv is None else argv)]
    start, load_start = time.perf_counter(), load_average()
    repeats = args.repeats or (1 if args.quick else 9)
    microbatches = (1, 4) if args.quick else (1, 2, 4, 8)
    report = {"device": device_info(), "command": " ".join(command),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "repeats": repeats}
    print(f"edgejax pipeline on {report['device']['device_kind']} x{report['device']['device_count']}", flush=True)
    report["microbatches"] = bench_microbatches(microbatches, repeats)
    report["plans"] = [plan_rows(model, (1, 2, 4, 8)) for model in (
        ej.models.mlp((WIDTH,), WIDTH, hidden=(WIDTH,) * (DEPTH - 1)), ej.models.mlp((784,), 10, hidden=(512, 256, 128, 64)))]
    report["findings"] = findings(report)
    return finish_report("pipeline", report, markdown_report, args.out_dir, args.quick, start, load_start)


if __name__ == "__main__":
    main()
