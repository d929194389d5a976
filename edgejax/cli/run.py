"""``edgejax run``: the main job, from flags and/or a TOML config file.

With no arguments it runs the embedded default: FedAvg, 100 nodes, Dirichlet(0.5)
label skew of scikit-learn's digits (ships with scikit-learn, no download), an MLP,
10 nodes per round, 100 rounds.  Results go to ``--out`` (``metrics.csv``, ``run.json``,
``checkpoints/``); ``--resume DIR`` continues a stopped run from its last checkpoint.
"""
from __future__ import annotations

import argparse
import signal
import sys
import tomllib
from pathlib import Path
from typing import Sequence

from edgejax.cli.options import check_applicable, check_types, parse_hidden
from edgejax.core.validation import check_seed

DEFAULTS = {
    "algorithm": "fedavg", "dataset": "digits", "data_path": None, "alpha": 0.0, "beta": 0.0,
    "partition": "dirichlet:0.5:5", "nodes": 100, "local_test_fraction": 0.2,
    "model": "mlp", "hidden": "128",
    "clients_per_round": 10, "rounds": 100, "local_epochs": 1, "local_steps": None, "batch_size": 10,
    "local_optimizer": "sgd", "lr": 0.1, "server_lr": None, "weighting": "samples", "aggregator": "mean",
    "dp_clip": None, "dp_noise_multiplier": None, "dp_delta": None, "dp_epsilon": None, "dp_quantile": None,
    "attack": "none", "byzantine_fraction": 0.2, "attack_strength": None,
    "group_size": "auto",
    "execution": "auto", "weight_decay": False,
    "topology": "ring", "gossip_order": "lian", "compressor": "none", "link_failures": False,
    "profiles": "uniform", "tiers": None, "buffer_size": None, "availability": "always", "selection": "uniform",
    "stragglers": "none",
    "deadline_policy": "wait_all",
    "hparam": [], "seed": 0, "eval_every": 10, "out": None, "overwrite": False, "checkpoint_every": None,
    "keep_checkpoints": 2, "progress": True, "tensorboard": None, "compile": "auto",
    "shard_nodes": False, "coordinator": None, "num_processes": None, "process_id": None, "join_timeout": 300,
}
# options that do not change a run's results (the processes of a multi-host run are where it ran)
NOT_STORED = ("out", "progress", "overwrite", "coordinator", "num_processes", "process_id", "join_timeout",
              "tensorboard", "compile")


