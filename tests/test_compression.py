"""Compressors: identities, unbiasedness, variance and contraction bounds, grids, vmap/jit, pytrees, payloads, errors."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgejax.compression import QSGD, Identity, RandomK, Sign, TopK, compress_tree, tree_payload_bits

D = 40
SAMPLES = 20000
jit_compress_tree = jax.jit(compress_tree, static_argnums=(0, 3))


def _vec(d=D, seed=0):
    """A vector without ties in |x_i|."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=d), jnp.float32)


def _samples(compressor, x, n=SAMPLES, seed=1):
    keys = jax.random.split(jax.random.key(seed), n)
    return np.asarray(jax.jit(jax.vmap(compressor.compress, in_axes=(0, None)))(keys, x), np.float64)


@pytest.mark.parametrize("compressor", [Identity(), TopK(k=D), TopK(fraction=1.0), RandomK(k=D),
                                        RandomK(fraction=1.0), RandomK(k=D, unbiased=True)])
def test_full_k_is_identity(compressor):
    x = _vec()
    np.testing.assert_allclose(compressor.compress(jax.random.key(3), x), x, rtol=1e-6)


def test_topk_keeps_the_k_largest_magnitudes():
    x = _vec()
    out = np.asarray(TopK(k=7).compress(jax.random.key(0), x))
    largest = np.argsort(-np.abs(np.asarray(x)))[:7]
    assert np.count_nonzero(out) == 7
    assert set(np.flatnonzero(out)) == set(largest)
    np.testing.assert_array_equal(out[largest], np.asarray(x)[largest])
    # Deterministic contraction: ||C(x) - x||^2 <= (1 - k/d) ||x||^2.
    assert np.sum((out - np.asarray(x)) ** 2) <= (1 - 7 / D) * np.sum(np.asarray(x) ** 2)


def test_fraction_rounds_to_k():
    assert TopK(fraction=0.1).num_kept(33) == 3 and TopK(fraction=0.1).num_kept(37) == 4
    assert TopK(fraction=0.001).num_kept(10) == 1
    x = _vec(10)
    assert np.count_nonzero(np.asarray(TopK(fraction=0.3).compress(jax.random.key(0), x))) == 3


@pytest.mark.parametrize("unbiased", [False, True])
def test_randomk_mean(unbiased):
    k = 10
    x = np.asarray(_vec(), np.float64)
    out = _samples(RandomK(k=k, unbiased=unbiased), jnp.asarray(x, jnp.float32))
    assert np.all(np.count_nonzero(out, axis=1) == k)
    scale, p = (D / k if unbiased else 1.0), k / D
    sd = scale * np.abs(x) * math.sqrt(p * (1 - p) / SAMPLES)
    np.testing.assert_array_less(np.abs(out.mean(0) - scale * p * x), 5 * sd + 1e-6)
    # E||C(x) - x||^2 = (1 - k/d) ||x||^2 biased (CHOCO's delta = k/d, tight), (d/k - 1) ||x||^2 unbiased.
    err = np.mean(np.sum((out - x) ** 2, axis=1))
    np.testing.assert_allclose(err, (D / k - 1 if unbiased else 1 - k / D) * np.sum(x**2), rtol=0.03)


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_qsgd_unbiased_variance_and_grid(levels):
    x = np.asarray(_vec(), np.float64)
    out = _samples(QSGD(levels), jnp.asarray(x, jnp.float32))
    norm = np.linalg.norm(x)
    # Unbiased: per-coordinate variance is at most norm^2 / (4 s^2).
    sd = norm / (2 * levels) / math.sqrt(SAMPLES)
    np.testing.assert_array_less(np.abs(out.mean(0) - x), 5 * sd)
    # Alistarh et al. Lemma 3.1.
    var = np.mean(np.sum((out - x) ** 2, axis=1))
    assert var <= min(D / levels**2, math.sqrt(D) / levels) * norm**2
    # Every value is sign(x_i) * norm * l / s with l in {0..s}, and l is floor or ceil of s|x_i|/norm.
    lev = out / norm * levels * np.sign(x)
    np.testing.assert_allclose(lev, np.round(lev), atol=1e-4)
    r = levels * np.abs(x) / norm
    assert np.all((np.round(lev) == np.floor(r)) | (np.round(lev) == np.ceil(r)))
    assert np.all((np.round(lev) >= 0) & (np.round(lev) <= levels))


