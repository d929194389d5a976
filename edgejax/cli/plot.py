"""``edgejax plot RUN_DIRS...``: metrics against rounds, simulated time or bytes, with seed bands.

One figure per ``--metric`` and ``--x`` (by default test accuracy against rounds), in each
``--format``; lines are labelled by the settings that tell the runs apart."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``edgejax plot`` on the top-level subparsers."""
    from edgejax.cli.options import ShowDefaults
    from edgejax.sweep.plots import BANDS, X_AXES

    p = sub.add_parser("plot", help="plot run/sweep folders (PNG, PDF or SVG, a band over seeds)",
                       description=__doc__, formatter_class=ShowDefaults)
    p.add_argument("dirs", nargs="+", type=Path, help="folders written by edgejax run or edgejax sweep")
    p.add_argument("--metric", nargs="+", default=["test_accuracy"], help="evaluation metrics, e.g. test_accuracy "
                   "test_loss")
    p.add_argument("--x", nargs="+", default=["round"], choices=list(X_AXES), help="x axes")
    p.add_argument("--format", nargs="+", default=["png"], choices=("png", "pdf", "svg"), help="file formats; one "
                   "file is written per metric, x axis and format")
    p.add_argument("--band", choices=BANDS, default="std", help="band over seeds: ± one std, min-max, none")
    p.add_argument("--log-x", action="store_true", help="log-scale x axis (points at x = 0 left out)")
    p.add_argument("--title", help="figure title")
    p.add_argument("--out", type=Path, default=Path("plots"), help="output folder")
    return p


def execute(args: dict) -> int:
    """``edgejax plot`` with parsed arguments."""
    from edgejax.sweep import load
    from edgejax.sweep.plots import save_plots

    written = save_plots(load(args["dirs"]), args["out"], metrics=args["metric"], xs=args["x"], band=args["band"],
                         formats=args["format"], log_x=args["log_x"], title=args["title"])
    if not written:
        raise ValueError(f"nothing to plot: none of the x axes {args['x']} has values in "
                         f"{[str(d) for d in args['dirs']]}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
