"""Plots are written as PNG and PDF, one per metric and x axis, with a line per configuration."""
from __future__ import annotations

import pandas as pd
import pytest

from edgejax.sweep.plots import curves, plot, save_plots


def _evals():
    rows = [{"label": m, "seed": s, "round": r, "test_accuracy": a + 0.05 * s, "test_loss": 2 - a,
             "sim_time_s": 3.0 * r, "bytes": 10.0 * r}
            for m, gain in (("fedavg", 0.05), ("fedadam", 0.08)) for s in (0, 1)
            for r, a in ((0, 0.1), (5, 0.1 + 5 * gain), (10, 0.1 + 10 * gain))]
    return pd.DataFrame(rows)


def test_curves_average_over_seeds():
    c = curves(_evals(), "test_accuracy", "sim_time_s").set_index(["label", "round"])
    assert c.loc[("fedavg", 5), "mean"] == pytest.approx(0.375)
    assert c.loc[("fedavg", 5), "min"] == pytest.approx(0.35) and c.loc[("fedavg", 5), "x"] == 15.0


def test_every_figure_is_written_and_non_empty(tmp_path):
    written = save_plots(_evals(), tmp_path)
    names = sorted(p.name for p in written)
    assert len(names) == 2 * 3 * 2
    assert "test_accuracy-vs-bytes.pdf" in names and "test_loss-vs-sim_time_s.png" in names
    for path in written:
        magic = b"\x89PNG\r\n\x1a\n" if path.suffix == ".png" else b"%PDF"
        assert path.read_bytes().startswith(magic) and path.stat().st_size > 1000, path.name


def test_one_line_and_band_per_configuration():
    import matplotlib

    matplotlib.use("Agg")
    ax = plot(_evals(), band="minmax")
    assert [line.get_label() for line in ax.get_lines()] == ["fedavg", "fedadam"]
    assert len(ax.collections) == 2  # the seed bands
    with pytest.raises(ValueError, match="band 'iqr'"):
        plot(_evals(), band="iqr")


def test_lines_differ_beyond_colour_and_axes_read_in_units():
    import matplotlib

    matplotlib.use("Agg")
    evals = _evals().assign(bytes=lambda d: d["round"] * 2.5e8)
    ax = plot(evals, "test_accuracy", "bytes", log_x=True, title="Digits")
    lines = ax.get_lines()
    assert len({(line.get_marker(), line.get_linestyle()) for line in lines}) == 2
    assert ax.get_xscale() == "log" and ax.get_title() == "Digits"
    assert ax.get_xlabel() == "bytes sent (up + down), GB" and max(lines[0].get_xdata()) == pytest.approx(2.5)
    assert min(lines[0].get_xdata()) > 0  # round 0 (no bytes yet) has no place on a log axis


def test_a_metric_without_values_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"no values of \['consensus_distance'\] to plot"):
        save_plots(_evals(), tmp_path, metrics=("test_accuracy", "consensus_distance"))
    assert not list(tmp_path.iterdir())  # refused before any figure is written
