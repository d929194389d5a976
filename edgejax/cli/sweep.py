"""``edgejax sweep``: a grid or list of settings from a TOML file, every point with every seed.

The file takes any ``edgejax run`` option as a fixed setting, ``seeds = [...]`` (the run
keys: model initialisation, sampling; the partition keeps the ``seed`` option), and
``[grid]`` (every combination) and/or ``[list]`` (lists of one length, point ``p`` takes
entry ``p`` of each) tables.  Their keys are ``edgejax run`` options (``lr`` and
``server_lr`` are traced; ``algorithm``, ``nodes``, ``model``... are static and each value
gets its own compiled program) or traced hyper-parameters such as ``mu`` or
``server_momentum``.  Example::

    rounds = 50
    seeds = [0, 1, 2, 3]
    [grid]
    algorithm = ["fedavg", "fedadam"]
    lr = [0.03, 0.1, 0.3]

Results go to ``--out``: ``evals.csv`` (one row per point, seed and evaluation round),
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
    from edgejax.sweep import STRATEGIES

    p = sub.add_parser("sweep", help="run a grid or list of settings over seeds (from a TOML file)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="TOML sweep file")
    p.add_argument("--strategy", choices=STRATEGIES, default="auto", help="execution: auto (loop on a CPU, vmap on "
                   "accelerators), loop (one compiled point per call), map (lax.map in one program), vmap")
    p.add_argument("--chunk-size", type=int, help="points per program call (map, vmap); default: by memory")
    p.add_argument("--out", default="runs/sweep", help="results folder")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    return p


def read_spec(path: Path) -> tuple[dict, list[int], list[dict], list[dict]]:
    """``(fixed options, seeds, static points, traced points)`` from a sweep file."""
    from edgejax.cli.run import DEFAULTS
    from edgejax.sweep import grid, zip_points

    with open(path, "rb") as f:
        spec = {k.replace("-", "_"): v for k, v in tomllib.load(f).items()}
    unknown = sorted(set(spec) - set(DEFAULTS) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {path}; known: {sorted(DEFAULTS)} and {list(SPEC_KEYS)}")
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
    points = [{**g, **z} for g in grid(swept["grid"]) for z in zip_points(swept["list"])]
    static = [{k: v for k, v in p.items() if k in DEFAULTS and k not in TRACED_OPTIONS} for p in points]
    static = list({repr(s): s for s in static}.values())
    traced = [{TRACED_OPTIONS.get(k, k): v for k, v in p.items() if k not in DEFAULTS or k in TRACED_OPTIONS}
              for p in points]
    return spec, seeds, static, list({repr(t): t for t in traced}.values())


def _folder(out: Path, static: dict, several: bool) -> Path:
    name = ",".join(f"{k}={v}" for k, v in static.items()).replace("/", "_")
    return out / name if several and name else out


def execute(args: dict) -> int:
    """``edgejax sweep`` with parsed arguments."""
    from edgejax.cli.compile_cache import enable_compilation_cache
    from edgejax.cli.run import DEFAULTS, build
    from edgejax.sweep import load, summarize, sweep, to_markdown

    fixed, seeds, statics, traced = read_spec(args["config"])
    enable_compilation_cache()
    out, folders = Path(args["out"]), []
    for static in statics:
        o = {**DEFAULTS, **fixed, **static}
        sim, hparams, _ = build(o)
        defaults = sim.default_hparams()
        base = {k: float(v) for k, v in hparams.items() if float(v) != float(defaults[k])}
        print(f"edgejax sweep: {sim.algorithm.name} on {sim.data.name}, N={sim.num_nodes}, model {sim.model.name}"
              f"{' (' + ', '.join(f'{k}={v}' for k, v in static.items()) + ')' if static else ''}: "
              f"{len(traced)} point(s) x {len(seeds)} seed(s), {o['rounds']} rounds")
        results = sweep(sim, o["rounds"], [{**base, **t} for t in traced], seeds, eval_every=o["eval_every"],
                        strategy=args["strategy"], chunk_size=args["chunk_size"], progress=args["progress"])
        folders.append(results.save(_folder(out, static, len(statics) > 1)))
    print(to_markdown(summarize(load(folders))))
    print(f"results in {', '.join(map(str, folders))} (evals.csv, rounds.csv, sweep.json)")
    return 0
