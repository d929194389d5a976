"""A disk that fills up (or turns read-only) mid-run: the CLI stops with a message, run.json
says why, and ``--resume`` finishes the run with the results of an uninterrupted one."""
from __future__ import annotations

import errno
import json

import pytest

from edgejax.cli import main
from edgejax.core import checkpoint, rundir

FLAGS = ["--dataset", "synthetic_iid", "--partition", "iid", "--model", "logreg", "--nodes", "10",
         "--clients-per-round", "5", "--rounds", "6", "--eval-every", "2", "--checkpoint-every", "4", "--no-progress"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    """metrics.csv of the run never interrupted."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["run", *FLAGS, "--out", str(out), "--overwrite"]) == 0
    return (out / "metrics.csv").read_bytes()


def _fail_from_call(monkeypatch, owner, name: str, first: int, code: int = errno.ENOSPC):
    """``owner.name`` raises ``OSError(code)`` from its ``first``-th call on."""
    real, calls = getattr(owner, name), []

    def writer(*args, **kwargs):
        calls.append(1)
        if len(calls) >= first:
            raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Read-only file system")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, writer)


def _info(out) -> dict:
    return json.loads((out / "run.json").read_text())


# the writes of a run: run.json after the initial evaluation, then metrics.csv and run.json after
# each chunk, a checkpoint after the first chunk (rounds 1-2) and at round 4
@pytest.mark.parametrize("owner, name, call, code", [(rundir.MetricsFile, "append", 2, errno.ENOSPC),
                                                     (checkpoint.Checkpoints, "save", 2, errno.ENOSPC),
                                                     (checkpoint.Checkpoints, "save", 2, errno.EROFS)])
def test_a_failed_write_marks_the_run_failed_and_resume_finishes_it(owner, name, call, code, reference, tmp_path,
                                                                     monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fail_from_call(patch, owner, name, call, code)   # fails after the first chunk is written and checkpointed
        assert main(["run", *FLAGS, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    reason = "No space left on device" if code == errno.ENOSPC else "Read-only file system"
    assert "Traceback" not in err and reason in err and f"edgejax run --resume {out}" in err
    info = _info(out)
    assert info["status"] == f"failed: cannot write to {out}: {reason}" and info["checkpoint_round"] == 2
    assert main(["run", "--resume", str(out)]) == 0
    assert _info(out)["status"] == "finished" and (out / "metrics.csv").read_bytes() == reference


def test_a_failed_run_json_keeps_its_last_status_and_resume_finishes_it(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fail_from_call(patch, rundir, "write_info", 3)  # after the first chunk; the failure cannot be written
        assert main(["run", *FLAGS, "--out", str(out)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    info = _info(out)
    assert (info["status"], info["rounds_finished"], info["checkpoint_round"]) == ("running", 2, 2)
    assert main(["run", "--resume", str(out)]) == 0
    assert (out / "metrics.csv").read_bytes() == reference


def test_a_run_without_a_complete_checkpoint_resumes_from_round_0(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fail_from_call(patch, checkpoint.Checkpoints, "save", 1)
        assert main(["run", *FLAGS, "--out", str(out)]) == 1
    assert _info(out)["checkpoint_round"] is None
    leftover = out / "checkpoints" / "2.orbax-checkpoint-tmp-1765000000"  # as a save killed mid-way leaves
    (leftover / "state").mkdir(parents=True)
    with pytest.warns(RuntimeWarning, match="no complete checkpoint: the run starts again from round 0"):
        assert main(["run", "--resume", str(out)]) == 0
    assert not leftover.exists()
    assert _info(out)["status"] == "finished" and (out / "metrics.csv").read_bytes() == reference


def test_a_resume_on_a_still_full_disk_keeps_run_json_and_a_later_one_finishes(reference, tmp_path, monkeypatch,
                                                                               capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fail_from_call(patch, rundir.MetricsFile, "append", 2)
        assert main(["run", *FLAGS, "--out", str(out)]) == 1
    before = _info(out)
    with monkeypatch.context() as patch:
        _fail_from_call(patch, rundir.MetricsFile, "reset", 1)  # resuming rewrites metrics.csv first
        assert main(["run", "--resume", str(out)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert _info(out) == before  # rounds 1-2 and their evaluation are still described
    assert main(["run", "--resume", str(out)]) == 0
    assert (out / "metrics.csv").read_bytes() == reference