class _RealDefaults(argparse.HelpFormatter):
    """Shows each option's default from ``DEFAULTS`` (the parser's own defaults are ``None``, so
    that a TOML config can fill what the command line leaves out)."""

    def _get_help_string(self, action):
        default = DEFAULTS.get(action.dest)
        if default is None or default == [] or action.nargs == 0 or "default" in (action.help or ""):
            return action.help
        return f"{action.help} (default: {default})"


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``edgejax run`` on the top-level subparsers."""
    from edgejax.algorithms import ALGORITHMS, GRAPHS
    from edgejax.core.simulation import COMPILE_CHOICES, FAST_COMPILE_MAX_FLOPS
    from edgejax.system import POLICIES, SELECTIONS, STRAGGLERS
    from edgejax.core.local import LOCAL_OPTIMIZERS
    from edgejax.data import DATASETS
    from edgejax.models import MODELS

    p = sub.add_parser("run", help="run a simulation (no arguments: the embedded default)",
                       description=__doc__, formatter_class=_RealDefaults)
    p.add_argument("--config", type=Path, help="TOML file whose keys are these options (dashes or underscores); "
                   "flags given on the command line override it")
    g = p.add_argument_group("algorithm")
    g.add_argument("--algorithm", choices=ALGORITHMS, help="server-side algorithm")
    g.add_argument("--weighting", choices=("samples", "uniform"), help="aggregation weights of node updates")
    g.add_argument("--aggregator", help="how the server combines updates (fedbuff: each flush): mean | median | "
                   "trimmed_mean:<trim> (coordinate-wise) | krum:<f> | multikrum:<f>:<m> (f Byzantine nodes, the "
                   "mean of the m best) | geomedian (RFA) | cclip (centered clipping, radius --hparam cclip_tau=...) "
                   "| normbound (rows clipped to --hparam norm_bound=...) | dp, dp:<delta> (DP-FedAvg: --dp-clip, "
                   "--dp-noise-multiplier; every round reports epsilon at delta, default 1e-5) | ldp, ldp:<delta> "
                   "(local DP: every node clips and noises its own update, --hparam ldp_clip=... "
                   "ldp_noise_multiplier=...)")
    g.add_argument("--dp-clip", type=float, help="--aggregator dp: the L2 clip of every update (default 1.0; with "
                   "--dp-quantile the initial clip)")
    g.add_argument("--dp-noise-multiplier", type=float, help="--aggregator dp: the noise multiplier z (default 1.0)")
    g.add_argument("--dp-delta", type=float, help="--aggregator dp: delta of the reported epsilon (default 1e-5)")
    g.add_argument("--dp-epsilon", type=float, help="--aggregator dp: a target epsilon after --rounds rounds; the "
                   "noise multiplier is calibrated to it before the run (instead of --dp-noise-multiplier)")
    g.add_argument("--dp-quantile", type=float, help="--aggregator dp: adaptive clipping toward this quantile of "
                   "the update norms (Andrew et al. 2021)")
    g.add_argument("--attack", help="Byzantine rows in every aggregation, before the aggregator: none | sign_flip | "
                   "scale | gaussian | alie (Baruch et al. 2019) | ipm (Xie et al. 2020)")
    g.add_argument("--byzantine-fraction", type=float, help="--attack: the fraction of each aggregation's rows that "
                   "is Byzantine")
    g.add_argument("--attack-strength", type=float, help="--attack: its scale (sign_flip, scale, gaussian: s; alie: "
                   "z; ipm: eps; default: the attack's)")
    g.add_argument("--server-lr", type=float, help="server learning rate (default: the algorithm's)")
    g.add_argument("--buffer-size", type=int, help="fedbuff: client updates the server buffers before it "
                   "steps (default: 10)")
    g = p.add_argument_group("decentralized (dpsgd, pushsum, choco, pairwise: every node trains every round)")
    g.add_argument("--topology", choices=[name for name in GRAPHS if name not in ("adjacency", "schedule")],
                   help="communication graph")
    g.add_argument("--gossip-order", choices=("lian", "atc"), help="dpsgd: mix then step (Lian et al.) or "
                   "adapt then combine")
    g.add_argument("--compressor", help="choco: none | topk:<fraction> | randomk:<fraction> | qsgd:<levels> | sign")
    g.add_argument("--link-failures", action="store_true", default=None, help="links fail each round with "
                   "probability given by --hparam link_failure=P (Metropolis weights rebuilt on the live graph)")
    g = p.add_argument_group("system model (traced values via --hparam: dropout, straggler_fraction, deadline)")
    g.add_argument("--profiles", choices=("uniform", "lognormal", "tiered"), help="device speeds and bandwidths")
    g.add_argument("--tiers", metavar="SHARE:SPEED,...", help="--profiles tiered: each tier's share of the nodes "
                   "and compute speed relative to the fastest, e.g. 0.9:1,0.1:0.1 (10%% of devices 10x slower; "
                   "links as the fastest tier's) (default: 0.2:1,0.5:0.25,0.3:0.05 with slower links too)")
    g.add_argument("--availability", choices=("always", "bernoulli", "markov"), help="who is online each round")
    g.add_argument("--selection", choices=SELECTIONS, help="how the cohort is chosen among online nodes")
    g.add_argument("--stragglers", choices=STRAGGLERS, help="FedProx-paper stragglers: dropped, or random epochs")
    g.add_argument("--deadline-policy", choices=POLICIES, help="what happens to nodes late for the round deadline")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, help="dataset (no downloads; mnist reads IDX files by path)")
    g.add_argument("--data-path", help="npz file, or folder with MNIST IDX files (default $EDGEJAX_DATA or "
                   "../shared/data)")
    g.add_argument("--alpha", type=float, help="Synthetic(alpha, beta): alpha")
    g.add_argument("--beta", type=float, help="Synthetic(alpha, beta): beta")
    g.add_argument("--partition", help="iid | dirichlet:<alpha>[:<min size>] | shards:<k> | "
                   "quantity:<alpha>[:<min size>] | natural")
    g.add_argument("--nodes", type=int, help="number of nodes N (ignored by the natural partition)")
    g.add_argument("--local-test-fraction", type=float, help="share of each node's samples held out as its test split")
    g = p.add_argument_group("model and local training")
    g.add_argument("--model", choices=sorted(MODELS), help="model")
    g.add_argument("--hidden", help="MLP hidden widths, comma separated")
    g.add_argument("--clients-per-round", type=int, help="nodes sampled per round (uniform, without replacement)")
    g.add_argument("--local-epochs", type=int, help="local epochs per round")
    g.add_argument("--local-steps", type=int, help="fixed local steps per round (instead of epochs)")
    g.add_argument("--batch-size", type=int, help="local minibatch size")
    g.add_argument("--local-optimizer", choices=LOCAL_OPTIMIZERS, help="local optax optimizer")
    g.add_argument("--lr", type=float, help="client learning rate")
    g.add_argument("--execution", choices=("auto", "per_node", "shared_base"), help="local-update strategy: "
                   "shared_base (exact, no per-node weights; dense models + SGD-family) or per_node")
    g.add_argument("--weight-decay", action="store_true", default=None,
                   help="L2 weight decay in the local steps (strength: --hparam client_weight_decay=...)")
    g.add_argument("--group-size", help="'auto', 'none' (vmap all nodes) or nodes per lax.map group")
    g.add_argument("--hparam", action="append", metavar="NAME=VALUE",
                   help="any traced hyper-parameter, e.g. server_momentum=0.8 (repeatable)")
    g = p.add_argument_group("run")
    g.add_argument("--rounds", type=int, help="communication rounds")
    g.add_argument("--eval-every", type=int, help="evaluate the global model every k rounds")
    g.add_argument("--seed", type=int, help="seed of the partition, the model and every random draw")
    g.add_argument("--out", help="output folder for metrics.csv, run.json and checkpoints; it must not hold "
                   "another run (default: a fresh runs/edgejax-YYYYmmdd-HHMMSS)")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace the run already in --out")
    g.add_argument("--checkpoint-every", type=int, help="save the full state every k rounds into OUT/checkpoints "
                   "(default: no checkpoints)")
    g.add_argument("--keep-checkpoints", type=int, help="how many of the newest checkpoints to keep")
    g.add_argument("--tensorboard", metavar="DIR", help="also write every round's metrics and every evaluation "
                   "as TensorBoard scalars into DIR (needs tensorboardX: pip install 'edgejax[tensorboard]')")
    g.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint, with its "
                   "stored options (bit-identical to an uninterrupted run)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="hide the progress bar")
    g.add_argument("--compile", choices=COMPILE_CHOICES,
                   help="how the round program is compiled: fast (on a CPU about half the compile time, rounds "
                   "10-25%% slower), optimized (XLA's defaults), or auto: fast for a run whose local training is "
                   f"small (under about {FAST_COMPILE_MAX_FLOPS:.0e} FLOPs)")
    g = p.add_argument_group("devices and hosts (edgejax.parallel; the same results to float reassociation)")
    g.add_argument("--shard-nodes", action="store_true", default=None,
                   help="split the node axis over every device jax sees (a 'nodes' mesh)")
    g.add_argument("--coordinator", metavar="HOST:PORT|auto", help="a multi-host run: every process runs the same "
                   "command with this (process 0's address; 'auto' on TPU pods, SLURM, Open MPI); implies "
                   "--shard-nodes, only process 0 writes --out")
    g.add_argument("--num-processes", type=int, help="processes of the multi-host run (with --coordinator)")
    g.add_argument("--process-id", type=int, help="this process's rank, 0 .. num-processes - 1 (with --coordinator)")
    g.add_argument("--join-timeout", type=int, metavar="SECONDS", help="how long a process waits for the "
                   "others (process 0's coordinator, then every process) before it gives up")
    return p


def resolve_options(argv: Sequence[str] | None) -> dict:
    """Defaults, then the TOML config, then the command-line flags."""
    from edgejax.cli.main import parser

    return options_from_args(vars(parser().parse_args(argv)))


def options_from_args(args: dict) -> dict:
    """Resolve parsed ``edgejax run`` arguments: defaults, then the TOML config, then the flags
    (or, with ``--resume DIR``, the options stored in ``DIR/run.json``); types and flags that
    do not apply are checked here."""
    given = {k: v for k, v in args.items() if k in DEFAULTS and v is not None}
    if args.get("resume"):
        named = set(given) | ({"config"} if args.get("config") else set())
        return _resumed_options(args["resume"], named, given.get("progress", True))
    if args.get("config"):
        config = _read_config(Path(args["config"]))
        given = {**config, **given}
    options = with_defaults(given)
    check_applicable(options, set(given))
    return options


def with_defaults(given: dict) -> dict:
    """``DEFAULTS`` updated with the ``given`` options, where given local steps replace the
    default epochs (giving both is an error later)."""
    options = {**DEFAULTS, **given}
    if options["local_steps"] is not None and "local_epochs" not in given:
        options["local_epochs"] = None
    return options


def _read_config(path: Path) -> dict:
    """The options of a TOML config file, names normalised and types checked."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a leading byte-order mark is allowed
        config = {k.replace("-", "_"): v for k, v in tomllib.loads(text).items()}
    except OSError as err:
        raise ValueError(f"cannot read --config {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"--config {path} is not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x}); "
                         "a config is a TOML text file") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"--config {path} is not valid TOML: {err}") from None
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {path}; known: {sorted(DEFAULTS)}")
    check_types(config, DEFAULTS, str(path))
    return config


