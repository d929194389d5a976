"""The figures only an accelerator can give, in one command of a few minutes.

1. **A vmapped W2 round against the shared-weight ceiling**: N clients (1,024 on an
   accelerator) of 8 MNIST images each (drawn with replacement from the t10k file's first
   8,000; random images of MNIST's shape when the file is absent, said in the report), the
   MLP 784-200-200-10, 4 local SGD steps of batch 4, every client in every round, all of them
   one ``vmap`` (``LocalTraining(group_size=None)``), through ``Simulation``; next to one
   shared-weight model taking the same 4 steps on the N x 4 batch (the same FLOPs, the upper
   bound of vmapping).
2. **A 64-point sweep against 64 sequential runs** (``benchmarks/sweep.py``'s section 1:
   digits, 100 nodes, 50 rounds), every strategy, first call (with compilation) and second.

On a CPU it runs a smoke version (N = 64, 8 sweep points of 5 rounds, about a minute) that
``tests/test_device_check.py`` executes.  Writes ``results/device_check-<backend>[-quick].json``
and ``.md`` with the device named.  Run::

    python benchmarks/device_check.py            # under 8 minutes on one GPU
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, finish_report, load_average, report_header  # noqa: E402
from sweep import bench_sweep  # noqa: E402

import edgejax as ej  # noqa: E402
from edgejax.data.federated import FederatedData, pad_nodes, pad_test  # noqa: E402
from edgejax.models import weighted_cross_entropy  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STEPS, BATCH, SAMPLES, LR = 4, 4, 8, 0.05


def w2_data(n: int, seed: int = 0) -> tuple[FederatedData, str]:
    """N clients x 8 images of MNIST t10k's first 8,000 (random ones when the file is absent)."""
    rng = np.random.default_rng(seed)
    try:
        mnist = ej.data.load_mnist()
        x, y, source = mnist.x_train, mnist.y_train, "MNIST t10k"
    except OSError:   # no MNIST files
        x = rng.random((8000, 28, 28, 1), dtype=np.float32)
        y, source = rng.integers(0, 10, 8000).astype(np.int32), "random images of MNIST's shape"
    parts = list(rng.integers(0, len(y), (n, SAMPLES)))
    data = FederatedData(train=pad_nodes(x, y, parts), local_test=pad_nodes(x, y, [p[:1] for p in parts]),
                         test=pad_test(x[:1024], y[:1024]), num_classes=10, name="w2")
    return data, source


def time_calls(fn, repeats: int) -> dict:
    """First call (with compilation) and the median of ``repeats`` further calls, in seconds."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first, times = time.perf_counter() - start, []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return {"first_s": first, "median_s": float(np.median(times))}


def bench_w2(n: int, rounds: int, repeats: int) -> dict:
    """ms per vmapped W2 round (a chunk of ``rounds``) and per ceiling step group."""
    data, source = w2_data(n)
    model = ej.models.mlp(data.feature_shape, 10, hidden=(200, 200))
    local = ej.LocalTraining(batch_size=BATCH, steps=STEPS, group_size=None)
    sim = ej.Simulation(model, data, ej.FedAvg(), local, clients_per_round=n)
    hp = sim.hparams({"client_lr": LR})
    held = [sim._jit_init(jax.random.PRNGKey(0), hp)]

    def chunk():   # the chunk is given (donated) its state and returns the next one
        held[0], metrics, _ = sim._jit_chunk(held[0], sim.data, hp, rounds, rounds)
        return metrics

    vmapped = time_calls(chunk, repeats)

    def steps(params, x, y):
        def one(p, _):
            grads = jax.grad(lambda q: weighted_cross_entropy(model.apply(q, x), y, jnp.ones(y.shape, jnp.float32)))(p)
            return optax.apply_updates(p, jax.tree_util.tree_map(lambda g: -LR * g, grads)), None
        return jax.lax.scan(one, params, None, length=STEPS)[0]

    x = jnp.asarray(np.asarray(data.train.x)[:, :BATCH].reshape(n * BATCH, *data.feature_shape))
    y = jnp.asarray(np.asarray(data.train.y)[:, :BATCH].reshape(n * BATCH))
    ceiling_fn, params = jax.jit(steps), model.init(jax.random.PRNGKey(0))
    ceiling = time_calls(lambda: ceiling_fn(params, x, y), repeats)
    return {"nodes": n, "rounds": rounds, "source": source, "round_ms": 1e3 * vmapped["median_s"] / rounds,
            "ceiling_ms": 1e3 * ceiling["median_s"], "compile_s": vmapped["first_s"] - vmapped["median_s"]}


def markdown(report: dict) -> str:
    lines = report_header("device check", report)
    w2 = report["w2"]
    lines += [f"## 1. A vmapped W2 round against the shared-weight ceiling (N = {w2['nodes']}, {w2['source']})", "",
              "| way | ms | ratio to the ceiling |", "|---|---:|---:|",
              f"| vmapped round (FedAvg, every client, {STEPS} steps of batch {BATCH}; chunk of {w2['rounds']}) "
              f"| {w2['round_ms']:.2f} | {w2['round_ms'] / w2['ceiling_ms']:.2f}x |",
              f"| ceiling ({STEPS} shared-weight steps on the {w2['nodes']} x {BATCH} batch) | {w2['ceiling_ms']:.2f} "
              "| 1.00x |", "", f"The round chunk compiled in {w2['compile_s']:.1f} s.", ""]
    sw = report["sweep"]
    seq = sw["ways"]["run() x P"]
    lines += [f"## 2. A {sw['points']}-point sweep against {sw['points']} sequential `run()` calls "
              f"({sw['rounds']} rounds each)", "",
              "| way | first call (s) | second call (s) | speed-up vs run() x P, first / second | max abs diff |",
              "|---|---:|---:|---:|---:|"]
    for name, t in sw["ways"].items():
        diff = f"{t['max_abs_diff_vs_run']:.1e}" if "max_abs_diff_vs_run" in t else "(reference)"
        lines.append(f"| {name} | {t['first']:.2f} | {t['second']:.2f} | {seq['first'] / t['first']:.2f}x / "
                     f"{seq['second'] / t['second']:.2f}x | {diff} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    smoke = jax.default_backend() == "cpu"
    start, load_start = time.perf_counter(), load_average()
    report = {"date": datetime.date.today().isoformat(), "device": device_info(),
              "command": "python benchmarks/device_check.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    report["device"]["slug"] = report["device"]["backend"]
    report["w2"] = bench_w2(64, 5, 3) if smoke else bench_w2(1024, 50, 5)
    report["sweep"] = bench_sweep(5, 2, (0.1, 0.3, 0.03, 1.0)) if smoke else bench_sweep(50, 16, (0.03, 0.1, 0.3, 1.0))
    return finish_report("device_check", report, markdown, args.out_dir, smoke, start, load_start)


if __name__ == "__main__":
    main()
