"""Plots (matplotlib): a metric against rounds, client updates, simulated time or bytes, a
line per configuration with a band over its seeds; saved as PNG, PDF or SVG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

X_AXES = {"round": "round", "updates": "client updates", "sim_time_s": "simulated time (s)",
          "bytes": "bytes sent (up + down)"}
BANDS = ("std", "minmax", "none")
MARKERS, STYLES = ("o", "s", "^", "D", "v", "P", "X", "*"), ("-", "--", "-.", ":")
_BYTE_UNITS = ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1.0, "B"))


def curves(evals: pd.DataFrame, y: str, x: str = "round", *, by: str = "label") -> pd.DataFrame:
    """Per ``by`` group and evaluation round: the mean ``x`` and the mean, std, min and max of ``y``
    over seeds (``x`` other than ``round``, e.g. simulated time, is averaged over seeds too)."""
    for column in (by, "round", x, y):
        if column not in evals:
            raise ValueError(f"the evaluation table has no column {column!r}; it has {sorted(evals.columns)}")
    stats = evals.groupby([by, "round"], sort=False).agg(
        x=(x, "mean"), mean=(y, "mean"), std=(y, "std"), min=(y, "min"), max=(y, "max"))
    return stats.reset_index().fillna({"std": 0.0})


def _x_scale(x: str, values: pd.Series) -> tuple[float, str]:
    """``(divisor, axis label)``: bytes in the largest of kB/MB/GB/TB below their maximum (10^3 steps)."""
    if x != "bytes":
        return 1.0, X_AXES.get(x, x)
    top = float(np.nanmax(values)) if len(values) else 0.0
    scale, unit = next(((s, u) for s, u in _BYTE_UNITS if top >= s), (1.0, "B"))
    return scale, f"{X_AXES[x]}, {unit}"


def plot(evals: pd.DataFrame, y: str = "test_accuracy", x: str = "round", *, by: str = "label",
         band: str = "std", ax=None, log_x: bool = False, title: str | None = None):
    """Draw ``y`` against ``x`` on ``ax`` (a new figure if ``None``): the seed mean per group,
    each with its own marker and line style, with a band of ± one std (``std``), the seed
    range (``minmax``) or none; ``log_x`` puts x on a log scale (points at x = 0 left out).
    Returns the axes."""
    import matplotlib.pyplot as plt

    if band not in BANDS:
        raise ValueError(f"band {band!r} is not one of {BANDS}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    stats = curves(evals, y, x, by=by)
    scale, label = _x_scale(x, stats["x"])
    for i, (group, c) in enumerate(stats.groupby(by, sort=False)):
        c = c[c["x"] > 0] if log_x else c
        xs = c["x"] / scale
        line, = ax.plot(xs, c["mean"], label=str(group), marker=MARKERS[i % len(MARKERS)],
                        linestyle=STYLES[i % len(STYLES)], markevery=max(1, len(c) // 10), markersize=4)
        if band != "none":
            low, high = (c["mean"] - c["std"], c["mean"] + c["std"]) if band == "std" else (c["min"], c["max"])
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel(y.replace("_", " "))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    return ax


def save_plots(evals: pd.DataFrame, out_dir: str | Path, *, metrics=("test_accuracy", "test_loss"),
               xs=("round", "sim_time_s", "bytes"), by: str = "label", band: str = "std",
               formats=("png", "pdf"), log_x: bool = False, title: str | None = None) -> list[Path]:
    """One figure per metric and x axis present in ``evals``, as ``<metric>-vs-<x>.<format>``;
    ``ValueError`` naming a metric that has no value in ``evals`` (per-round metrics such as
    ``consensus_distance`` are not in sweep folders' evaluations)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    missing = [y for y in metrics if y not in evals or not evals[y].notna().any()]
    if missing:
        shown = sorted(c for c in evals.columns if c not in ("label", "seed", "round", "run", "point"))
        raise ValueError(f"no values of {missing} to plot: these folders' evaluations hold {shown} (per-round "
                         "metrics are plotted only from edgejax run folders, at their evaluation rounds)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for y in metrics:
        for x in xs:
            if x not in evals or not np.isfinite(evals[x]).any():
                continue
            ax = plot(evals, y, x, by=by, band=band, log_x=log_x, title=title)
            for fmt in formats:
                path = out / f"{y}-vs-{x}.{fmt}"
                ax.figure.savefig(path, dpi=150)
                written.append(path)
            plt.close(ax.figure)
    return written
