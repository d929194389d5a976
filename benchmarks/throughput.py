"""Throughput of edgejax's kernel: one local SGD step for N nodes, and end-to-end FedAvg rounds.

Two benchmarks, both on random CIFAR10-shaped data (32x32x3 images, 10 classes, float32):

1. **Local step** (node-samples/s for one SGD step, forward + backward + update, batch 32
   per node, every node with its own weights), for the MLP 3072-200-200-10 and the small
   GEMM-conv CNN, at each N in ``--nodes``, computed several ways on the same data:

   * ``vmap (kernel)``: edgejax's own local update (``make_local_update``: on-device
     shuffling and minibatch gather, step mask, optax SGD), ``jax.vmap``-ed over nodes;
   * ``lax.map (kernel)``: the same, mapped as edgejax maps it by default on a CPU
     (``lax.map`` over groups of vmapped nodes);
   * ``vmap (bare step)``: a plain ``grad`` + ``optax.sgd`` step, ``jax.vmap``-ed over nodes;
   * ``vmap (lax.conv)`` (CNN only): the bare step of the same CNN (same parameters) with
     its convolutions as ``lax.conv_general_dilated``, vmapped; the slow case under vmap (a grouped convolution);
   * ``loop``: a Python loop over nodes calling one jitted single-node bare step (the
     per-client loop of Flower or pfl);
   * ``ceiling``: one shared-weight model taking the bare step on the whole N x 32 batch,
     the same FLOPs as one large-batch step: the upper bound for the vmapped ways on a
     GPU (on a CPU, small per-node batches can run faster than one big batch).

2. **End-to-end FedAvg** in pfl-research's speed configuration: 1,000 nodes x 50 images,
   50 nodes a round, batch 10, one local epoch, the CNN, evaluation on 10,000 test images
   every 10 rounds, through the public API (``federate`` + ``Simulation.run``), once with
   ``LocalTraining(group_size="auto")`` (the default) and once with ``group_size=None``.

Results go to ``benchmarks/results/throughput-<device>.json`` and ``.md``.  Run::

    python benchmarks/throughput.py                  # the default run (10-15 min on a 2-core CPU)
    python benchmarks/throughput.py --quick          # a smoke run of about a minute
    python benchmarks/throughput.py --nodes 16 64 --models cnn --skip-e2e
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import edgejax
from common import device_info, finish_report, load_average, report_header  # noqa: E402  (benchmarks/common.py)
from edgejax.core.local import LocalTraining, make_local_update, map_nodes
from edgejax.data.datasets import Dataset
from edgejax.data.partition import IID
from edgejax.models import Model, layers, weighted_cross_entropy

RESULTS_DIR = Path(__file__).resolve().parent / "results"
INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
BATCH = 32
DEFAULT_NODES = (16, 64, 256, 1024)
QUICK_NODES = (4,)
CPU_CNN_MAX_NODES = 64  # default cap on a CPU: a CNN step at N=256 needs 9 GB of scratch and ~10 s per way
MLP_HIDDEN = (200, 200)
CNN_OPTIONS = {"channels": (32, 64), "kernel": 3, "hidden": 128}
MIN_REPEATS = 3
MAX_SECONDS_PER_MEASUREMENT = 10.0
WAYS = ("vmap (kernel)", "lax.map (kernel)", "vmap (bare step)", "vmap (lax.conv)", "loop", "ceiling")
RATIOS = (("vmap (kernel)", "ceiling"), ("lax.map (kernel)", "ceiling"), ("vmap (bare step)", "ceiling"),
          ("vmap (lax.conv)", "ceiling"), ("vmap (kernel)", "loop"), ("lax.map (kernel)", "loop"),
          ("vmap (bare step)", "loop"))

# pfl-research's CIFAR10 speed benchmark, and a tiny version of it for --quick.
PFL_CONFIG = {"num_nodes": 1000, "samples_per_node": 50, "test_samples": 10_000, "clients_per_round": 50,
              "batch_size": 10, "epochs": 1, "eval_every": 10}
QUICK_CONFIG = {"num_nodes": 32, "samples_per_node": 10, "test_samples": 100, "clients_per_round": 16,
                "batch_size": 10, "epochs": 1, "eval_every": 2}
GROUPINGS = ("auto", None)
# Measured elsewhere on one H100 (quoted from the project's issue), not by this script.
REFERENCES = (
    ("pfl-research 0.6.0 (reference, 1x H100)", 608.0),
    ("150-line JAX prototype (reference, 1x H100)", 5.6),
    ("edgejax target (1x H100): >= 120 rounds/s", 1000.0 / 120.0),
)
CPU_TARGET = {"model": "cnn", "nodes": 64, "way": "vmap (kernel)", "min_ratio": 0.8}
GPU_TARGET_ROUNDS_PER_S = 120.0


# ----- models and steps ----------------------------------------------------------------------

def build_models(names: Sequence[str]) -> dict[str, Model]:
    """The benchmarked models by name (``mlp``, ``cnn``) on CIFAR10-shaped inputs."""
    builders = {"mlp": lambda: edgejax.models.mlp(INPUT_SHAPE, NUM_CLASSES, hidden=MLP_HIDDEN),
                "cnn": lambda: edgejax.models.cnn(INPUT_SHAPE, NUM_CLASSES, **CNN_OPTIONS)}
    return {name: builders[name]() for name in names}


def lax_conv_cnn(gemm_cnn: Model) -> Model:
    """edgejax's CNN with the same parameters but ``lax.conv_general_dilated`` convolutions.

    The GEMM kernel ``[k*k*C_in, C_out]`` lists the k x k window row by row with the
    channels innermost, so it reshapes to an ``HWIO`` kernel ``[k, k, C_in, C_out]``.
    """
    k = CNN_OPTIONS["kernel"]

    def apply(params, x):
        for i in range(len(CNN_OPTIONS["channels"])):
            conv = params[f"conv_{i}"]
            kernel = conv["w"].reshape(k, k, -1, conv["w"].shape[-1])
            x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv["b"]
            x = layers.max_pool2d(jax.nn.relu(x))
        x = jax.nn.relu(layers.dense(params["dense"], x.reshape(x.shape[0], -1)))
        return layers.dense(params["out"], x)

    return gemm_cnn._replace(name="cnn_lax_conv", apply=apply)


def bare_step(model: Model) -> Callable:
    """``step(params, x, y, hparams) -> params``: one plain SGD step on the batch ``x [B, ...]``."""

    def step(params, x, y, hparams):
        def loss(p):
            return weighted_cross_entropy(model.apply(p, x), y, jnp.ones(y.shape, jnp.float32))

        opt = optax.sgd(hparams["client_lr"])
        updates, _ = opt.update(jax.grad(loss)(params), opt.init(params), params)
        return optax.apply_updates(params, updates)

    return step


def kernel_step(model: Model, spec: LocalTraining) -> Callable:
    """``step(params, x, y, count, key, budget, hparams) -> params``: edgejax's local update, one node."""
    update = make_local_update(model, spec, max_steps=1, shuffles=1)

    def step(params, x, y, count, key, budget, hparams):
        return update(params, x, y, count, key, budget, hparams)[0]

    return step


