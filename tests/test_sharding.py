"""The node axis sharded over devices equals the single-device simulation.

The 8-device comparisons run in a subprocess (``tests/sharded_runs.py``: jax must see
``XLA_FLAGS`` before it starts); the rest runs here on a one-device mesh, which takes
the same code path (padding, ``shard_map`` of the local updates, stored state).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import edgejax as ej
from conftest import make_data
from sharded_runs import CASES

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "runs.json"
    done = subprocess.run([sys.executable, str(HERE / "sharded_runs.py"), str(out)], capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.multidevice
@pytest.mark.parametrize("case", CASES)
def test_a_sharded_run_equals_the_single_device_run(eight_devices, case):
    result = eight_devices[case]
    assert result["devices"] == 8 and result["node_state_split"], result
    assert result["same_state_shapes"], "the sharded run's final state must have the logical (unpadded) shapes"
    assert result["train_loss_finite"]
    for part in ("rounds", "evals", "state"):
        assert result[part] < 2e-6, (case, part, result[part])


@pytest.mark.multidevice
def test_a_vmap_sweep_splits_its_points_over_the_devices(eight_devices):
    result = eight_devices["sweep"]
    assert result["chunk"] == 8 and result["seed_devices"] == 8 and result["runs"] == 10
    assert result["rounds"] < 2e-6 and result["evals"] < 2e-6, result


@pytest.mark.multidevice
def test_node_counts_that_do_not_divide_the_devices_are_padded(eight_devices):
    assert eight_devices["fedavg"]["num_nodes"] % 8 != 0 and eight_devices["dpsgd_sparse"]["num_nodes"] == 100


def _sim(mesh=None, nodes=6):
    data, _, _ = make_data([5, 6, 7, 8, 9, 4][:nodes], dtype="float32")
    return ej.Simulation(ej.models.logistic_regression((5,), 3), data, ej.SCAFFOLD(),
                         ej.LocalTraining(batch_size=2, steps=2), clients_per_round=3, mesh=mesh)


def test_a_one_device_mesh_takes_the_sharded_path_and_gives_the_same_numbers():
    plain = _sim().run(4, eval_every=2, seed=1)
    sharded = _sim(ej.parallel.node_mesh(jax.devices()[:1])).run(4, eval_every=2, seed=1)
    for key in plain.rounds:
        np.testing.assert_allclose(sharded.rounds[key], plain.rounds[key], rtol=1e-6, err_msg=key)
    for a, b in zip(jax.tree_util.tree_leaves(plain.final_state), jax.tree_util.tree_leaves(sharded.final_state)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
    assert sharded.config["node_devices"] == 1


def test_node_axis_pads_and_unpads_only_per_node_leaves():
    axis = ej.parallel.NodeAxis(ej.parallel.node_mesh(jax.devices()[:1]), 5)
    tree = {"per_node": np.arange(10.0).reshape(5, 2), "other": np.ones((3, 2)), "scalar": np.float32(2)}
    assert axis.padded_nodes == 5 and axis.unpad(axis.pad(tree), tree)["per_node"].shape == (5, 2)
    placed = axis.place(tree)
    assert placed["other"].sharding.is_fully_replicated
    np.testing.assert_array_equal(axis.to_host(placed, tree)["per_node"], tree["per_node"])


def test_a_leaf_as_long_as_the_padded_node_axis_is_not_sliced():
    """N = 6 on 4 devices is stored as 8 rows; a (non-node) leaf of logical length 8 stays whole."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1] * 4), ("nodes",))
    axis = ej.parallel.NodeAxis(mesh, 6)
    tree = {"per_node": np.arange(6.0), "eight": np.arange(8.0)}
    stored = axis.pad(tree)
    assert stored["per_node"].shape == (8,) and stored["eight"].shape == (8,)
    back = axis.unpad(stored, tree)
    np.testing.assert_array_equal(back["per_node"], tree["per_node"])
    np.testing.assert_array_equal(back["eight"], tree["eight"])


