"""Sweeps: every strategy equals separate runs, compiles once per static configuration, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

import edgejax as ej
from conftest import make_data
from edgejax.sweep import compile_count, grid, zip_points


@pytest.fixture(scope="module")
def sim():
    data = make_data([5, 3, 6, 2, 4, 7], dtype=np.float32, seed=3)[0]
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(8,))
    return ej.Simulation(model, data, ej.FedAvg(server_optimizer="adam"),
                         ej.LocalTraining(batch_size=2, epochs=1), clients_per_round=3)


POINTS = [{"client_lr": 0.05, "clients_per_round": 3}, {"client_lr": 0.3, "clients_per_round": 2}]


@pytest.mark.parametrize("strategy, chunk, group", [("loop", None, None), ("map", 4, 2), ("vmap", 3, None)])
def test_each_run_of_a_sweep_equals_its_separate_run(sim, strategy, chunk, group):
    res = sim.sweep(5, POINTS, seeds=[0, 4], eval_every=2, strategy=strategy, chunk_size=chunk, group_size=group)
    assert res.runs == [(0, 0), (0, 4), (1, 0), (1, 4)]  # vmap: 4 runs in chunks of 3, the last one padded
    assert res.eval_rounds == [0, 2, 4, 5]
    for r, (p, seed) in enumerate(res.runs):
        single = sim.run(5, seed=seed, hparams=POINTS[p], eval_every=2)
        for k, v in single.rounds.items():
            if k != "round":
                np.testing.assert_allclose(res.rounds[k][r], v, rtol=1e-5, atol=1e-6, err_msg=k)
        for k, v in single.evals.items():
            if k != "round":
                np.testing.assert_allclose(res.evals[k][r], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_second_sweep_compiles_nothing(sim):
    sim.sweep(5, {"client_lr": [0.1, 0.2]}, seeds=[0], eval_every=2, strategy="loop")
    before = compile_count(sim)
    sim.sweep(5, {"client_lr": [0.5, 0.01, 0.2]}, seeds=[1, 2], eval_every=2, strategy="loop")
    assert compile_count(sim) == before
    sim.sweep(5, {"client_lr": [0.3, 0.2, 0.1]}, seeds=[5, 6], eval_every=5)  # another cadence: one more program
    sim.sweep(5, {"client_lr": [0.4]}, seeds=[1], eval_every=5)
    assert compile_count(sim) == before + 1


def test_programs_go_with_their_simulation(sim):
    import gc
    import weakref

    from edgejax.sweep.program import _PROGRAMS, compiled

    other = ej.Simulation(sim.model, sim.data, sim.algorithm, sim.local, clients_per_round=2)
    compiled(other, "loop", 1, 1)
    assert other in _PROGRAMS
    alive = weakref.ref(other)
    del other
    gc.collect()
    assert alive() is None   # the cached program does not keep its simulation alive


def test_tidy_dataframe_has_a_row_per_run_and_evaluation(sim):
    res = sim.sweep(5, grid({"client_lr": [0.1, 0.2], "server_lr": [0.01]}), seeds=[0, 1, 2], eval_every=2)
    df = res.to_dataframe()
    assert len(df) == 2 * 3 * 4  # points x seeds x evaluations (rounds 0, 2, 4, 5)
    assert {"point", "seed", "client_lr", "server_lr", "round", "test_accuracy", "train_loss", "bytes",
            "sim_time_s"} <= set(df.columns)
    first = df[df["round"] == 0]
    assert (first["bytes"] == 0).all() and first["train_loss"].isna().all()
    last = df[(df["round"] == 5) & (df["point"] == 1) & (df["seed"] == 2)].iloc[0]
    r = res.runs.index((1, 2))
    assert last["bytes"] == pytest.approx(float(np.sum(res.rounds["bytes_up"][r] + res.rounds["bytes_down"][r])))
    assert last["test_accuracy"] == pytest.approx(float(res.evals["test_accuracy"][r, -1]))


def test_results_folder(sim, tmp_path):
    res = sim.sweep(5, [{"client_lr": 0.1}], seeds=[0, 1], eval_every=2)
    out = res.save(tmp_path / "sweep")
    assert {p.name for p in out.iterdir()} == {"evals.csv", "rounds.csv", "sweep.json"}


def test_the_package_exposes_sweeps_lazily():
    assert ej.sweep.grid is grid and not hasattr(ej.sweep, "sweep")   # one way to sweep: Simulation.sweep


def test_grid_and_zip():
    assert grid({"a": [1, 2], "b": [3, 4]}) == [{"a": 1, "b": 3}, {"a": 1, "b": 4}, {"a": 2, "b": 3}, {"a": 2, "b": 4}]
    assert zip_points({"a": [1, 2], "b": 5}) == [{"a": 1, "b": 5}, {"a": 2, "b": 5}]
    with pytest.raises(ValueError, match=r"different lengths \(a: 2, b: 3\)"):
        zip_points({"a": [1, 2], "b": [1, 2, 3]})


@pytest.mark.parametrize("kwargs, match", [
    ({"points": [{"client_lrr": 0.1}]}, "client_lrr"),
    ({"points": [{"client_lr": float("nan")}]}, "client_lr=nan"),
    ({"strategy": "threads"}, "'threads'"),
    ({"chunk_size": 0, "strategy": "vmap"}, "chunk_size"),
    ({"eval_every": 0}, "eval_every"),
    ({"group_size": 2, "strategy": "loop"}, "group_size=2 needs strategy 'map'"),
])
def test_bad_sweep_input_is_a_clear_error(sim, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sim.sweep(2, **kwargs)


def test_zipped_lists_of_other_lengths_name_the_keys(sim):
    with pytest.raises(ValueError, match=r"different lengths \(client_lr: 3, server_lr: 2\)"):
        sim.sweep(2, {"client_lr": [0.1, 0.2, 0.3], "server_lr": [0.1, 0.2]})
