"""``edgejax run``: flags, TOML config, outputs, and clear errors."""
from __future__ import annotations

import json
import os
import socket

import numpy as np
import pandas as pd
import pytest

import edgejax as ej
from edgejax.cli import DEFAULTS, main, resolve_options

SMALL_GOSSIP = ["--nodes", "20", "--rounds", "4", "--eval-every", "2", "--no-progress"]
SMALL = [*SMALL_GOSSIP, "--clients-per-round", "5"]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_defaults_are_the_documented_embedded_run():
    o = resolve_options(["run"])
    assert (o["algorithm"], o["dataset"], o["nodes"], o["partition"]) == ("fedavg", "digits", 100, "dirichlet:0.5:5")


def test_run_writes_metrics_and_summary(tmp_path, capsys):
    assert main(["run", *SMALL, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "20 nodes" in out and "final test accuracy" in out
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert list(table["round"]) == [0, 1, 2, 3, 4]
    assert json.loads((tmp_path / "run.json").read_text())["config"]["num_nodes"] == 20


def test_toml_config_with_flag_override(tmp_path, capsys):
    config = tmp_path / "exp.toml"
    config.write_text('algorithm = "fedadam"\nmodel = "logreg"\nrounds = 99\nlocal-steps = 2\n'
                      'hparam = ["server_b1=0.5"]\n')
    o = resolve_options(["run", "--config", str(config), "--rounds", "2"])
    assert o["rounds"] == 2 and o["algorithm"] == "fedadam" and o["local_steps"] == 2
    assert main(["run", "--config", str(config), *SMALL, "--out", str(tmp_path / "o")]) == 0
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    assert info["config"]["algorithm"]["name"] == "fedadam"
    assert info["config"]["hparams"]["server_b1"] == pytest.approx(0.5)
    assert info["config"]["local"]["steps"] == 2


@pytest.mark.parametrize("args", [["--algorithm", "dpsgd", "--topology", "torus", "--gossip-order", "atc"],
                                  ["--algorithm", "choco", "--compressor", "topk:0.2"],
                                  ["--algorithm", "dpsgd", "--link-failures", "--hparam", "link_failure=0.3"],
                                  ["--algorithm", "pushsum", "--topology", "exponential"]])
def test_decentralized_runs_from_the_cli(args, tmp_path, capsys):
    assert main(["run", *SMALL_GOSSIP, "--model", "logreg", "--out", str(tmp_path), *args]) == 0
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert table["consensus_distance"].notna().sum() == 4 and table["own_accuracy_mean"].notna().sum() == 3
    assert "own_accuracy_mean" in capsys.readouterr().out


def test_system_model_options(tmp_path):
    args = ["--algorithm", "fedprox", "--weight-decay", "--hparam", "client_weight_decay=0.001", "--profiles", "tiered", "--availability", "bernoulli", "--stragglers",
            "partial_epochs", "--deadline-policy", "drop_late", "--hparam", "dropout=0.2",
            "--hparam", "straggler_fraction=0.5", "--hparam", "deadline=5"]
    assert main(["run", *SMALL, "--out", str(tmp_path), *args]) == 0
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert (table["sim_time_s"].dropna().diff().dropna() > 0).all() and table["energy_j"].notna().sum() == 4
    hparams = json.loads((tmp_path / "run.json").read_text())["config"]["hparams"]
    assert hparams["client_weight_decay"] == pytest.approx(0.001) and hparams["mu"] == pytest.approx(0.01)


@pytest.mark.parametrize("args, message", [
    (["--algorithm", "choco", "--compressor", "topk:2"], "fraction"),
    (["--algorithm", "choco", "--compressor", "zip"], "zip"),
    (["--partition", "dirichlet:0"], "alpha"),
    (["--nodes", "5000"], "5000"),
    (["--clients-per-round", "50"], "clients_per_round=50"),
    (["--hparam", "server_lr"], "NAME=VALUE"),
    (["--hparam", "momentum=0.9"], "momentum"),
    (["--group-size", "many"], "many"),
    (["--keep-checkpoints", "3"], "--keep-checkpoints 3 does nothing without --checkpoint-every"),
])
def test_bad_options_exit_2_with_the_value_named(args, message, capsys, tmp_path):
    assert main(["run", *SMALL_GOSSIP, "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("learning_rate = 0.1\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for name in DEFAULTS:
        flag = "--no-progress" if name == "progress" else "--" + name.replace("_", "-")
        assert flag in text, flag


def test_multi_host_flags_without_a_coordinator_are_rejected(tmp_path, capsys):
    assert main(["run", *SMALL, "--num-processes", "2", "--out", str(tmp_path / "o")]) != 0
    assert "give --coordinator too" in capsys.readouterr().err


@pytest.mark.parametrize("out", ["a" * 300, "/".join(["b" * 200] * 25)])
def test_an_out_name_too_long_exits_2_with_a_message(out, tmp_path, capsys):
    assert main(["run", *SMALL, "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert "File name too long" in err and "characters)" in err and "Traceback" not in err


def test_results_are_readable_per_the_umask(tmp_path, capsys):
    assert main(["run", *SMALL, "--rounds", "2", "--out", str(tmp_path)]) == 0
    mode = 0o666 & ~_current_umask()  # what open() gives; mkstemp's 0o600 only under umask 0o066 or stricter
    for name in ("run.json", "metrics.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


@pytest.mark.parametrize("coordinator, message", [("not_a_host", "HOST:PORT"), ("localhost:99999", "99999"),
                                                  ("no-such-host.invalid:1234", "cannot resolve")])
def test_a_bad_coordinator_address_is_named(coordinator, message, tmp_path, capsys):
    args = ["--coordinator", coordinator, "--num-processes", "1", "--process-id", "0"]
    assert main(["run", *SMALL, *args, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_a_process_waiting_for_an_absent_coordinator_times_out(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    args = ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", "1", "--join-timeout", "1"]
    assert main(["run", *SMALL, *args, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "waiting up to 1 s" in err
    assert f"waited 1 s for process 0 (the coordinator) to listen at localhost:{port}" in err
    assert not (tmp_path / "o").exists()


def test_a_binary_config_is_named_and_a_byte_order_mark_is_accepted(tmp_path, capsys):
    binary = tmp_path / "model.toml"
    binary.write_bytes(b"rounds = 2\n\x89PNG\r\n\x1a\n\xff\xfe")
    assert main(["run", "--config", str(binary)]) == 2
    assert f"--config {binary} is not UTF-8 text" in capsys.readouterr().err
    bom = tmp_path / "bom.toml"
    bom.write_bytes("\ufeffrounds = 7\nmodel = 'logreg'\n".encode())
    o = resolve_options(["run", "--config", str(bom)])
    assert (o["rounds"], o["model"]) == (7, "logreg")


def test_a_data_path_that_is_not_npz_is_named(tmp_path, capsys):
    text = tmp_path / "data.npz"
    text.write_text("x,y\n1,2\n")
    assert main(["run", *SMALL, "--dataset", "npz", "--data-path", str(text), "--out", str(tmp_path / "o")]) == 2
    assert f"{text} is not an .npz file" in capsys.readouterr().err


def test_missing_mnist_files_point_to_data_path(tmp_path, capsys):
    assert main(["run", *SMALL, "--dataset", "mnist", "--data-path", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} lacks ['mnist-t10k-images-idx3-ubyte.gz'" in err and "pass --data-path" in err
    assert "images_path" not in err


def test_a_damaged_run_json_or_checkpoint_is_named_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--model", "logreg", "--checkpoint-every", "2", "--out", str(out)]) == 0
    state = out / "checkpoints" / "4" / "state"
    for chunk in state.rglob("ocdbt.process_0/d/*"):
        chunk.write_bytes(b"\0" * 8)
    assert main(["run", "--resume", str(out)]) == 2
    assert f"the checkpoint {state.parent} is damaged" in capsys.readouterr().err
    metrics = out / "checkpoints" / "4" / "metrics" / "metrics"
    metrics.write_text('{"rounds": ')
    assert main(["run", "--resume", str(out)]) == 2
    assert f"{metrics} is damaged" in capsys.readouterr().err
    (out / "run.json").write_bytes(b'{"status": "runn')
    assert main(["run", "--resume", str(out)]) == 2
    assert f"{out / 'run.json'} is damaged" in capsys.readouterr().err


def test_device_tiers_and_the_fedbuff_buffer_from_the_cli():
    from edgejax.cli.run import _algorithm, _system

    o = resolve_options(["run", "--profiles", "tiered", "--tiers", "0.9:1,0.1:0.1", "--seed", "3"])
    speed = np.asarray(_system(o, 20).profiles.speed)
    assert sorted(speed.tolist()) == [40.0] * 2 + [400.0] * 18  # 10% of the devices 10x slower
    o = resolve_options(["run", "--algorithm", "fedbuff", "--buffer-size", "3"])
    assert _algorithm(o).buffer_size == 3


def test_the_aggregator_from_the_cli():
    from edgejax.cli.run import _algorithm

    assert _algorithm(resolve_options(["run", "--aggregator", "median"])) == ej.FedAvg(aggregator=ej.CoordinateMedian())
    o = resolve_options(["run", "--algorithm", "fedbuff", "--aggregator", "trimmed_mean:0.2"])
    assert _algorithm(o).aggregator == ej.TrimmedMean(0.2)
    assert _algorithm(resolve_options(["run", "--algorithm", "scaffold"])).aggregator == ej.Mean()
    assert _algorithm(resolve_options(["run", "--aggregator", "dp:1e-6"])).aggregator == ej.GaussianDP(delta=1e-6)
    o = resolve_options(["run", "--algorithm", "fedbuff", "--aggregator", "multikrum:1:3"])
    assert _algorithm(o).aggregator == ej.MultiKrum(byzantine=1, select=3)
    assert _algorithm(resolve_options(["run", "--aggregator", "cclip"])).aggregator == ej.CenteredClipping()


def test_a_dp_run_from_the_cli_reports_epsilon(tmp_path):
    assert main(["run", *SMALL, "--out", str(tmp_path), "--weighting", "uniform", "--aggregator", "dp",
                 "--hparam", "dp_clip=0.5", "--hparam", "dp_noise_multiplier=1.0"]) == 0
    rounds = np.genfromtxt(tmp_path / "metrics.csv", delimiter=",", names=True)
    epsilon = rounds["epsilon"][1:]
    assert np.all(np.isfinite(epsilon)) and np.all(np.diff(epsilon) > 0)


def test_the_dp_options_from_the_cli():
    from edgejax.cli.run import _algorithm

    o = resolve_options(["run", "--aggregator", "dp", "--dp-clip", "0.5", "--dp-noise-multiplier", "1.2",
                         "--dp-delta", "1e-6", "--dp-quantile", "0.5"])
    assert _algorithm(o).aggregator == ej.GaussianDP(clip=0.5, noise_multiplier=1.2, delta=1e-6, target_quantile=0.5)


def test_an_attack_from_the_cli_wraps_the_aggregator():
    from edgejax.cli.run import _algorithm

    o = resolve_options(["run", "--aggregator", "median", "--attack", "alie", "--byzantine-fraction", "0.1",
                         "--attack-strength", "1.5"])
    assert _algorithm(o).aggregator == ej.Attacked(ej.CoordinateMedian(), "alie", 0.1, 1.5)
    o = resolve_options(["run", "--algorithm", "fedbuff", "--attack", "sign_flip"])
    assert _algorithm(o).aggregator == ej.Attacked(ej.Mean(), "sign_flip", 0.2)


def test_a_target_epsilon_from_the_cli_calibrates_the_noise(tmp_path, capsys):
    """--dp-epsilon 5: the run's last round reports epsilon at most 5, and within 1% of it."""
    assert main(["run", *SMALL, "--out", str(tmp_path), "--weighting", "uniform", "--aggregator", "dp",
                 "--dp-epsilon", "5"]) == 0
    assert "--dp-epsilon 5.0: noise multiplier" in capsys.readouterr().out
    epsilon = np.genfromtxt(tmp_path / "metrics.csv", delimiter=",", names=True)["epsilon"]
    assert 4.95 < epsilon[-1] <= 5.0


@pytest.mark.parametrize("args, message", [
    (["--dp-clip", "0.5"], "--dp-clip does not apply"),
    (["--byzantine-fraction", "0.1"], "--byzantine-fraction does not apply"),
    (["--attack", "flip"], "unknown attack 'flip'"),
    (["--attack", "scale", "--algorithm", "dpsgd"], "--attack does not apply"),
    (["--aggregator", "dp", "--algorithm", "fedbuff", "--dp-epsilon", "2"], "--dp-epsilon does not apply"),
    (["--aggregator", "dp", "--dp-epsilon", "2", "--dp-noise-multiplier", "1"], "not both"),
    (["--aggregator", "dp", "--dp-epsilon", "2", "--attack", "ipm"], "--dp-epsilon does not apply"),
    (["--aggregator", "dp", "--dp-quantile", "1.5"], "target_quantile=1.5 must be in (0, 1)"),
    (["--profiles", "tiered", "--tiers", "0.9"], "--tiers expects SHARE:SPEED"),
    (["--profiles", "tiered", "--tiers", "0.9:1,0.2:0.1"], "must sum to 1; got '0.9:1,0.2:0.1'"),
    (["--tiers", "0.9:1,0.1:0.1"], "--tiers does not apply"),
    (["--buffer-size", "3"], "--buffer-size does not apply"),
    (["--aggregator", "mode"], "bad aggregator 'mode'; accepted: 'mean', 'median', 'trimmed_mean:<trim>', "
                               "'krum:<f>', 'multikrum:<f>:<m>', 'geomedian', 'cclip', 'normbound', 'dp', 'dp:<delta>'"),
    (["--aggregator", "krum:-1"], "Krum: byzantine=-1 must be an integer >= 0"),
    (["--aggregator", "trimmed_mean:0.7"], "trim=0.7 must be in [0, 0.5)"),
    (["--aggregator", "median", "--algorithm", "fedasync"], "--aggregator does not apply"),
])
def test_bad_tiers_and_buffer_sizes_are_named(args, message, tmp_path, capsys):
    assert main(["run", *SMALL, "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_compile_choices_train_the_same_rounds(tmp_path, capsys):
    """--compile fast / optimized (auto, the default, picks fast for this small run) change the
    compile only: the training columns of metrics.csv are equal, the evaluations to float rounding."""
    tables = {}
    for choice in ("fast", "optimized"):
        assert main(["run", *SMALL, "--out", str(tmp_path / choice), "--compile", choice]) == 0
        tables[choice] = pd.read_csv(tmp_path / choice / "metrics.csv")
    evaluated = [c for c in tables["fast"].columns if c.startswith("test_")]
    pd.testing.assert_frame_equal(tables["fast"].drop(columns=evaluated), tables["optimized"].drop(columns=evaluated),
                                  check_exact=True)
    pd.testing.assert_frame_equal(tables["fast"][evaluated], tables["optimized"][evaluated], rtol=1e-6)
    assert resolve_options(["run"])["compile"] == "auto"
    with pytest.raises(SystemExit):
        main(["run", *SMALL, "--out", str(tmp_path / "bad"), "--compile", "quick"])
    assert "quick" in capsys.readouterr().err
