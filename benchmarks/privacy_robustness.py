"""Privacy and robustness on the aggregator seam: the cost of a DP round, accuracy against epsilon,
and aggregators against poisoned nodes.

* Cost: one FedAvg round (uniform weights) of 100 of 1,000 MNIST clients (8 images each, an MLP
  784-200-200-10, 4 local SGD steps of batch 4: the W2 population of ``benchmarks/async_workers.py``)
  with the mean (fused ``shared_base`` and ``per_node``), ``GaussianDP``, the coordinate-wise
  median and Krum; each side a fresh process pinned to core 1 (``taskset -c 1``), the sides
  alternating, timing the second compiled chunk of 20 rounds.
* Accuracy against epsilon: DP-FedAvg (``GaussianDP``, clip 0.5) on the same population for
  50 rounds, several noise multipliers, epsilon at delta 1e-5 from dp-accounting's RDP accountant
  (Poisson q = K / N = 0.1).
* Robustness: 500 clients with a Dirichlet(0.5) label split of MNIST t10k, an MLP 784-64-10, 1
  local epoch of batch 8, 30 rounds of 50 clients; 0, 10% or 20% of the clients poisoned (their
  features scaled by 100, a data-side attack the server cannot see); final test accuracy for
  the mean and each robust aggregator.
* Attacks (``ej.Attacked``): the same population and rounds; in every round 10% or 20% of the
  cohort sends a Byzantine update (sign flip x10, ALIE, IPM, Gaussian noise of std 1), drawn
  afresh each round; final test accuracy for the mean and each robust aggregator.

Results: ``benchmarks/results/privacy-robustness-<device>.json`` / ``.md``.  Run::

    python benchmarks/privacy_robustness.py            # about 10 min on a 2-core CPU
    python benchmarks/privacy_robustness.py --quick    # a smoke run (*-quick files)
    python benchmarks/privacy_robustness.py --attacks-only   # the attack section, the rest kept
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COST_SIDES = ("mean_shared_base", "mean_per_node", "dp", "median", "krum")


def _aggregator(name: str):
    import edgejax as ej

    return {"mean_shared_base": ej.Mean(), "mean_per_node": ej.Mean(), "dp": ej.GaussianDP(clip=0.5),
            "median": ej.CoordinateMedian(), "krum": ej.Krum(byzantine=10)}[name]


def cost_side(name: str, rounds: int) -> dict:
    """One side of the cost comparison, in this (fresh, pinned) process."""
    import jax
    import jax.numpy as jnp

    import edgejax as ej
    from async_workers import DATA, population  # noqa: E402  (benchmarks/async_workers.py)
    from edgejax.data.federated import FederatedData, NodeData, pad_test

    x, y, _, tx, ty = population(1000, 0, DATA)
    data = FederatedData(train=NodeData(jnp.asarray(x), jnp.asarray(y), jnp.full((1000,), 8, jnp.int32)),
                         local_test=None, test=pad_test(tx, ty), num_classes=10, name="mnist-w2")
    model = ej.models.mlp((784,), 10, hidden=(200, 200))
    execution = "per_node" if name == "mean_per_node" else "auto"
    sim = ej.Simulation(model, data, ej.FedAvg(aggregator=_aggregator(name), weighting="uniform"),
                        ej.LocalTraining(batch_size=4, steps=4, execution=execution), clients_per_round=100)
    hp = sim.hparams({"client_lr": 0.05})
    chunk = jax.jit(sim.run_rounds, static_argnums=3)
    state = sim.init(jax.random.PRNGKey(0), hp)
    state, _ = jax.block_until_ready(chunk(state, sim.data, hp, rounds))
    start = time.perf_counter()
    jax.block_until_ready(chunk(state, sim.data, hp, rounds))
    return {"side": name, "execution": sim.execution, "ms_per_round": 1e3 * (time.perf_counter() - start) / rounds}


def measure_cost(rounds: int, repeats: int) -> list[dict]:
    """Every side ``repeats`` times, alternating, each a fresh process on core 1."""
    rows = {name: [] for name in COST_SIDES}
    for _ in range(repeats):
        for name in COST_SIDES:
            out = subprocess.run(["taskset", "-c", "1", sys.executable, __file__, "--cost-side", name,
                                  "--rounds", str(rounds)], check=True, capture_output=True, text=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows[name].append(result)
            print(f"cost {name}: {result['ms_per_round']:.1f} ms/round ({result['execution']})", flush=True)
    return [{"side": name, "execution": runs[0]["execution"], "ms_per_round": [r["ms_per_round"] for r in runs]}
            for name, runs in rows.items()]


def _mnist(n_clients: int, scheme, seed: int):
    import edgejax as ej
    from async_workers import DATA, IMAGES, LABELS  # noqa: E402
    from edgejax.data.datasets import read_idx

    images = read_idx(DATA / IMAGES).reshape(-1, 784).astype(np.float32) / 255.0
    labels = read_idx(DATA / LABELS).astype(np.int32)
    dataset = ej.data.from_arrays(images[:8000], labels[:8000], x_test=images[8000:], y_test=labels[8000:])
    data, _ = ej.federate(dataset, n_clients, scheme, seed=seed, local_test_fraction=0.0)
    return data


def accuracy_against_epsilon(rounds: int, multipliers: Sequence[float]) -> list[dict]:
    import edgejax as ej

    data = _mnist(1000, ej.data.IID(), 0)
    model = ej.models.mlp((784,), 10, hidden=(200, 200))
    rows = []
    for z in (None, *multipliers):
        aggregator = ej.Mean() if z is None else ej.GaussianDP(clip=0.5, noise_multiplier=z)
        sim = ej.Simulation(model, data, ej.FedAvg(aggregator=aggregator, weighting="uniform"),
                            ej.LocalTraining(batch_size=4, steps=4), clients_per_round=100)
        results = sim.run(rounds, eval_every=rounds, hparams={"client_lr": 0.05})
        eps = None if z is None else float(results.rounds["epsilon"][-1])
        rows.append({"noise_multiplier": z, "epsilon": eps, "test_accuracy": float(results.evals["test_accuracy"][-1])})
        print(f"dp z={z}: accuracy {rows[-1]['test_accuracy']:.3f}, epsilon {eps}", flush=True)
    return rows


def robustness(rounds: int, fractions: Sequence[float]) -> list[dict]:
    import jax.numpy as jnp

    import edgejax as ej

    clean = _mnist(500, ej.data.Dirichlet(0.5, min_size=5), 0)
    model = ej.models.mlp((784,), 10, hidden=(64,))
    aggregators = _robust_aggregators()
    rows = []
    for fraction in fractions:
        bad = np.random.default_rng(1).permutation(500)[:int(fraction * 500)]
        x = np.asarray(clean.train.x).copy()
        x[bad] *= 100.0
        data = clean.replace(train=clean.train._replace(x=jnp.asarray(x)))
        for name, aggregator in aggregators.items():
            sim = ej.Simulation(model, data, ej.FedAvg(aggregator=aggregator, weighting="uniform"),
                                ej.LocalTraining(batch_size=8), clients_per_round=50)
            results = sim.run(rounds, eval_every=rounds, hparams={"client_lr": 0.05})
            rows.append({"poisoned": fraction, "aggregator": name,
                         "test_accuracy": float(results.evals["test_accuracy"][-1])})
            print(f"poisoned {fraction:.0%} {name}: {rows[-1]['test_accuracy']:.3f}", flush=True)
    return rows


ATTACKS = {"sign_flip x10": {"attack": "sign_flip", "strength": 10.0}, "alie": {"attack": "alie"},
           "ipm": {"attack": "ipm"}, "gaussian": {"attack": "gaussian"}}


def _robust_aggregators() -> dict:
    import edgejax as ej

    return {"mean": ej.Mean(), "median": ej.CoordinateMedian(), "trimmed_mean(0.2)": ej.TrimmedMean(0.2),
            "krum(f=10)": ej.Krum(byzantine=10), "geometric_median": ej.GeometricMedian(),
            "centered_clipping": ej.CenteredClipping(tau=1.0)}


def attacks(rounds: int, fractions: Sequence[float]) -> list[dict]:
    """Final test accuracy of each aggregator under each attack (``ej.Attacked``) on the robustness
    population."""
    import edgejax as ej

    data = _mnist(500, ej.data.Dirichlet(0.5, min_size=5), 0)
    model = ej.models.mlp((784,), 10, hidden=(64,))
    rows = []
    for fraction in fractions:
        for attack, options in ATTACKS.items():
            for name, aggregator in _robust_aggregators().items():
                attacked = ej.Attacked(aggregator, fraction=fraction, **options)
                sim = ej.Simulation(model, data, ej.FedAvg(aggregator=attacked, weighting="uniform"),
                                    ej.LocalTraining(batch_size=8), clients_per_round=50)
                results = sim.run(rounds, eval_every=rounds, hparams={"client_lr": 0.05})
                rows.append({"fraction": fraction, "attack": attack, "aggregator": name,
                             "test_accuracy": float(results.evals["test_accuracy"][-1])})
                print(f"{attack} {fraction:.0%} {name}: {rows[-1]['test_accuracy']:.3f}", flush=True)
    return rows


def markdown(report: dict) -> str:
    from common import report_header  # noqa: E402

    lines = report_header("privacy and robustness", report)
    if report.get("kept"):
        lines += [f"This run measured the attack section only: {report['kept']}.", ""]
    cost = {r["side"]: r for r in report["cost"]}
    lines += ["## Cost of a round (W2 population, 100 of 1,000 clients, uniform weights)", "",
              "Each side a fresh process pinned to core 1, alternating; ms per round of the second compiled "
              f"chunk of {report['cost_rounds']} rounds (each value one process).", "",
              "| aggregator | execution | ms per round | / mean (per_node) | / mean (shared_base) |",
              "| --- | --- | --- | --- | --- |"]
    base_pn = np.median(cost["mean_per_node"]["ms_per_round"])
    base_sb = np.median(cost["mean_shared_base"]["ms_per_round"])
    for side in COST_SIDES:
        ms = cost[side]["ms_per_round"]
        lines.append(f"| {side} | {cost[side]['execution']} | {' / '.join(f'{v:.1f}' for v in ms)} | "
                     f"{np.median(ms) / base_pn:.2f}x | {np.median(ms) / base_sb:.2f}x |")
    lines += ["", f"## DP-FedAvg: accuracy against epsilon ({report['dp_rounds']} rounds, clip 0.5, delta 1e-5, "
              "q = 0.1)", "", "| noise multiplier | epsilon | test accuracy |", "| --- | --- | --- |"]
    for r in report["dp"]:
        z = "no DP (mean)" if r["noise_multiplier"] is None else f"{r['noise_multiplier']}"
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        lines.append(f"| {z} | {eps} | {r['test_accuracy']:.3f} |")
    fractions = sorted({r["poisoned"] for r in report["robustness"]})
    names = list(dict.fromkeys(r["aggregator"] for r in report["robustness"]))
    acc = {(r["poisoned"], r["aggregator"]): r["test_accuracy"] for r in report["robustness"]}
    lines += ["", f"## Aggregators against poisoned clients ({report['robust_rounds']} rounds, Dirichlet(0.5) over "
              "500 clients, 50 a round, features of the poisoned clients x100)", "",
              "| aggregator | " + " | ".join(f"{f:.0%} poisoned" for f in fractions) + " |",
              "| --- |" + " --- |" * len(fractions)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{acc[(f, name)]:.3f}" for f in fractions) + " |")
    if report.get("attacks"):
        clean = {r["aggregator"]: r["test_accuracy"] for r in report["robustness"] if r["poisoned"] == 0}
        cells = {(r["attack"], r["fraction"], r["aggregator"]): r["test_accuracy"] for r in report["attacks"]}
        columns = list(dict.fromkeys((r["attack"], r["fraction"]) for r in report["attacks"]))
        lines += ["", f"## Aggregators under Byzantine updates (`ej.Attacked`; {report['attack_rounds']} rounds, the "
                  "population above, the Byzantine share of every cohort drawn afresh each round)", "",
                  "| aggregator | no attack | " + " | ".join(f"{a} {f:.0%}" for a, f in columns) + " |",
                  "| --- | --- |" + " --- |" * len(columns)]
        for name in dict.fromkeys(r["aggregator"] for r in report["attacks"]):
            lines.append(f"| {name} | {clean.get(name, float('nan')):.3f} | "
                         + " | ".join(f"{cells[(a, f, name)]:.3f}" for a, f in columns) + " |")
    lines += ["", "One seed. Absolute times vary with the machine and its load (see the load averages); compare the "
              "ratios, measured side by side."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--cost-side", choices=COST_SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--attacks-only", action="store_true",
                        help="run the attack section only, keeping the other sections of the saved report")
    args = parser.parse_args(argv)
    if args.cost_side:
        print(json.dumps(cost_side(args.cost_side, args.rounds)))
        return None
    from common import device_info, finish_report, load_average  # noqa: E402

    start, load_start = time.perf_counter(), load_average()
    quick = args.quick
    if args.attacks_only:
        report = json.loads((RESULTS_DIR / "privacy-robustness-cpu.json").read_text())
        report |= {"attack_rounds": 30, "command": "python benchmarks/privacy_robustness.py --attacks-only",
                   "kept": f"the cost, DP and poisoned-client sections are kept from `{report['command']}` of "
                           f"{report['date']}", "date": datetime.date.today().isoformat()}
        report["attacks"] = attacks(report["attack_rounds"], (0.1, 0.2))
        return finish_report("privacy-robustness", report, markdown, RESULTS_DIR, False, start, load_start)
    report = {"device": device_info(), "date": datetime.date.today().isoformat(),
              "command": "python benchmarks/privacy_robustness.py" + (" --quick" if quick else ""),
              "cost_rounds": 3 if quick else 10, "dp_rounds": 3 if quick else 50,
              "robust_rounds": 2 if quick else 30}
    report["cost"] = measure_cost(report["cost_rounds"], 1 if quick else 2)
    report["dp"] = accuracy_against_epsilon(report["dp_rounds"], (1.0,) if quick else (0.5, 1.0, 2.0))
    report["robustness"] = robustness(report["robust_rounds"], (0.0, 0.2) if quick else (0.0, 0.1, 0.2))
    report["attack_rounds"] = report["robust_rounds"]
    report["attacks"] = attacks(report["attack_rounds"], (0.2,) if quick else (0.1, 0.2))
    return finish_report("privacy-robustness", report, markdown, RESULTS_DIR, quick, start, load_start)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
