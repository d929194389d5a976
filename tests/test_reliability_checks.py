"""Validation before any compute (issue 14): hyper-parameter ranges, data, TOML types, flags
that do not apply, help defaults, memory estimate, and crashes turned into named errors."""
from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

import edgejax as ej
from conftest import make_data
from edgejax.cli import main
from edgejax.core import memory
from edgejax.core.validation import HPARAM_RANGES, check_hparams
from edgejax.data.datasets import read_idx
from edgejax.data.federated import FederatedData, pad_nodes, pad_test


def _sim(data=None, **kwargs):
    data = data if data is not None else make_data([5, 6, 7, 8], dtype="float32")[0]
    return ej.Simulation(ej.models.logistic_regression((5,), data.num_classes), data,
                         kwargs.pop("algorithm", ej.FedAvg()), ej.LocalTraining(batch_size=2, steps=2), **kwargs)


@pytest.mark.parametrize("name, value, allowed", [
    ("dropout", 1.5, "[0, 1]"), ("straggler_fraction", 2.0, "[0, 1]"), ("link_failure", 1.01, "[0, 1]"),
    ("deadline", -1.0, "(0, inf)"), ("client_lr", -0.1, "(0, inf)"), ("server_lr", -1.0, "(0, inf)"),
    ("clients_per_round", 1.5, "an integer in [1, 4]"), ("server_momentum", 1.0, "[0, 1)"),
    ("consensus_step", 0.0, "(0, 1]"), ("mu", -0.01, "[0, inf)"), ("unlisted", np.inf, "a finite number"),
])
def test_out_of_range_hparams_are_named_with_their_range(name, value, allowed):
    with pytest.raises(ValueError) as err:
        check_hparams({"client_lr": 0.1, name: value}, cohort_size=4)
    assert f"{name}={value:g}" in str(err.value) and str(err.value).endswith(allowed)


def test_run_and_sweep_check_ranges_before_compute():
    sim = _sim(clients_per_round=4, system=ej.SystemModel(availability=ej.Availability("bernoulli")))
    with pytest.raises(ValueError, match=r"dropout=1.5 is outside"):
        sim.run(2, hparams={"dropout": 1.5})
    with pytest.raises(ValueError, match=r"sweep point 2 \{'client_lr': -1.0\}: hyper-parameter client_lr=-1 is outside"):
        sim.sweep(2, {"client_lr": [0.1, 0.2, -1.0]})
    with pytest.raises(ValueError, match=r"sweep point 1 \{'dropout': 1.5\}: hyper-parameter dropout=1.5 is outside"):
        sim.sweep(2, [{"dropout": 0.1}, {"dropout": 1.5}])
    assert set(HPARAM_RANGES) >= set(sim.default_hparams())


def _with(split_x=None, test_x=None, y=None, test_size=20, num_classes=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5)).astype(np.float32) if split_x is None else split_x
    labels = np.arange(30) % 3 if y is None else y
    tx = rng.normal(size=(test_size, 5)).astype(np.float32) if test_x is None else test_x
    parts = [np.arange(0, 15), np.arange(15, 30)]
    local_test = pad_nodes(x, labels, [parts[0][:2], parts[1][:2]])
    return FederatedData(train=pad_nodes(x, labels, parts), local_test=local_test,
                         test=pad_test(tx, np.arange(len(tx)) % 3), num_classes=num_classes, name="t")


def test_bad_data_is_named_before_compute():
    x = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    x[17, 2] = np.nan
    with pytest.raises(ValueError, match="training features of node 1 are not finite"):
        _sim(_with(split_x=x))
    test_x = np.ones((20, 5), np.float32)
    test_x[3, 0] = np.inf
    with pytest.raises(ValueError, match="^test features are not finite"):
        _sim(_with(test_x=test_x))
    with pytest.raises(ValueError, match="test split .* is empty"):
        _sim(_with(test_x=np.zeros((0, 5), np.float32), test_size=0))


def test_labels_skipping_classes_warn():
    y = np.arange(30) % 3
    y[4] = 99  # one stray label makes a 100-class problem
    with pytest.warns(UserWarning, match=r"100 classes but no training sample of 96 of them \(3, 4,"):
        ej.Simulation(ej.models.logistic_regression((5,), 100), _with(y=y, num_classes=100), ej.FedAvg(),
                      ej.LocalTraining(batch_size=2, steps=2))


