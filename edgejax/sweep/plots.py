"""Plots (matplotlib): a metric against rounds, simulated time or bytes, a line per
configuration with a band over its seeds; saved as PNG and PDF."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

X_AXES = {"round": "round", "sim_time_s": "simulated time (s)", "bytes": "bytes sent (up + down)"}
BANDS = ("std", "minmax", "none")


def curves(evals: pd.DataFrame, y: str, x: str = "round", *, by: str = "label") -> pd.DataFrame:
    """Per ``by`` group and evaluation round: the mean ``x`` and the mean, std, min and max of ``y``
    over seeds (``x`` other than ``round``, e.g. simulated time, is averaged over seeds too)."""
    for column in (by, "round", x, y):
        if column not in evals:
            raise ValueError(f"the evaluation table has no column {column!r}; it has {sorted(evals.columns)}")
    stats = evals.groupby([by, "round"], sort=False).agg(
        x=(x, "mean"), mean=(y, "mean"), std=(y, "std"), min=(y, "min"), max=(y, "max"))
    return stats.reset_index().fillna({"std": 0.0})


def plot(evals: pd.DataFrame, y: str = "test_accuracy", x: str = "round", *, by: str = "label",
         band: str = "std", ax=None):
    """Draw ``y`` against ``x`` on ``ax`` (a new figure if ``None``): the seed mean per group,
    with a band of ± one std (``std``), the seed range (``minmax``) or none. Returns the axes."""
    import matplotlib.pyplot as plt

    if band not in BANDS:
        raise ValueError(f"band {band!r} is not one of {BANDS}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for group, c in curves(evals, y, x, by=by).groupby(by, sort=False):
        line, = ax.plot(c["x"], c["mean"], label=str(group))
        if band != "none":
            low, high = (c["mean"] - c["std"], c["mean"] + c["std"]) if band == "std" else (c["min"], c["max"])
            ax.fill_between(c["x"], low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(X_AXES.get(x, x))
    ax.set_ylabel(y.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    return ax


def save_plots(evals: pd.DataFrame, out_dir: str | Path, *, metrics=("test_accuracy", "test_loss"),
               xs=("round", "sim_time_s", "bytes"), by: str = "label", band: str = "std",
               formats=("png", "pdf")) -> list[Path]:
    """One figure per metric and x axis present in ``evals``, as ``<metric>-vs-<x>.<format>``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for y in metrics:
        for x in xs:
            if x not in evals or y not in evals or not np.isfinite(evals[x]).any():
                continue
            ax = plot(evals, y, x, by=by, band=band)
            for fmt in formats:
                path = out / f"{y}-vs-{x}.{fmt}"
                ax.figure.savefig(path, dpi=150)
                written.append(path)
            plt.close(ax.figure)
    return written
