"""``edgejax table RUN_DIRS...``: a paper table over run and sweep folders (seeds aggregated)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``edgejax table`` on the top-level subparsers."""
    from edgejax.cli.options import ShowDefaults
    p = sub.add_parser("table", help="aggregate run/sweep folders over seeds into a Markdown or LaTeX table",
                       description=__doc__, formatter_class=ShowDefaults)
    p.add_argument("dirs", nargs="+", type=Path, help="folders written by edgejax run or edgejax sweep")
    p.add_argument("--metric", default="test_accuracy", help="evaluation metric (losses are minimised)")
    p.add_argument("--target", type=float, help="also report rounds, simulated time and bytes to reach this value")
    p.add_argument("--interval", choices=("std", "ci95"), default="std", help="± term: std or 95%% t-interval")
    p.add_argument("--format", choices=("markdown", "latex"), default="markdown", help="table format")
    p.add_argument("--digits", type=int, default=3, help="decimals")
    p.add_argument("--caption", help="LaTeX: wrap the tabular in a table with this caption")
    p.add_argument("--out", type=Path, help="write the table to this file (default: print it)")
    return p


def execute(args: dict) -> int:
    """``edgejax table`` with parsed arguments."""
    from edgejax.sweep import load, summarize, to_latex, to_markdown

    summary = summarize(load(args["dirs"]), args["metric"], target=args["target"], interval=args["interval"])
    if args["format"] == "latex":
        text = to_latex(summary, args["metric"], digits=args["digits"], caption=args["caption"])
    else:
        text = to_markdown(summary, args["metric"], digits=args["digits"])
    if args["out"] is None:
        print(text, end="")
    else:
        args["out"].parent.mkdir(parents=True, exist_ok=True)
        args["out"].write_text(text)
        print(f"wrote {args['out']}")
    return 0
