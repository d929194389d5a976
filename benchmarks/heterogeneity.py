"""Heterogeneous devices: the FedProx paper's straggler experiment, and round-deadline policies.

Two experiments, both through edgejax's public API (``federate``, ``Simulation``, ``SystemModel``):

1. **FedProx reproduction** (Li et al. 2020, "Federated Optimization in Heterogeneous
   Networks", Synthetic experiments, Figure 1): Synthetic(0,0), (0.5,0.5), (1,1) and IID,
   30 devices (``Natural()``: one node per generated device; each device's 10% test split is
   its local test split, the pooled test splits are the global test set), 10 devices a
   round, 20 local epochs, batch 10, client lr 0.01, multinomial logistic regression, 0% /
   50% / 90% stragglers.  Methods as in the paper:

   * FedAvg: stragglers are dropped (``SystemModel(stragglers="drop")``, ``FedAvg()``);
   * FedProx (mu=0) and FedProx (mu=1): stragglers run a uniform random number of epochs in
     1..19 (``SystemModel(stragglers="partial_epochs")``, ``FedAvg(prox=True)``, traced ``mu``).

   The paper's model L2 term (0.001) is not added: edgejax does not have it, and the
   authors' code declares it but never adds it.  For one (dataset, straggler policy) every
   seed x mu x straggler-fraction point runs as ONE vmapped program (``straggler_fraction``
   and ``mu`` are traced hyper-parameters, the policy is static), in chunks of
   ``--eval-every`` rounds with an evaluation after each chunk: this is ``Simulation.sweep``
   with intermediate evaluations, built from the pure ``init`` / ``run_rounds`` /
   ``evaluate``.  Reported: the paper's training loss (the server model's loss on all
   training samples, sample-weighted) and global test accuracy, mean over seeds.

2. **Deadline policies** on a tiered population (``tiered_profiles``: 20% fast, 50% medium,
   30% slow): digits, Dirichlet(0.5, min_size=5) over 50 nodes, an MLP (64-128-10), FedAvg,
   10 nodes a round, 2 local epochs, batch 10, client lr 0.1, with ``deadline_policy`` in
   wait_all / drop_late / partial.  The deadline is the medium tier's round time for a
   90th-percentile-size node (download + compute + upload under the profiles; computed and
   printed), so fast and almost all medium nodes finish, and slow nodes only when small.
   Reported: test accuracy reached by given simulated times (25/50/100% of the wait_all
   run's total) and the simulated time the same number of rounds takes.

Results go to ``benchmarks/results/heterogeneity-<device>.json`` / ``.md`` and
``heterogeneity-<device>-loss.png`` / ``-accuracy.png``.  Run::

    python benchmarks/heterogeneity.py              # the default run (about 12-15 min on a 2-core CPU)
    python benchmarks/heterogeneity.py --quick      # a smoke run of under a minute (*-quick files)
    python benchmarks/heterogeneity.py --rounds 200 --seeds 0 1 2   # the paper's 200 rounds
"""
from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import edgejax as ej
from common import device_info, load_average, report_header, write_report  # noqa: E402  (benchmarks/common.py)
from edgejax.models import weighted_cross_entropy
from edgejax.system import tiered_profiles

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# ---- experiment 1: the FedProx paper's synthetic setting -------------------------------------
DATASETS = ("synthetic_iid", "synthetic(0,0)", "synthetic(0.5,0.5)", "synthetic(1,1)")
STRAGGLERS = (0.0, 0.5, 0.9)
MUS = (0.0, 1.0)
PAPER = {"clients_per_round": 10, "epochs": 20, "batch_size": 10, "client_lr": 0.01, "rounds": 200}
METHODS = ("FedAvg", "FedProx mu=0", "FedProx mu=1")

# ---- experiment 2: deadline policies ---------------------------------------------------------
POLICIES = ("wait_all", "drop_late", "partial")
DIGITS = {"num_nodes": 50, "dirichlet": 0.5, "min_size": 5, "clients_per_round": 10, "epochs": 2,
          "batch_size": 10, "client_lr": 0.1, "hidden": (128,)}
