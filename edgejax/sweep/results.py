"""Results of a sweep: arrays per run, a tidy DataFrame, a results folder."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EVALS_CSV, ROUNDS_CSV, SWEEP_JSON = "evals.csv", "rounds.csv", "sweep.json"


@dataclasses.dataclass
class SweepResults:
    """Metrics of every run of a sweep.

    ``points``: the hyper-parameter overrides of each point, ``hparams``: all of its
    hyper-parameters; ``runs``: ``(point index,
    seed)`` of run ``r``; ``rounds[k] [R, rounds]`` and ``evals[k] [R, E]``: round and
    evaluation metrics of run ``r`` (evaluations after rounds ``eval_rounds``);
    ``config``: the static configuration (``Simulation.describe()`` and the sweep's own);
    ``options``: the ``edgejax sweep`` options that set it (they name its folder and, in
    tables and plots, its runs).
    """

    points: list[dict]
    hparams: list[dict]
    runs: list[tuple[int, int]]
    rounds: dict[str, np.ndarray]
    evals: dict[str, np.ndarray]
    eval_rounds: list[int]
    config: dict[str, Any]
    wall_time_s: float = 0.0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def _run_columns(self) -> pd.DataFrame:
        names = sorted({k for p in self.points for k in p})
        return pd.DataFrame({"point": [p for p, _ in self.runs], "seed": [s for _, s in self.runs],
                             **{k: [self.points[p].get(k, np.nan) for p, _ in self.runs] for k in names}})

    def rounds_dataframe(self) -> pd.DataFrame:
        """One row per run and round (1-based), with the run's point, seed and hyper-parameters."""
        num = next(iter(self.rounds.values())).shape[1]
        frame = self._run_columns().loc[np.repeat(np.arange(len(self.runs)), num)].reset_index(drop=True)
        frame["round"] = np.tile(np.arange(1, num + 1), len(self.runs))
        for k, v in self.rounds.items():
            frame[k] = v.reshape(-1)
        return frame

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy: one row per run (point x seed) and evaluation round.

        Beside the evaluation metrics: ``train_loss`` of that round, and the cumulative
        ``sim_time_s``, ``bytes`` (up + down) and ``updates`` (client updates) at it (0 at round 0).
        """
        frame = self._run_columns()
        frame = frame.loc[np.repeat(np.arange(len(self.runs)), len(self.eval_rounds))].reset_index(drop=True)
        frame["round"] = np.tile(self.eval_rounds, len(self.runs))
        for k, v in self.evals.items():
            frame[k] = v.reshape(-1)
        for k, v in cumulative_at(self.rounds, self.eval_rounds).items():
            frame[k] = v.reshape(-1)
        return frame

    def save(self, out_dir: str | Path) -> Path:
        """Write ``evals.csv`` (tidy), ``rounds.csv`` and ``sweep.json`` into ``out_dir``."""
        from edgejax.core.results import environment

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.to_dataframe().to_csv(out / EVALS_CSV, index=False)
        self.rounds_dataframe().to_csv(out / ROUNDS_CSV, index=False)
        info = {"config": self.config, "options": self.options, "points": self.points, "hparams": self.hparams,
                "runs": self.runs,
                "wall_time_s": round(self.wall_time_s, 3), **environment()}
        (out / SWEEP_JSON).write_text(json.dumps(info, indent=2, default=str))
        return out


def cumulative_at(rounds: dict[str, np.ndarray], at: list[int]) -> dict[str, np.ndarray]:
    """``train_loss``, cumulative ``sim_time_s``, ``bytes`` and ``updates`` (client updates:
    participants) after each round in ``at`` (round metrics ``[R, rounds]``; round 0 has NaN
    loss and zero time, bytes and updates)."""
    idx = np.asarray(at) - 1
    pad = lambda v, first: np.concatenate([np.full((v.shape[0], 1), first), v], axis=1)[:, idx + 1]  # noqa: E731
    out = {}
    if "train_loss" in rounds:
        out["train_loss"] = pad(rounds["train_loss"], np.nan)
    if "sim_time_s" in rounds:
        out["sim_time_s"] = pad(rounds["sim_time_s"], 0.0)
    if "bytes_up" in rounds:
        sent = np.cumsum(rounds["bytes_up"] + rounds.get("bytes_down", 0.0), axis=1)
        out["bytes"] = pad(sent, 0.0)
    if "participants" in rounds:
        out["updates"] = pad(np.cumsum(rounds["participants"], axis=1), 0.0)
    return out
