"""Uniform symmetric quantization: quantization-aware training and the bytes of quantized tensors.

The quantizer (the weight quantizer of Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", in its symmetric form) with ``b``
bits, ``q_max = 2^(b-1) - 1``::

    scale = max |w| / q_max                          (over the tensor, or per output channel)
    q     = clip(round(w / scale), -q_max, q_max)    (round half to even; the narrow range, -2^(b-1)
                                                      is never used; scale = 0 gives q = 0)
    Q(w)  = q * scale

so ``Q(w)`` is an integer in ``[-q_max, q_max]`` times its scale and ``|Q(w)| <= max |w|``.
``granularity="tensor"``: one scale per tensor; ``"channel"``: one scale per output channel,
the last axis of a leaf with two or more dimensions (a GEMM weight ``[rows, cols]``, a
``[.., d_out]`` kernel); a 1-D leaf always has one scale.

Quantization-aware training (``quantization_aware``): the model's forward pass uses ``Q(W)`` for
every weight leaf (``ndim >= 2``; biases and activations stay float), and the gradient is the
straight-through estimator (Bengio, Leonard & Courville 2013): ``dQ(w)/dw`` is taken to be the
identity, so ``d/dw L(Q(w)) = L'(Q(w))``, the float model's gradient at the quantized weights,
applied to the float weights the node keeps.

Bytes of a quantized leaf of ``n`` entries (``quantized_bytes``): ``ceil(n b / 8)`` (values
packed, e.g. two int4 per byte) plus one scale per tensor or per channel in the leaf's float
dtype (4 bytes for float32).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from edgejax.core.validation import check_choice
from edgejax.models.base import Model

GRANULARITIES = ("tensor", "channel")
MIN_BITS, MAX_BITS = 2, 16


def check_quantizer(bits, granularity: str) -> None:
    """``ValueError`` naming ``bits`` unless it is an integer in ``[2, 16]``, or naming ``granularity``
    unless it is one of ``GRANULARITIES``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits={bits!r} must be an integer in [{MIN_BITS}, {MAX_BITS}] (e.g. 8 or 4)")
    check_choice("granularity", granularity, GRANULARITIES)


def q_max(bits: int) -> int:
    """The largest integer level ``2^(b-1) - 1`` (127 for int8, 7 for int4)."""
    return 2 ** (bits - 1) - 1


def _scale_axes(ndim: int, granularity: str):
    """Axes the scale's max runs over: all, or all but the last (per output channel) for ``ndim >= 2``."""
    return tuple(range(ndim - 1)) if granularity == "channel" and ndim >= 2 else tuple(range(ndim))


def quantize(w: jax.Array, bits: int, granularity: str = "tensor") -> tuple[jax.Array, jax.Array]:
    """``(q, scale)``: the integer levels (in ``w``'s dtype) and the scales (``w``'s shape with the
    scaled axes kept as 1: ``[]``-like per tensor, ``[1, .., cols]`` per channel)."""
    check_quantizer(bits, granularity)
    level = q_max(bits)
    amax = jnp.max(jnp.abs(w), axis=_scale_axes(jnp.ndim(w), granularity), keepdims=True)
    scale = amax / level
    q = jnp.clip(jnp.round(w / jnp.where(scale > 0, scale, 1)), -level, level)
    return q, scale


def dequantize_value(w: jax.Array, bits: int, granularity: str = "tensor") -> jax.Array:
    """``Q(w) = q * scale`` (no gradient rule: what a receiver reconstructs)."""
    q, scale = quantize(w, bits, granularity)
    return q * scale


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def fake_quantize(w: jax.Array, bits: int, granularity: str = "tensor") -> jax.Array:
    """``Q(w)`` in the forward pass with the straight-through gradient ``dQ/dw = I``."""
    return dequantize_value(w, bits, granularity)


@fake_quantize.defjvp
def _straight_through(bits, granularity, primals, tangents):
    return fake_quantize(primals[0], bits, granularity), tangents[0]


def quantize_tree(tree, bits: int, granularity: str = "tensor", weights_only: bool = False):
    """``Q`` of every leaf (``weights_only``: of the leaves with ``ndim >= 2``; others unchanged),
    without a gradient rule (a message's reconstruction)."""
    return jax.tree_util.tree_map(
        lambda w: w if weights_only and jnp.ndim(w) < 2 else dequantize_value(w, bits, granularity), tree)


def quantized_bytes(tree, bits: int, granularity: str = "tensor") -> int:
    """Bytes of every leaf of ``tree`` (arrays or shape structs) sent quantized: per leaf
    ``ceil(n b / 8)`` plus its scales (one, or one per output channel) in the leaf's dtype."""
    check_quantizer(bits, granularity)
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        shape = tuple(jnp.shape(leaf))
        axes = _scale_axes(len(shape), granularity)
        scales = math.prod(d for i, d in enumerate(shape) if i not in axes)
        total += math.ceil(math.prod(shape) * bits / 8) + scales * jnp.dtype(leaf.dtype).itemsize
    return total


def quantization_aware(model: Model, bits: int = 8, granularity: str = "tensor") -> Model:
    """``model`` trained quantization-aware: ``apply`` runs on ``Q(W)`` for every weight leaf
    (``ndim >= 2``) with the straight-through gradient (module docstring); ``init`` and the loss
    are ``model``'s.  ``layers`` is dropped (the dense-stack description is of the float model,
    so ``shared_base`` is not used; training runs ``per_node``)."""
    check_quantizer(bits, granularity)

    def apply(params, x):
        quantized = jax.tree_util.tree_map(
            lambda w: fake_quantize(w, bits, granularity) if jnp.ndim(w) >= 2 else w, params)
        return model.apply(quantized, x)

    suffix = "c" if granularity == "channel" else ""
    return Model(f"{model.name}+qat{bits}{suffix}", model.init, apply, model.input_shape, model.num_classes,
                 None, model.loss)