TIME_FRACTIONS = (0.25, 0.5, 1.0)
MAX_ROUND_FACTOR = 8   # deadline runs go on until they reach wait_all's total time, at most this x rounds


def load_synthetic(name: str) -> ej.data.Dataset:
    if name == "synthetic_iid":
        return ej.data.load_dataset("synthetic_iid")
    alpha, beta = (float(v) for v in name[len("synthetic("):-1].split(","))
    return ej.data.load_synthetic(alpha, beta, seed=0)


# ---- a vmapped sweep with evaluations --------------------------------------------------------
class PointRunner:
    """P hyper-parameter/seed points of one ``Simulation`` as one vmapped program, run in chunks
    of ``chunk`` rounds with an evaluation after each (``Simulation.sweep`` plus intermediate
    evaluations).  The evaluation adds ``global_train_loss``: the evaluated model's mean loss
    over every training sample of every node (the FedProx paper's training loss)."""

    def __init__(self, sim: ej.Simulation, chunk: int):
        self.sim, self.chunk = sim, chunk
        model = sim.model

        def evaluate(state, data):
            metrics = sim.evaluate(state, data)
            params, _ = sim.algorithm.eval_models(state)
            tr = data.train
            x = tr.x.reshape(-1, *tr.x.shape[2:])
            w = (jnp.arange(tr.x.shape[1])[None, :] < tr.count[:, None]).reshape(-1).astype(x.dtype)
            metrics["global_train_loss"] = weighted_cross_entropy(model.apply(params, x), tr.y.reshape(-1), w)
            return metrics

        def init(seed, hp):
            return sim.init(jax.random.PRNGKey(seed), hp)

        def step(state, data, hp, active):
            state, rounds = sim.run_rounds(state, data, hp, chunk, active)
            return state, rounds, evaluate(state, data)

        self._init = jax.jit(jax.vmap(init))
        self._eval = jax.jit(jax.vmap(evaluate, in_axes=(0, None)))
        self._step = jax.jit(jax.vmap(step, in_axes=(0, None, 0, None)))

    def stack(self, hparams: dict, num_points: int) -> dict:
        defaults = self.sim.default_hparams()
        unknown = sorted(set(hparams) - set(defaults))
        if unknown:
            raise ValueError(f"unknown hyper-parameter(s) {unknown}")
        return {k: jnp.broadcast_to(jnp.asarray(hparams.get(k, v), v.dtype), (num_points,))
                for k, v in defaults.items()}

    def run(self, rounds: int, hparams: dict, seeds: Sequence[int], *, until_time: float | None = None,
            max_rounds: int | None = None) -> dict:
        """``rounds`` rounds (or, with ``until_time``, until every point's simulated clock
        reaches it or ``max_rounds``); returns numpy arrays: ``rounds[k] [P, R]``,
        ``eval_rounds [E]``, ``evals[k] [P, E]``, ``wall_s``, ``compile_and_first_chunk_s``."""
        seeds = np.asarray(seeds)
        hp = self.stack(hparams, len(seeds))
        t0 = time.perf_counter()
        state = self._init(jnp.asarray(seeds), hp)
        evals = [jax.device_get(self._eval(state, self.sim.data))]
        eval_rounds, per_round, done, first = [0], [], 0, None
        limit = rounds if until_time is None else max_rounds
        while done < limit:
            n = min(self.chunk, limit - done)
            state, rm, em = self._step(state, self.sim.data, hp, n)
            rm = {k: np.asarray(v)[:, :n] for k, v in rm.items()}
            per_round.append(rm)
            evals.append(jax.device_get(em))
            done += n
            eval_rounds.append(done)
            if first is None:
                first = time.perf_counter() - t0
            if not np.all(np.isfinite(rm["train_loss"])):
                print(f"    warning: non-finite training loss by round {done}", flush=True)
            if until_time is not None and done >= rounds and np.all(rm["sim_time_s"][:, -1] >= until_time):
                break
        return {"rounds": {k: np.concatenate([r[k] for r in per_round], axis=1) for k in per_round[0]},
                "eval_rounds": np.asarray(eval_rounds),
                "evals": {k: np.stack([np.asarray(e[k]) for e in evals], axis=1) for k in evals[0]},
                "wall_s": time.perf_counter() - t0, "compile_and_first_chunk_s": first}