def test_qsgd_zero_vector():
    np.testing.assert_array_equal(QSGD(4).compress(jax.random.key(0), jnp.zeros(5)), np.zeros(5))


def _contraction_error(compressor, x):
    out = _samples(compressor, jnp.asarray(x, jnp.float32), n=5000)
    return np.mean(np.sum((out - x) ** 2, axis=1))


@pytest.mark.parametrize("compressor,delta", [
    (TopK(k=5), 5 / D), (RandomK(k=5), 5 / D),
    (QSGD(1, scaled=True), 1 / (1 + min(D, math.sqrt(D)))),
    (QSGD(16, scaled=True), 1 / (1 + min(D / 256, math.sqrt(D) / 16)))])
def test_choco_contraction(compressor, delta):
    """E||C(x) - x||^2 <= (1 - delta) ||x||^2 (CHOCO Assumption 1); 2% slack since random-k attains it."""
    x = np.asarray(_vec(seed=4), np.float64)
    assert _contraction_error(compressor, x) <= (1 - delta) * np.sum(x**2) * 1.02 + 1e-9


def test_sign():
    x = _vec()
    out = Sign().compress(jax.random.key(0), x)
    np.testing.assert_allclose(out, jnp.sum(jnp.abs(x)) / D * jnp.sign(x), rtol=1e-6)
    xn = np.asarray(x, np.float64)
    err = np.sum((np.asarray(out, np.float64) - xn) ** 2)
    np.testing.assert_allclose(err, np.sum(xn**2) - np.sum(np.abs(xn)) ** 2 / D, rtol=1e-4)


@pytest.mark.parametrize("compressor", [Identity(), TopK(k=3), RandomK(fraction=0.25, unbiased=True),
                                        QSGD(3), QSGD(3, scaled=True), Sign()])
def test_vmap_over_nodes_equals_loop_and_jit(compressor):
    n = 5
    xs = jnp.asarray(np.random.default_rng(2).normal(size=(n, 12)), jnp.float32)
    keys = jax.random.split(jax.random.key(7), n)
    batched = jax.jit(jax.vmap(compressor.compress))(keys, xs)
    single = jax.jit(compressor.compress)
    loop = np.stack([single(keys[i], xs[i]) for i in range(n)])
    np.testing.assert_allclose(batched, loop, rtol=1e-6, atol=1e-7)


def _tree():
    rng = np.random.default_rng(5)
    return {"b": jnp.asarray(rng.normal(size=(10,)), jnp.float32),
            "w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)}


def test_compress_tree_per_tensor_and_whole():
    tree = _tree()
    key = jax.random.key(0)
    # Per tensor, fraction: each leaf keeps its own top half.
    per = jit_compress_tree(TopK(fraction=0.5), key, tree)
    assert np.count_nonzero(per["b"]) == 5 and np.count_nonzero(per["w"]) == 15
    np.testing.assert_array_equal(per["w"].reshape(-1), TopK(k=15).compress(key, tree["w"].reshape(-1)))
    # Per tensor, absolute k: split 10:30 in proportion to sizes.
    split = jit_compress_tree(TopK(k=8), key, tree)
    assert np.count_nonzero(split["b"]) == 2 and np.count_nonzero(split["w"]) == 6
    # Whole vector: top 8 over the concatenation.
    whole = jit_compress_tree(TopK(k=8), key, tree, per_tensor=False)
    flat = np.concatenate([np.asarray(tree["b"]), np.asarray(tree["w"]).reshape(-1)])
    top = np.sort(np.abs(flat))[-8:]
    got = np.concatenate([np.asarray(whole["b"]), np.asarray(whole["w"]).reshape(-1)])
    np.testing.assert_array_equal(np.sort(np.abs(got[got != 0])), top)
    # Per-tensor QSGD uses one norm per leaf; whole-vector uses one norm overall.
    q = jit_compress_tree(QSGD(1), key, tree)
    qb = np.abs(np.asarray(q["b"]))
    np.testing.assert_allclose(qb[qb > 0], np.linalg.norm(np.asarray(tree["b"])), rtol=1e-5)
    # Structure is kept, and the tree version vmaps and jits over a node axis.
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), tree)
    keys = jax.random.split(key, 2)
    f = jax.jit(jax.vmap(lambda k, t: compress_tree(RandomK(k=8), k, t)))
    out = f(keys, stacked)
    assert jax.tree.map(jnp.shape, out) == jax.tree.map(jnp.shape, stacked)
    assert all(np.count_nonzero(np.concatenate([out["b"][i], out["w"][i].reshape(-1)])) == 8 for i in range(2))


