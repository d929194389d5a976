"""Seconds to the first result: where a fresh process's time goes before and while it trains.

Two jobs, each run end to end in a fresh Python process pinned to one core
(``taskset -c 1``; the sides take turns, A B C A B C, ``--repeats`` times):

* ``edgejax run``: the command with no arguments (FedAvg, digits, 100 nodes, 10 a round,
  MLP 64-128-10, 100 rounds, an evaluation every 10), through ``edgejax.cli.main``;
* W1, through the Python API: the same setting for 50 rounds (``Simulation.run``), next to
  a plain NumPy loop over the clients of the same job (its own partition of the same data,
  the same model, schedule and evaluations) for the end-to-end ratio.

Each edgejax job runs without the persistent compilation cache, with a cold one (an empty
folder) and with a warm one (the same folder again); W1 switches it on with
``edgejax.enable_compilation_cache``.  Inside the process jax's monitoring events give
every compilation (name, tracing, lowering to MLIR, XLA compile or cache load): the report
counts the programs and splits the wall time into import, data loading, tracing, lowering,
XLA compile and the rest (execution and host work), each instant charged to one phase.

Run::

    python benchmarks/startup.py               # about 5 minutes on a 2-core CPU
    python benchmarks/startup.py --quick       # one repeat; *-quick files
"""
from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402  (the clock starts before any import)
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

HERE = Path(__file__).resolve()
RESULTS_DIR = HERE.parent / "results"
JOBS = ("edgejax run", "W1")
CACHES = ("no cache", "cold cache", "warm cache")
# phases by priority: an instant inside a compile that runs inside data loading is compile time
PHASES = ("XLA compile (or cache load)", "lowering to MLIR", "tracing", "data loading")
EVENTS = {"/jax/core/compile/backend_compile_duration": PHASES[0],
          "/jax/core/compile/jaxpr_to_mlir_module_duration": PHASES[1],
          "/jax/core/compile/jaxpr_trace_duration": PHASES[2]}
# XLA:CPU options tried on W1's programs (each must give the same bits as the default)
XLA_OPTIONS = {"default": {}, "no fusion emitters": {"xla_cpu_use_fusion_emitters": False},
               "backend optimization level 1": {"xla_backend_optimization_level": 1}}
W1 = {"nodes": 100, "clients_per_round": 10, "rounds": 50, "hidden": 128, "batch_size": 10, "lr": 0.1,
      "eval_every": 10, "alpha": 0.5, "min_size": 5, "local_test_fraction": 0.2, "seed": 0}


# ----- inside the measured process ---------------------------------------------------------
def child(job: str, out_dir: str, cache: str | None) -> dict:
    """Run ``job`` once, recording every compilation; returns the phase times and programs."""
    import edgejax
    from edgejax.cli import main as cli_main

    t_import = time.time()
    spans, programs = [], []

    def on_span(event, start, end, **kwargs):
        if event in EVENTS:
            spans.append((EVENTS[event], start, end))
            if EVENTS[event] == PHASES[0]:
                programs.append((kwargs.get("fun_name", "?"), end - start))

    import jax

    jax.monitoring.register_event_time_span_listener(on_span)
    hits = []
    jax.monitoring.register_event_listener(lambda event, **_: hits.append(event)
                                           if event == "/jax/compilation_cache/cache_hits" else None)
    for module, name in ((edgejax.data, "load_dataset"), (edgejax, "federate"), (edgejax.data, "load_digits")):
        setattr(module, name, _timed(getattr(module, name), spans))
    if job == "edgejax run":
        with open(os.devnull, "w") as sink:
            stdout, sys.stdout = sys.stdout, sink
            try:
                cli_main(["run", "--no-progress", "--overwrite", "--out", out_dir])
            finally:
                sys.stdout = stdout
    else:
        if cache is not None:
            edgejax.enable_compilation_cache(cache)
        w1_edgejax()
    end = time.time()
    return {"import": t_import - T0, "total": end - T0, **_charge(spans, t_import, end),
            "programs": len(programs), "cache_hits": len(hits),
            "largest": sorted(programs, key=lambda p: -p[1])}


def _timed(fn, spans):
    def timed(*args, **kwargs):
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            spans.append((PHASES[3], start, time.time()))
    return timed


