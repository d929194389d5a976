"""``edgejax sweep``, ``table`` and ``plot`` on a tiny sweep; the CLI's compilation cache."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from edgejax.cli import main
from edgejax.cli.compile_cache import cache_dir, enable_compilation_cache

SPEC = """
nodes = 10
clients_per_round = 3
model = "logreg"
rounds = 3
eval_every = 2
seeds = [0, 1]
[grid]
algorithm = ["fedavg", "fedadam"]
[list]
lr = [0.05, 0.3]
mu = [0.0, 0.1]
"""


@pytest.fixture
def spec(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEJAX_COMPILATION_CACHE", "0")
    path = tmp_path / "sweep.toml"
    path.write_text(SPEC)
    return path


def test_sweep_then_table_then_plot(spec, tmp_path, capsys):
    assert main(["sweep", str(spec), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2  # mu is FedProx's
    assert "unknown hyper-parameter(s) ['mu']" in capsys.readouterr().err
    spec.write_text(SPEC.replace("mu = [0.0, 0.1]\n", "server_lr = [1.0, 0.5]\n"))
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["algorithm=fedadam", "algorithm=fedavg"]
    evals = pd.read_csv(out / "algorithm=fedavg" / "evals.csv")
    assert len(evals) == 2 * 2 * 3  # points x seeds x evaluations (rounds 0, 2, 3)
    assert sorted(set(zip(evals["client_lr"], evals["server_lr"]))) == [(0.05, 1.0), (0.3, 0.5)]
    info = json.loads((out / "algorithm=fedadam" / "sweep.json").read_text())
    assert info["config"]["algorithm"]["name"] == "fedadam" and info["config"]["rounds"] == 3
    printed = capsys.readouterr().out
    assert "| algorithm=fedavg, client_lr=0.3" in printed

    dirs = [str(out / f) for f in folders]
    assert main(["table", *dirs, "--format", "latex", "--target", "0.0", "--out", str(tmp_path / "t.tex")]) == 0
    latex = (tmp_path / "t.tex").read_text()
    assert latex.count(r"\\") == 5 and r"\textbf{" in latex and "rounds\\_to\\_target" in latex
    assert main(["plot", *dirs, "--metric", "test_accuracy", "--x", "round", "bytes", "--format", "png",
                 "--out", str(tmp_path / "plots")]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["test_accuracy-vs-bytes.png",
                                                                      "test_accuracy-vs-round.png"]


@pytest.mark.parametrize("text, message", [
    ("[grid]\nseed = [1, 2]\n", "cannot sweep 'seed'"),
    ("rounds = 2\nlearning_rate = 0.1\n", r"unknown hyper-parameter\(s\) \['learning_rate'\] .* no edgejax run option"),
    ("rounds = 2\nlink_failure = 'high'\n", "link_failure .* neither an edgejax run option nor a number"),
    ("rounds = 'two'\n", "option rounds .* must be int"),
    ("[list]\nlr = [0.1, 0.2]\nserver_lr = [1.0]\n", r"different lengths \(lr: 2, server_lr: 1\)"),
    ("seeds = 3\n", "seeds .* must be a list of integers"),
])
def test_bad_sweep_files_exit_2_naming_the_value(text, message, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(text)
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 2
    assert re.search(message, capsys.readouterr().err)


SMALL_SPEC = """
nodes = 10
clients_per_round = 3
model = "logreg"
rounds = 4
eval_every = 2
local_steps = 3
seeds = [0]
"""


def _sweep(spec: str, tmp_path, name="out") -> int:
    path = tmp_path / f"{name}.toml"
    path.write_text(spec)
    return main(["sweep", str(path), "--out", str(tmp_path / name), "--no-progress"])


def _final_accuracy(folder) -> dict:
    evals = pd.read_csv(folder / "evals.csv")
    return {p: frame.sort_values("round")["test_accuracy"].iloc[-1] for p, frame in evals.groupby("point")}


def test_fedavg_against_fedprox_takes_every_grid_mu_into_fedprox_only(spec, tmp_path, capsys):
    grid = '[grid]\nalgorithm = ["fedavg", "fedprox"]\nmu = [0.0, 30.0]\n'
    assert _sweep(SMALL_SPEC + "lr = 0.3\n" + grid, tmp_path) == 0  # local_steps: the default epochs give way
    fedavg, fedprox = tmp_path / "out" / "algorithm=fedavg", tmp_path / "out" / "algorithm=fedprox"
    assert pd.read_csv(fedavg / "evals.csv")["point"].nunique() == 1  # mu is not FedAvg's: one point
    prox = pd.read_csv(fedprox / "evals.csv")
    assert sorted(prox["mu"].unique()) == [0.0, 30.0]
    accuracy = _final_accuracy(fedprox)
    mu_of = dict(zip(prox["point"], prox["mu"]))
    by_mu = {mu_of[p]: a for p, a in accuracy.items()}
    assert by_mu[0.0] == pytest.approx(_final_accuracy(fedavg)[0], abs=1e-6)  # mu = 0 is FedAvg
    assert abs(by_mu[30.0] - by_mu[0.0]) > 0.05  # a strong proximal term changes the run: mu reached it


def test_a_traced_hyper_parameter_at_the_top_of_a_sweep_file(spec, tmp_path):
    top = SMALL_SPEC + 'algorithm = "fedprox"\nmu = 30.0\n[grid]\nlr = [0.3]\n'
    assert _sweep(top, tmp_path, "top") == 0
    assert _sweep(SMALL_SPEC + 'algorithm = "fedprox"\n[grid]\nlr = [0.3]\nmu = [30.0]\n', tmp_path, "grid") == 0
    top, grid = (pd.read_csv(tmp_path / n / "evals.csv") for n in ("top", "grid"))
    assert list(top["mu"]) == [30.0] * 3
    assert top["test_accuracy"].tolist() == grid["test_accuracy"].tolist()


def test_a_finished_sweep_is_not_overwritten_and_the_default_folder_is_fresh(spec, tmp_path, monkeypatch, capsys):
    one_point = SMALL_SPEC.replace("rounds = 4", "rounds = 1")
    assert _sweep(one_point, tmp_path) == 0
    assert _sweep(one_point, tmp_path) == 2
    assert f"--out {tmp_path / 'out'} already holds a sweep" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(tmp_path / "out.toml"), "--no-progress"]) == 0
    fresh = [p for p in (tmp_path / "runs").iterdir()]
    assert len(fresh) == 1 and fresh[0].name.startswith("sweep-") and (fresh[0] / "sweep.json").is_file()
    assert f"results go to {fresh[0].relative_to(tmp_path)}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["sweep", "table", "plot"])
def test_help_shows_defaults_once(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and text.count("(default:") >= 2
    if command == "table":
        assert "(default: print it)" in text and "(default: print it) (default" not in text


def test_table_of_a_folder_without_results_is_an_error(tmp_path, capsys):
    assert main(["table", str(tmp_path)]) == 2
    assert "neither run.json" in capsys.readouterr().err


def test_compilation_cache_folder_and_switch(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEJAX_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.setenv("EDGEJAX_COMPILATION_CACHE", "off")
    assert enable_compilation_cache() is None


def test_edgejax_run_fills_the_cache(tmp_path):
    env = {**os.environ, "EDGEJAX_CACHE_DIR": str(tmp_path / "cache"), "EDGEJAX_COMPILATION_CACHE": "1"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    args = [sys.executable, "-m", "edgejax.cli.main", "run", "--nodes", "10", "--clients-per-round", "2",
            "--rounds", "2", "--model", "logreg", "--no-progress", "--out", str(tmp_path / "run")]
    subprocess.run(args, env=env, check=True, capture_output=True)
    assert len(list((tmp_path / "cache").iterdir())) > 3


def test_digits_are_read_without_importing_scikit_learn():
    code = ("import sys, numpy as np; from edgejax.data.datasets import _sklearn_digits; images, target = "
            "_sklearn_digits(); assert 'sklearn' not in sys.modules; from sklearn.datasets import load_digits; "
            "b = load_digits(); assert np.array_equal(images, b.images) and np.array_equal(target, b.target)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sweep_folders_tables_and_plot_legends_name_runs_alike(spec, tmp_path, capsys):
    gossip = SMALL_SPEC.replace("clients_per_round = 3\n", "")
    gossip += 'algorithm = "dpsgd"\n[grid]\ntopology = ["torus", "ring"]\n'
    assert _sweep(gossip, tmp_path) == 0
    printed = capsys.readouterr().out
    folders = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in folders] == ["topology=ring", "topology=torus"]
    assert main(["table", *map(str, folders)]) == 0
    table = capsys.readouterr().out
    rows = [line.split(" | ")[0] for line in table.splitlines()[2:]]
    assert rows == ["| topology=ring", "| topology=torus"] and table in printed
    from edgejax.sweep import load
    from edgejax.sweep.plots import plot

    legend = plot(load(folders)).get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["topology=ring", "topology=torus"]
