"""``edgejax sweep``: a grid or list of settings from a TOML file, every point with every seed.

The file takes any ``edgejax run`` option or traced hyper-parameter as a fixed setting,
``seeds = [...]`` (the run keys: model initialisation, sampling; the partition keeps the
``seed`` option), and ``[grid]`` (every combination) and/or ``[list]`` (lists of one length,
point ``p`` takes entry ``p`` of each) tables.  Their keys are the same: ``edgejax run``
options (``lr`` and ``server_lr`` are traced; ``algorithm``, ``nodes``, ``model``... are
static and each value gets its own compiled program) or traced hyper-parameters such as
``mu`` or ``server_momentum``, which go to the configurations that take them (FedAvg runs
once in a grid over FedProx's ``mu``).  Example::

    rounds = 50
    seeds = [0, 1, 2, 3]
    [grid]
    algorithm = ["fedavg", "fedadam"]
    lr = [0.03, 0.1, 0.3]

Results go to ``--out`` (a fresh ``runs/sweep-<time>`` by default; a folder holding a sweep
is refused): ``evals.csv`` (one row per point, seed and evaluation round),
``rounds.csv`` and ``sweep.json``; with several static configurations, one such folder
each, named by its settings.
"""
from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

TRACED_OPTIONS = {"lr": "client_lr", "server_lr": "server_lr"}
SPEC_KEYS = ("seeds", "grid", "list")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``edgejax sweep`` on the top-level subparsers."""
    from edgejax.cli.options import ShowDefaults
    from edgejax.sweep import STRATEGIES

    p = sub.add_parser("sweep", help="run a grid or list of settings over seeds (from a TOML file)",
                       description=__doc__, formatter_class=ShowDefaults)
    p.add_argument("config", type=Path, help="TOML sweep file")
    p.add_argument("--strategy", choices=STRATEGIES, default="auto", help="execution: auto (loop on a CPU, vmap on "
                   "accelerators), loop (one compiled point per call), map (lax.map in one program), vmap")
    p.add_argument("--chunk-size", type=int, help="points per program call (map, vmap); default: by memory")
    p.add_argument("--out", type=Path, help="results folder; it must not hold another sweep "
                   "(default: a fresh runs/sweep-YYYYmmdd-HHMMSS)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    return p


def read_spec(path: Path) -> tuple[dict, list[int], list[dict], list[dict]]:
    """``(fixed options, seeds, static points, traced points)`` from a sweep file; a traced
    hyper-parameter set at the top (``mu = 0.1``) joins every traced point, as in ``[grid]``."""
    from edgejax.cli.options import check_types
    from edgejax.cli.run import DEFAULTS
    from edgejax.sweep import grid, zip_points

    spec = {k.replace("-", "_"): v for k, v in _read_toml(path).items()}
    seeds = spec.pop("seeds", [spec.get("seed", 0)])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds in {path} must be a list of integers; got {seeds!r}")
    swept = {}
    for table in ("grid", "list"):
        values = {k.replace("-", "_"): v for k, v in spec.pop(table, {}).items()}
        if "seed" in values or "hparam" in values:
            raise ValueError(f"[{table}] in {path} cannot sweep 'seed' or 'hparam': use seeds = [...] and the "
                             "hyper-parameter's own name")
        swept[table] = values
    fixed = {k: v for k, v in spec.items() if k in DEFAULTS}
    check_types(fixed, DEFAULTS, str(path))
    hyper = {k: v for k, v in spec.items() if k not in DEFAULTS}
    for name, value in hyper.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} in {path} is neither an edgejax run option nor a number (a traced "
                             f"hyper-parameter); got {value!r}")
    points = [{**hyper, **g, **z} for g in grid(swept["grid"]) for z in zip_points(swept["list"])]
    static = [{k: v for k, v in p.items() if k in DEFAULTS and k not in TRACED_OPTIONS} for p in points]
    static = list({repr(s): s for s in static}.values())
    traced = [{TRACED_OPTIONS.get(k, k): v for k, v in p.items() if k not in DEFAULTS or k in TRACED_OPTIONS}
              for p in points]
    return fixed, seeds, static, list({repr(t): t for t in traced}.values())


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_bytes().decode("utf-8-sig"))
    except OSError as err:
        raise ValueError(f"cannot read the sweep file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ValueError(f"the sweep file {path} is not UTF-8 text (a TOML file)") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"the sweep file {path} is not valid TOML: {err}") from None


def _folder(out: Path, static: dict, several: bool) -> Path:
    name = ",".join(f"{k}={v}" for k, v in static.items()).replace("/", "_")
    return out / name if several and name else out


def _output_folder(out: Path | None) -> Path:
    """``out``, refused when it already holds a sweep; a fresh ``runs/sweep-<time>`` when ``None``."""
    from edgejax.core.rundir import default_out
    from edgejax.sweep.results import SWEEP_JSON

    if out is None:
        out = default_out("runs", "sweep")
        print(f"edgejax sweep: results go to {out} (choose the folder with --out)")
    held = sorted(str(p.parent) for p in [out / SWEEP_JSON, *out.glob(f"*/{SWEEP_JSON}")] if p.is_file())
    if held:
        raise ValueError(f"--out {out} already holds a sweep ({', '.join(held)}); choose another folder or "
                         "delete it")
    return out


def _configuration(fixed: dict, static: dict, traced: list[dict]):
    """``(options, simulation, points)`` of one static configuration: each traced point keeps
    the hyper-parameters this simulation takes (FedAvg drops FedProx's ``mu``), duplicates merged."""
    from edgejax.cli.run import build, with_defaults

    o = with_defaults({**fixed, **static})
    sim, hparams, _ = build(o)
    takes = sim.default_hparams()
    base = {k: float(v) for k, v in hparams.items() if float(v) != float(takes[k])}
    points = [{**base, **{k: v for k, v in t.items() if k in takes}} for t in traced]
    return o, sim, list({repr(p): p for p in points}.values())


def _check_names(traced: list[dict], simulations: list, path: Path) -> None:
    """``ValueError`` naming swept hyper-parameters that no configuration of the sweep takes."""
    from edgejax.cli.run import DEFAULTS

    takes = set().union(*(sim.default_hparams() for sim in simulations))
    unknown = sorted({k for t in traced for k in t} - takes)
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {unknown} in {path}: no configuration of the sweep takes "
                         f"them (they take {sorted(takes)}) and they are no edgejax run options "
                         f"({sorted(DEFAULTS)})")


