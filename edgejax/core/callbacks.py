"""Callbacks on the host loop: called after every chunk of rounds, able to stop the run.

A callback is any callable ``callback(chunk: Chunk) -> bool | None``; returning ``True`` stops
the run after this chunk (``Results.status`` says which callback stopped it, the checkpoint and
files are written as at the end of any chunk).  An object with a ``close()`` method is closed
when the run ends, however it ends.  ``Simulation.run(..., callbacks=[...])``.

* ``StopAt(metric, target)``: stop once an evaluation metric reaches a target (``mode="max"``:
  at or above it; ``"min"``: at or below).
* ``TensorBoard(logdir)``: every round's metrics and every evaluation as TensorBoard scalars,
  through ``tensorboardX`` (``pip install edgejax[tensorboard]``); a missing package is an
  ``ImportError`` saying so when the callback is built, before any compute.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

MODES = ("max", "min")


class Chunk(NamedTuple):
    """What a callback sees after a chunk: ``first_round`` (1-based) to ``last_round``, the
    chunk's per-round ``rounds`` metrics (name -> ``[last - first + 1]`` array), the
    evaluation ``evals`` at ``last_round`` (name -> float) and the simulation ``state`` (a copy
    the callback may keep)."""

    first_round: int
    last_round: int
    rounds: dict
    evals: dict
    state: Any


@dataclasses.dataclass(frozen=True)
class StopAt:
    """Stop the run at the first evaluation whose ``metric`` reaches ``target``."""

    metric: str
    target: float
    mode: str = "max"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"StopAt: mode={self.mode!r} must be one of {MODES}")
        if not isinstance(self.target, (int, float)) or not math.isfinite(self.target):
            raise ValueError(f"StopAt: target={self.target!r} must be a finite number")

    def __call__(self, chunk: Chunk) -> bool:
        if self.metric not in chunk.evals:
            raise ValueError(f"StopAt: no evaluation metric {self.metric!r}; this run reports {sorted(chunk.evals)}")
        value = chunk.evals[self.metric]
        return bool(value >= self.target if self.mode == "max" else value <= self.target)


class TensorBoard:
    """Every round's metrics (``rounds/<name>``, step = the round) and every evaluation
    (``evals/<name>``) written to ``logdir`` with ``tensorboardX.SummaryWriter``; NaN values
    (a round with no participant) are skipped."""

    def __init__(self, logdir: str | Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as err:
            raise ImportError("TensorBoard logging needs the tensorboardX package: "
                              "pip install 'edgejax[tensorboard]' (or pip install tensorboardX)") from err
        self.logdir = Path(logdir)
        self.writer = SummaryWriter(str(self.logdir))

    def __call__(self, chunk: Chunk) -> None:
        for name, values in chunk.rounds.items():
            values = np.asarray(values)
            if values.ndim != 1:   # per-tick event logs and other non-scalar metrics
                continue
            for r, value in enumerate(values, start=chunk.first_round):
                if np.isfinite(value):
                    self.writer.add_scalar(f"rounds/{name}", float(value), r)
        for name, value in chunk.evals.items():
            if np.ndim(value) == 0 and np.isfinite(value):
                self.writer.add_scalar(f"evals/{name}", float(value), chunk.last_round)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
