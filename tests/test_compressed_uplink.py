"""Compressed uplinks for server-based training: unbiased quantization, top-k with k = d, error
feedback keeping the residual, low-rank updates and their payloads."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.algorithms.compressed_uplink import CompressedFedAvg, LowRank
from edgejax.compression import QSGD, TopK, compress_tree
from conftest import make_data


def _tree(seed=0):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(6, 4))), "b": jnp.asarray(rng.normal(size=(4,)))}


def test_stochastic_quantization_is_unbiased_in_expectation(x64):
    tree, draws = _tree(), 5000
    mean = jax.tree_util.tree_map(lambda a: a / draws, jax.jit(lambda keys: jax.tree_util.tree_map(
        lambda a: a.sum(axis=0), jax.vmap(lambda k: compress_tree(QSGD(levels=3), k, tree))(keys)))(
        jax.random.split(jax.random.PRNGKey(0), draws)))
    for got, want in zip(jax.tree_util.tree_leaves(mean), jax.tree_util.tree_leaves(tree)):
        # QSGD's variance is at most min(d/s^2, sqrt(d)/s) ||x||^2 per leaf: 5 standard errors
        bound = 5 * np.sqrt(min(want.size / 9, np.sqrt(want.size) / 3) * np.sum(np.square(want)) / draws)
        assert np.max(np.abs(np.asarray(got) - np.asarray(want))) < bound
    single = compress_tree(QSGD(levels=3), jax.random.PRNGKey(1), tree)
    assert not np.allclose(single["w"], tree["w"])


def _sims(data, algorithm):
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    local = ej.LocalTraining(batch_size=3, epochs=1, execution="per_node")
    return ej.Simulation(model, data, algorithm, local)


def test_top_k_with_k_equal_to_d_is_fedavg_and_error_feedback_keeps_the_residual(x64):
    """From the same start and keys: top-k with k = d gives FedAvg's round; with k < d the compressed
    change plus the weighted new memories equals FedAvg's uncompressed change, absent nodes keep a
    zero memory and every memory holds exactly what top-k dropped."""
    tree = _tree()
    jax.tree_util.tree_map(np.testing.assert_array_equal, compress_tree(TopK(fraction=1.0), jax.random.PRNGKey(0),
                                                                        tree), tree)
    data, _, _ = make_data([5, 4, 6, 3], seed=32)
    fedavg = _sims(data, ej.FedAvg())
    hp = fedavg.hparams({"client_lr": 0.3})
    plan = fedavg.make_plan(active=[1, 1, 0, 1])
    start = fedavg.init(jax.random.PRNGKey(1), hp)
    want, _ = jax.jit(fedavg.round_with_plan)(start, data, plan, hp)
    counts = np.asarray(data.train.count, np.float64) * np.array([1, 1, 0, 1])
    p = counts / counts.sum()
    for fraction in (1.0, 0.2):
        sim = _sims(data, CompressedFedAvg(TopK(fraction=fraction), error_feedback=True))
        got, metrics = jax.jit(sim.round_with_plan)(sim.init(jax.random.PRNGKey(1), hp), data, plan, hp)
        assert float(metrics["bytes_up"]) == 3 * sim.context.payload.up
        for name in ("w", "b"):
            x0 = np.asarray(start.server.params["out"][name])
            memory = np.asarray(got.nodes.extra.e["out"][name])
            np.testing.assert_allclose(np.asarray(got.server.params["out"][name]) - x0 + np.tensordot(p, memory, 1),
                                       np.asarray(want.server.params["out"][name]) - x0, rtol=1e-11, atol=1e-13)
            assert np.all(memory[2] == 0)
            dropped = x0.size - max(1, round(fraction * x0.size))
            for i in (0, 1, 3):
                assert np.count_nonzero(memory[i]) == dropped


def test_low_rank_updates_and_their_payload():
    rng = np.random.default_rng(2)
    rank1 = jnp.asarray(np.outer(rng.normal(size=6), rng.normal(size=5)), jnp.float32)
    tree = {"w": rank1, "b": jnp.ones(5), "small": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)}
    out = LowRank(1).compress_tree(None, tree)
    np.testing.assert_allclose(out["w"], rank1, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out["b"], tree["b"])
    full = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    assert np.linalg.matrix_rank(np.asarray(LowRank(2).compress_tree(None, {"w": full})["w"]), tol=1e-4) == 2
    # rank 1 of [6, 5] sends 6 + 5 values; the bias 5; the [2, 3] matrix (min side 2 > 1) 2 + 3
    assert LowRank(1).payload_bits(tree) == 32 * (11 + 5 + 5)
    assert LowRank(2).payload_bits(tree) == 32 * (22 + 5 + 6)
    with pytest.raises(ValueError, match="rank=0"):
        LowRank(0)
