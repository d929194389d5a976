"""Heterogeneous models per device: HeteroFL-style width-scaled sub-models and class-subset sub-models.

Two experiments on MNIST (the 10,000 t10k digits at ``../shared/data``: the first 8,000
train, the last 2,000 are the global test set; each node holds 20% of its samples out as
its local test split) with the GEMM-form CNN (``ej.models.cnn``: 3x3 convs of 32 and 64
channels, each followed by 2x2 max pooling, dense 128, out 10), 100 nodes, 10 a round,
1 local epoch of batch 10, SGD with client lr 0.05, ``SubmodelFedAvg`` (every entry
averaged over the nodes that hold it, sample-weighted), and two on spoken digits
(sections, as ``--only`` / ``--skip`` name them: ``heterofl``, ``class_subsets``,
``spoken_digits``, ``spoken_class_subsets``):

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
   the second conv's 64 channels).  Reported: test accuracy of the reassembled model, each
   node's compute ratio (its sub-model's forward FLOPs / the full model's), uplink bytes and
   the cost to a target accuracy (``class_subset_runs``, shared with section 4).
3. **Spoken digits** (``../shared/data/fsdd-spoken-digits.npz``, the Free Spoken Digit
   Dataset): 6 speakers = 6 nodes (``Natural()``), all training every round; the dataset's
   official test split (take index 0-4) is the global test set.  Features
   (``ej.data.load_fsdd``): the first second of each recording (zero-padded), 256-sample Hann frames with hop
   128 (61 frames), the power spectrum's first 128 bins averaged into 32 bands, ``log(1 +
   1000 p)``, standardised: ``[61, 32]``; the GEMM-form ``conv1d_net`` (width-5 convs of 32
   and 64 channels, global mean, out 10).  HeteroFL rates all ``a`` / speakers ``a b c d e
   a`` / all ``e``.
4. **Class subsets on spoken digits** (keyword spotting: a device cares about a few
   digits).  Split by speaker alone, every node holds all ten digits and its class subset
   would be the full model, so nodes are speaker x keyword group (``keyword_split``): each
   speaker's digits 0-9 shuffled with ``numpy.random.default_rng(0)`` (one permutation per
   speaker, in sorted name order) and dealt into nodes of 3, 3 and 4 digits: 18 nodes, all
   training every round, every training recording on exactly one node; a node's local test
   split is its speaker's test takes of its digits.  Features, model, schedule and the
   official test split as in 3; FedAvg with the full model vs ``ClassSubsets`` (subsets
   from the nodes' data) at depth 2 (only the output layer per class), 1 (also conv_1's 64
   channels in 10 class groups) and 0 (also conv_0's 32: no shared trunk).  Reported as in 2,
   with the split itself.

Wall time on a shared 2-core CPU is about 1 s a round for the MNIST sections, a few tenths
of a second for the spoken-digits ones (the masked computation is full-size: the FLOP
columns are what a device would really run).  A run of some sections (``--only``,
``--skip``) keeps the other sections' stored results from the report it writes over
(``--fresh``: it does not), and the report says which run measured which section.  Run::

    python benchmarks/heterogeneous_models.py            # the default run (about 10 min on a shared 2-core CPU)
    python benchmarks/heterogeneous_models.py --quick    # smoke run (*-quick files)
    python benchmarks/heterogeneous_models.py --only spoken_class_subsets   # re-measure one section
    python benchmarks/heterogeneous_models.py --rounds 200

Skips an experiment with a message when its data files are absent.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import edgejax as ej
from common import (device_info, finish_report, load_average, report_header,  # noqa: E402  (benchmarks/common.py)
                    report_paths)
from edgejax.algorithms import HETEROFL_LEVELS, ClassSubsets, SubmodelFedAvg, WidthScaled
from edgejax.models.layout import TRAIN_FACTOR, forward_flops, full_forward_flops, gemm_layout

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NODES, COHORT, BATCH, LR = 100, 10, 10, 0.05
MIXED = "abcde"
FSDD_FILE = "fsdd-spoken-digits.npz"
MNIST_TARGET, FSDD_TARGET = 0.93, 0.70     # "equal accuracy": the cost of first reaching these
KEYWORD_GROUPS, KEYWORD_SEED = (3, 3, 4), 0  # each speaker's digits dealt into nodes of 3, 3 and 4 (keyword_split)
FSDD_DEPTHS = (2, 1, 0)   # conv1d_net's chain conv_0, conv_1, out: output only / also conv_1 / no shared trunk
SECTIONS = ("heterofl", "class_subsets", "spoken_digits", "spoken_class_subsets")


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
           "tflops_at_eval": [float(flops[:a].sum() / 1e12) for a in at],
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


def class_subset_runs(model, data, depths: Sequence[int], rounds: int, eval_every: int, target: float,
                      cohort: int | None) -> dict:
    """A class-subset section's runs on ``data``: FedAvg with the full model, then ``ClassSubsets``
    (every node's subset = the labels of its training data) at each decoupling depth, harvested and
    reassembled by ``SubmodelFedAvg``; ``node_compute``: mean / min / max over the nodes of
    ``node_compute_ratios``."""
    classes = ej.algorithms.class_subsets.data_classes(data)
    runs = [{"method": "fedavg (full model)", "depth": None, "node_compute": [1.0, 1.0, 1.0],
             **_run(model, data, ej.FedAvg(), rounds, eval_every, target, cohort)}]
    for depth in depths:
        scheme = ClassSubsets.from_data(model, data, depth=depth)
        ratios = node_compute_ratios(scheme, data.num_nodes)
        runs.append({"method": f"class subsets, depth {depth}", "depth": depth,
                     "node_compute": [float(ratios.mean()), float(ratios.min()), float(ratios.max())],
                     **_run(model, data, SubmodelFedAvg(scheme), rounds, eval_every, target, cohort)})
    counts = np.bincount([len(c) for c in classes])
    return {"classes_per_node": {str(k): int(v) for k, v in enumerate(counts) if v},
            "layers": [layer.name for layer in gemm_layout(model)], "runs": runs}


def run_class_subsets(dataset, rounds: int, eval_every: int) -> dict:
    data, _ = ej.federate(dataset, NODES, ej.data.Shards(3), seed=0)
    model = ej.models.cnn(data.feature_shape, data.num_classes)
    print("Class subsets on MNIST, Shards(3):", flush=True)
    return class_subset_runs(model, data, (3, 2, 1), rounds, eval_every, MNIST_TARGET, COHORT)


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


def keyword_split(dataset: ej.data.Dataset, sizes: Sequence[int] = KEYWORD_GROUPS,
                  seed: int = KEYWORD_SEED) -> tuple[ej.data.Dataset, list[tuple[int, ...]]]:
    """Nodes = speaker x keyword group: ``dataset`` regrouped so that ``Natural()`` gives them.

    For every speaker in id order (sorted names), the digits 0-9 are shuffled
    (``numpy.random.default_rng(seed).permutation``, one draw per speaker) and dealt into
    consecutive groups of ``sizes`` digits; node ``speaker * len(sizes) + g`` holds the speaker's
    training recordings of group ``g``'s digits, and as its local test split the speaker's
    official test takes of those digits.  Every recording stays on exactly one node, so FedAvg
    here trains on the same 2,700 recordings as with one node per speaker.  Returns the regrouped
    dataset and every node's sorted digits (in node order).
    """
    sizes = tuple(int(k) for k in sizes)
    if sum(sizes) != dataset.num_classes or min(sizes) < 1:
        raise ValueError(f"keyword group sizes {sizes} must be positive and sum to {dataset.num_classes}")
    rng = np.random.default_rng(seed)
    speakers = np.unique(dataset.groups_train)
    bounds = np.cumsum((0, *sizes))
    group_of = np.zeros((len(speakers), dataset.num_classes), np.int32)
    digits = []
    for s in speakers:
        perm = rng.permutation(dataset.num_classes)
        for g in range(len(sizes)):
            digits.append(tuple(sorted(int(d) for d in perm[bounds[g]:bounds[g + 1]])))
            group_of[s, list(digits[-1])] = g

    def regroup(speaker, y):
        return (speaker * len(sizes) + group_of[speaker, y]).astype(np.int32)

    return dataclasses.replace(dataset, groups_train=regroup(dataset.groups_train, dataset.y_train),
                               groups_test=regroup(dataset.groups_test, dataset.y_test)), digits


def run_spoken_class_subsets(path: Path, rounds: int, eval_every: int) -> dict:
    dataset, digits = keyword_split(ej.data.load_fsdd(path))
    data, _ = ej.federate(dataset, None, ej.data.Natural(), seed=0)
    if list(ej.algorithms.class_subsets.data_classes(data)) != digits:     # each node's subset comes from its data
        raise AssertionError("the federated nodes' labels differ from the keyword split")
    with np.load(path, allow_pickle=False) as d:
        names = [str(name) for name in np.unique(d["speakers"])]
    model = ej.models.conv1d_net(data.feature_shape, data.num_classes)
    print(f"Class subsets on spoken digits, {data.num_nodes} nodes = {len(names)} speakers x "
          f"{len(KEYWORD_GROUPS)} keyword groups:", flush=True)
    out = class_subset_runs(model, data, FSDD_DEPTHS, rounds, eval_every, FSDD_TARGET, None)
    per = len(KEYWORD_GROUPS)
    return {"split": {"group_sizes": list(KEYWORD_GROUPS), "seed": KEYWORD_SEED,
                      "speakers": {name: [list(d) for d in digits[i * per:(i + 1) * per]]
                                   for i, name in enumerate(names)}},
            "samples_per_node": np.asarray(data.train.count).tolist(), **out}


def _section(title: str, intro: str, lead: list[str], middle: list[str], target: float, rows: list[str]) -> list[str]:
    """A Markdown section: title, intro and the run table (columns as in ``_row``)."""
    cols = [*lead, "final acc", "best acc", *middle, "uplink MB / round",
            f"to {target:.0%}: rounds / TFLOPs / MB up", "wall s"]
    return [f"## {title}", "", intro, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), *rows, ""]


TITLES = {"heterofl": "HeteroFL on MNIST", "class_subsets": "class subsets on MNIST",
          "spoken_digits": "HeteroFL on spoken digits", "spoken_class_subsets": "class subsets on spoken digits"}


def _provenance(report: dict) -> list[str]:
    """Which run measured which section (a run of some sections keeps the others' stored results)."""
    meta = report.get("sections") or {}
    runs: dict[tuple, list[str]] = {}
    for key in SECTIONS:
        if key in report and key in meta:
            runs.setdefault((meta[key]["date"], meta[key]["command"]), []).append(key)
    if len(runs) < 2:     # one run measured every section: the header says it
        return []
    latest = max(date for date, _ in runs)
    lines = ["Sections by the run that measured them (a run of some sections, `--only` / `--skip`, keeps the "
             "stored results of the others):", ""]
    for (date, command), keys in sorted(runs.items()):
        m = meta[keys[0]]
        load = m.get("load_average_1min") or {}
        loads = ", ".join("n/a" if load.get(k) is None else f"{load[k]:.1f}" for k in ("start", "end"))
        wall = "" if m.get("run_wall_s") is None else f"; run {m['run_wall_s'] / 60:.1f} min"
        again = " (re-measured)" if date == latest else ""
        lines.append(f"- {date}{again}: {', '.join(TITLES[k] for k in keys)}. `{command}`: {m['rounds']} rounds, "
                     f"evaluation every {m['eval_every']}{wall}; host 1-min load {loads} (start, end).")
    return [*lines, ""]


def _settings(report: dict, key: str) -> tuple[str, str]:
    """A section's schedule sentence and its "to X%" note (its own run's rounds and evaluation interval)."""
    meta = (report.get("sections") or {}).get(key) or report
    schedule = f"{meta['rounds']} rounds of 1 local epoch (batch {BATCH}, SGD lr {LR})"
    to_target = (f"\"to X%\": the rounds, training TFLOPs (of the sub-models really trained) and uplink MB until "
                 f"the first evaluation (every {meta['eval_every']} rounds) at that accuracy.")
    return schedule, to_target


def _class_subset_section(title: str, intro: str, section: dict, target: float) -> list[str]:
    """A class-subset section (``class_subset_runs``): the run table and what it shows, read off the numbers."""
    rows = [_row([r["method"]], r, [f"{v:.3f}" for v in r["node_compute"]]) for r in section["runs"]]
    lines = _section(title, intro, ["method"], ["node compute mean", "min", "max"], target, rows)
    fedavg, findings = section["runs"][0], []
    for r in section["runs"][1:]:
        final = 100 * (r["final_accuracy"] - fedavg["final_accuracy"])
        best = 100 * (r["best_accuracy"] - fedavg["best_accuracy"])
        if r["rounds_to_target"] is None:
            cost = f"never reaches {target:.0%}"
        elif fedavg["rounds_to_target"] is None:
            cost = f"reaches {target:.0%} (FedAvg does not)"
        else:
            cost = (f"reaches {target:.0%} with {r['tflops_to_target'] / fedavg['tflops_to_target']:.2f}x FedAvg's "
                    f"training FLOPs and {r['mb_up_to_target'] / fedavg['mb_up_to_target']:.2f}x its uplink")
        acc = r["test_accuracy"]
        trend = (f"; still rising at the end ({acc[-2]:.3f} -> {acc[-1]:.3f} over the last "
                 f"{r['eval_rounds'][-1] - r['eval_rounds'][-2]} rounds)" if len(acc) > 1 and acc[-1] > acc[-2] else "")
        equal = ""
        if "tflops_at_eval" in r and "tflops_at_eval" in fedavg:   # reports measured before this had no such field
            within = [i for i, t in enumerate(fedavg["tflops_at_eval"]) if t <= r["tflops_total"] * (1 + 1e-9)]
            i = within[-1]
            equal = (f"; with the same training FLOPs ({r['tflops_total']:.3f} TFLOPs) FedAvg was at "
                     f"{fedavg['test_accuracy'][i]:.4f} (round {fedavg['eval_rounds'][i]})")
        findings.append(f"- depth {r['depth']}: the reassembled model ends {final:+.1f} points (best {best:+.1f}) "
                        f"against FedAvg; a node runs {r['node_compute'][0]:.3f} of the full model's forward FLOPs "
                        f"on average ({r['node_compute'][1]:.3f} - {r['node_compute'][2]:.3f}) and uploads "
                        f"{r['bytes_up_per_round'] / fedavg['bytes_up_per_round']:.3f}x FedAvg's bytes; {cost}"
                        f"{equal}{trend}.")
    return [*lines, "Against FedAvg (percentage points of test accuracy, final and best):", "", *findings, ""]


def markdown_report(report: dict) -> str:
    merged = len({(m["date"], m["command"]) for m in (report.get("sections") or {}).values()}) > 1
    lines = report_header("heterogeneous models per device", report,
                          measured="Last run, re-measuring the sections marked below:" if merged else "Measured")
    lines += _provenance(report)
    h = report.get("heterofl")
    if h:
        schedule, to_target = _settings(report, "heterofl")
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
        schedule, to_target = _settings(report, "class_subsets")
        intro = (f"{schedule}. Classes per node: {c['classes_per_node']} (count: nodes). Node compute: each node's "
                 f"sub-model forward FLOPs over the full model's (mean / min / max over nodes). {to_target}")
        lines += _class_subset_section("Class-subset sub-models on MNIST (CNN, 100 nodes, Shards(3), 10 a round)",
                                       intro, c, MNIST_TARGET)
    f = report.get("spoken_digits")
    if f:
        schedule, to_target = _settings(report, "spoken_digits")
        intro = f"{schedule}; test accuracy on the official test split (takes 0-4 of every speaker and digit)."
        rows = [_row([r["rates"]], r, [f"{r['compute_ratio']:.3f}"]) for r in f["runs"]]
        lines += _section("HeteroFL on spoken digits (FSDD, conv1d_net, 6 nodes = 6 speakers, all every round)",
                          intro, ["rates"], ["compute vs full models"], FSDD_TARGET, rows)
    k = report.get("spoken_class_subsets")
    if k:
        schedule, to_target = _settings(report, "spoken_class_subsets")
        split, per = k["split"], len(k["split"]["group_sizes"])
        nodes = len(split["speakers"]) * per
        sizes = " / ".join(str(g) for g in split["group_sizes"])
        intro = (f"Keyword spotting: a device cares about a few of the ten spoken digits. Nodes = speaker x keyword "
                 f"group: every speaker's digits 0-9 are shuffled (`numpy.random.default_rng({split['seed']})`, one "
                 f"permutation per speaker in sorted name order) and dealt into nodes of {sizes} digits, so "
                 f"{nodes} nodes, all training every round, each holding one speaker's training recordings of its "
                 f"digits ({min(k['samples_per_node'])} - {max(k['samples_per_node'])} a node; every recording on "
                 "exactly one node, the 2,700 of the per-speaker split). A node's class subset is the digits in its "
                 f"data. Model: conv1d_net, GEMM chain {' -> '.join(k['layers'])}; depth 2 leaves only the output "
                 "layer class-specific, depth 1 also splits conv_1's 64 channels in 10 class groups, depth 0 also "
                 "conv_0's 32 (no shared trunk). "
                 f"{schedule}; test accuracy of the reassembled model on the official test split (takes 0-4 of every "
                 "speaker and digit, 300 recordings, all ten digits). Node compute: each node's sub-model forward "
                 f"FLOPs over the full model's (mean / min / max over the nodes). {to_target}")
        lines += _class_subset_section(f"Class-subset sub-models on spoken digits (FSDD, conv1d_net, {nodes} nodes = "
                                       f"{len(split['speakers'])} speakers x {per} keyword groups, all every round)",
                                       intro, k, FSDD_TARGET)
        full = next((r for r in (f or {}).get("runs", []) if r["rates"] == "a"), None)
        if full:
            lines += [f"For reference, FedAvg on the same recordings with one node per speaker (every node all ten "
                      f"digits; the HeteroFL section's rates a row): final {full['final_accuracy']:.4f}, best "
                      f"{full['best_accuracy']:.4f}.", ""]
        lines += ["The split (node digits, per speaker):", "", "| speaker | " +
                  " | ".join(f"node {g}" for g in range(per)) + " |", "|---|" + "---|" * per]
        lines += ["| " + " | ".join([name, *("{" + ", ".join(map(str, d)) + "}" for d in groups)]) + " |"
                  for name, groups in split["speakers"].items()]
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of each configuration")
    p.add_argument("--rounds", type=int, default=40, help="rounds per configuration (default 40)")
    p.add_argument("--eval-every", type=int, default=5)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--skip", choices=SECTIONS, nargs="+", default=[], help="sections not to run")
    which.add_argument("--only", choices=SECTIONS, nargs="+", default=None, help="run only these sections")
    p.add_argument("--fresh", action="store_true",
                   help="write only this run's sections (default: keep the stored results of the others)")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


def merge_stored(report: dict, path: Path) -> dict:
    """Add to ``report`` the sections stored in ``path`` (an earlier report) that this run did not
    measure, with their provenance (a report written before sections had it: its own run's)."""
    if not path.is_file():
        return report
    stored = json.loads(path.read_text())
    meta = stored.get("sections") or {}
    for key in SECTIONS:
        if key in report or key not in stored:
            continue
        report[key] = stored[key]
        report["sections"][key] = meta.get(key) or {
            "date": stored["date"], "command": stored["command"], "rounds": stored["rounds"],
            "eval_every": stored["eval_every"], "run_wall_s": stored.get("total_wall_s"),
            "load_average_1min": stored.get("load_average_1min")}
    return report


def main(argv: Sequence[str] | None = None) -> dict | None:
    args = parse_args(argv)
    rounds, eval_every = (2, 1) if args.quick else (args.rounds, args.eval_every)
    start, load_start = time.perf_counter(), load_average()
    command = " ".join(["python", "benchmarks/heterogeneous_models.py", *(sys.argv[1:] if argv is None else argv)])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = {"device": device_info(), "command": command, "date": date, "rounds": rounds, "eval_every": eval_every,
              "sections": {}}
    wanted = [key for key in SECTIONS if (key in args.only if args.only else key not in args.skip)]
    mnist, fsdd = None, ej.data.default_data_dir() / FSDD_FILE
    if {"heterofl", "class_subsets"} & set(wanted):
        try:
            mnist = ej.data.load_mnist()
        except FileNotFoundError as err:
            print(f"skipped the MNIST experiments: {err}", flush=True)
    runners = {"heterofl": lambda: run_heterofl(mnist, rounds, eval_every) if mnist else None,
               "class_subsets": lambda: run_class_subsets(mnist, rounds, eval_every) if mnist else None,
               "spoken_digits": lambda: run_spoken_digits(fsdd, rounds, eval_every) if fsdd.is_file() else None,
               "spoken_class_subsets":
                   lambda: run_spoken_class_subsets(fsdd, rounds, eval_every) if fsdd.is_file() else None}
    for key in wanted:
        section_start, section_load = time.perf_counter(), load_average()
        result = runners[key]()
        if result is None:
            if key.startswith("spoken"):
                print(f"skipped {TITLES[key]}: {fsdd} not found", flush=True)
            continue
        report[key] = result
        report["sections"][key] = {"date": date, "command": command, "rounds": rounds, "eval_every": eval_every,
                                   "wall_s": time.perf_counter() - section_start,
                                   "load_average_1min": {"start": section_load, "end": load_average()}}
    for key in list(report["sections"]):
        report["sections"][key]["run_wall_s"] = time.perf_counter() - start
    if not args.fresh:
        merge_stored(report, report_paths("heterogeneous_models", report, args.out_dir, args.quick)[0])
    return finish_report("heterogeneous_models", report, markdown_report, args.out_dir, args.quick, start, load_start)


if __name__ == "__main__":
    main()