def test_absolute_k_split_can_skip_a_leaf():
    tree = {"a": jnp.ones(2), "b": jnp.arange(1.0, 99.0)}
    out = compress_tree(TopK(k=3), jax.random.key(0), tree)
    np.testing.assert_array_equal(out["a"], np.zeros(2))
    assert np.count_nonzero(out["b"]) == 3
    assert tree_payload_bits(TopK(k=3), tree) == 3 * (32 + 7)


def test_payload_bits():
    d = 1000  # ceil(log2 1000) = 10
    assert Identity().payload_bits(d) == 32000
    assert TopK(k=10).payload_bits(d) == 10 * (32 + 10)
    assert TopK(k=10).payload_bits(d, value_bits=16, index_bits=32) == 10 * 48
    assert RandomK(fraction=0.01).payload_bits(d) == 10 * 42
    assert RandomK(k=10, shared_seed=True).payload_bits(d) == 10 * 32 + 32
    assert QSGD(1).payload_bits(d) == 32 + d * 2
    assert QSGD(4).payload_bits(d) == 32 + d * 4  # 1 sign + ceil(log2 5) = 3
    assert QSGD(255).payload_bits(d) == 32 + d * 9
    assert Sign().payload_bits(d) == 32 + d
    assert TopK(k=1).payload_bits(1) == 32  # one position needs no index bits
    tree = _tree()  # leaves of 10 and 30
    assert tree_payload_bits(Identity(), tree) == 40 * 32
    assert tree_payload_bits(Sign(), tree) == (32 + 10) + (32 + 30)
    assert tree_payload_bits(Sign(), tree, per_tensor=False) == 32 + 40
    assert tree_payload_bits(TopK(k=8), tree) == 2 * (32 + 4) + 6 * (32 + 5)
    assert tree_payload_bits(TopK(k=8), tree, per_tensor=False) == 8 * (32 + 6)
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    assert tree_payload_bits(QSGD(2), shapes) == tree_payload_bits(QSGD(2), tree)


def test_errors():
    with pytest.raises(ValueError, match=r"k=50 exceeds the vector length d=40"):
        TopK(k=50).compress(jax.random.key(0), _vec())
    with pytest.raises(ValueError, match=r"k=50 exceeds the vector length d=40"):
        RandomK(k=50).payload_bits(40)
    with pytest.raises(ValueError, match=r"k=41 exceeds the vector length d=40"):
        compress_tree(TopK(k=41), jax.random.key(0), _tree())
    with pytest.raises(ValueError, match=r"k=0"):
        TopK(k=0)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"fraction={bad}"):
            RandomK(fraction=bad)
    with pytest.raises(ValueError, match="exactly one of k or fraction"):
        TopK()
    with pytest.raises(ValueError, match="exactly one of k or fraction"):
        TopK(k=3, fraction=0.5)
    with pytest.raises(ValueError, match="levels=0"):
        QSGD(0)
    with pytest.raises(ValueError, match="flat vector"):
        Sign().compress(jax.random.key(0), jnp.ones((2, 3)))


def test_hashable_static_config():
    assert hash(TopK(k=3)) == hash(TopK(k=3)) and TopK(k=3) != RandomK(k=3)
    f = jax.jit(compress_tree, static_argnums=(0, 3))
    tree = _tree()
    np.testing.assert_allclose(f(QSGD(2, scaled=True), jax.random.key(1), tree, False)["w"],
                               compress_tree(QSGD(2, scaled=True), jax.random.key(1), tree, False)["w"])
