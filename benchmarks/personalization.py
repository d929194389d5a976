"""Personalization on a pathological non-IID split: global vs personalized accuracy per method.

MNIST (the 10,000 t10k digits at ``../shared/data``: the first 8,000 train, the last 2,000 are
the global test set) split over 50 nodes with ``Shards(2)`` (McMahan et al.'s sorted shards:
mostly 2 classes a node; partition seed 0, the same for every run), each node holding 20% of its
samples out as its own test split (``data.local_test``).  An MLP 784-200-10, 10 nodes a round, 40
rounds, 1 local epoch of batch 10, SGD with client lr 0.05.  Methods (library defaults unless
named): FedAvg (global model only), ``FineTuned(FedAvg())`` (every node's full local epoch from
the new global model), ``Ditto()`` (``ditto_lambda`` 0.1), ``FedRep(model, head=("dense_1",))``
(10 head epochs, then the body epoch), ``APFL(model)`` (fixed ``apfl_alpha`` 0.25).  Seeds 0, 1, 2
(run keys: model init, cohorts, minibatches).

Each method is one ``Simulation.sweep(ROUNDS, None, seeds=(0, 1, 2), eval_every=10)``, saved as a
sweep folder under ``benchmarks/results/personalization-runs/<method>/`` (evals.csv, rounds.csv,
sweep.json); the tables are the library's own (``edgejax.sweep.load`` / ``summarize`` /
``to_markdown``, what ``edgejax table`` prints), one per metric: ``test_accuracy`` (global model,
global test set), ``node_accuracy_mean`` (global model on each node's own split) and
``own_accuracy_mean`` / ``_p10`` / ``_min`` (each node's personalized model on its own split).
A sweep keeps no final states, so every seed is also run once with
``sim.run`` and ``ej.algorithms.personalized_report(sim, final_state)`` gives ``personal_*`` /
``global_*`` ``mean``, ``worst10``, ``std`` at the last round (FedAvg keeps no per-node models:
its personalized accuracy is its global model on the nodes' splits); that run's personal mean is
checked against the sweep's final ``own_accuracy_mean``.  Accuracies only; timing is not the point.

Results: ``benchmarks/results/personalization-<device>[-quick].json`` / ``.md``.  Run::

    python benchmarks/personalization.py            # about 3-5 min on a shared 2-core CPU
    python benchmarks/personalization.py --quick    # smoke run: 5 rounds, 2 seeds (*-quick files)
"""
from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import edgejax as ej
from common import device_info, finish_report, load_average, report_header  # noqa: E402  (benchmarks/common.py)
from edgejax.sweep import load, summarize, to_markdown

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NODES, COHORT, BATCH, LR, HIDDEN = 50, 10, 10, 0.05, (200,)
METHODS = ("fedavg", "finetune", "ditto", "fedrep", "apfl")
NOTES: tuple[str, ...] = (   # what the default run shows, written after reading it (--rewrite puts them in)
    "On Shards(2) every personalized method lifts each node's accuracy on its own split well above the "
    "global model's: mean 0.96-0.97 against FedAvg's 0.841, worst 10% 0.83-0.89 against 0.600, and the spread "
    "over nodes falls from 0.115 to 0.04-0.06. FedRep, Ditto and APFL are within about 0.01 of one another; "
    "fine-tuning has a similar mean but a lower worst 10% (0.827) and a wider spread (0.063).",
    "FineTuned, Ditto and APFL report exactly FedAvg's global model, seed for seed (their global update is "
    "FedAvg's, and the personal training draws from other key streams), so their global columns are FedAvg's.",
    "FedRep's 'global' model is the averaged body with the initial head (no head is ever averaged), so its "
    "global accuracy (0.19 ± 0.10) is not a usable global model, only a consequence of the design.",
    "Three seeds vary run keys only; the partition is the same (seed 0) in every run. 50 nodes, 40 rounds: "
    "a small setting, and the library defaults were not tuned per method.",
)
TABLE_METRICS = ("test_accuracy", "node_accuracy_mean", "own_accuracy_mean", "own_accuracy_p10", "own_accuracy_min")