def _resumed_options(folder: str, named: set, progress: bool) -> dict:
    """The options stored by the run in ``folder``; ``named`` (the options given besides
    ``--resume``) may only be ``progress``."""
    from edgejax.core.rundir import read_info

    extra = sorted(named - {"progress"})
    if extra:
        raise ValueError(f"--resume takes every option from {folder}/run.json; drop {extra}")
    stored = read_info(Path(folder))["config"].get("cli")
    if stored is None:
        raise ValueError(f"the run in {folder} was not started by `edgejax run`; resume it with "
                         "Simulation.run(..., out_dir=..., resume=True)")
    return {**DEFAULTS, **stored, "out": folder, "progress": progress, "resume": True}


def _parse_hparams(pairs, lr, server_lr) -> dict[str, float]:
    hp = {"client_lr": lr}
    if server_lr is not None:
        hp["server_lr"] = server_lr
    for pair in pairs:
        name, sep, value = str(pair).partition("=")
        try:
            hp[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--hparam expects NAME=VALUE with a number; got {pair!r}") from None
        if not sep:
            raise ValueError(f"--hparam expects NAME=VALUE; got {pair!r}")
    return hp


def _group_size(value):
    value = str(value).lower()
    if value in ("auto", "none"):
        return None if value == "none" else "auto"
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--group-size must be 'auto', 'none' or an integer; got {value!r}") from None


def _load_data(o: dict):
    from edgejax.data import load_dataset

    kwargs = {}
    if o["dataset"].startswith("synthetic") and o["dataset"] != "synthetic_iid":
        kwargs = {"alpha": o["alpha"], "beta": o["beta"]}
    if o["dataset"] == "npz":
        kwargs["path"] = o["data_path"]
    if o["dataset"] == "mnist":
        kwargs = _mnist_files(o["data_path"])
    kwargs["seed"] = o["seed"]
    return load_dataset(o["dataset"], **kwargs)


def _mnist_files(data_path: str | None) -> dict[str, Path]:
    """The t10k IDX files in ``--data-path`` (default: ``$EDGEJAX_DATA`` or ../shared/data);
    ``FileNotFoundError`` naming the folder and the missing files."""
    from edgejax.data.datasets import default_data_dir

    folder = Path(data_path) if data_path else default_data_dir()
    files = {"images_path": folder / "mnist-t10k-images-idx3-ubyte.gz",
             "labels_path": folder / "mnist-t10k-labels-idx1-ubyte.gz"}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--dataset mnist reads the IDX files from --data-path FOLDER; {folder} lacks "
                                f"{missing} (pass --data-path, or set EDGEJAX_DATA)")
    return files


