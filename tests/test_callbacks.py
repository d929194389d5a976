"""Callbacks on the host loop: what they see, stopping a run (and resuming it to the same numbers),
TensorBoard scalars equal to the results."""
from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest

import edgejax as ej
from edgejax.core.callbacks import StopAt, TensorBoard
from conftest import make_data


def _sim():
    data, _, _ = make_data([6] * 8, seed=3, dtype=np.float32)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    return ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=3), clients_per_round=4)


def test_a_callback_sees_every_chunk_in_order_with_the_runs_numbers():
    seen = []
    results = _sim().run(10, eval_every=4, callbacks=[lambda chunk: seen.append(chunk)])
    assert [(c.first_round, c.last_round) for c in seen] == [(1, 4), (5, 8), (9, 10)]
    np.testing.assert_array_equal(np.concatenate([c.rounds["train_loss"] for c in seen]),
                                  results.rounds["train_loss"])
    assert [c.evals["test_accuracy"] for c in seen] == pytest.approx(list(results.evals["test_accuracy"][1:]))
    assert [int(c.state.round) for c in seen] == [4, 8, 10] and results.status == "finished"


def test_stop_at_ends_the_run_at_the_first_evaluation_reaching_the_target(tmp_path):
    sim = _sim()
    full = sim.run(40, eval_every=4)
    accuracy = full.evals["test_accuracy"]
    target = float(np.sort(accuracy)[len(accuracy) // 2])        # reached part way, not at round 0
    first = int(np.argmax(accuracy[1:] >= target)) + 1           # the first evaluation at or above it
    stopped = sim.run(40, eval_every=4, callbacks=[StopAt("test_accuracy", target)], out_dir=tmp_path / "run",
                      checkpoint_every=4)
    rounds_done = 4 * first
    assert stopped.status == f"stopped by {StopAt('test_accuracy', target)!r} after round {rounds_done}"
    assert len(stopped.rounds["train_loss"]) == rounds_done < 40
    assert stopped.evals["test_accuracy"][-1] >= target > max(stopped.evals["test_accuracy"][1:-1], default=-1)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"].startswith("stopped by StopAt")
    # a stopped run resumes from its last checkpoint to the uninterrupted run's numbers
    resumed = sim.run(40, eval_every=4, out_dir=tmp_path / "run", checkpoint_every=4, resume=True)
    np.testing.assert_array_equal(resumed.final_state.server.params["out"]["w"],
                                  full.final_state.server.params["out"]["w"])
    np.testing.assert_array_equal(resumed.rounds["train_loss"], full.rounds["train_loss"])


def _scalars(logdir):
    """Every scalar TensorBoard event in ``logdir``: {tag: {step: value}} (the TFRecord framing by hand)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in logdir.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_tensorboard_writes_every_round_and_evaluation(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX is the optional [tensorboard] extra")
    results = _sim().run(6, eval_every=3, callbacks=[TensorBoard(tmp_path / "tb")])
    scalars = _scalars(tmp_path / "tb")
    assert sorted(scalars["rounds/train_loss"]) == list(range(1, 7))
    np.testing.assert_allclose([scalars["rounds/train_loss"][r] for r in range(1, 7)], results.rounds["train_loss"],
                               rtol=1e-6)
    assert scalars["evals/test_accuracy"] == pytest.approx({3: results.evals["test_accuracy"][1],
                                                            6: results.evals["test_accuracy"][2]})


def test_the_cli_writes_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX is the optional [tensorboard] extra")
    from edgejax.cli import main

    assert main(["run", "--nodes", "20", "--clients-per-round", "5", "--rounds", "4", "--eval-every", "2",
                 "--no-progress", "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb")]) == 0
    rounds = np.genfromtxt(tmp_path / "run" / "metrics.csv", delimiter=",", names=True)
    scalars = _scalars(tmp_path / "tb")
    np.testing.assert_allclose([scalars["rounds/train_loss"][r] for r in range(1, 5)], rounds["train_loss"][1:],
                               rtol=1e-5)


def test_bad_callbacks_are_refused_before_compute(monkeypatch):
    with pytest.raises(ValueError, match="callbacks must be callables taking a Chunk.*got 3"):
        _sim().run(2, callbacks=[3])
    with pytest.raises(ValueError, match="mode='up' must be one of"):
        StopAt("test_accuracy", 0.5, mode="up")
    with pytest.raises(ValueError, match="no evaluation metric 'accuracy'; this run reports"):
        _sim().run(2, eval_every=1, callbacks=[StopAt("accuracy", 0.5)])
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"pip install 'edgejax\[tensorboard\]'"):
        TensorBoard("unused")
