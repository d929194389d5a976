"""Results of a run: per-round and per-evaluation metrics as arrays, a DataFrame, files on disk.

``save(out_dir)`` writes ``metrics.csv`` (one row per round; evaluation columns are
filled on evaluation rounds) and ``run.json`` (configuration, seed, package
versions, device, status, last evaluation), each atomically (see ``core.rundir``).
"""
from __future__ import annotations

import dataclasses
import functools
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgejax.core import rundir


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Package versions and the device the run used."""
    import jax

    versions = {}
    for pkg in ("edgejax", "jax", "jaxlib", "optax", "flax", "chex", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    device = jax.devices()[0]
    return {"versions": versions, "python": platform.python_version(),
            "backend": jax.default_backend(), "device": device.device_kind,
            "device_count": jax.device_count()}


@dataclasses.dataclass
class Results:
    """Metrics of one run.

    ``rounds``: column name -> array with one entry per finished round (``round`` is
    1-based: the metrics of round r describe the r-th round).  ``evals``: column name
    -> array with one entry per evaluation (``round`` 0 is the initial model).
    ``config``: everything needed to rerun.  ``status``: ``finished`` or why it stopped.
    """

    rounds: dict[str, np.ndarray]
    evals: dict[str, np.ndarray]
    config: dict[str, Any]
    status: str = "finished"
    wall_time_s: float = 0.0
    final_state: Any = None
    started: str | None = None

    @property
    def num_rounds(self) -> int:
        return len(self.rounds.get("round", ()))

    def to_dataframe(self) -> pd.DataFrame:
        """One row per round (plus round 0), round metrics and evaluation metrics as columns."""
        rounds, evals = pd.DataFrame(self.rounds), self.evaluations()
        if rounds.empty:
            return evals
        return rounds.merge(evals, on="round", how="outer").sort_values("round").reset_index(drop=True)

    def evaluations(self) -> pd.DataFrame:
        """One row per evaluation (round 0 and every ``eval_every`` rounds), for plotting."""
        return pd.DataFrame(self.evals)

    def last_eval(self) -> dict[str, float]:
        """Metrics of the last evaluation (empty if none)."""
        if not len(self.evals.get("round", ())):
            return {}
        return {k: float(v[-1]) for k, v in self.evals.items()}

    def info(self) -> dict[str, Any]:
        """The content of ``run.json``: configuration, status, progress, times, environment."""
        return run_info(self.config, self.status, self.num_rounds, self.started, self.wall_time_s, self.last_eval())

    def save(self, out_dir: str | Path) -> Path:
        """Write ``metrics.csv`` and ``run.json`` into ``out_dir`` (created if needed), each atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        metrics = rundir.MetricsFile(out)
        metrics.reset(self.rounds, self.evals)
        rundir.write_info(out, {**self.info(), "metrics_rows": metrics.rows})
        return out

    def summary(self) -> str:
        """A short text table of the evaluations."""
        cols = ["round", "test_accuracy", "test_loss", "node_accuracy_mean", "node_accuracy_min",
                "node_accuracy_p10", "own_accuracy_mean", "own_accuracy_min"]
        table = pd.DataFrame({c: self.evals[c] for c in cols if c in self.evals})
        return table.to_string(index=False, float_format=lambda v: f"{v:.4f}")



def run_info(config: dict, status: str, rounds_finished: int, started: str | None, wall_time_s: float,
             last_eval: dict) -> dict[str, Any]:
    """The content of ``run.json``."""
    return {"config": config, "status": status, "rounds_finished": rounds_finished, "started": started,
            "updated": rundir.now(), "wall_time_s": round(wall_time_s, 3), "last_eval": last_eval,
            **environment()}