DP_OPTIONS = {"dp_clip": "clip", "dp_noise_multiplier": "noise_multiplier", "dp_delta": "delta",
              "dp_quantile": "target_quantile"}


def _aggregator(o: dict):
    """``--aggregator`` with the ``--dp-*`` options given (``check_applicable`` has refused them for
    any aggregator but ``dp``) set on its ``GaussianDP``."""
    import dataclasses

    from edgejax.algorithms.registry import parse_aggregator

    aggregator = parse_aggregator(o["aggregator"])
    if o["dp_epsilon"] is not None and o["dp_noise_multiplier"] is not None:
        raise ValueError("--dp-epsilon calibrates the noise multiplier: give it or --dp-noise-multiplier, not both")
    fields = {field: float(o[flag]) for flag, field in DP_OPTIONS.items() if o[flag] is not None}
    aggregator = dataclasses.replace(aggregator, **fields) if fields else aggregator
    if o["attack"] == "none":
        return aggregator
    from edgejax.algorithms.attacks import Attacked

    strength = None if o["attack_strength"] is None else float(o["attack_strength"])
    return Attacked(inner=aggregator, attack=o["attack"], fraction=float(o["byzantine_fraction"]), strength=strength)


def _algorithm(o: dict):
    """The algorithm and its options (topology, order, compressor, weighting) from resolved options."""
    from edgejax.algorithms import ASYNCHRONOUS, DECENTRALIZED, Topology, get_algorithm, parse_compressor

    name = o["algorithm"]
    if name in ASYNCHRONOUS:
        options = {} if o["buffer_size"] is None else {"buffer_size": o["buffer_size"]}
        if name == "fedbuff":
            options["aggregator"] = _aggregator(o)
        return get_algorithm(name, **options)
    if name not in DECENTRALIZED:
        return get_algorithm(name, weighting=o["weighting"], aggregator=_aggregator(o))
    push = name == "pushsum"
    topology = Topology(graph=o["topology"], weights="column" if push else "metropolis",
                        directed=push and o["topology"] == "exponential", seed=o["seed"])
    options = {"topology": topology}
    if name == "dpsgd":
        options["order"] = o["gossip_order"]
    if name == "choco":
        options["compressor"] = parse_compressor(o["compressor"])
    return get_algorithm(name, **options)


