"""Vmap-friendly layers written as plain functions over parameter dicts.

Every layer that carries weights is a dense matrix product, so that a model
vmapped over the node axis lowers to batched GEMMs.  Convolutions use the GEMM
("im2col") form: the k x k neighbourhood of every pixel is gathered by shifted
slices, concatenated on the channel axis and multiplied by one
``[k*k*C_in, C_out]`` kernel.  ``jax.vmap`` over ``lax.conv`` lowers to a
grouped convolution that ran 12x slower than this form on an H100;
``benchmarks/throughput.py`` keeps that comparison alive.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from edgejax.core.state import default_float

Params = dict


def _float_dtype(dtype):
    """``dtype`` or the default float (float64 under ``jax.enable_x64``, else float32)."""
    return default_float() if dtype is None else dtype


def dense_init(key: jax.Array, d_in: int, d_out: int, dtype=None) -> Params:
    """LeCun-normal weights ``[d_in, d_out]`` and zero bias (``z = a W + b``)."""
    dtype = _float_dtype(dtype)
    w = jax.nn.initializers.lecun_normal()(key, (d_in, d_out), dtype)
    return {"w": w, "b": jnp.zeros((d_out,), dtype)}


def dense(params: Params, a: jax.Array) -> jax.Array:
    """``z = a W + b`` over the last axis of ``a``."""
    return a @ params["w"] + params["b"]


def conv2d_init(key: jax.Array, kernel: int, c_in: int, c_out: int, dtype=None) -> Params:
    """A ``kernel x kernel`` convolution stored as a GEMM kernel ``[k*k*c_in, c_out]``."""
    return dense_init(key, kernel * kernel * c_in, c_out, dtype)


def _patches2d(x: jax.Array, kernel: int) -> jax.Array:
    """``[B, H, W, C] -> [B, H, W, k*k*C]``: the SAME-padded k x k neighbourhoods."""
    pad = kernel // 2
    h, w = x.shape[-3], x.shape[-2]
    xp = jnp.pad(x, ((0, 0), (pad, kernel - 1 - pad), (pad, kernel - 1 - pad), (0, 0)))
    shifted = [xp[:, i:i + h, j:j + w, :] for i in range(kernel) for j in range(kernel)]
    return jnp.concatenate(shifted, axis=-1)


def conv2d(params: Params, x: jax.Array, kernel: int) -> jax.Array:
    """Stride-1 SAME ``kernel x kernel`` convolution in GEMM form: ``patches(x) @ K + b``."""
    return dense(params, _patches2d(x, kernel))


def conv1d_init(key: jax.Array, kernel: int, c_in: int, c_out: int, dtype=None) -> Params:
    """A width-``kernel`` 1-D convolution stored as a GEMM kernel ``[k*c_in, c_out]``."""
    return dense_init(key, kernel * c_in, c_out, dtype)


def conv1d(params: Params, x: jax.Array, kernel: int) -> jax.Array:
    """Stride-1 SAME width-``kernel`` 1-D convolution of ``[B, T, C]`` in GEMM form."""
    pad = kernel // 2
    t = x.shape[-2]
    xp = jnp.pad(x, ((0, 0), (pad, kernel - 1 - pad), (0, 0)))
    patches = jnp.concatenate([xp[:, i:i + t, :] for i in range(kernel)], axis=-1)
    return dense(params, patches)


def max_pool2d(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 of ``[B, H, W, C]`` (odd edges are dropped)."""
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def max_pool1d(x: jax.Array) -> jax.Array:
    """Width-2 max pooling with stride 2 of ``[B, T, C]``."""
    b, t, c = x.shape
    x = x[:, : t - t % 2, :]
    return x.reshape(b, t // 2, 2, c).max(axis=2)