# ---- experiment 1 ----------------------------------------------------------------------------
def fedprox_points(seeds: Sequence[int]) -> dict[str, list[dict]]:
    """Per straggler policy, the (method, straggler fraction, seed, hparams) points."""
    drop, partial = [], []
    for frac in STRAGGLERS:
        for seed in seeds:
            drop.append({"method": "FedAvg", "stragglers": frac, "seed": seed,
                         "hparams": {"straggler_fraction": frac}})
            for mu in MUS:
                partial.append({"method": f"FedProx mu={mu:g}", "stragglers": frac, "seed": seed,
                                "hparams": {"straggler_fraction": frac, "mu": mu}})
    return {"drop": drop, "partial_epochs": partial}


def run_fedprox(datasets: Sequence[str], rounds: int, seeds: Sequence[int], chunk: int) -> dict:
    out = {"setting": {**PAPER, "rounds_run": rounds, "seeds": list(seeds), "eval_every": chunk,
                       "datasets": list(datasets), "stragglers": list(STRAGGLERS), "mus": list(MUS),
                       "model": "logistic_regression (60 -> 10)", "l2": "not added (0.001 in the paper's text)"},
           "datasets": {}}
    for name in datasets:
        ds = load_synthetic(name)
        data, _ = ej.federate(ds, None, ej.data.Natural())
        counts = np.asarray(data.train.count)
        model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
        local = ej.LocalTraining(batch_size=PAPER["batch_size"], epochs=PAPER["epochs"])
        entry = {"nodes": data.num_nodes, "train_samples": int(counts.sum()), "max_node_samples": int(counts.max()),
                 "median_node_samples": float(np.median(counts)), "runs": []}
        for policy, points in fedprox_points(seeds).items():
            algorithm = ej.FedAvg(prox=policy == "partial_epochs")
            sim = ej.Simulation(model, data, algorithm, local, clients_per_round=PAPER["clients_per_round"],
                                system=ej.SystemModel(stragglers=policy))
            max_steps = sim.schedule[0]
            hp = {k: [p["hparams"].get(k, 0.0) for p in points] for k in points[0]["hparams"]}
            hp["client_lr"] = [PAPER["client_lr"]] * len(points)
            res = PointRunner(sim, chunk).run(rounds, hp, [p["seed"] for p in points])
            r, e = res["rounds"], res["evals"]
            participants = np.maximum(r["participants"], 1.0)
            util = float(np.nansum(r["local_steps"]) / (np.nansum(r["participants"]) * max_steps))
            print(f"  {name:<20} stragglers={policy:<15} {len(points)} points x {rounds} rounds: "
                  f"{res['wall_s']:.1f} s (first chunk incl. compile {res['compile_and_first_chunk_s']:.1f} s); "
                  f"scan length {max_steps} steps, {100 * util:.0f}% of them real work", flush=True)
            entry["runs"].append({
                "policy": policy, "algorithm": algorithm.name,
                "execution": sim.execution,
                "group_size": sim.context.group_size, "max_local_steps": max_steps, "points": len(points),
                "wall_s": res["wall_s"], "compile_and_first_chunk_s": res["compile_and_first_chunk_s"],
                "s_per_point_round": res["wall_s"] / (len(points) * rounds),
                "real_step_fraction": util,
                "eval_rounds": res["eval_rounds"].tolist(),
                "point_list": [{k: v for k, v in p.items()} | {
                    "global_train_loss": e["global_train_loss"][i].tolist(),
                    "test_accuracy": e["test_accuracy"][i].tolist(),
                    "node_accuracy_p10": e["node_accuracy_p10"][i].tolist(),
                    "local_train_loss": r["train_loss"][i].tolist(),
                    "participants_mean": float(np.mean(r["participants"][i])),
                    "local_steps_per_participant": float(np.mean(r["local_steps"][i] / participants[i])),
                } for i, p in enumerate(points)]})
        out["datasets"][name] = entry
    return out


