"""Sweeps over seeds and hyper-parameters (run by ``Simulation.sweep``): points (``grid``,
``zip_points``), their results, tables and plots (``edgejax.sweep.plots``, imported on use: it
needs matplotlib)."""
from edgejax.sweep.grid import grid, zip_points
from edgejax.sweep.load import load
from edgejax.sweep.program import STRATEGIES, compile_count
from edgejax.sweep.results import SweepResults
from edgejax.sweep.tables import summarize, to_latex, to_markdown

__all__ = ["STRATEGIES", "SweepResults", "compile_count", "grid", "load", "summarize", "to_latex",
           "to_markdown", "zip_points"]
