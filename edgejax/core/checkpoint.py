"""Checkpoints of a run with orbax-checkpoint: the whole simulation state (models, optimizer and
algorithm state, system state, keys, round) and the metrics logged so far.

The state is saved as whatever pytree ``Simulation.init`` builds and restored against a
freshly built state of the same simulation as the template, so no field is named here and a
change of the state's layout needs no change of this module.  Only the last ``keep``
checkpoints are kept; orbax writes each into a temporary folder and renames it when complete,
so a kill during a save leaves the previous checkpoint intact (and the temporary folder, which
the next ``Checkpoints`` of the folder deletes).  A save that fails for want of space or
permission raises ``OSError`` with the file system's error code.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


class Checkpoints:
    """The checkpoints of one run, in ``directory/<round>/``."""

    def __init__(self, directory: str | Path, keep: int = 2):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep_checkpoints must be a positive integer; got {keep!r}")
        directory = Path(directory).absolute()
        for unfinished in directory.glob("*.orbax-checkpoint-tmp*"):  # left by a save that was killed
            shutil.rmtree(unfinished)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
        try:
            self.manager = ocp.CheckpointManager(directory, options=options)
        except ValueError as err:  # orbax reads every checkpoint's metrics item here
            damaged = _damaged_metrics(directory) or f"a checkpoint in {directory}"
            raise ValueError(f"{damaged} is damaged ({_first_line(err)}); delete its checkpoint folder to resume "
                             "from the one before") from err

    def latest(self) -> int | None:
        """The round of the newest complete checkpoint, or ``None``."""
        return self.manager.latest_step()

    def save(self, round_: int, state: Any, metrics: dict) -> None:
        """Save ``state`` (any pytree of arrays) and ``metrics`` (JSON-able) as of round ``round_``."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), metrics=ocp.args.JsonSave(metrics))
        try:
            self.manager.save(round_, args=args, force=True)
            self.manager.wait_until_finished()
        except ValueError as err:  # tensorstore reports a failed write as ValueError("... [os_error_code='28']")
            code = re.search(r"os_error_code='(\d+)'", str(err))
            if code is None:
                raise
            number = int(code[1])
            raise OSError(number, f"{os.strerror(number)} (saving the checkpoint of round {round_})") from err

    def restore(self, template: Any) -> tuple[int, Any, dict]:
        """``(round, state, metrics)`` of the newest checkpoint; ``template`` gives the state's structure.
        ``ValueError`` naming the checkpoint's folder when it cannot be read back."""
        round_ = self.latest()
        if round_ is None:
            raise ValueError(f"no checkpoint to resume from in {self.manager.directory}")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(template), metrics=ocp.args.JsonRestore())
        try:
            restored = self.manager.restore(round_, args=args)
        except Exception as err:  # orbax, tensorstore and json each raise their own kind
            folder = Path(self.manager.directory) / str(round_)
            raise ValueError(f"the checkpoint {folder} is damaged ({_first_line(err)}); delete that folder to "
                             "resume from the checkpoint before it") from err
        return round_, restored.state, restored.metrics

    def close(self) -> None:
        self.manager.close()


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


def _damaged_metrics(directory: Path) -> Path | None:
    """The first checkpoint's metrics file in ``directory`` that is not JSON, if any."""
    for path in sorted(directory.glob("*/metrics/metrics")):
        try:
            json.loads(path.read_bytes())
        except ValueError:
            return path
    return None
