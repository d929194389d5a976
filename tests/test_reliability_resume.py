"""Killed, interrupted and resumed runs give bit-identical results (issue 14)."""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import reliability_sims as sims
from edgejax.cli import main
from edgejax.core.runner import RunInterrupted

HERE = Path(__file__).parent
CLI = "import sys; from edgejax.cli import main; sys.exit(main(sys.argv[1:]))"


@functools.lru_cache(maxsize=None)
def _sim(name: str):
    """One simulation per configuration for the whole module (compiled once)."""
    return sims.build(name)


def _checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (orbax renames a finished one to its round number)."""
    folder = out / "checkpoints"
    return [p for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []


def _wait_for_checkpoint(outs: list[Path], proc: subprocess.Popen, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not all(_checkpoints(out) for out in outs):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)


def _same_state(a, b) -> bool:
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y) for x, y in leaves)


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """Every configuration run in one subprocess, killed with SIGKILL once each has a checkpoint."""
    root = tmp_path_factory.mktemp("killed")
    proc = subprocess.Popen([sys.executable, str(HERE / "reliability_sims.py"), str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for name in sims.CONFIGS:  # compile here while the subprocess compiles on the other core
        _sim(name).run(sims.EVAL_EVERY, eval_every=sims.EVAL_EVERY)
    _wait_for_checkpoint([root / name for name in sims.CONFIGS], proc)
    proc.kill()
    proc.wait()
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", sims.CONFIGS)
def test_a_killed_run_resumes_bit_identically(name, killed_runs, tmp_path):
    out = killed_runs / name
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "running" and info["rounds_finished"] < sims.ROUNDS  # killed mid-way
    sim = _sim(name)
    reference = sims.run(sim, tmp_path / "ref")
    resumed = sims.run(sim, out, resume=True, checkpoint_every=sims.CHECKPOINT_EVERY)
    assert resumed.status == "finished" and resumed.num_rounds == sims.ROUNDS
    assert (out / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()
    assert _same_state(resumed.final_state, reference.final_state)
    assert len(_checkpoints(out)) <= 2  # keep_checkpoints


@pytest.mark.slow
def test_sigterm_stops_the_cli_without_a_traceback_and_resume_finishes_it(tmp_path, capsys):
    flags = ["--dataset", "synthetic_iid", "--partition", "iid", "--model", "logreg", "--nodes", "10",
             "--clients-per-round", "5", "--rounds", "60",
             "--eval-every", "1", "--checkpoint-every", "5", "--no-progress"]
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", CLI, "run", *flags, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint([out], proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and f"--resume {out}" in err
    info = json.loads((out / "run.json").read_text())
    assert info["status"].startswith("interrupted (SIGTERM)") and info["rounds_finished"] < 60
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0  # bit-identity: the tests above
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["rounds_finished"] == 60 and info["metrics_rows"] == 61
    assert list(pd.read_csv(out / "metrics.csv")["round"]) == list(range(61))


def test_sigint_interrupts_after_the_chunk_and_marks_the_run(tmp_path, monkeypatch):
    sim = _sim("fedavg")
    chunk, calls = sim._jit_chunk, []

    def chunk_then_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 4:   # the first call is the initial evaluation (no active round), then 3 chunks
            os.kill(os.getpid(), signal.SIGINT)
        return chunk(*args)

    monkeypatch.setitem(sim.__dict__, "_jit_chunk", chunk_then_ctrl_c)
    with pytest.raises(RunInterrupted) as err:
        sims.run(sim, tmp_path, checkpoint_every=100)
    assert err.value.signal == "SIGINT" and err.value.results.num_rounds == 3 * sims.EVAL_EVERY
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "interrupted (SIGINT) after round 6" and info["checkpoint_round"] == 6
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