def fedprox_curves(entry: dict) -> dict:
    """``(method, stragglers) -> {metric: mean over seeds [E]}`` plus ``eval_rounds``."""
    groups: dict = {}
    for run in entry["runs"]:
        for p in run["point_list"]:
            groups.setdefault((p["method"], p["stragglers"]), []).append(p)
    curves = {}
    for key, pts in groups.items():
        curves[key] = {m: np.mean([p[m] for p in pts], axis=0)
                       for m in ("global_train_loss", "test_accuracy", "local_train_loss")}
        curves[key]["seeds"] = len(pts)
    return {"eval_rounds": np.asarray(entry["runs"][0]["eval_rounds"]), "curves": curves}


def fedprox_summary(fp: dict) -> dict:
    """Final loss / accuracy per (dataset, stragglers, method), a late-loss spread, and verdicts."""
    table, verdicts = {}, {}
    for name, entry in fp["datasets"].items():
        c = fedprox_curves(entry)
        half = len(c["eval_rounds"]) // 2
        for (method, frac), cur in c["curves"].items():
            loss = cur["global_train_loss"]
            table.setdefault(name, {}).setdefault(str(frac), {})[method] = {
                "final_train_loss": float(loss[-1]), "final_test_accuracy": float(cur["test_accuracy"][-1]),
                "late_loss_rises": float(np.sum(np.maximum(np.diff(loss[half:]), 0.0))),
                "best_test_accuracy": float(np.max(cur["test_accuracy"]))}
        row = table[name]
        v = {}
        for frac in map(str, STRAGGLERS):
            if not all(m in row.get(frac, {}) for m in METHODS):
                continue
            fa, p0, p1 = (row[frac][m] for m in METHODS)
            v[frac] = {"mu1_loss_below_fedavg": p1["final_train_loss"] < fa["final_train_loss"],
                       "mu1_acc_minus_fedavg": p1["final_test_accuracy"] - fa["final_test_accuracy"],
                       "mu0_acc_minus_fedavg": p0["final_test_accuracy"] - fa["final_test_accuracy"],
                       "mu1_rises_below_fedavg": p1["late_loss_rises"] < fa["late_loss_rises"]}
        verdicts[name] = v
    return {"table": table, "verdicts": verdicts}


# ---- experiment 2 ----------------------------------------------------------------------------
def tier_round_times(profiles, counts: np.ndarray, local: ej.LocalTraining, model_bytes: int) -> dict:
    """Per tier: the round time (download + compute + upload) of a median and a p90-size node."""
    out = {}
    speed, up, down, lat, tier = (np.asarray(a) for a in (profiles.speed, profiles.up_bandwidth,
                                                           profiles.down_bandwidth, profiles.latency, profiles.tier))
    for label, n in (("median", float(np.median(counts))), ("p90", float(np.percentile(counts, 90)))):
        steps = local.epochs * math.ceil(n / local.batch_size)
        for t, tname in enumerate(("fast", "medium", "slow")):
            i = int(np.flatnonzero(tier == t)[0])
            comm = model_bytes / down[i] + model_bytes / up[i] + 2 * lat[i]
            out.setdefault(tname, {})[label] = {"samples": n, "steps": steps, "compute_s": steps * local.batch_size / speed[i],
                                                "comm_s": comm, "total_s": comm + steps * local.batch_size / speed[i]}
    return out


