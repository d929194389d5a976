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
    ("rounds = 2\nlearning_rate = 0.1\n", r"unknown option\(s\) \['learning_rate'\]"),
    ("[list]\nlr = [0.1, 0.2]\nserver_lr = [1.0]\n", r"different lengths \(lr: 2, server_lr: 1\)"),
    ("seeds = 3\n", "seeds .* must be a list of integers"),
])
def test_bad_sweep_files_exit_2_naming_the_value(text, message, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(text)
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 2
    assert re.search(message, capsys.readouterr().err)


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
