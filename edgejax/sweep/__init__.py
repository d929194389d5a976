"""Sweeps over seeds and hyper-parameters with an execution strategy, results tables and plots."""
from edgejax.sweep.grid import grid, zip_points
from edgejax.sweep.program import STRATEGIES, compile_count
from edgejax.sweep.results import SweepResults
from edgejax.sweep.runner import sweep

__all__ = ["STRATEGIES", "SweepResults", "compile_count", "grid", "sweep", "zip_points"]