# ----- timing ------------------------------------------------------------------------------

def time_ways(ways: dict[str, Callable[[], object]], repeats: int, keep_outputs: bool) -> tuple[dict, dict]:
    """Time every way's ``fn()`` (blocking on its result), the ways interleaved.

    Each way first makes one warm-up call that compiles it; then come rounds in which
    every way runs once, so load from other processes hits all ways alike.  Runs
    ``repeats`` rounds, or fewer (but at least ``MIN_REPEATS``) once the rounds have
    taken ``MAX_SECONDS_PER_MEASUREMENT`` per way on average.  Returns per way
    the median and minimum time, all times, and the warm-up call's time (which includes
    compilation); and the warm-up outputs when ``keep_outputs``.
    """
    stats, outputs = {}, {}
    for name, fn in ways.items():
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        stats[name] = {"first_call_s": time.perf_counter() - start, "times_s": []}
        if keep_outputs:
            outputs[name] = out
        del out
    done, spent = 0, 0.0
    while done < repeats and (done < min(MIN_REPEATS, repeats) or spent < MAX_SECONDS_PER_MEASUREMENT):
        for name, fn in ways.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            stats[name]["times_s"].append(time.perf_counter() - start)
        done += 1
        spent += sum(st["times_s"][-1] for st in stats.values()) / len(stats)
    for st in stats.values():
        st["median_s"], st["min_s"] = statistics.median(st["times_s"]), min(st["times_s"])
    return stats, outputs


