"""Results of a run: per-round and per-evaluation metrics as arrays, a DataFrame, files on disk.

``save(out_dir)`` writes ``metrics.csv`` (one row per round; evaluation columns are
filled on evaluation rounds) and ``run.json`` (configuration, seed, package
versions, device, status, last evaluation).
"""
from __future__ import annotations

import dataclasses
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


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

    @property
    def num_rounds(self) -> int:
        return len(self.rounds.get("round", ()))

    def to_dataframe(self) -> pd.DataFrame:
        """One row per round (plus round 0), round metrics and evaluation metrics as columns."""
        rounds = pd.DataFrame(self.rounds)
        evals = self.evaluations()
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

    def save(self, out_dir: str | Path) -> Path:
        """Write ``metrics.csv`` and ``run.json`` into ``out_dir`` (created if needed)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.to_dataframe().to_csv(out / "metrics.csv", index=False)
        info = {"config": self.config, "status": self.status, "rounds_finished": self.num_rounds,
                "wall_time_s": round(self.wall_time_s, 3), "last_eval": self.last_eval(), **environment()}
        (out / "run.json").write_text(json.dumps(info, indent=2, default=_jsonable))
        return out

    def summary(self) -> str:
        """A short text table of the evaluations."""
        cols = ["round", "test_accuracy", "test_loss", "node_accuracy_mean", "node_accuracy_min",
                "node_accuracy_p10", "own_accuracy_mean", "own_accuracy_min"]
        table = pd.DataFrame({c: self.evals[c] for c in cols if c in self.evals})
        return table.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def _jsonable(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)