def _calibrated(algorithm, target_epsilon: float, rounds: int, sampling_rate: float):
    """``algorithm`` with its ``GaussianDP`` noise multiplier set to reach ``target_epsilon`` after
    ``rounds`` rounds at sampling rate K/N (``noise_for_epsilon``)."""
    import dataclasses

    from edgejax.algorithms import noise_for_epsilon

    z = noise_for_epsilon(target_epsilon, rounds, sampling_rate, algorithm.aggregator.delta)
    print(f"--dp-epsilon {target_epsilon}: noise multiplier {z:.4f} over {rounds} rounds at q = {sampling_rate:.4g}")
    return dataclasses.replace(algorithm, aggregator=dataclasses.replace(algorithm.aggregator, noise_multiplier=z))


def _system(o: dict, num_nodes: int):
    """The ``SystemModel`` from resolved options."""
    from edgejax import system

    tiers = {} if o["tiers"] is None else parse_tiers(o["tiers"])
    profiles = {"uniform": lambda: None,
                "lognormal": lambda: system.lognormal_profiles(num_nodes, seed=o["seed"]),
                "tiered": lambda: system.tiered_profiles(num_nodes, seed=o["seed"], **tiers)}[o["profiles"]]()
    return system.SystemModel(profiles=profiles, availability=system.Availability(o["availability"]),
                              selection=o["selection"], stragglers=o["stragglers"],
                              deadline_policy=o["deadline_policy"], link_failures=bool(o["link_failures"]))


