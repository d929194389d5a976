"""Paper tables from known inputs: seed aggregation, target crossing, Markdown and LaTeX text."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from edgejax.sweep.tables import summarize, to_latex, to_markdown


def _evals():
    """Two methods, two seeds each, evaluated after rounds 0, 5, 10."""
    acc = {("fedavg", 0): [0.1, 0.5, 0.7], ("fedavg", 1): [0.1, 0.6, 0.8],
           ("fed_adam", 0): [0.1, 0.8, 0.85], ("fed_adam", 1): [0.1, 0.7, 0.95]}
    rows = [{"label": m, "seed": s, "round": r, "test_accuracy": a, "sim_time_s": 2.0 * r, "bytes": 100.0 * r}
            for (m, s), accs in acc.items() for r, a in zip((0, 5, 10), accs)]
    return pd.DataFrame(rows)


def test_mean_std_best_and_rounds_to_target():
    s = summarize(_evals(), target=0.75).set_index("label")
    assert s.loc["fedavg", "final_mean"] == pytest.approx(0.75)
    assert s.loc["fedavg", "final_err"] == pytest.approx(np.std([0.7, 0.8], ddof=1))
    assert s.loc["fed_adam", "best_mean"] == pytest.approx(0.9)
    # fedavg: only seed 1 reaches 0.75 (at round 10); fed_adam: both, at rounds 5 and 10
    assert s.loc["fedavg", "reached"] == 1 and s.loc["fedavg", "rounds_to_target_mean"] == 10
    assert s.loc["fed_adam", "rounds_to_target_mean"] == 7.5
    assert s.loc["fed_adam", "sim_time_s_to_target_mean"] == 15.0
    assert s.loc["fed_adam", "bytes_to_target_mean"] == 750.0


def test_a_target_nobody_reaches_still_has_its_columns():
    text = to_markdown(summarize(_evals(), target=0.99))
    assert text.splitlines()[2] == "| fedavg | 0.750 ± 0.071 | 0.750 ± 0.071 | — (0/2) | — (0/2) | — (0/2) |"


def test_ci95_is_the_student_t_half_width():
    s = summarize(_evals(), interval="ci95").set_index("label")
    assert s.loc["fedavg", "final_err"] == pytest.approx(12.7062 * np.std([0.7, 0.8], ddof=1) / np.sqrt(2), rel=1e-4)


def test_markdown_bolds_the_best_of_each_column():
    text = to_markdown(summarize(_evals(), target=0.75))
    lines = text.splitlines()
    assert lines[0] == ("| label | test_accuracy (final) | test_accuracy (best) | rounds_to_target | "
                        "sim_time_s_to_target | bytes_to_target |")
    assert lines[2] == "| fedavg | 0.750 ± 0.071 | 0.750 ± 0.071 | 10 (1/2) | 20.0 (1/2) | 1.0 kB (1/2) |"
    assert lines[3] == "| fed_adam | **0.900 ± 0.071** | **0.900 ± 0.071** | **7.5 ± 3.5** | **15.0 ± 7.1** | **750 ± 354 B** |"


def test_numbers_read_as_what_they_count():
    rows = [{"label": "a", "seed": s, "round": r, "test_accuracy": 0.5 * r / 30, "bytes": 8.14e6 * r,
             "updates": 10.0 * r} for s in (0, 1) for r in (0, 30)]
    text = to_markdown(summarize(pd.DataFrame(rows), target=0.5))
    assert text.splitlines()[2] == "| a | **0.500** | **0.500** | **30** | **300** | **244.2 MB** |"
    assert "updates_to_target" in text.splitlines()[0]


def test_labels_show_float32_hyper_parameters_by_their_shortest_repr():
    from edgejax.sweep.load import run_labels

    labels = run_labels([{"client_lr": float(np.float32(0.05)), "rounds": 30.0}, {"client_lr": 0.1, "rounds": 30.0}])
    assert labels == ["client_lr=0.05", "client_lr=0.1"]


def test_latex_is_booktabs_with_bold_best_and_escaped_labels():
    text = to_latex(summarize(_evals()), caption="Digits, 2 seeds")
    assert text.startswith("\\begin{table}[t]\n\\centering\n\\caption{Digits, 2 seeds}\n\\begin{tabular}{lrr}\n\\toprule\n")
    assert "label & test\\_accuracy (final) & test\\_accuracy (best) \\\\\n\\midrule\n" in text
    assert "fed\\_adam & \\textbf{0.900 $\\pm$ 0.071} & \\textbf{0.900 $\\pm$ 0.071} \\\\" in text
    assert "fedavg & 0.750 $\\pm$ 0.071 & 0.750 $\\pm$ 0.071 \\\\" in text
    assert text.endswith("\\bottomrule\n\\end{tabular}\n\\end{table}\n")


def test_losses_are_minimised():
    frame = _evals().assign(test_loss=lambda d: 1 - d["test_accuracy"])
    text = to_markdown(summarize(frame, "test_loss"), "test_loss")
    assert "| fed_adam | **0.100 ± 0.071** | **0.100 ± 0.071** |" in text


def test_missing_metric_is_named():
    with pytest.raises(ValueError, match="no column 'accuracy'"):
        summarize(_evals(), "accuracy")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX installation (pdflatex) on PATH")
def test_latex_compiles(tmp_path):
    body = to_latex(summarize(_evals(), target=0.75))
    doc = "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + body + "\\end{document}\n"
    (tmp_path / "t.tex").write_text(doc)
    subprocess.run(["pdflatex", "-interaction=nonstopmode", "t.tex"], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "t.pdf").stat().st_size > 0


def test_run_and_sweep_folders_load_into_one_labelled_table(tmp_path):
    import edgejax as ej
    from conftest import make_data
    from edgejax.sweep.load import load

    data = make_data([5, 3, 6, 4], dtype=np.float32, seed=1)[0]
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(4,))
    sim = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=2, epochs=1), clients_per_round=2)
    for seed in (0, 1):
        sim.run(2, seed=seed, hparams={"client_lr": 0.2}, eval_every=1, out_dir=tmp_path / f"run{seed}")
    sim.sweep(2, {"client_lr": [0.05]}, seeds=[0, 1], eval_every=1).save(tmp_path / "sweep")
    evals = load([tmp_path / "run0", tmp_path / "run1", tmp_path / "sweep"])
    assert len(evals) == 4 * 3
    assert sorted(set(evals["label"])) == ["client_lr=0.05", "client_lr=0.2"]
    s = summarize(evals).set_index("label")
    assert list(s["seeds"]) == [2, 2]
    with pytest.raises(FileNotFoundError, match="neither run.json"):
        load([tmp_path])