def test_a_resumed_sharded_run_continues_bit_identically(tmp_path):
    mesh = ej.parallel.node_mesh(jax.devices()[:1])
    whole = _sim(mesh).run(6, eval_every=2, seed=2)
    with pytest.raises(ej.RunInterrupted):
        _interrupted_run(_sim(mesh), tmp_path)
    resumed = _sim(mesh).run(6, eval_every=2, seed=2, out_dir=tmp_path, checkpoint_every=2, resume=True)
    for key in whole.rounds:
        np.testing.assert_array_equal(resumed.rounds[key], whole.rounds[key], err_msg=key)


def _interrupted_run(sim, out):
    """Run with checkpoints and send SIGINT during the first training chunk (call 2; call 1 is
    the initial evaluation): the run stops at the end of that chunk with a checkpoint."""
    import os
    import signal

    compiled, calls = sim._jit_chunk, []

    def chunk_then_stop(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return compiled(*args)

    object.__setattr__(sim, "_jit_chunk", chunk_then_stop)
    sim.run(6, eval_every=2, seed=2, out_dir=out, checkpoint_every=2)


def test_bad_meshes_and_a_sharded_sweep_are_rejected():
    with pytest.raises(ValueError, match="single axis 'nodes'"):
        _sim(jax.make_mesh((1,), ("clients",)))
    with pytest.raises(ValueError, match="jax.sharding.Mesh"):
        _sim(mesh="nodes")
    with pytest.raises(ValueError, match="run\\(\\)"):
        _sim(ej.parallel.node_mesh(jax.devices()[:1])).sweep(2, {}, [0, 1])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_run_one_simulation_as_one_device_does(tmp_path):
    """``edgejax.parallel.initialize`` joins two processes (2 CPU devices each, gloo over
    loopback); their 4-device run equals a one-device run."""
    script, port = str(HERE / "multihost_run.py"), str(_free_port())
    procs = [subprocess.Popen([sys.executable, script, port, str(i), str(tmp_path / "multi.json")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    single = subprocess.run([sys.executable, script, "-", "-", str(tmp_path / "single.json")], capture_output=True,
                            text=True, timeout=600)
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-2000:] + logs[1][-2000:]
    assert single.returncode == 0, single.stderr[-2000:]
    multi, one = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("multi", "single"))
    assert (multi["devices"], multi["processes"]) == (4, 2) and one["processes"] == 1
    for part in ("rounds", "evals"):
        for key, values in one[part].items():
            np.testing.assert_allclose(multi[part][key], values, rtol=2e-6, atol=1e-7, err_msg=key)
    for a, b in zip(multi["server"], one["server"]):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


@pytest.mark.multiprocess
def test_edgejax_run_launches_a_two_process_run(tmp_path):
    """The documented launcher: every process runs the same ``edgejax run --coordinator ...``;
    process 0 writes the metrics, which equal a one-process run's."""
    import os

    import pandas as pd

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    command = [sys.executable, "-c", "import sys; from edgejax.cli import main; sys.exit(main(sys.argv[1:]))", "run",
               "--nodes", "12", "--clients-per-round", "5", "--rounds", "4", "--eval-every", "2", "--no-progress",
               "--model", "logreg"]
    port = str(_free_port())
    procs = [subprocess.Popen([*command, "--coordinator", f"localhost:{port}", "--num-processes", "2",
                               "--process-id", str(i), "--out", str(tmp_path / f"multi{i}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    single = subprocess.run([*command, "--out", str(tmp_path / "single")], env=env, capture_output=True, text=True,
                            timeout=600)
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-2000:] + logs[1][-2000:]
    assert single.returncode == 0, single.stderr[-2000:]
    assert "nodes on 4 devices" in logs[0] and not (tmp_path / "multi1").exists()
    multi, one = (pd.read_csv(tmp_path / name / "metrics.csv") for name in ("multi0", "single"))
    assert list(multi.columns) == list(one.columns) and len(multi) == 5
    np.testing.assert_allclose(multi.to_numpy(float), one.to_numpy(float), rtol=2e-6, atol=1e-7)
