"""Paper tables: aggregate runs over seeds, export Markdown and LaTeX (booktabs, best in bold).

Input: a tidy evaluation table (``SweepResults.to_dataframe()`` or ``load(folders)``),
one row per run and evaluation round with ``label``-like, ``seed`` and ``round`` columns.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

INTERVALS = ("std", "ci95")
# what "to target" counts: rounds (server ticks in asynchronous algorithms, one arrival each),
# client updates (the same unit in both), simulated seconds, bytes
TO_TARGET = {"rounds": "round", "updates": "updates", "sim_time_s": "sim_time_s", "bytes": "bytes"}
_BYTE_UNITS = ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"))


def lower_is_better(metric: str) -> bool:
    """Losses are minimised; everything else (accuracies) is maximised."""
    return "loss" in metric


def _spread(values: np.ndarray, interval: str) -> float:
    """The ± term: sample standard deviation, or the half-width of a Student-t 95% interval."""
    n = len(values)
    if n < 2:
        return 0.0
    std = float(np.std(values, ddof=1))
    if interval == "std":
        return std
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)


def summarize(evals: pd.DataFrame, metric: str = "test_accuracy", *, by: str = "label",
              target: float | None = None, interval: str = "std") -> pd.DataFrame:
    """Per ``by`` group, over its seeds: the final and the best ``metric`` and, with
    ``target``, the rounds, client updates, simulated seconds and bytes until ``metric``
    first reaches it (compare asynchronous and synchronous runs by updates or seconds: an
    asynchronous round is one arrival).

    Columns ``<name>_mean``, ``<name>_err`` (std or 95% half-width), ``seeds``, and with a
    target ``reached`` (seeds that reached it; the *_to_target means are over those).
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval {interval!r} is not one of {INTERVALS}")
    for column in (by, "seed", "round", metric):
        if column not in evals:
            raise ValueError(f"the evaluation table has no column {column!r}; it has {sorted(evals.columns)}")
    minimise = lower_is_better(metric)
    rows = []
    for group, frame in evals.groupby(by, sort=False):
        per_run = [run.sort_values("round") for _, run in frame.groupby("seed", sort=False)]
        values = {"final": np.array([run[metric].iloc[-1] for run in per_run]),
                  "best": np.array([run[metric].min() if minimise else run[metric].max() for run in per_run])}
        row = {by: group, "seeds": len(per_run)}
        if target is not None:
            hits = [run[(run[metric] <= target) if minimise else (run[metric] >= target)] for run in per_run]
            reached = [hit.iloc[0] for hit in hits if len(hit)]
            row["reached"] = len(reached)
            for name, column in TO_TARGET.items():
                if column in frame:
                    values[f"{name}_to_target"] = np.array([float(hit[column]) for hit in reached])
        for name, v in values.items():
            row[f"{name}_mean"] = float(np.mean(v)) if len(v) else np.nan
            row[f"{name}_err"] = _spread(v, interval)
        rows.append(row)
    return pd.DataFrame(rows)


def _pair(mean: float, err: float, digits: int, pm: str, name: str = "final") -> str:
    """``mean pm err`` as ``name`` reads best: metrics with ``digits`` decimals, counts (rounds,
    updates) as integers where whole, seconds with one decimal, bytes in kB/MB/GB/TB (10^3
    steps); no ``pm err`` when the spread is 0 (one seed, or equal seeds)."""
    if not np.isfinite(mean):
        return "—"
    unit, scale, decimals = "", 1.0, digits
    if name in ("rounds_to_target", "updates_to_target"):
        decimals = 0 if float(mean).is_integer() and float(err).is_integer() else 1
    elif name == "sim_time_s_to_target":
        decimals = 1
    elif name == "bytes_to_target":
        scale, unit = next(((s, u) for s, u in _BYTE_UNITS if abs(mean) >= s), (1.0, "B"))
        unit, decimals = f" {unit}", 0 if scale == 1.0 else 1
    text = f"{mean / scale:.{decimals}f}"
    if err > 0:
        text += f" {pm} {err / scale:.{decimals}f}"
    return text + unit


def _cells(summary: pd.DataFrame, metric: str, by: str, digits: int, pm: str, bold) -> tuple[list, list]:
    """Header and body cells; the best mean of every column is wrapped by ``bold``."""
    names = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    header = [by, *[f"{metric} ({n})" if n in ("final", "best") else n for n in names]]
    body = [[str(v)] for v in summary[by]]
    for name in names:
        means = summary[f"{name}_mean"].to_numpy(dtype=float)
        minimise = lower_is_better(metric) if name in ("final", "best") else True
        finite = means[np.isfinite(means)]
        best = (finite.min() if minimise else finite.max()) if len(finite) else None
        for i, (mean, err) in enumerate(zip(means, summary[f"{name}_err"])):
            text = _pair(mean, err, digits, pm, name)
            reached, seeds = summary["reached"].iloc[i] if "reached" in summary else None, summary["seeds"].iloc[i]
            if name.endswith("_to_target") and reached < seeds:
                text += f" ({reached}/{seeds})"
            body[i].append(bold(text) if best is not None and mean == best else text)
    return header, body


def to_markdown(summary: pd.DataFrame, metric: str = "test_accuracy", *, by: str = "label", digits: int = 3) -> str:
    """A Markdown table of ``summarize`` output: ``mean ± err``, the best of each column in bold."""
    header, body = _cells(summary, metric, by, digits, "±", lambda s: f"**{s}**")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body]) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
          "{": r"\{", "}": r"\}", "—": "--"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX.get(char, char) for char in text)


def to_latex(summary: pd.DataFrame, metric: str = "test_accuracy", *, by: str = "label", digits: int = 3,
             caption: str | None = None) -> str:
    """A booktabs ``tabular`` (inside a ``table`` with ``caption``): ``mean $\\pm$ err``, best in bold."""
    header, body = _cells(summary, metric, by, digits, r"$\pm$", lambda s: rf"\textbf{{{s}}}")
    header = [_latex_escape(h) for h in header]
    body = [[_latex_escape(cell) if i == 0 else cell.replace("—", "--") for i, cell in enumerate(row)]
            for row in body]
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule", " & ".join(header) + r" \\",
             r"\midrule", *(" & ".join(row) + r" \\" for row in body), r"\bottomrule", r"\end{tabular}"]
    if caption is not None:
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(caption)}}}", *lines, r"\end{table}"]
    return "\n".join(lines) + "\n"