def parse_tiers(text: str) -> dict:
    """``tiered_profiles`` arguments from ``"0.9:1,0.1:0.1"``: each tier's share of the nodes and
    speed relative to the fastest tier (400 samples/s); every tier gets the fastest's links."""
    try:
        pairs = [tuple(float(v) for v in part.split(":")) for part in str(text).split(",")]
    except ValueError:
        pairs = [()]
    if not all(len(p) == 2 and p[0] >= 0 and p[1] > 0 for p in pairs):
        raise ValueError(f"--tiers expects SHARE:SPEED,... with shares >= 0 and speeds > 0; got {text!r}")
    if abs(sum(share for share, _ in pairs) - 1) > 1e-6:
        raise ValueError(f"--tiers shares must sum to 1; got {text!r}")
    return {"fractions": [share for share, _ in pairs], "speeds": [400.0 * speed for _, speed in pairs],
            "up_bandwidths": [4e6] * len(pairs)}


def build(o: dict):
    """Dataset, partition, model and ``Simulation`` from resolved options (validated before compute)."""
    import edgejax as ej
    from edgejax.algorithms import DECENTRALIZED
    from edgejax.data import Natural, format_partition_summary, parse_partition

    check_seed(o["seed"])
    scheme = parse_partition(o["partition"])
    dataset = _load_data(o)
    nodes = None if isinstance(scheme, Natural) else o["nodes"]
    data, summary = ej.federate(dataset, nodes, scheme, seed=o["seed"], local_test_fraction=o["local_test_fraction"])
    model_kwargs = {}
    if o["model"] == "mlp":
        model_kwargs["hidden"] = parse_hidden(o["hidden"])
    model = ej.models.get_model(o["model"], data.feature_shape, data.num_classes, **model_kwargs)
    local = ej.LocalTraining(batch_size=o["batch_size"], epochs=o["local_epochs"], steps=o["local_steps"],
                             optimizer=o["local_optimizer"], group_size=_group_size(o["group_size"]),
                             execution=o["execution"], weight_decay=bool(o["weight_decay"]))
    algorithm, cohort = _algorithm(o), o["clients_per_round"]
    if o["algorithm"] in DECENTRALIZED:
        cohort = None
    if cohort is not None and cohort > data.num_nodes:
        raise ValueError(f"clients_per_round={cohort} is larger than the number of nodes N={data.num_nodes}")
    if o["dp_epsilon"] is not None:
        algorithm = _calibrated(algorithm, o["dp_epsilon"], o["rounds"], cohort / data.num_nodes)
    mesh = ej.parallel.node_mesh() if o["shard_nodes"] or o["coordinator"] else None
    sim = ej.Simulation(model, data, algorithm, local, clients_per_round=cohort, system=_system(o, data.num_nodes),
                        mesh=mesh)
    hparams = sim.hparams(_parse_hparams(o["hparam"], o["lr"], o["server_lr"]))
    return sim, hparams, format_partition_summary(summary, max_rows=5)