def _charge(spans, start: float, end: float) -> dict:
    """Seconds of each phase between ``start`` and ``end``, each instant charged to the
    highest-priority phase running then; the remainder is execution and host work."""
    cuts = sorted({start, end, *(t for _, a, b in spans for t in (a, b) if start <= t <= end)})
    out = dict.fromkeys(PHASES, 0.0)
    for a, b in zip(cuts, cuts[1:]):
        active = [PHASES.index(p) for p, s, e in spans if s <= a and e >= b]
        if active:
            out[PHASES[min(active)]] += b - a
    out["execution and host work"] = end - start - sum(out.values())
    return out


def w1_edgejax():
    """W1 through the public API: ``federate`` + ``Simulation.run``."""
    import edgejax as ej

    data, _ = ej.federate(ej.data.load_digits(seed=W1["seed"]), W1["nodes"],
                          ej.data.Dirichlet(W1["alpha"], min_size=W1["min_size"]), seed=W1["seed"],
                          local_test_fraction=W1["local_test_fraction"])
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(W1["hidden"],))
    sim = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=W1["batch_size"], epochs=1),
                        clients_per_round=W1["clients_per_round"])
    res = sim.run(W1["rounds"], seed=W1["seed"], hparams={"client_lr": W1["lr"]}, eval_every=W1["eval_every"])
    return float(res.last_eval()["test_accuracy"])


def w1_options(options: dict, rounds: int = 500) -> dict:
    """W1's init and round-chunk programs compiled with XLA ``options``: compile seconds, ms per
    round (``rounds`` rounds after a warm-up chunk) and a digest of the final state's bits."""
    import hashlib

    import jax
    import numpy as np

    import edgejax as ej

    data, _ = ej.federate(ej.data.load_digits(seed=W1["seed"]), W1["nodes"],
                          ej.data.Dirichlet(W1["alpha"], min_size=W1["min_size"]), seed=W1["seed"])
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(W1["hidden"],))
    sim = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=W1["batch_size"], epochs=1),
                        clients_per_round=W1["clients_per_round"])
    hp, key, k = sim.hparams({"client_lr": W1["lr"]}), jax.random.PRNGKey(W1["seed"]), W1["eval_every"]
    start = time.time()
    init = jax.jit(sim.init).lower(key, hp).compile(options or None)
    t_init = time.time()
    state = init(key, hp)
    chunk = jax.jit(sim.run_chunk, static_argnums=(3,)).lower(state, sim.data, hp, k, k).compile(options or None)
    t_chunk = time.time()
    state = jax.block_until_ready(chunk(state, sim.data, hp, k)[0])
    run_start = time.time()
    for _ in range(rounds // k):
        state = chunk(state, sim.data, hp, k)[0]
    jax.block_until_ready(state)
    per_round = (time.time() - run_start) / rounds
    digest = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(state)))
    return {"init compile": t_init - start, "chunk compile": t_chunk - t_init, "ms per round": 1e3 * per_round,
            "state digest": digest.hexdigest()[:12]}