def _algorithm(name: str, model):
    return {"fedavg": lambda: ej.FedAvg(), "finetune": lambda: ej.algorithms.FineTuned(ej.FedAvg()),
            "ditto": lambda: ej.algorithms.Ditto(),
            "fedrep": lambda: ej.algorithms.FedRep(model, head=("dense_1",)),
            "apfl": lambda: ej.algorithms.APFL(model)}[name]()


def _stats(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "seeds": v.tolist()}


def run_method(name: str, data, model, rounds: int, seeds: tuple[int, ...], eval_every: int, runs_dir: Path) -> dict:
    sim = ej.Simulation(model, data, _algorithm(name, model), ej.LocalTraining(batch_size=BATCH, epochs=1,
                                                                               optimizer="sgd"),
                        clients_per_round=COHORT)
    hp = {"client_lr": LR}
    t0 = time.perf_counter()
    res = sim.sweep(rounds, [hp], seeds=seeds, eval_every=eval_every)
    res.save(runs_dir / name)
    sweep_s = time.perf_counter() - t0
    final = {k: np.asarray(v)[:, -1].tolist() for k, v in res.evals.items()}
    per_seed = []
    for s in seeds:
        out = sim.run(rounds, seed=s, hparams=hp, eval_every=rounds)
        state = out.final_state
        rep = ej.algorithms.personalized_report(sim, state)
        if name == "fedavg":   # no per-node models: its personalized accuracy is the global model's
            rep |= {k.replace("global_", "personal_", 1): v for k, v in rep.items() if k.startswith("global_")}
        per_seed.append({"seed": s, "test_accuracy": float(out.evals["test_accuracy"][-1]),
                         **{k: float(v) for k, v in rep.items() if not k.endswith("_nodes")}})
    keys = [k for k in per_seed[0] if k != "seed"]
    summary = {k: _stats([p[k] for p in per_seed]) for k in keys}
    own = final.get("own_accuracy_mean")
    check = None if own is None else float(np.max(np.abs(np.asarray(own) - [p["personal_mean"] for p in per_seed])))
    print(f"  {name:<9} global {summary['test_accuracy']['mean']:.3f}  personal mean "
          f"{summary['personal_mean']['mean']:.3f} worst10 {summary['personal_worst10']['mean']:.3f}  "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"name": sim.algorithm.name, "sweep_final": final, "per_seed": per_seed, "summary": summary,
            "run_vs_sweep_own_mean_max_abs_diff": check, "wall_s": time.perf_counter() - t0, "sweep_wall_s": sweep_s}


def library_tables(runs_dir: Path) -> dict:
    folders = [runs_dir / m for m in METHODS]
    evals = load(folders)
    tables = {m: to_markdown(summarize(evals, m), m) for m in TABLE_METRICS}
    cli = subprocess.run([sys.executable, "-m", "edgejax.cli.main", "table", *map(str, folders)],
                         capture_output=True, text=True)
    return {"tables": tables, "cli_test_accuracy": cli.stdout if cli.returncode == 0 else None,
            "cli_stderr": cli.stderr[-2000:] if cli.returncode else "",
            "cli_matches": cli.returncode == 0 and cli.stdout.strip() == tables["test_accuracy"].strip()}


