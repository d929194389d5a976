"""Heterogeneous models per device: HeteroFL-style width-scaled sub-models and class-subset sub-models.

Two experiments on MNIST (the 10,000 t10k digits at ``../shared/data``: the first 8,000
train, the last 2,000 are the global test set; each node holds 20% of its samples out as
its local test split) with the GEMM-form CNN (``ej.models.cnn``: 3x3 convs of 32 and 64
channels, each followed by 2x2 max pooling, dense 128, out 10), 100 nodes, 10 a round,
1 local epoch of batch 10, SGD with client lr 0.05, ``SubmodelFedAvg`` (every entry
averaged over the nodes that hold it, sample-weighted):

1. **HeteroFL** (Diao et al. 2021, their MNIST/CNN "fix" setting; Flower's reproduction
   reports 99.47 / 99.23 / 98.46% for a / a-e / e at full scale), IID split, capability
   rates all ``a`` (1, the full model: FedAvg), mixed ``a-e`` (node i gets level ``"abcde"[i
   mod 5]``: 1, 1/2, 1/4, 1/8, 1/16), all ``e`` (1/16); on the mixed population also FjORD's
   ordered dropout (a width drawn per round among the levels up to the node's rate) and
   FedRolex's rolling window.  Reported: test accuracy of the global (full-width) model,
   training FLOPs of the sub-models the nodes really train relative to full models
   (``flops / full_model_flops``), uplink bytes, and per level the sub-model's size and
   forward FLOPs per sample.
2. **Class subsets** (Chen & Qin 2020): a label-skewed split (``Shards(3)``, McMahan et
   al.'s sorted shards: mostly 3 classes a node), every node's subset = the labels it
   holds, FedAvg with the full model vs ``ClassSubsets`` at decoupling depth 3 (only the
   output layer per class), 2 (the dense layer's 128 units in 10 class groups) and 1 (also
   the second conv's 64 channels).  Reported: test accuracy and each node's compute ratio
   (its sub-model's forward FLOPs / the full model's).
3. **Spoken digits** (``../shared/data/fsdd-spoken-digits.npz``, the Free Spoken Digit
   Dataset): 6 speakers = 6 nodes (``Natural()``), all training every round; the dataset's
   official test split (take index 0-4) is the global test set.  Features
   (``ej.data.load_fsdd``): the first second of each recording (zero-padded), 256-sample Hann frames with hop
   128 (61 frames), the power spectrum's first 128 bins averaged into 32 bands, ``log(1 +
   1000 p)``, standardised: ``[61, 32]``; the GEMM-form ``conv1d_net`` (width-5 convs of 32
   and 64 channels, global mean, out 10).  HeteroFL rates all ``a`` / speakers ``a b c d e
   a`` / all ``e``.

Wall time on a shared 2-core CPU is about 1 s a round (the masked computation is full-size:
the FLOP columns are what a device would really run).  Run::

    python benchmarks/heterogeneous_models.py            # the default run (about 13 min on a shared 2-core CPU)
    python benchmarks/heterogeneous_models.py --quick    # smoke run (*-quick files)
    python benchmarks/heterogeneous_models.py --rounds 200

Skips an experiment with a message when its data files are absent.
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

import edgejax as ej
from common import device_info, finish_report, load_average, report_header  # noqa: E402  (benchmarks/common.py)
from edgejax.algorithms import HETEROFL_LEVELS, ClassSubsets, SubmodelFedAvg, WidthScaled
from edgejax.models.layout import TRAIN_FACTOR, forward_flops, full_forward_flops, gemm_layout

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NODES, COHORT, BATCH, LR = 100, 10, 10, 0.05
MIXED = "abcde"
FSDD_FILE = "fsdd-spoken-digits.npz"
MNIST_TARGET, FSDD_TARGET = 0.93, 0.70     # "equal accuracy": the cost of first reaching these


def _local():
    return ej.LocalTraining(batch_size=BATCH, epochs=1, optimizer="sgd")


def _run(model, data, algorithm, rounds: int, eval_every: int, target: float,
         cohort: int | None = COHORT) -> dict:
    """One run; ``target``: the test accuracy whose first crossing is reported (rounds, training
    TFLOPs and uplink bytes spent until the evaluation that first reaches it)."""
    sim = ej.Simulation(model, data, algorithm, _local(), clients_per_round=cohort)
    start = time.perf_counter()
    res = sim.run(rounds, seed=0, eval_every=eval_every, hparams={"client_lr": LR})
    wall = time.perf_counter() - start
    r, e = res.rounds, res.evals
    if "flops" in r:
        flops, full = np.asarray(r["flops"]), np.asarray(r["full_model_flops"])
    else:   # a full-model algorithm: every sample it trains costs the full model
        full = TRAIN_FACTOR * full_forward_flops(gemm_layout(model)) * BATCH * np.asarray(r["local_steps"])
        flops = full
    acc, at = np.asarray(e["test_accuracy"]), np.asarray(e["round"]).astype(int)
    reached = np.flatnonzero(acc >= target)
    first = int(at[reached[0]]) if reached.size else None
    out = {"name": algorithm.name, "wall_s": wall, "rounds": rounds, "eval_rounds": at.tolist(),
           "test_accuracy": acc.tolist(), "final_accuracy": float(acc[-1]), "best_accuracy": float(acc.max()),
           "bytes_up_per_round": float(np.mean(r["bytes_up"])), "compute_ratio": float(flops.sum() / full.sum()),
           "tflops_total": float(flops.sum() / 1e12), "target": target, "rounds_to_target": first,
           "tflops_to_target": None if first is None else float(flops[:first].sum() / 1e12),
           "mb_up_to_target": None if first is None else float(np.sum(r["bytes_up"][:first]) / 1e6)}
    print(f"  {out['name']:<14} acc {out['final_accuracy']:.4f} (best {out['best_accuracy']:.4f})  "
          f"compute {out['compute_ratio']:.3f}  to {target:.0%}: {out['rounds_to_target']} rounds  {wall:.0f} s",
          flush=True)
    return out


def _row(lead: list[str], r: dict, middle: list[str]) -> str:
    """A table row: ``lead`` cells, the accuracies, ``middle`` cells, uplink MB per round, the
    cost to the target accuracy (``rounds / TFLOPs / MB up`` or ``not reached``), wall time."""
    target = "not reached" if r["rounds_to_target"] is None else \
        f"{r['rounds_to_target']} / {r['tflops_to_target']:.2f} / {r['mb_up_to_target']:.0f}"
    cells = [*lead, f"{r['final_accuracy']:.4f}", f"{r['best_accuracy']:.4f}", *middle,
             f"{r['bytes_up_per_round'] / 1e6:.3f}", target, f"{r['wall_s']:.0f}"]
    return "| " + " | ".join(cells) + " |"


def node_compute_ratios(scheme, num_nodes: int) -> np.ndarray:
    """Each node's sub-model forward FLOPs per sample over the full model's (round 0's masks)."""
    keys = jax.random.split(jax.random.PRNGKey(0), num_nodes)
    masks = scheme.masks(0, jnp.arange(num_nodes), keys, jnp.float32).params
    return np.asarray(forward_flops(scheme.layout, masks)) / full_forward_flops(scheme.layout)


def level_table(model) -> list[dict]:
    """Per HeteroFL level: rate, held parameters and forward FLOPs per sample of the sub-model."""
    rows = []
    full_params = ej.models.num_parameters(jax.eval_shape(model.init, jax.random.PRNGKey(0)))
    for level, rate in HETEROFL_LEVELS.items():
        scheme = WidthScaled(model, (rate,))
        masks = scheme.masks(0, jnp.arange(1), jax.random.split(jax.random.PRNGKey(0), 1), jnp.float32).params
        held = int(sum(np.sum(np.asarray(m) != 0) for m in jax.tree_util.tree_leaves(masks)))
        flops = float(forward_flops(scheme.layout, masks)[0])
        rows.append({"level": level, "rate": rate, "params": held, "params_ratio": held / full_params,
                     "forward_mflops": flops / 1e6, "flops_ratio": flops / full_forward_flops(scheme.layout)})
    return rows


def run_heterofl(dataset, rounds: int, eval_every: int) -> dict:
    data, _ = ej.federate(dataset, NODES, ej.data.IID(), seed=0)
    model = ej.models.cnn(data.feature_shape, data.num_classes)
    mixed = tuple(HETEROFL_LEVELS[MIXED[i % len(MIXED)]] for i in range(NODES))
    configs = [("a", WidthScaled(model, (1.0,) * NODES)), ("a-e", WidthScaled(model, mixed)),
               ("e", WidthScaled(model, (HETEROFL_LEVELS["e"],) * NODES)),
               ("a-e", WidthScaled(model, mixed, mode="ordered_dropout")),
               ("a-e", WidthScaled(model, mixed, mode="rolling"))]
    print("HeteroFL on MNIST, IID:", flush=True)
    runs = []
    for rates, scheme in configs:
        runs.append({"rates": rates, "mode": scheme.mode, **_run(model, data, SubmodelFedAvg(scheme), rounds,
                                                                   eval_every, MNIST_TARGET)})
    return {"levels": level_table(model), "runs": runs}


def run_class_subsets(dataset, rounds: int, eval_every: int) -> dict:
    data, _ = ej.federate(dataset, NODES, ej.data.Shards(3), seed=0)
    model = ej.models.cnn(data.feature_shape, data.num_classes)
    classes_per_node = np.bincount([len(c) for c in ej.algorithms.class_subsets.data_classes(data)])
    print("Class subsets on MNIST, Shards(3):", flush=True)
    runs = [{"method": "fedavg (full model)", "depth": None, "node_compute": [1.0, 1.0, 1.0],
             **_run(model, data, ej.FedAvg(), rounds, eval_every, MNIST_TARGET)}]
    for depth in (3, 2, 1):
        scheme = ClassSubsets.from_data(model, data, depth=depth)
        ratios = node_compute_ratios(scheme, NODES)
        runs.append({"method": f"class subsets, depth {depth}", "depth": depth,
                     "node_compute": [float(ratios.mean()), float(ratios.min()), float(ratios.max())],
                     **_run(model, data, SubmodelFedAvg(scheme), rounds, eval_every, MNIST_TARGET)})
    return {"classes_per_node": {str(k): int(v) for k, v in enumerate(classes_per_node) if v}, "runs": runs}


def run_spoken_digits(path: Path, rounds: int, eval_every: int) -> dict:
    data, _ = ej.federate(ej.data.load_fsdd(path), None, ej.data.Natural(), seed=0)
    model = ej.models.conv1d_net(data.feature_shape, data.num_classes)
    n = data.num_nodes
    configs = [("a", (1.0,) * n), ("a b c d e a", tuple(HETEROFL_LEVELS[MIXED[i % 5]] for i in range(n))),
               ("e", (HETEROFL_LEVELS["e"],) * n)]
    print("HeteroFL on spoken digits, one node per speaker:", flush=True)
    runs = []
    for rates, values in configs:
        sim_run = _run(model, data, SubmodelFedAvg(WidthScaled(model, values)), rounds, eval_every, FSDD_TARGET,
                       cohort=None)
        runs.append({"rates": rates, **sim_run})
    return {"runs": runs}


def _section(title: str, intro: str, lead: list[str], middle: list[str], target: float, rows: list[str]) -> list[str]:
    """A Markdown section: title, intro and the run table (columns as in ``_row``)."""
    cols = [*lead, "final acc", "best acc", *middle, "uplink MB / round",
            f"to {target:.0%}: rounds / TFLOPs / MB up", "wall s"]
    return [f"## {title}", "", intro, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), *rows, ""]