def w1_numpy() -> dict:
    """W1 as a plain NumPy loop over the sampled clients (float32, one process, no jax)."""
    import gzip
    import importlib.util

    import numpy as np

    start = time.time()
    folder = Path(next(iter(importlib.util.find_spec("sklearn").submodule_search_locations)))
    with gzip.open(folder / "datasets" / "data" / "digits.csv.gz", "rt") as f:
        raw = np.loadtxt(f, delimiter=",")
    x, y = (raw[:, :-1] / 16.0).astype(np.float32), raw[:, -1].astype(np.int64)
    rng = np.random.default_rng(W1["seed"])
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:round(0.2 * np.sum(y == c))] for c in range(10)])
    train = np.setdiff1d(np.arange(len(y)), test)
    while True:   # Dirichlet(alpha) label skew, every node with at least min_size samples
        shares = rng.dirichlet([W1["alpha"]] * W1["nodes"], size=10)
        parts = [[] for _ in range(W1["nodes"])]
        for c in range(10):
            idx = rng.permutation(train[y[train] == c])
            for node, chunk in enumerate(np.split(idx, (np.cumsum(shares[c]) * len(idx)).astype(int)[:-1])):
                parts[node].extend(chunk.tolist())
        if min(map(len, parts)) >= W1["min_size"]:
            break
    nodes = []
    for part in parts:
        part = rng.permutation(part)
        k = int(round(W1["local_test_fraction"] * len(part)))
        nodes.append((part[k:], part[:k]))
    t_data = time.time()
    w0 = (rng.standard_normal((64, W1["hidden"])) * np.sqrt(2 / 64)).astype(np.float32)
    params = [w0, np.zeros(W1["hidden"], np.float32),
              (rng.standard_normal((W1["hidden"], 10)) * np.sqrt(1 / W1["hidden"])).astype(np.float32),
              np.zeros(10, np.float32)]

    def forward(p, xb):
        h = np.maximum(xb @ p[0] + p[1], 0)
        z = h @ p[2] + p[3]
        z = z - z.max(axis=1, keepdims=True)
        prob = np.exp(z)
        return h, prob / prob.sum(axis=1, keepdims=True)

    def evaluate(p):
        prob = forward(p, x[test])[1]
        local = [np.mean(forward(p, x[t])[1].argmax(1) == y[t]) for _, t in nodes if len(t)]
        return {"test_accuracy": float(np.mean(prob.argmax(1) == y[test])),
                "test_loss": float(-np.mean(np.log(prob[np.arange(len(test)), y[test]] + 1e-12))),
                "local_accuracy": np.percentile(local, (10, 50, 90)).tolist()}

    evals = [evaluate(params)]
    for r in range(W1["rounds"]):
        cohort = rng.choice(W1["nodes"], W1["clients_per_round"], replace=False)
        updates, weights, losses = [], [], []
        for node in cohort:
            p = [a.copy() for a in params]
            own = nodes[node][0]
            for batch in np.array_split(rng.permutation(own), -(-len(own) // W1["batch_size"])):
                h, prob = forward(p, x[batch])
                losses.append(-np.mean(np.log(prob[np.arange(len(batch)), y[batch]] + 1e-12)))
                dz = prob
                dz[np.arange(len(batch)), y[batch]] -= 1
                dz /= len(batch)
                dh = (dz @ p[2].T) * (h > 0)
                grads = [x[batch].T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]
                p = [a - np.float32(W1["lr"]) * g for a, g in zip(p, grads)]
            updates.append(p)
            weights.append(len(own))
        w = np.asarray(weights, np.float32) / sum(weights)
        params = [sum(wi * u[i] for wi, u in zip(w, updates)) for i in range(4)]
        if (r + 1) % W1["eval_every"] == 0:
            evals.append(evaluate(params))
    end = time.time()
    return {"import": 0.0, "data loading": t_data - start, "total": end - T0, "final": evals[-1]}


# ----- the driver --------------------------------------------------------------------------
def _measure(job: str, cache_state: str, tmp: Path, cache: Path, core: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "EDGEJAX_CACHE"))}
    env["EDGEJAX_COMPILATION_CACHE"] = "0" if cache_state == "no cache" else "1"
    env["EDGEJAX_CACHE_DIR"] = str(cache)
    args = [job, str(tmp / "run"), "" if cache_state == "no cache" else str(cache)]
    load = os.getloadavg()[0]
    start = time.time()
    done = subprocess.run(["taskset", "-c", str(core), sys.executable, str(HERE), "--child", *args], env=env,
                          check=True, capture_output=True, text=True)
    wall = time.time() - start
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall": wall, "load": load}


def measure_options(repeats: int, core: int) -> dict:
    """``w1_options`` for each of ``XLA_OPTIONS``, in fresh pinned processes, taking turns."""
    out = {name: [] for name in XLA_OPTIONS}
    env = {**os.environ, "EDGEJAX_COMPILATION_CACHE": "0"}
    for _ in range(repeats):
        for name, options in XLA_OPTIONS.items():
            load = os.getloadavg()[0]
            done = subprocess.run(["taskset", "-c", str(core), sys.executable, str(HERE), "--child", "options",
                                   json.dumps(options), ""], env=env, check=True, capture_output=True, text=True)
            out[name].append({**json.loads(done.stdout.strip().splitlines()[-1]), "load": load})
        print("XLA options:", {k: v[-1] for k, v in out.items()}, flush=True)
    return out


def measure(repeats: int, tmp: Path, core: int) -> dict:
    """Every (job, cache state) and the NumPy loop, ``repeats`` times, taking turns."""
    out = {f"{job}, {c}": [] for job in JOBS for c in CACHES}
    out["W1, NumPy loop"] = []
    for i in range(repeats):
        for job in JOBS:
            cache = tmp / f"cache-{job.replace(' ', '-')}-{i}"
            for state in CACHES:
                out[f"{job}, {state}"].append(_measure(job, state, tmp, cache, core))
            if job == "W1":
                out["W1, NumPy loop"].append(_measure("numpy", "no cache", tmp, cache, core))
        print(f"repeat {i + 1}:", {k: f"{v[-1]['wall']:.2f} s" for k, v in out.items()}, flush=True)
    return out


def _best(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: r["wall"])