# ----- benchmark 1: the local step ---------------------------------------------------------------

def local_step_inputs(model: Model, n: int, seed: int = 0) -> dict:
    """Per-node parameters ``[n, ...]``, batches ``x [n, 32, ...]``, ``y [n, 32]``, keys, hparams."""
    k_params, k_x, k_y, k_nodes = jax.random.split(jax.random.PRNGKey(seed), 4)
    spec = LocalTraining(batch_size=BATCH, epochs=None, steps=1, optimizer="sgd", group_size=None)
    return {
        "spec": spec,
        "params": jax.vmap(model.init)(jax.random.split(k_params, n)),
        "x": jax.random.normal(k_x, (n, BATCH, *model.input_shape), jnp.float32),
        "y": jax.random.randint(k_y, (n, BATCH), 0, model.num_classes, jnp.int32),
        "count": jnp.full((n,), BATCH, jnp.int32),
        "keys": jax.random.split(k_nodes, n),
        "budget": jnp.ones((n,), jnp.int32),
        "hparams": {k: jnp.asarray(v, jnp.float32) for k, v in spec.default_hparams().items()},
    }


def local_step_ways(model: Model, conv_model: Model | None, inp: dict) -> dict[str, Callable[[], object]]:
    """Zero-argument callables, one per way, each running one SGD step for all ``n`` nodes.

    ``lax.map (kernel)`` is the kernel mapped as edgejax maps it by default
    (``group_size="auto"``: ``lax.map`` over groups of vmapped nodes on a CPU); it is
    left out where that resolves to a full ``vmap``.  ``vmap (lax.conv)`` needs ``conv_model``.
    """
    p, x, y, hp = inp["params"], inp["x"], inp["y"], inp["hparams"]
    n = x.shape[0]
    step = kernel_step(model, inp["spec"])
    kernel = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, 0, 0, 0, None)))
    group = LocalTraining(group_size="auto").resolved_group_size(n)
    grouped = jax.jit(lambda *args: map_nodes(lambda a: step(*a, args[-1]), args[:-1], group))
    bare = jax.jit(jax.vmap(bare_step(model), in_axes=(0, 0, 0, None)))
    single = jax.jit(bare_step(model))
    node_params = [jax.tree_util.tree_map(lambda a, i=i: a[i], p) for i in range(n)]
    node_x, node_y = [x[i] for i in range(n)], [y[i] for i in range(n)]
    shared = jax.tree_util.tree_map(lambda a: a[0], p)
    flat_x, flat_y = x.reshape(n * BATCH, *x.shape[2:]), y.reshape(n * BATCH)
    node_args = (p, x, y, inp["count"], inp["keys"], inp["budget"])
    ways = {
        "vmap (kernel)": lambda: kernel(*node_args, hp),
        "vmap (bare step)": lambda: bare(p, x, y, hp),
        "loop": lambda: [single(pi, xi, yi, hp) for pi, xi, yi in zip(node_params, node_x, node_y)],
        "ceiling": lambda: single(shared, flat_x, flat_y, hp),
    }
    if group is not None:
        ways["lax.map (kernel)"] = lambda: grouped(*node_args, hp)
    if conv_model is not None:
        conv = jax.jit(jax.vmap(bare_step(conv_model), in_axes=(0, 0, 0, None)))
        ways["vmap (lax.conv)"] = lambda: conv(p, x, y, hp)
    return ways