def run_deadlines(rounds: int, seeds: Sequence[int], chunk: int) -> dict:
    cfg = DIGITS
    ds = ej.data.load_digits()
    data, _ = ej.federate(ds, cfg["num_nodes"], ej.data.Dirichlet(cfg["dirichlet"], min_size=cfg["min_size"]), seed=0)
    counts = np.asarray(data.train.count)
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=cfg["hidden"])
    local = ej.LocalTraining(batch_size=cfg["batch_size"], epochs=cfg["epochs"])
    profiles = tiered_profiles(cfg["num_nodes"], seed=0)
    base = ej.Simulation(model, data, ej.FedAvg(), local, clients_per_round=cfg["clients_per_round"],
                         system=ej.SystemModel(profiles=profiles))
    times = tier_round_times(profiles, counts, local, base.context.model_bytes)
    deadline = times["medium"]["p90"]["total_s"]
    print("  digits: tier round times (median / p90 node): "
          + ", ".join(f"{t} {v['median']['total_s']:.2f}/{v['p90']['total_s']:.2f} s" for t, v in times.items())
          + f"; deadline {deadline:.2f} s", flush=True)
    out = {"setting": {**{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, "rounds": rounds,
                       "seeds": list(seeds), "eval_every": chunk, "model_bytes": base.context.model_bytes,
                       "tiers": {"fractions": [0.2, 0.5, 0.3], "speeds_samples_per_s": [400, 100, 20],
                                 "up_bandwidth_bytes_per_s": [4e6, 1e6, 2e5], "down_factor": 10, "latency_s": 0.05},
                       "node_samples": {"median": float(np.median(counts)), "p90": float(np.percentile(counts, 90)),
                                        "max": int(counts.max())}},
           "tier_round_times": times, "deadline_s": deadline, "policies": {}}
    wait_total = None
    for policy in POLICIES:
        sim = ej.Simulation(model, data, ej.FedAvg(), local, clients_per_round=cfg["clients_per_round"],
                            system=ej.SystemModel(profiles=profiles, deadline_policy=policy))
        hp = {"client_lr": [cfg["client_lr"]] * len(seeds)}
        if policy != "wait_all":
            hp["deadline"] = [deadline] * len(seeds)
        runner = PointRunner(sim, chunk)
        if wait_total is None:
            res = runner.run(rounds, hp, seeds)
        else:
            res = runner.run(rounds, hp, seeds, until_time=wait_total, max_rounds=MAX_ROUND_FACTOR * rounds)
        r, e = res["rounds"], res["evals"]
        sim_time = r["sim_time_s"]                            # [P, R] cumulative
        total_at_rounds = float(np.mean(sim_time[:, rounds - 1]))
        if wait_total is None:                                # per seed: seed i is compared with wait_all's seed i
            wait_total = sim_time[:, rounds - 1].copy()
        ev_rounds = res["eval_rounds"]
        ev_time = np.concatenate([np.zeros((len(seeds), 1)), sim_time[:, ev_rounds[1:] - 1]], axis=1)  # [P, E]
        acc = e["test_accuracy"]
        by_time = {}
        for f in TIME_FRACTIONS:
            t = f * wait_total                                # [P]
            vals = [float(acc[i][np.flatnonzero(ev_time[i] <= t[i] * (1 + 1e-6))[-1]]) for i in range(len(seeds))]
            reached = bool(np.all(ev_time[:, -1] >= t * (1 - 1e-6)))
            by_time[str(f)] = {"time_s": float(np.mean(t)), "time_s_per_seed": t.tolist(),
                               "test_accuracy": float(np.mean(vals)), "run_reached_time": reached}
        i_r = int(np.flatnonzero(ev_rounds == rounds)[0])
        out["policies"][policy] = {
            "rounds_run": int(ev_rounds[-1]), "wall_s": res["wall_s"],
            "total_sim_time_s_at_rounds": total_at_rounds,
            "mean_round_time_s": float(np.mean(r["round_time_s"][:, :rounds])),
            "participants_per_round": float(np.mean(r["participants"][:, :rounds])),
            "local_steps_per_round": float(np.mean(r["local_steps"][:, :rounds])),
            "test_accuracy_at_rounds": float(np.mean(acc[:, i_r])),
            "accuracy_by_time": by_time,
            "eval_rounds": ev_rounds.tolist(), "eval_sim_time_s": np.mean(ev_time, axis=0).tolist(),
            "test_accuracy": np.mean(acc, axis=0).tolist()}
        print(f"  digits {policy:<9}: {int(ev_rounds[-1])} rounds, {rounds} rounds = {total_at_rounds:.0f} simulated s, "
              f"acc@{rounds} {np.mean(acc[:, i_r]):.3f} ({res['wall_s']:.1f} s wall)", flush=True)
    return out


# ---- plots and report ------------------------------------------------------------------------
def plot_fedprox(fp: dict, metric: str, ylabel: str, path: Path) -> Path:
    import matplotlib   # a dependency of edgejax: a missing one is an error, not a report without plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(fp["datasets"])
    fig, axes = plt.subplots(len(STRAGGLERS), len(names), figsize=(3.6 * len(names), 2.7 * len(STRAGGLERS)),
                             squeeze=False, sharex=True)
    styles = {"FedAvg": ("tab:green", "-"), "FedProx mu=0": ("tab:orange", "--"), "FedProx mu=1": ("tab:red", "-")}
    for j, name in enumerate(names):
        c = fedprox_curves(fp["datasets"][name])
        for i, frac in enumerate(STRAGGLERS):
            ax = axes[i][j]
            for method in METHODS:
                cur = c["curves"].get((method, frac))
                if cur is not None:
                    color, ls = styles[method]
                    ax.plot(c["eval_rounds"], cur[metric], color=color, ls=ls, lw=1.6, label=method)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(name)
            if j == 0:
                ax.set_ylabel(f"{int(frac * 100)}% stragglers\n{ylabel}")
            if i == len(STRAGGLERS) - 1:
                ax.set_xlabel("round")
    axes[0][0].legend(fontsize=8)
    seeds = len(fp["setting"]["seeds"])
    fig.suptitle(f"FedProx paper setting (Synthetic, 30 devices, 10/round, E=20):\n{ylabel}, mean of {seeds} "
                 f"seed{'s' * (seeds > 1)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plain(obj):
    """NumPy scalars and arrays (anywhere in the report) as plain JSON values."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def markdown_report(report: dict) -> str:
    lines = report_header("heterogeneity", report)
    fp = report.get("fedprox")
    if fp:
        s = fp["setting"]
        lines += ["## 1. FedProx paper, Synthetic experiments (Li et al. 2020, Figure 1)", "",
                  f"30 devices (`Natural()`), {s['clients_per_round']} a round, {s['epochs']} local epochs, batch "
                  f"{s['batch_size']}, client lr {s['client_lr']}, logistic regression. FedAvg drops stragglers; "
                  "FedProx gives each straggler a uniform 1..19 epochs. Training loss = the server model's loss "
                  "on all training samples (the paper's); accuracy on the pooled test splits. "
                  f"**Scaled down from the paper**: {s['rounds_run']} rounds (paper {s['rounds']}), mean of "
                  f"{len(s['seeds'])} seed(s) {s['seeds']} (seeds vary the model init, the sampling and the "
                  "straggler draws; the data is the seed-0 dataset); evaluation every "
                  f"{s['eval_every']} rounds. Local work is NOT reduced (the full 20 epochs). The paper's L2 "
                  "0.001 is not added (edgejax has no such term; the authors' code never adds it).", ""]
        summ = report["fedprox_summary"]
        lines += ["Final training loss / test accuracy (↑: the sum of the training loss's rises between "
                  "consecutive evaluations over the second half of the run, 0 for a curve that only falls: a "
                  "measure of instability):", "",
                  "| dataset | stragglers | " + " | ".join(METHODS) + " |", "|---|---:|" + "---|" * len(METHODS)]
        for name, rows in summ["table"].items():
            for frac in map(str, STRAGGLERS):
                cells = []
                for m in METHODS:
                    v = rows.get(frac, {}).get(m)
                    cells.append("-" if v is None else f"{v['final_train_loss']:.3f} / {100 * v['final_test_accuracy']:.1f}%"
                                 f" (↑{v['late_loss_rises']:.2f})")
                lines.append(f"| {name} | {int(float(frac) * 100)}% | " + " | ".join(cells) + " |")
        lines += ["", "Paper's finding, checked point by point (FedProx mu=1 vs FedAvg at the same straggler rate):", ""]
        for name, v in summ["verdicts"].items():
            parts = [f"{int(float(f) * 100)}%: mu=1 loss {'<' if x['mu1_loss_below_fedavg'] else '>='} FedAvg, "
                     f"acc {100 * x['mu1_acc_minus_fedavg']:+.1f} pts (mu=0 {100 * x['mu0_acc_minus_fedavg']:+.1f}), "
                     f"late rises mu=1 {'<' if x['mu1_rises_below_fedavg'] else '>='} FedAvg"
                     for f, x in v.items()]
            lines.append(f"- {name}: " + "; ".join(parts) + ".")
        lines += ["", "Cost (one vmapped program per dataset and straggler policy):", "",
                  "| dataset | policy | points | execution | scan steps/round | real steps | wall s | "
                  "s per point-round | first chunk (compile) s |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
        for name, entry in fp["datasets"].items():
            for run in entry["runs"]:
                lines.append(f"| {name} | {run['policy']} | {run['points']} | {run['execution']} (groups of "
                             f"{run['group_size']}) | {run['max_local_steps']} | {100 * run['real_step_fraction']:.0f}% | "
                             f"{run['wall_s']:.0f} | {run['s_per_point_round']:.3f} | "
                             f"{run['compile_and_first_chunk_s']:.1f} |")
        lines += ["", "Every node's scan runs `20 * ceil(max_n / 10)` steps (the largest device has "
                  f"{max(e['max_node_samples'] for e in fp['datasets'].values())} training samples) and steps past "
                  "a node's own count or straggler budget are masked, not skipped, so they cost as much as real "
                  "ones: `real steps` is the share that does work.", ""]
        for p in report.get("plots", []):
            lines.append(f"![{Path(p).stem}]({Path(p).name})")
        lines.append("")
    dl = report.get("deadlines")
    if dl:
        s = dl["setting"]
        t = dl["tier_round_times"]
        lines += ["## 2. Deadline policies on a tiered population", "",
                  f"digits, Dirichlet({s['dirichlet']}, min_size={s['min_size']}) over {s['num_nodes']} nodes "
                  f"(median {s['node_samples']['median']:.0f}, p90 {s['node_samples']['p90']:.0f}, max "
                  f"{s['node_samples']['max']} training samples), MLP 64-{s['hidden'][0]}-10 "
                  f"({s['model_bytes']:,} bytes), FedAvg, {s['clients_per_round']} a round, {s['epochs']} local "
                  f"epochs, batch {s['batch_size']}, client lr {s['client_lr']}; `tiered_profiles({s['num_nodes']})`: "
                  "20% fast / 50% medium / 30% slow at 400 / 100 / 20 samples/s, up-links 4e6 / 1e6 / 2e5 B/s "
                  "(down-links 10x), 50 ms latency per message. Mean of "
                  f"{len(s['seeds'])} seed(s).", "",
                  "Round time of one node = download + compute (steps x batch / speed) + upload:", "",
                  "| tier | median node | p90 node |", "|---|---:|---:|"]
        for tier, v in t.items():
            lines.append(f"| {tier} | {v['median']['total_s']:.2f} s | {v['p90']['total_s']:.2f} s |")
        lines += ["", f"Deadline = the medium tier's round time for a p90-size node = **{dl['deadline_s']:.2f} s**: "
                  "fast and nearly all medium nodes make it; slow nodes only when small. The deadline runs go "
                  f"on past {s['rounds']} rounds until their simulated clock reaches the wait_all run's total "
                  f"(at most {MAX_ROUND_FACTOR}x the rounds).", ""]
        fr = [f"{int(100 * f)}%" for f in TIME_FRACTIONS]
        wait = dl["policies"]["wait_all"]
        lines += [f"| policy | sim. time for {s['rounds']} rounds | mean round | participants | acc after "
                  f"{s['rounds']} rounds | " + " | ".join(
                      f"acc by {f} of wait_all ({wait['accuracy_by_time'][str(x)]['time_s']:.0f} s)"
                      for f, x in zip(fr, TIME_FRACTIONS)) + " |",
                  "|---|---:|---:|---:|---:|" + "---:|" * len(fr)]
        for policy, v in dl["policies"].items():
            cells = [f"{100 * v['accuracy_by_time'][str(x)]['test_accuracy']:.1f}%"
                     + ("" if v["accuracy_by_time"][str(x)]["run_reached_time"] else " (run ended)")
                     for x in TIME_FRACTIONS]
            lines.append(f"| {policy} | {v['total_sim_time_s_at_rounds']:.0f} s | {v['mean_round_time_s']:.2f} s | "
                         f"{v['participants_per_round']:.1f} | {100 * v['test_accuracy_at_rounds']:.1f}% | "
                         + " | ".join(cells) + " |")
        lines += ["", "Accuracy by a time = the last evaluation at or before it (evaluations every "
                  f"{s['eval_every']} rounds); the times are fractions of the wait_all run's total for the same "
                  "seed (the header shows their mean over seeds)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (< 1 min): synthetic(1,1), 4 rounds, 1 seed")
    p.add_argument("--rounds", type=int, help="FedProx rounds (default 100; the paper runs 200)")
    p.add_argument("--seeds", type=int, nargs="+", help="simulation seeds (default 0 1)")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, help="synthetic datasets (default all four)")
    p.add_argument("--eval-every", type=int, help="FedProx evaluation interval (default 5)")
    p.add_argument("--deadline-rounds", type=int, help="rounds of the deadline experiment (default 100)")
    p.add_argument("--skip", choices=("fedprox", "deadlines"), nargs="+", default=[])
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    start, load_start = time.perf_counter(), load_average()
    rounds = args.rounds or (4 if args.quick else 100)
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    datasets = args.datasets or (["synthetic(1,1)"] if args.quick else list(DATASETS))
    chunk = args.eval_every or (2 if args.quick else 5)
    d_rounds = args.deadline_rounds or (4 if args.quick else 100)
    command = ["python benchmarks/heterogeneity.py", *(sys.argv[1:] if argv is None else argv)]
    report = {"device": device_info(), "command": " ".join(command),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "fedprox": None, "fedprox_summary": None, "deadlines": None, "plots": []}
    print(f"edgejax heterogeneity on {report['device']['device_kind']} ({report['device']['backend']})", flush=True)
    stem = "heterogeneity-" + report["device"]["slug"] + ("-quick" if args.quick else "")
    if "fedprox" not in args.skip:
        report["fedprox"] = run_fedprox(datasets, rounds, seeds, chunk)
        report["fedprox_summary"] = fedprox_summary(report["fedprox"])
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for metric, label, suffix in (("global_train_loss", "training loss", "loss"),
                                      ("test_accuracy", "test accuracy", "accuracy")):
            path = plot_fedprox(report["fedprox"], metric, label, args.out_dir / f"{stem}-{suffix}.png")
            report["plots"].append(str(path.name))
    if "deadlines" not in args.skip:
        report["deadlines"] = run_deadlines(d_rounds, seeds, 2 if args.quick else 5)
    report["total_wall_s"] = time.perf_counter() - start
    report["load_average_1min"] = {"start": load_start, "end": load_average()}
    report = _plain(report)
    json_path, md_path = write_report("heterogeneity", report, markdown_report, args.out_dir, args.quick)
    print(f"wrote {json_path} and {md_path} ({report['total_wall_s'] / 60:.1f} min)", flush=True)
    return report


if __name__ == "__main__":
    main()