def _pm(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def markdown(report: dict) -> str:
    c = report["config"]
    lines = report_header("personalization on Shards(2)", report)
    lines += [f"Setting: MNIST t10k (8,000 train / 2,000 global test), `Shards({c['shards']})` over {c['nodes']} "
              f"nodes (partition seed 0), 20% of each node's samples its own test split, MLP 784-"
              f"{'-'.join(map(str, c['hidden']))}-10, {c['cohort']} nodes a round, {c['rounds']} rounds, 1 local "
              f"epoch of batch {c['batch']}, SGD client lr {c['lr']}; seeds {c['seeds']} (run keys). One machine, "
              "one process. All numbers are **accuracies** (fractions); timing is not measured.", "",
              "Methods: FedAvg; `FineTuned(FedAvg())` (every node one local epoch from the new global model); "
              "`Ditto()` (lambda 0.1); `FedRep(model, head=('dense_1',))` (10 head epochs + 1 body epoch); "
              "`APFL(model)` (alpha 0.25 fixed).", "",
              "## Global vs personalized accuracy (final round, mean ± std over seeds)", "",
              "From `sim.run` per seed and `ej.algorithms.personalized_report` on the final state. "
              "Global: the server model on the global test set, and on each node's own split (mean, worst "
              "10% = mean of the worst ceil(N/10) = 5 nodes). Personalized: each node's own model on its own "
              "split (FedAvg keeps none: its row repeats the global model on the nodes' splits).", "",
              "| method | global (test set) | global on nodes: mean | worst 10% | personalized: mean | worst 10% "
              "| spread (std over nodes) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in report["methods"]:
        s = m["summary"]
        lines.append(f"| {m['name']} | {_pm(s['test_accuracy'])} | {_pm(s['global_mean'])} | "
                     f"{_pm(s['global_worst10'])} | {_pm(s['personal_mean'])} | {_pm(s['personal_worst10'])} | "
                     f"{_pm(s['personal_std'])} |")
    lines += ["", "Check: each `sim.run`'s personalized mean against the sweep's final `own_accuracy_mean` "
              "(max abs difference over seeds): " + ", ".join(
                  f"{m['name']} {m['run_vs_sweep_own_mean_max_abs_diff']:.2g}" for m in report["methods"]
                  if m["run_vs_sweep_own_mean_max_abs_diff"] is not None) + ".", "",
              "## Library tables (`edgejax table`)", "",
              f"`edgejax.sweep.load` of the five sweep folders in `{c.get('runs_dir', 'benchmarks/results/personalization-runs')}/` (one "
              "per method), `summarize(evals, metric)` and `to_markdown` (mean ± std over seeds of the final and "
              f"the best evaluation; evaluations at round 0 and every {c['eval_every']} rounds, so 'best' includes "
              "round 0). "
              f"`edgejax table <folders>` run as a subprocess printed the same test_accuracy table: "
              f"{report['library']['cli_matches']}.", ""]
    for metric, table in report["library"]["tables"].items():
        lines += [f"`{metric}`:", "", table.rstrip(), ""]
    notes = report.get("notes") or []
    if notes:
        lines += ["## What it shows", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 5 rounds, seeds 0 and 1")
    p.add_argument("--rewrite", action="store_true",
                   help="only re-render the .md (with NOTES) from the stored .json of this mode")
    args = p.parse_args()
    if args.rewrite:
        import json
        from common import report_paths
        json_path, md_path = report_paths("personalization", {"device": device_info()}, RESULTS_DIR, args.quick)
        report = json.loads(json_path.read_text())
        report["notes"] = [] if args.quick else list(NOTES)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        md_path.write_text(markdown(report))
        print(f"rewrote {md_path}")
        return
    rounds, seeds, eval_every = (5, (0, 1), 5) if args.quick else (40, (0, 1, 2), 10)
    start, load_start = time.perf_counter(), load_average()
    dataset = ej.data.load_mnist()
    data, _ = ej.federate(dataset, NODES, ej.data.Shards(2), seed=0)
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=HIDDEN)
    runs_dir = RESULTS_DIR / ("personalization-runs" + ("-quick" if args.quick else ""))
    if runs_dir.exists():
        shutil.rmtree(runs_dir)
    print(f"personalization: {NODES} nodes, Shards(2), {rounds} rounds, seeds {seeds}", flush=True)
    methods = [run_method(m, data, model, rounds, seeds, eval_every, runs_dir) for m in METHODS]
    library = library_tables(runs_dir)
    report = {"benchmark": "personalization", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join(["python", "benchmarks/personalization.py", *sys.argv[1:]]),
              "device": device_info(),
              "config": {"dataset": "mnist-t10k", "nodes": NODES, "shards": 2, "cohort": COHORT, "rounds": rounds,
                         "eval_every": eval_every, "batch": BATCH, "lr": LR, "hidden": list(HIDDEN),
                         "seeds": list(seeds), "local_test_fraction": 0.2,
                         "runs_dir": f"benchmarks/results/{runs_dir.name}" + (" (removed after the smoke run)" if args.quick else "")},
              "methods": methods, "library": library, "notes": []}
    if args.quick:
        shutil.rmtree(runs_dir)   # the smoke run keeps only its report
    finish_report("personalization", report, markdown, RESULTS_DIR, args.quick, start, load_start)


if __name__ == "__main__":
    main()