def max_abs_difference(a, b) -> float:
    """Largest absolute difference between two parameter pytrees (a list of per-node trees is stacked)."""
    stack = lambda t: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *t) if isinstance(t, list) else t  # noqa: E731
    diffs = jax.tree_util.tree_map(lambda u, v: jnp.max(jnp.abs(u - v)), stack(a), stack(b))
    return float(max(jax.tree_util.tree_leaves(diffs)))


def bench_local_step(model: Model, plan: dict, repeats: int) -> dict:
    """Every way at every N of ``plan`` (see ``node_plan``) for one model: timings, node-samples/s,
    ratios, and agreement.

    Agreement: at the smallest N, the largest parameter difference of each per-node way
    from ``vmap (bare step)`` (same maths, so only floating-point noise; the ceiling
    trains one shared model and is not compared).
    """
    conv_model = lax_conv_cnn(model) if model.name == "cnn" else None
    nodes = plan["nodes"]
    result = {"model": model.name, "parameters": edgejax.models.num_parameters(model.init(jax.random.PRNGKey(0))),
              "batch_per_node": BATCH, **plan, "ways": {}, "ratios": {}, "agreement": {},
              "kernel_group_size": {str(n): LocalTraining().resolved_group_size(n) for n in nodes}}
    for n in nodes:
        inp = local_step_inputs(model, n)
        stats, outputs = time_ways(local_step_ways(model, conv_model, inp), repeats, keep_outputs=n == min(nodes))
        for way, st in stats.items():
            st["node_samples_per_s"] = n * BATCH / st["median_s"]
            result["ways"].setdefault(way, {})[str(n)] = st
            print(f"  {model.name:4s} N={n:5d} {way:17s} {st['node_samples_per_s']:12,.0f} node-samples/s "
                  f"(median {st['median_s'] * 1e3:9.2f} ms of {len(st['times_s'])}, min {st['min_s'] * 1e3:9.2f} ms, "
                  f"first call {st['first_call_s']:.1f} s)", flush=True)
        outputs.pop("ceiling", None)
        reference = outputs.pop("vmap (bare step)", None)
        for way, out in outputs.items():
            result["agreement"][way] = {"nodes": n, "max_abs_param_diff": max_abs_difference(out, reference)}
        del inp, outputs, reference
        speed = {way: result["ways"][way][str(n)]["node_samples_per_s"] for way in stats}
        for num, den in RATIOS:
            if num in speed:
                result["ratios"].setdefault(f"{num} / {den}", {})[str(n)] = speed[num] / speed[den]
    return result


# ----- benchmark 2: end-to-end FedAvg -------------------------------------------------------------

def random_cifar(config: dict, seed: int = 0) -> Dataset:
    """Uniform random CIFAR10-shaped images with random labels, sized for ``config``."""
    rng = np.random.default_rng(seed)
    n_train, n_test = config["num_nodes"] * config["samples_per_node"], config["test_samples"]
    return Dataset("random-cifar10",
                   rng.random((n_train, *INPUT_SHAPE), dtype=np.float32),
                   rng.integers(0, NUM_CLASSES, n_train, dtype=np.int32),
                   rng.random((n_test, *INPUT_SHAPE), dtype=np.float32),
                   rng.integers(0, NUM_CLASSES, n_test, dtype=np.int32), num_classes=NUM_CLASSES)