def markdown(report: dict) -> str:
    import numpy as np

    sys.path.insert(0, str(HERE.parent))
    from common import report_header

    lines = report_header("seconds to the first result", report)
    runs = report["runs"]
    lines += [f"Each row: a fresh process pinned to one core (`taskset -c {report['core']}`), wall time from launch to exit; "
              "the 1-minute load average before each run (the machine may be shared: read it).", "",
              "## 1. End to end (s)", "",
              "| job | runs (load before each) | best | programs compiled or loaded | cache hits |",
              "|---|---|---:|---:|---:|"]
    for name, rows in runs.items():
        listed = ", ".join(f"{r['wall']:.2f} ({r['load']:.1f})" for r in rows)
        best = _best(rows)
        counts = "" if "programs" not in best else f"{best['programs']} | {best['cache_hits']}"
        lines.append(f"| {name} | {listed} | {best['wall']:.2f} | {counts or '- | -'} |")
    numpy_best = _best(runs["W1, NumPy loop"])["wall"]
    lines += ["", "W1 end to end, edgejax / NumPy loop (best of each): " + ", ".join(
        f"{state} {_best(runs[f'W1, {state}'])['wall'] / numpy_best:.2f}x" for state in CACHES) + ".", "",
        "## 2. Where the time goes (s, the best run of each; each instant charged to one phase)", "",
        "| phase | " + " | ".join(k for k in runs if not k.endswith("NumPy loop")) + " |",
        "|---|" + "---:|" * (len(runs) - 1)]
    shown = [k for k in runs if not k.endswith("NumPy loop")]
    for phase in ("import", "data loading", *PHASES[2::-1], "execution and host work", "total"):
        lines.append(f"| {phase} | " + " | ".join(f"{_best(runs[k])[phase]:.2f}" for k in shown) + " |")
    lines += ["", "(`total` is the time inside the process; the wall time above adds the interpreter's start.)",
              "", "## 3. The largest programs (no cache, best run; s of XLA compile)", ""]
    for job in JOBS:
        largest = _best(runs[f"{job}, no cache"])["largest"][:4]
        lines.append(f"- {job}: " + ", ".join(f"`{name}` {s:.2f}" for name, s in largest))
    options = report["xla_options"]
    lines += ["", "## 4. XLA:CPU options on W1's programs (fresh processes, taking turns; median of the runs)", "",
              "| options | init compile (s) | round chunk compile (s) | ms per round (500 rounds) | same bits as default "
              "| load before each |", "|---|---:|---:|---:|---|---|"]
    reference = options["default"][0]["state digest"]
    for name, rows in options.items():
        med = {k: float(np.median([r[k] for r in rows])) for k in ("init compile", "chunk compile", "ms per round")}
        same = "yes" if all(r["state digest"] == reference for r in rows) else "NO"
        lines.append(f"| {name} (`{json.dumps(XLA_OPTIONS[name])}`) | {med['init compile']:.2f} | "
                     f"{med['chunk compile']:.2f} | {med['ms per round']:.3f} | {same} | "
                     + ", ".join(f"{r['load']:.1f}" for r in rows) + " |")
    final = _best(runs["W1, NumPy loop"])["final"]
    lines += ["", f"The NumPy loop's final test accuracy: {final['test_accuracy']:.4f} (its own partition and "
              "initialisation, so not the same number as edgejax's).", ""]
    lines += ["## Findings", "", *[f"- {f}" for f in report.get("findings", [])]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per job and cache state")
    parser.add_argument("--core", type=int, default=1, help="the core every measured process is pinned to")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--findings", type=Path, help="a text file of findings, one a line, for the report")
    parser.add_argument("--child", nargs=3, metavar=("JOB", "OUT", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job, out, cache = args.child
        if job == "options":
            result = w1_options(json.loads(out))
        else:
            result = w1_numpy() if job == "numpy" else child(job, out, cache or None)
        print(json.dumps(result))
        return result
    sys.path.insert(0, str(HERE.parent))
    from common import device_info, finish_report, load_average

    start, load_start = time.perf_counter(), load_average()
    report = {"date": datetime.date.today().isoformat(), "device": device_info(),
              "command": "python benchmarks/startup.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "core": args.core}
    with tempfile.TemporaryDirectory() as tmp:
        report["runs"] = measure(1 if args.quick else args.repeats, Path(tmp), args.core)
    report["xla_options"] = measure_options(1 if args.quick else args.repeats, args.core)
    if args.findings:
        report["findings"] = [line for line in args.findings.read_text().splitlines() if line.strip()]
    return finish_report("startup", report, markdown, args.out_dir, args.quick, start, load_start)


if __name__ == "__main__":
    main()
