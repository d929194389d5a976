"""A run's output folder: claimed before any compute, written so that a crash never leaves a
torn file.

- ``metrics.csv`` grows by appending each chunk's rows (constant cost per chunk); a failed
  append (disk full) is cut back to the last complete row and re-raised.
- ``run.json`` is replaced atomically (temporary file in the same folder, then rename) and
  says ``status``, ``rounds_finished``, ``metrics_rows`` (rows of ``metrics.csv`` that are
  complete), ``started`` and ``updated`` (UTC).

Both are readable as the user's umask allows (not only by the owner, as ``mkstemp`` makes them).
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

METRICS, INFO, CHECKPOINTS = "metrics.csv", "run.json", "checkpoints"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # the mode open() gives a new file (read once, at import)


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def metric_columns(rounds: dict, evals: dict) -> list[str]:
    """``round``, then the round metrics, then the evaluation metrics (the order of ``metrics.csv``)."""
    names = [k for k in rounds if k != "round"]
    return ["round", *names, *(k for k in evals if k != "round" and k not in names)]


def csv_rows(rounds: dict, evals: dict, columns: list[str]) -> str:
    """CSV lines of the round and evaluation metrics (column -> values, each with ``round``),
    merged by round; a metric absent on a row (or NaN) is empty, every other value a float."""
    merged: dict[int, dict] = {}
    for table in (rounds, evals):
        for i, r in enumerate(table.get("round", ())):
            merged.setdefault(int(r), {}).update({k: v[i] for k, v in table.items() if k != "round"})
    return "".join(",".join([str(r), *(_cell(row.get(c)) for c in columns[1:])]) + "\n"
                   for r, row in sorted(merged.items()))


def _cell(value) -> str:
    return "" if value is None or value != value else repr(float(value))


def write_info(out: Path, info: dict) -> None:
    """Replace ``run.json`` atomically."""
    atomic_write(out / INFO, json.dumps(info, indent=2, default=_jsonable))


def as_json(value):
    """``value`` as it reads back from ``run.json`` (tuples become lists, NumPy values lists or numbers)."""
    return json.loads(json.dumps(value, default=_jsonable))


def read_info(out: Path) -> dict:
    """``run.json`` of the run in ``out`` (``ValueError`` when missing or damaged)."""
    path = Path(out) / INFO
    if not path.is_file():
        raise ValueError(f"{out} holds no run to resume ({INFO} is missing)")
    try:
        info = json.loads(path.read_bytes())
    except ValueError as err:  # not JSON, or not UTF-8
        raise ValueError(f"{path} is damaged ({err}); it cannot be resumed") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise ValueError(f"{path} is damaged (it holds no run configuration); it cannot be resumed")
    return info


def default_out(root: str | Path = "runs", name: str = "edgejax") -> Path:
    """A fresh folder name under ``root``: ``<name>-YYYYmmdd-HHMMSS`` (``-2``, ``-3``... if taken)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def prepare(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Claim ``out`` for a run before any compute.

    ``ValueError`` when ``out`` is a file, cannot be created or written (a name too long
    included), or already holds another run's results (unless ``overwrite``, which deletes
    them, or ``resume``).
    """
    out = Path(out)
    try:
        _claim(out, overwrite, resume)
    except OSError as err:
        hint = ""
        if err.errno == errno.ENAMETOOLONG:
            hint = " (most file systems allow 255 bytes per folder name and 4096 per path)"
        raise ValueError(f"cannot write to output folder {shown_path(out)}: {err.strerror or err}{hint}") from None
    return out


def _claim(out: Path, overwrite: bool, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file; choose a folder")
    held = [name for name in (METRICS, INFO, CHECKPOINTS) if (out / name).exists()]
    if held and not (overwrite or resume):
        raise ValueError(f"output folder {out} already holds a run ({', '.join(held)}); choose another "
                         f"folder, or pass overwrite (--overwrite) to replace it or resume (--resume) to continue it")
    if resume and INFO not in held:
        raise ValueError(f"{out} holds no run to resume ({INFO} is missing)")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        for name in held:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink()
    atomic_write(out / ".write-test", "")
    (out / ".write-test").unlink()


def shown_path(path: Path, limit: int = 100) -> str:
    """``path`` for a message: in full, or its start and end and its length when longer than ``limit``."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:60]}...{text[-30:]} ({len(text)} characters)"


class MetricsFile:
    """``metrics.csv`` written in pieces: ``reset`` replaces it, ``append`` adds rows."""

    def __init__(self, out: Path):
        self.path = Path(out) / METRICS
        self.columns: list[str] | None = None
        self.rows = 0

    def reset(self, rounds: dict, evals: dict) -> None:
        """Replace the file with these metrics (header included) atomically."""
        self.columns = metric_columns(rounds, evals)
        body = csv_rows(rounds, evals, self.columns)
        atomic_write(self.path, ",".join(self.columns) + "\n" + body)
        self.rows = body.count("\n")

    def append(self, rounds: dict, evals: dict) -> None:
        """Append rows for these metrics (the first call writes the header); a failed write is cut back."""
        if self.columns is None:
            return self.reset(rounds, evals)
        body = csv_rows(rounds, evals, self.columns)
        data = body.encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
        finally:
            os.close(fd)
        self.rows += body.count("\n")


def _jsonable(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)