def bench_fedavg(data, config: dict, rounds: int, group_size) -> dict:
    """FedAvg rounds/s with the CNN: a warm-up run (compiles), then a timed run of ``rounds``.

    ``loop_s`` is ``Results.wall_time_s`` of the timed run (the round loop with its
    evaluations every ``eval_every`` rounds, after the initial evaluation).
    ``compile_s`` is the time to compile the run's program (a chunk of ``eval_every``
    rounds and an evaluation) ahead of time, separately from the run's own copy.
    """
    local = LocalTraining(batch_size=config["batch_size"], epochs=config["epochs"], group_size=group_size)
    sim = edgejax.Simulation(edgejax.models.cnn(INPUT_SHAPE, NUM_CLASSES, **CNN_OPTIONS), data,
                             edgejax.get_algorithm("fedavg"), local, clients_per_round=config["clients_per_round"])
    every = config["eval_every"]
    hparams = sim.hparams()
    start = time.perf_counter()
    jax.jit(sim.run_chunk, static_argnums=(3,)).lower(
        sim.init(jax.random.PRNGKey(0), hparams), data, hparams, every, every).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    sim.run(every, eval_every=every)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    results = sim.run(rounds, eval_every=every)
    wall_s = time.perf_counter() - start
    loop_s = results.wall_time_s
    result = {
        "group_size": group_size, "resolved_group_size": local.resolved_group_size(config["clients_per_round"]),
        "rounds": rounds, "loop_s": loop_s, "wall_s": wall_s, "warmup_s": warmup_s,
        "compile_s": compile_s,
        "rounds_per_s": rounds / loop_s, "ms_per_round": 1e3 * loop_s / rounds,
        "final_test_accuracy": results.last_eval()["test_accuracy"],
    }
    print(f"  fedavg group_size={group_size!r:6s} {result['ms_per_round']:9.1f} ms/round "
          f"({result['rounds_per_s']:.2f} rounds/s over {rounds} rounds; compile ~{result['compile_s']:.1f} s)",
          flush=True)
    return result


def bench_e2e(config: dict, rounds: int) -> dict:
    """FedAvg in ``config`` for every grouping in ``GROUPINGS``, on one random data set."""
    data, _ = edgejax.federate(random_cifar(config), config["num_nodes"], IID(), local_test_fraction=0.0)
    return {"config": config, "runs": [bench_fedavg(data, config, rounds, g) for g in GROUPINGS]}


# ----- reporting ---------------------------------------------------------------------------

def _throughput_table(res: dict) -> list[str]:
    """Markdown: ways x N (node-samples/s), then ratio rows x N; ``-`` where a way did not run."""
    cols = [str(n) for n in (*res["nodes"], *res["skipped_nodes"])]
    lines = ["| way | " + " | ".join(f"N={n}" for n in cols) + " |", "|---|" + "---:|" * len(cols)]
    rows = [(way, {n: f"{st['node_samples_per_s']:,.0f}" for n, st in res["ways"][way].items()})
            for way in WAYS if way in res["ways"]]
    names = [f"{num} / {den}" for num, den in RATIOS if f"{num} / {den}" in res["ratios"]]
    rows += [(f"*{name}*", {n: f"{v:.2f}x" for n, v in res["ratios"][name].items()}) for name in names]
    for name, cells in rows:
        lines.append(f"| {name} | " + " | ".join(cells.get(n, "-") for n in cols) + " |")
    return lines