def run(o: dict) -> int:
    from edgejax.cli.compile_cache import enable_compilation_cache
    from edgejax.core.rundir import default_out, prepare
    from edgejax.core.callbacks import TensorBoard
    from edgejax.core.runner import DivergenceError, RunFailed, RunInterrupted

    main = _join_processes(o)
    callbacks = [TensorBoard(o["tensorboard"])] if o["tensorboard"] and main else []
    out = prepare(o["out"] or default_out(), overwrite=bool(o["overwrite"]), resume=bool(o.get("resume"))) \
        if main else None
    enable_compilation_cache()
    sim, hparams, partition_text = build(o)
    if main:
        devices = "" if sim.mesh is None else f", nodes on {sim.node_axis.devices} devices"
        print(f"edgejax: {sim.algorithm.name} on {sim.data.name}, N={sim.num_nodes}, "
              f"{sim.cohort_size} nodes per round, model {sim.model.name}, {o['rounds']} rounds{devices}")
        print(partition_text)
    stored = {k: v for k, v in o.items() if k not in NOT_STORED and k != "resume"}
    try:
        results = sim.run(o["rounds"], seed=o["seed"], hparams=hparams, eval_every=o["eval_every"],
                          out_dir=out, progress=o["progress"] and main, checkpoint_every=o["checkpoint_every"],
                          keep_checkpoints=o["keep_checkpoints"], overwrite=bool(o["overwrite"]),
                          resume=bool(o.get("resume")), extra_config={"cli": stored}, callbacks=callbacks,
                          compile=o["compile"])
    except DivergenceError as err:
        print(f"stopped: {err}; results so far in {out}", file=sys.stderr)
        return 3
    except RunInterrupted as err:
        hint = f"; continue with: edgejax run --resume {out}" if o["checkpoint_every"] else ""
        print(f"edgejax: {err}; results so far in {out}{hint}", file=sys.stderr)
        return 128 + signal.Signals[err.signal].value
    except RunFailed as err:
        print(f"edgejax: {err}; results so far in {out}; once the disk has space (or is writable again), "
              f"continue with: edgejax run --resume {out}", file=sys.stderr)
        return 1
    if not main:
        return 0
    print(results.summary())
    last = results.last_eval()
    print(f"final test accuracy {last['test_accuracy']:.4f} after {results.num_rounds} rounds "
          f"({results.wall_time_s:.1f} s); results in {out}/ (metrics.csv, run.json)")
    return 0


def _join_processes(o: dict) -> bool:
    """Join a multi-host run when ``--coordinator`` is given (before any jax work); True in the
    process that writes the results (process 0, or the only one)."""
    if o["coordinator"] is None:
        if o["num_processes"] is not None or o["process_id"] is not None:
            raise ValueError("--num-processes and --process-id belong to a multi-host run: give --coordinator too")
        return True
    from edgejax.parallel import initialize, is_main_process

    address = None if o["coordinator"] == "auto" else o["coordinator"]
    who = "" if o["process_id"] is None else f" as process {o['process_id']}"
    print(f"edgejax: joining the multi-host run at {o['coordinator']}{who}; waiting up to {o['join_timeout']} s "
          "for the other processes", file=sys.stderr, flush=True)
    initialize(address, o["num_processes"], o["process_id"], timeout_s=o["join_timeout"])
    return is_main_process()


def execute(args: dict) -> int:
    """``edgejax run`` with parsed arguments; Ctrl-C before the rounds start exits 130 quietly."""
    try:
        return run(options_from_args(args))
    except KeyboardInterrupt:
        print("edgejax: interrupted before the first round finished", file=sys.stderr)
        return 130
