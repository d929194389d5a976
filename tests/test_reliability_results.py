"""Run folders and result files (issue 14): claimed before compute, appended per chunk,
replaced atomically, cut back on a failed write; empty rounds are reported as such."""
from __future__ import annotations

import errno
import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

import edgejax as ej
from conftest import make_data
from edgejax.core import rundir


@pytest.fixture(scope="module")
def sim():
    data, _, _ = make_data([5, 6, 7, 8], dtype="float32")
    system = ej.SystemModel(availability=ej.Availability("bernoulli"))
    return ej.Simulation(ej.models.logistic_regression((5,), 3), data, ej.FedAvg(),
                         ej.LocalTraining(batch_size=2, steps=2), clients_per_round=2, system=system)


def _no_compute(monkeypatch, sim):
    def fail(*args):
        raise AssertionError("computed before the output folder was checked")

    monkeypatch.setitem(sim.__dict__, "_jit_chunk", fail)
    monkeypatch.setitem(sim.__dict__, "_jit_init", fail)


def test_metrics_are_appended_per_chunk_and_equal_a_full_save(sim, tmp_path):
    results = sim.run(6, eval_every=2, out_dir=tmp_path / "run")
    written = (tmp_path / "run" / "metrics.csv").read_bytes()
    results.save(tmp_path / "saved")
    assert written == (tmp_path / "saved" / "metrics.csv").read_bytes()
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "finished" and info["rounds_finished"] == 6 and info["metrics_rows"] == 7
    assert info["started"] <= info["updated"] and info["started"].endswith("+00:00")
    assert not list((tmp_path / "run").glob(".*tmp"))  # no temporary file left behind


def test_append_keeps_earlier_rows_and_a_failed_write_is_cut_back(tmp_path, monkeypatch):
    metrics = rundir.MetricsFile(tmp_path)
    metrics.append({"round": [1], "loss": [0.5]}, {"round": [0, 1], "acc": [0.1, 0.6]})
    inode, before = os.stat(tmp_path / "metrics.csv").st_ino, (tmp_path / "metrics.csv").read_text()
    metrics.append({"round": [2], "loss": [0.25]}, {})
    assert os.stat(tmp_path / "metrics.csv").st_ino == inode  # appended, not rewritten
    assert before == "round,loss,acc\n0,,0.1\n1,0.5,0.6\n"
    assert (tmp_path / "metrics.csv").read_text() == before + "2,0.25,\n"
    good = (tmp_path / "metrics.csv").read_bytes()
    real_write = os.write

    def disk_full(fd, data):
        real_write(fd, bytes(data[:3]))  # half a row reaches the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        metrics.append({"round": [3], "loss": [0.125]}, {})
    assert (tmp_path / "metrics.csv").read_bytes() == good and metrics.rows == 3


def test_a_folder_holding_a_run_is_refused_before_compute(sim, tmp_path, monkeypatch):
    sim.run(2, eval_every=2, out_dir=tmp_path)
    first = (tmp_path / "metrics.csv").read_bytes()
    with monkeypatch.context() as m:
        _no_compute(m, sim)
        with pytest.raises(ValueError, match="already holds a run .*overwrite"):
            sim.run(2, eval_every=2, out_dir=tmp_path, hparams={"client_lr": 1e30})
    assert (tmp_path / "metrics.csv").read_bytes() == first
    sim.run(4, eval_every=2, out_dir=tmp_path, overwrite=True)
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 5


@pytest.mark.parametrize("below", ["", "sub"])
def test_an_unwritable_out_is_found_before_compute(below, sim, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / below  # a file, or a folder under a file
    _no_compute(monkeypatch, sim)
    with pytest.raises(ValueError, match=str(out)):
        sim.run(2, out_dir=out)


def test_default_out_is_fresh_per_run(tmp_path):
    first = rundir.default_out(tmp_path)
    first.mkdir()
    second = rundir.default_out(tmp_path)
    assert first != second and first.name.startswith("edgejax-") and not second.exists()


def test_rounds_without_participants_have_nan_loss_and_never_diverge(sim):
    results = sim.run(12, eval_every=2, seed=1, hparams={"dropout": 0.8})
    empty = results.rounds["participants"] == 0
    assert 0 < empty.sum() < 12  # the seed gives both kinds of round
    assert np.isnan(results.rounds["train_loss"][empty]).all()
    assert np.isfinite(results.rounds["train_loss"][~empty]).all()
    with pytest.warns(RuntimeWarning, match="no node took part in any of the 4 rounds"):
        results = sim.run(4, eval_every=2, hparams={"dropout": 1.0})
    assert results.status == "finished" and np.isnan(results.rounds["train_loss"]).all()


def test_a_run_with_participants_does_not_warn(sim):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sim.run(4, eval_every=2)


def test_resume_refuses_another_configuration_and_a_run_without_checkpoints(sim, tmp_path):
    sim.run(4, eval_every=2, out_dir=tmp_path / "ckpt", checkpoint_every=2)
    with pytest.raises(ValueError, match=r"configuration differs in \['hparams'\]"):
        sim.run(4, eval_every=2, out_dir=tmp_path / "ckpt", resume=True, hparams={"client_lr": 0.5})
    again = sim.run(4, eval_every=2, out_dir=tmp_path / "ckpt", resume=True)  # finished: nothing to do
    assert again.num_rounds == 4 and again.status == "finished"
    sim.run(2, eval_every=2, out_dir=tmp_path / "plain")
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        sim.run(2, eval_every=2, out_dir=tmp_path / "plain", resume=True)