def _local_step_notes(res: dict) -> list[str]:
    """What a reader needs to read one model's table: caps, the kernel's grouping, surprises, agreement."""
    notes = []
    if res["skipped_nodes"]:
        notes.append(f"N={', '.join(map(str, res['skipped_nodes']))} not run: the CPU default caps the CNN at "
                     f"N={CPU_CNN_MAX_NODES} (memory and time: a step at N=256 needs 9 GB of scratch); pass "
                     "`--nodes` to include it.")
    groups = {n: g for n, g in res["kernel_group_size"].items() if g is not None}
    if groups:
        notes.append("`lax.map (kernel)` groups: " + ", ".join(f"{g} nodes at N={n}" for n, g in groups.items()) + ".")
    beaten = [n for n in map(str, res["nodes"])
              if res["ways"]["loop"][n]["node_samples_per_s"] > 1.05 * res["ways"]["ceiling"][n]["node_samples_per_s"]]
    if beaten:
        notes.append(f"At N={', '.join(beaten)} the per-node loop beat the shared-weight `ceiling` by over 5%: on "
                     f"this device small batches run more efficiently than one batch of N x {BATCH}, so the ceiling "
                     "is no upper bound there; compare with `loop` too.")
    agree = ", ".join(f"{way}: {a['max_abs_param_diff']:.1e}" for way, a in res["agreement"].items())
    notes.append(f"Same maths check (N={min(res['nodes'])}, max |parameter difference| from `vmap (bare step)`): "
                 f"{agree}.")
    return [line for note in notes for line in (note, "")]


def _target_lines(report: dict) -> list[str]:
    """Whether the measured numbers meet the project's targets for this backend."""
    lines = []
    t = CPU_TARGET
    local = {r["model"]: r for r in report["local_step"]}
    ratio = local.get(t["model"], {}).get("ratios", {}).get(f"{t['way']} / ceiling", {}).get(str(t["nodes"]))
    if report["device"]["backend"] == "cpu" and ratio is not None:
        verdict = "met" if ratio >= t["min_ratio"] else "NOT met"
        lines.append(f"- CPU target: {t['model']} {t['way']} >= {t['min_ratio']}x the ceiling at N={t['nodes']}: "
                     f"{ratio:.2f}x, {verdict}.")
    if report["device"]["backend"] == "gpu" and report.get("e2e"):
        best = max(r["rounds_per_s"] for r in report["e2e"]["runs"])
        verdict = "met" if best >= GPU_TARGET_ROUNDS_PER_S else "NOT met"
        lines.append(f"- GPU target (set for one H100): >= {GPU_TARGET_ROUNDS_PER_S:.0f} rounds/s end to end: "
                     f"{best:.1f} rounds/s on {report['device']['device_kind']}, {verdict}.")
    return lines


