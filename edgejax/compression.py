"""Communication compressors for compressed gossip (CHOCO-SGD) and compressed federated learning.

A compressor is a small frozen dataclass (hashable, so it can be a static field of a
jitted config) with two methods:

``compress(key, x) -> x_hat``
    for ONE flat vector ``x [d]``, the dense vector the receiver reconstructs.  Pure
    and jittable; the caller vmaps it over the node axis (one key per node).  ``d``
    comes from the static shape, so a bad ``k`` fails at trace time, before compute.
``payload_bits(d, value_bits=32, index_bits=None) -> float``
    the size of the message that carries ``x_hat`` (static Python, from ``d``).  Values
    cost ``value_bits`` each, a position ``index_bits`` (default ``ceil(log2 d)``).

``compress_tree`` / ``tree_payload_bits`` apply a compressor to one node's parameter
pytree, per tensor or on the whole flattened vector; CHOCO-SGD's paper states its
compressors on the whole vector ``x in R^d`` while most code (the authors' included)
compresses each tensor, so both are offered.

Contraction (CHOCO, Koloskova et al. 2019, Assumption 1): ``E||C(x) - x||^2 <= (1 - delta) ||x||^2``
with ``delta = k/d`` for ``TopK`` and biased ``RandomK``, ``1/tau`` for ``QSGD(scaled=True)``,
``||x||_1^2 / (d ||x||_2^2)`` for ``Sign`` and ``1`` for ``Identity``.  Unbiased ``RandomK``
and unscaled ``QSGD`` satisfy ``E C(x) = x`` instead, with variance growing as compression
gets stronger; they are not contractions in general.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any

__all__ = ["QSGD", "Compressor", "Identity", "RandomK", "Sign", "TopK", "compress_tree", "tree_payload_bits"]


def _check_vector(x: jax.Array) -> int:
    if jnp.ndim(x) != 1:
        raise ValueError(f"compress expects one flat vector x [d]; got shape {jnp.shape(x)} "
                         "(vmap over the node axis, or use compress_tree for pytrees)")
    return x.shape[0]


def _index_bits(d: int, index_bits: int | None) -> int:
    """``ceil(log2 d)`` bits address one of ``d`` positions (0 for ``d = 1``)."""
    return (d - 1).bit_length() if index_bits is None else index_bits


@dataclasses.dataclass(frozen=True)
class Compressor:
    """Interface shared by all compressors (see the module docstring)."""

    def compress(self, key: jax.Array, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def payload_bits(self, d: int, value_bits: int = 32, index_bits: int | None = None) -> float:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Identity(Compressor):
    """No compression: ``C(x) = x``; the message is ``d`` dense values."""

    def compress(self, key: jax.Array, x: jax.Array) -> jax.Array:
        _check_vector(x)
        return x

    def payload_bits(self, d: int, value_bits: int = 32, index_bits: int | None = None) -> float:
        return float(d * value_bits)


@dataclasses.dataclass(frozen=True)
class _Sparsifier(Compressor):
    """Keeps ``k`` of ``d`` entries; give exactly one of ``k`` (absolute) or ``fraction`` in ``(0, 1]``.

    With ``fraction``, ``k = max(1, round(fraction * d))`` (Python's ``round``, halves to even)
    for each vector it meets.
    """

    k: int | None = None
    fraction: float | None = None

    def __post_init__(self):
        if (self.k is None) == (self.fraction is None):
            raise ValueError(f"{type(self).__name__} needs exactly one of k or fraction; "
                             f"got k={self.k}, fraction={self.fraction}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"{type(self).__name__}: k={self.k} must be at least 1")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"{type(self).__name__}: fraction={self.fraction} must lie in (0, 1]")

    def num_kept(self, d: int) -> int:
        """The ``k`` used on a vector of length ``d``."""
        if self.fraction is not None:
            return max(1, round(self.fraction * d))
        if self.k > d:
            raise ValueError(f"{type(self).__name__}: k={self.k} exceeds the vector length d={d}")
        return self.k

    def payload_bits(self, d: int, value_bits: int = 32, index_bits: int | None = None) -> float:
        """``k (value_bits + index_bits)``: each kept value with its position."""
        return float(self.num_kept(d) * (value_bits + _index_bits(d, index_bits)))


@dataclasses.dataclass(frozen=True)
class TopK(_Sparsifier):
    """Top-k sparsification (Stich et al. 2018, "Sparsified SGD with memory"), biased and deterministic.

    ``C(x)_i = x_i`` if ``|x_i|`` is among the ``k`` largest magnitudes, else ``0``.  Ties go
    to the lower index (``lax.top_k``).  Contraction with ``delta = k/d``:
    ``||C(x) - x||^2 <= (1 - k/d) ||x||^2``.  The key is ignored.
    """

    def compress(self, key: jax.Array, x: jax.Array) -> jax.Array:
        k = self.num_kept(_check_vector(x))
        _, idx = jax.lax.top_k(jnp.abs(x), k)
        return jnp.zeros_like(x).at[idx].set(x[idx])


@dataclasses.dataclass(frozen=True)
class RandomK(_Sparsifier):
    """Random-k sparsification (Stich et al. 2018): keep ``k`` entries drawn uniformly without replacement.

    ``C(x) = c * sum_{i in S} x_i e_i``, ``S`` a uniform ``k``-subset of ``{1..d}``, with

    * ``unbiased=False`` (default): ``c = 1``.  Biased, ``E C(x) = (k/d) x``, and a
      contraction with ``delta = k/d``: ``E||C(x) - x||^2 = (1 - k/d) ||x||^2``.  This is the
      ``rand_k`` of CHOCO-SGD.
    * ``unbiased=True``: ``c = d/k``.  ``E C(x) = x`` but ``E||C(x) - x||^2 = (d/k - 1) ||x||^2``,
      which exceeds ``||x||^2`` for ``k < d/2``: for methods that need an unbiased
      compressor (plain compressed SGD / FL averaging), not for CHOCO's consensus step.

    ``shared_seed=True`` only changes the accounting: the receiver regenerates ``S``
    from a seed it shares with the sender, so the message is the ``k`` values plus a
    32-bit seed, ``k value_bits + 32``, instead of ``k (value_bits + index_bits)``.
    """

    unbiased: bool = False
    shared_seed: bool = False

    def compress(self, key: jax.Array, x: jax.Array) -> jax.Array:
        d = _check_vector(x)
        k = self.num_kept(d)
        _, idx = jax.lax.top_k(jax.random.uniform(key, (d,)), k)  # a uniform k-subset
        vals = x[idx] * (d / k) if self.unbiased else x[idx]
        return jnp.zeros_like(x).at[idx].set(vals.astype(x.dtype))

    def payload_bits(self, d: int, value_bits: int = 32, index_bits: int | None = None) -> float:
        if self.shared_seed:
            return float(self.num_kept(d) * value_bits + 32)
        return super().payload_bits(d, value_bits, index_bits)


@dataclasses.dataclass(frozen=True)
class QSGD(Compressor):
    """Stochastic quantization to ``s = levels`` levels (Alistarh et al. 2017, QSGD).

    ``Q(x)_i = ||x||_2 sign(x_i) xi_i / s`` where ``xi_i`` rounds ``s |x_i| / ||x||_2`` to the
    integer below or above at random, up with probability equal to its fractional part,
    so ``E Q(x) = x`` and ``E||Q(x) - x||^2 <= min(d/s^2, sqrt(d)/s) ||x||^2`` (Lemma 3.1).

    ``scaled=True`` is CHOCO-SGD's ``qsgd_s`` (Koloskova et al. 2019): ``Q(x) / tau`` with
    ``tau = 1 + min(d/s^2, sqrt(d)/s)``, biased but a contraction with ``delta = 1/tau``.

    Payload: the simple fixed-width code (no Elias coding of the levels), ``value_bits``
    for the norm plus ``1`` sign bit and ``ceil(log2(s + 1))`` level bits per entry.
    """

    levels: int
    scaled: bool = False

    def __post_init__(self):
        if self.levels < 1:
            raise ValueError(f"QSGD: levels={self.levels} must be at least 1")

    def compress(self, key: jax.Array, x: jax.Array) -> jax.Array:
        d = _check_vector(x)
        s = self.levels
        norm = jnp.linalg.norm(x)
        r = s * jnp.abs(x) / jnp.where(norm > 0, norm, 1)
        low = jnp.floor(r)
        xi = low + (jax.random.uniform(key, x.shape, x.dtype) < r - low)
        scale = s * (1 + min(d / s**2, math.sqrt(d) / s)) if self.scaled else s
        return (norm * jnp.sign(x) * xi / scale).astype(x.dtype)

    def payload_bits(self, d: int, value_bits: int = 32, index_bits: int | None = None) -> float:
        return float(value_bits + d * (1 + self.levels.bit_length()))


@dataclasses.dataclass(frozen=True)
class Sign(Compressor):
    """Scaled sign compression (Karimireddy et al. 2019, "Error Feedback Fixes SignSGD"; CHOCO's experiments).

    ``C(x) = ||x||_1 / d * sign(x)``; a contraction with ``delta = ||x||_1^2 / (d ||x||_2^2)``,
    since ``||C(x) - x||^2 = ||x||_2^2 - ||x||_1^2 / d``.  Payload: the norm
    (``value_bits``) plus one sign bit per entry (exact zeros reconstruct as 0 here; a
    one-bit code would send them as +/-, a measure-zero difference).  The key is ignored.
    """

    def compress(self, key: jax.Array, x: jax.Array) -> jax.Array:
        d = _check_vector(x)
        return (jnp.sum(jnp.abs(x)) / d * jnp.sign(x)).astype(x.dtype)

    def payload_bits(self, d: int, value_bits: int = 32, index_bits: int | None = None) -> float:
        return float(value_bits + d)


def _leaf_sizes(tree: PyTree) -> list[int]:
    """Sizes of the leaves (arrays or ``jax.ShapeDtypeStruct``s)."""
    return [math.prod(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]


def _leaf_compressors(compressor: Compressor, sizes: list[int]) -> list[Compressor | None]:
    """Per-leaf compressors; an absolute ``k`` is split over leaves in proportion to their sizes.

    The split is largest-remainder: leaf ``i`` of size ``d_i`` gets ``floor(k d_i / D)`` plus
    one for the ``k - sum floor(...)`` leaves with the largest remainders, so the counts
    sum to ``k`` and never exceed ``d_i``.  A leaf that gets ``0`` is not sent (``None``).
    """
    if not isinstance(compressor, _Sparsifier) or compressor.k is None:
        return [compressor] * len(sizes)
    total = sum(sizes)
    k = compressor.num_kept(total)
    counts = [k * d // total for d in sizes]
    by_remainder = sorted(range(len(sizes)), key=lambda i: -(k * sizes[i] % total))
    for i in by_remainder[:k - sum(counts)]:
        counts[i] += 1
    return [dataclasses.replace(compressor, k=c) if c else None for c in counts]


def compress_tree(compressor: Compressor, key: jax.Array, tree: PyTree, per_tensor: bool = True) -> PyTree:
    """Compress one node's pytree (no node axis; vmap over nodes outside).

    ``per_tensor=True``: each leaf is flattened and compressed on its own with its own
    key (``fraction`` applies per leaf; an absolute ``k`` is split over the leaves in
    proportion to their sizes, see ``_leaf_compressors``; a leaf given ``k = 0`` is
    sent as zeros).  ``per_tensor=False``: the whole tree is one vector
    (``ravel_pytree``), compressed once and unravelled, as in CHOCO-SGD's analysis.
    """
    if not per_tensor:
        flat, unravel = ravel_pytree(tree)
        return unravel(compressor.compress(key, flat))
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    comps = _leaf_compressors(compressor, [leaf.size for leaf in leaves])
    keys = jax.random.split(key, len(leaves))
    out = [jnp.zeros_like(leaf) if c is None else c.compress(k, leaf.reshape(-1)).reshape(leaf.shape)
           for c, k, leaf in zip(comps, keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


def tree_payload_bits(compressor: Compressor, tree: PyTree, per_tensor: bool = True, value_bits: int = 32,
                      index_bits: int | None = None) -> float:
    """Bits of the message ``compress_tree(compressor, key, tree, per_tensor)`` sends (leaves may be shape structs).

    Per tensor it is the sum of the leaves' messages (each leaf with its own norm or
    index width); a leaf given ``k = 0`` costs nothing.
    """
    sizes = _leaf_sizes(tree)
    if not per_tensor:
        return compressor.payload_bits(sum(sizes), value_bits, index_bits)
    return float(sum(c.payload_bits(d, value_bits, index_bits)
                     for c, d in zip(_leaf_compressors(compressor, sizes), sizes) if c is not None))