def markdown_report(report: dict) -> str:
    lines = report_header("heterogeneous models per device", report)
    schedule = f"{report['rounds']} rounds of 1 local epoch (batch {BATCH}, SGD lr {LR})"
    to_target = (f"\"to X%\": the rounds, training TFLOPs (of the sub-models really trained) and uplink MB until "
                 f"the first evaluation (every {report['eval_every']} rounds) at that accuracy.")
    h = report.get("heterofl")
    if h:
        intro = (f"{schedule}; test accuracy of the global full-width model on the 2,000 held-out t10k digits. "
                 "Flower's HeteroFL reproduction (full MNIST, many more rounds, 5 local epochs) reports 99.47 / "
                 f"99.23 / 98.46% for a / a-e / e. {to_target}")
        rows = [_row([r["rates"], r["mode"]], r, [f"{r['compute_ratio']:.3f}"]) for r in h["runs"]]
        lines += _section("HeteroFL on MNIST (CNN, 100 nodes IID, 10 a round)", intro, ["rates", "mode"],
                          ["compute vs full models"], MNIST_TARGET, rows)
        lines += ["Sub-model per level (a node holds these entries; FLOPs: 2 per multiply-accumulate of the "
                  "GEMMs, forward, per sample; training costs 3x):", "",
                  "| level | rate | parameters | of full | forward MFLOPs | of full |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['level']} | {r['rate']:g} | {r['params']:,} | {r['params_ratio']:.4f} | "
                  f"{r['forward_mflops']:.3f} | {r['flops_ratio']:.4f} |" for r in h["levels"]]
        lines.append("")
    c = report.get("class_subsets")
    if c:
        intro = (f"{schedule}. Classes per node: {c['classes_per_node']} (count: nodes). Node compute: each node's "
                 f"sub-model forward FLOPs over the full model's (mean / min / max over nodes). {to_target}")
        rows = [_row([r["method"]], r, [f"{v:.3f}" for v in r["node_compute"]]) for r in c["runs"]]
        lines += _section("Class-subset sub-models on MNIST (CNN, 100 nodes, Shards(3), 10 a round)", intro,
                          ["method"], ["node compute mean", "min", "max"], MNIST_TARGET, rows)
    f = report.get("spoken_digits")
    if f:
        intro = f"{schedule}; test accuracy on the official test split (takes 0-4 of every speaker and digit)."
        rows = [_row([r["rates"]], r, [f"{r['compute_ratio']:.3f}"]) for r in f["runs"]]
        lines += _section("HeteroFL on spoken digits (FSDD, conv1d_net, 6 nodes = 6 speakers, all every round)",
                          intro, ["rates"], ["compute vs full models"], FSDD_TARGET, rows)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of each configuration")
    p.add_argument("--rounds", type=int, default=40, help="rounds per configuration (default 40)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--skip", choices=("heterofl", "class_subsets", "spoken_digits"), nargs="+", default=[])
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict | None:
    args = parse_args(argv)
    rounds, eval_every = (2, 1) if args.quick else (args.rounds, args.eval_every)
    start, load_start = time.perf_counter(), load_average()
    report = {"device": device_info(), "command": " ".join(["python", "benchmarks/heterogeneous_models.py",
                                                            *(sys.argv[1:] if argv is None else argv)]),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "rounds": rounds,
              "eval_every": eval_every}
    mnist = {"heterofl", "class_subsets"} - set(args.skip)
    try:
        dataset = ej.data.load_mnist() if mnist else None
    except FileNotFoundError as err:
        print(f"skipped the MNIST experiments: {err}", flush=True)
        mnist = set()
    if "heterofl" in mnist:
        report["heterofl"] = run_heterofl(dataset, rounds, eval_every)
    if "class_subsets" in mnist:
        report["class_subsets"] = run_class_subsets(dataset, rounds, eval_every)
    fsdd = ej.data.default_data_dir() / FSDD_FILE
    if "spoken_digits" not in args.skip:
        if fsdd.is_file():
            report["spoken_digits"] = run_spoken_digits(fsdd, rounds, eval_every)
        else:
            print(f"skipped the spoken-digits experiment: {fsdd} not found", flush=True)
    return finish_report("heterogeneous_models", report, markdown_report, args.out_dir, args.quick, start, load_start)


if __name__ == "__main__":
    main()