def markdown_report(report: dict) -> str:
    """The Markdown summary of a report (device at the top, one table per benchmark)."""
    lines = report_header("throughput", report)
    if report["local_step"]:
        lines += ["## One local SGD step (node-samples/s, higher is better)", "",
                  f"Batch {BATCH} per node, CIFAR10-shaped inputs, float32, every node with its own weights; "
                  "median of the timed calls (the ways interleaved) after a compiling warm-up. `vmap (kernel)` "
                  "is edgejax's `make_local_update` (on-device shuffle and minibatch gather, step mask, optax "
                  "SGD) vmapped over nodes; `lax.map (kernel)` the same mapped as edgejax does by default "
                  "(`group_size=\"auto\"`: `lax.map` over groups of vmapped nodes, on a CPU only); "
                  "`vmap (bare step)` is grad + optax.sgd vmapped; `vmap (lax.conv)` the same CNN "
                  "with `lax.conv_general_dilated`; `loop` a Python loop over nodes of one jitted single-node "
                  "step; `ceiling` one shared-weight model on the whole N x 32 batch. Ratios are of throughputs.", ""]
        for res in report["local_step"]:
            lines += [f"### {res['model']} ({res['parameters']:,} parameters)", "", *_throughput_table(res), "",
                      *_local_step_notes(res)]
    if report.get("e2e"):
        cfg = report["e2e"]["config"]
        lines += ["## End-to-end FedAvg (CNN)", "",
                  f"{cfg['num_nodes']} nodes x {cfg['samples_per_node']} random CIFAR10-shaped images, "
                  f"{cfg['clients_per_round']} nodes a round, batch {cfg['batch_size']}, {cfg['epochs']} local "
                  f"epoch, evaluation on {cfg['test_samples']} test images every {cfg['eval_every']} rounds "
                  "(included in the time), float32, `Simulation.run` after a warm-up run; ms/round from "
                  "`Results.wall_time_s` (the round loop). Compile time (of the round-chunk program, ahead of time) "
                  "is excluded and shown apart.", "",
                  "| configuration | rounds timed | ms/round | rounds/s | compile (s) | init + initial eval (s) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for run in report["e2e"]["runs"]:
            lines.append(f"| edgejax, group_size={run['group_size']!r} (resolved: {run['resolved_group_size']!r}) "
                         f"| {run['rounds']} | {run['ms_per_round']:.1f} | {run['rounds_per_s']:.2f} "
                         f"| {run['compile_s']:.1f} | {run['wall_s'] - run['loop_s']:.1f} |")
        if cfg == PFL_CONFIG:
            for name, ms in REFERENCES:
                lines.append(f"| *{name}* | | {ms:.1f} | {1e3 / ms:.1f} | | |")
            lines += ["", "Rows in italics are reference figures measured elsewhere on one NVIDIA H100 in the same "
                      "configuration (1,500 rounds), not by this script; compare with them only on that device."]
        lines.append("")
    targets = _target_lines(report)
    if targets:
        lines += ["## Targets", "", *targets, ""]
    return "\n".join(lines)


# ----- command line ------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; backend-dependent defaults are filled in by ``main``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=None,
                        help=f"node counts N for the local step (default {' '.join(map(str, DEFAULT_NODES))}; "
                             f"on a CPU the CNN is capped at {CPU_CNN_MAX_NODES} unless --nodes is given)")
    parser.add_argument("--models", nargs="+", choices=("mlp", "cnn"), default=["mlp", "cnn"])
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed calls per local-step measurement (default 5, --quick 2; at least "
                             f"{MIN_REPEATS} and at most ~{MAX_SECONDS_PER_MEASUREMENT:.0f} s of calls once "
                             "past that)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed FedAvg rounds (default 20 on a CPU, 1500 elsewhere, 4 with --quick)")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end FedAvg benchmark")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: N={' '.join(map(str, QUICK_NODES))}, a tiny FedAvg configuration; "
                             "writes *-quick files")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where to write the results")
    args = parser.parse_args(argv)
    for name in ("repeats", "rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.nodes is not None and min(args.nodes) < 1:
        parser.error("--nodes must be >= 1")
    return args


def node_plan(model_name: str, args: argparse.Namespace) -> dict:
    """For one model: ``nodes`` (N to run) and ``skipped_nodes`` (cut by the CPU default cap)."""
    if args.nodes is not None:
        return {"nodes": sorted(set(args.nodes)), "skipped_nodes": []}
    nodes = list(QUICK_NODES if args.quick else DEFAULT_NODES)
    cap = CPU_CNN_MAX_NODES if model_name == "cnn" and jax.default_backend() == "cpu" else max(nodes)
    return {"nodes": [n for n in nodes if n <= cap], "skipped_nodes": [n for n in nodes if n > cap]}


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmarks, write the JSON and Markdown results, and return the report dict."""
    args = parse_args(argv)
    start, load_start = time.perf_counter(), load_average()
    repeats = args.repeats or (1 if args.quick else 5)
    rounds = args.rounds or (4 if args.quick else 20 if jax.default_backend() == "cpu" else 1500)
    command = ["python benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)]
    report = {"device": device_info(), "command": " ".join(command),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "args": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                       "repeats_used": repeats, "rounds_used": rounds},
              "local_step": [], "e2e": None}
    print(f"edgejax throughput on {report['device']['device_kind']} ({report['device']['backend']})", flush=True)
    for name, model in build_models(args.models).items():
        report["local_step"].append(bench_local_step(model, node_plan(name, args), repeats))
    if not args.skip_e2e:
        report["e2e"] = bench_e2e(QUICK_CONFIG if args.quick else PFL_CONFIG, rounds)
    return finish_report("throughput", report, markdown_report, args.out_dir, args.quick, start, load_start)


if __name__ == "__main__":
    main()