def execute(args: dict) -> int:
    """``edgejax sweep`` with parsed arguments: every configuration is built (and checked) before any runs."""
    from edgejax.cli.compile_cache import enable_compilation_cache
    from edgejax.sweep import load, summarize, to_markdown

    fixed, seeds, statics, traced = read_spec(args["config"])
    out = _output_folder(args["out"])
    enable_compilation_cache()
    configurations = [_configuration(fixed, static, traced) for static in statics]
    _check_names(traced, [sim for _, sim, _ in configurations], args["config"])
    folders = []
    for static, (o, sim, points) in zip(statics, configurations):
        print(f"edgejax sweep: {sim.algorithm.name} on {sim.data.name}, N={sim.num_nodes}, model {sim.model.name}"
              f"{' (' + ', '.join(f'{k}={v}' for k, v in static.items()) + ')' if static else ''}: "
              f"{len(points)} point(s) x {len(seeds)} seed(s), {o['rounds']} rounds")
        results = sim.sweep(o["rounds"], points, seeds, eval_every=o["eval_every"],
                            strategy=args["strategy"], chunk_size=args["chunk_size"], progress=args["progress"])
        results.options = static
        folders.append(results.save(_folder(out, static, len(statics) > 1)))
    print(to_markdown(summarize(load(sorted(folders)))))  # in the order of `edgejax table OUT/*`
    print(f"results in {', '.join(map(str, folders))} (evals.csv, rounds.csv, sweep.json)")
    return 0
