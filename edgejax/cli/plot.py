"""``edgejax plot RUN_DIRS...``: metrics against rounds, simulated time and bytes, with seed bands."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``edgejax plot`` on the top-level subparsers."""
    from edgejax.cli.options import ShowDefaults
    from edgejax.sweep.plots import BANDS, X_AXES

    p = sub.add_parser("plot", help="plot run/sweep folders (PNG and PDF, a band over seeds)",
                       description=__doc__, formatter_class=ShowDefaults)
    p.add_argument("dirs", nargs="+", type=Path, help="folders written by edgejax run or edgejax sweep")
    p.add_argument("--metric", nargs="+", default=["test_accuracy", "test_loss"], help="evaluation metrics")
    p.add_argument("--x", nargs="+", default=list(X_AXES), choices=list(X_AXES), help="x axes")
    p.add_argument("--band", choices=BANDS, default="std", help="band over seeds: ± one std, min-max, none")
    p.add_argument("--format", nargs="+", default=["png", "pdf"], choices=("png", "pdf", "svg"))
    p.add_argument("--out", type=Path, default=Path("plots"), help="output folder")
    return p


def execute(args: dict) -> int:
    """``edgejax plot`` with parsed arguments."""
    from edgejax.sweep import load
    from edgejax.sweep.plots import save_plots

    written = save_plots(load(args["dirs"]), args["out"], metrics=args["metric"], xs=args["x"], band=args["band"],
                         formats=args["format"])
    if not written:
        raise ValueError(f"nothing to plot: none of the metrics {args['metric']} is in {[str(d) for d in args['dirs']]}")
    print(f"wrote {len(written)} file(s) to {args['out']}/")
    return 0