def test_memory_estimate_names_the_cause_and_the_remedy():
    per_node = _sim(clients_per_round=4)
    parts = memory.estimate(per_node)
    params = 4 * (5 * 3 + 3)  # float32 logreg
    assert parts["per-node model copies"] == 4 * params * 4  # 4 cohort nodes, 4 buffers each
    with pytest.raises(memory.InsufficientMemoryError, match="group_size.*clients_per_round.*shared_base"):
        memory.check_memory(per_node, available=100)
    with pytest.raises(ValueError):  # a configuration error for the CLI too
        memory.check_memory(per_node, available=100)
    memory.check_memory(per_node, available=10**9)


def test_memory_check_runs_when_a_simulation_is_built(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 10)
    with pytest.raises(MemoryError, match="needs about"):
        _sim()
    monkeypatch.setattr(memory, "available_bytes", lambda: None)  # unknown limit: skipped
    _sim()


@pytest.mark.parametrize("toml, message", [
    ('link_failures = "false"', "option link_failures in .* must be bool; got 'false'"),
    ('weight_decay = "no"', "option weight_decay in .* must be bool"),
    ('hparam = "x=1"', "option hparam in .* must be list"),
    ('hparam = [1]', "list of 'NAME=VALUE' strings"),
    ('rounds = 2.5', "option rounds in .* must be int"),
    ('rounds = true', "option rounds in .* must be int"),
])
def test_toml_types_are_checked(toml, message, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(toml + "\n")
    assert main(["run", "--config", str(config)]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("args, message", [
    (["--alpha", "1"], "--alpha does not apply .* --dataset synthetic"),
    (["--compressor", "topk:0.1"], "--compressor does not apply .* --algorithm choco"),
    (["--algorithm", "dpsgd", "--clients-per-round", "5"], "--clients-per-round does not apply"),
    (["--model", "logreg", "--hidden", "64"], "--hidden does not apply"),
    (["--hidden", "0"], "--hidden widths must be positive integers; got '0'"),
    (["--hidden", "-5"], "--hidden widths must be positive"),
    (["--seed", str(2**70)], "seed must be an integer in \\[0, 2\\*\\*32 - 1\\]"),
    (["--out", "."], "already holds a run|is a file"),
])
def test_options_that_cannot_work_are_named(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    assert main(["run", "--rounds", "1", *args]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_config_naming_a_folder_and_schedule_topology(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path)]) == 2
    assert f"cannot read --config {tmp_path}" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not offered by the CLI
        main(["run", "--algorithm", "dpsgd", "--topology", "schedule"])


def test_help_shows_the_real_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: fedavg)", "(default: 100)", "(default: dirichlet:0.5:5)", "(default: 0.1)",
                  "(default: 10)", "(default: 128)"):
        assert shown in text
    assert "(default: None)" not in text


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x04" + bytes(4))[:-6])
    with pytest.raises(ValueError, match=f"{path}: damaged or truncated gzip"):
        read_idx(path)


def test_resume_takes_its_options_from_the_run_folder(tmp_path, capsys):
    (tmp_path / "run.json").write_text('{"config": {"seed": 0}}')
    assert main(["run", "--resume", str(tmp_path), "--rounds", "3"]) == 2
    assert "drop ['rounds']" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "was not started by `edgejax run`" in capsys.readouterr().err


def test_nodes_without_a_local_test_split_are_accepted():
    """``local_test_fraction=0``: every node's local test split is empty, which is allowed."""
    dataset = ej.data.from_arrays(np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32),
                                  np.arange(40) % 3, test_fraction=0.25)
    data, _ = ej.federate(dataset, 4, ej.data.IID(), local_test_fraction=0.0)
    assert data.local_test.count.tolist() == [0] * 4 and int(data.train.count.sum()) == 30  # every sample trains
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    results = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=5)).run(2, eval_every=1)
    assert np.isnan(results.evals["node_accuracy_mean"]).all()  # no split to score: NaN, not 0
    assert results.evals["test_loss"][-1] < results.evals["test_loss"][0]
