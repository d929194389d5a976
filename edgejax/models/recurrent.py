"""Recurrent layers in GEMM form and the character model of LEAF's Shakespeare task.

An LSTM layer is one matrix product for the inputs of every time step at once
(``x [B, T, d_in] @ W_x [d_in, 4H]``) and a ``lax.scan`` over time whose step is one matrix
product ``h_{t-1} @ W_h [H, 4H]`` plus elementwise gates, so a model vmapped over nodes lowers to
batched GEMMs (no Python loop over time steps or nodes)::

    z_t = x_t W_x + h_{t-1} W_h + b,     [i, f, g, o] = split(z_t, 4)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),     h_t = sigmoid(o) * tanh(c_t)

with ``h_0 = c_0 = 0``.  Weights are Glorot-uniform (TensorFlow's default, which LEAF's model
uses) and the forget-gate bias starts at 1 (TensorFlow's ``BasicLSTMCell`` adds a constant
``forget_bias=1``; here it is the bias's initial value and trains like the others).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from edgejax.models import layers
from edgejax.models.base import Model


def lstm_init(key: jax.Array, d_in: int, hidden: int, dtype=None) -> dict:
    """``wx [d_in, 4H]``, ``wh [H, 4H]``, ``b [4H]`` (gates in the order i, f, g, o; forget bias 1)."""
    dtype = layers._float_dtype(dtype)
    kx, kh = jax.random.split(key)
    init = jax.nn.initializers.glorot_uniform()
    b = jnp.zeros((4 * hidden,), dtype).at[hidden:2 * hidden].set(1.0)
    return {"wx": init(kx, (d_in, 4 * hidden), dtype), "wh": init(kh, (hidden, 4 * hidden), dtype), "b": b}


def lstm(params: dict, xs: jax.Array) -> jax.Array:
    """``[B, T, d_in] -> [B, T, H]``: every time step's hidden state (see the module docstring)."""
    hidden = params["wh"].shape[0]
    zx = jnp.swapaxes(xs @ params["wx"] + params["b"], 0, 1)         # [T, B, 4H], one GEMM for all steps

    def step(carry, z_t):
        h, c = carry
        i, f, g, o = jnp.split(z_t + h @ params["wh"], 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((xs.shape[0], hidden), zx.dtype)
    _, hs = jax.lax.scan(step, (zeros, zeros), zx)
    return jnp.swapaxes(hs, 0, 1)


def char_lstm(input_shape: Sequence[int] = (80,), num_classes: int = 80, *, embed_dim: int = 8,
              hidden: Sequence[int] = (256, 256), vocab_size: int | None = None) -> Model:
    """Next-character model: embedding, stacked LSTM layers, a dense layer on the last step's state.

    ``x [B, T]`` holds character indices (as floats, the ``Dataset`` convention; e.g.
    ``edgejax.data.load_shakespeare``); the embedding is a one-hot GEMM (``one_hot(x) @ E``,
    ``E [vocab_size, embed_dim]``, ``vocab_size`` defaulting to ``num_classes``).  Outputs are the
    ``[B, num_classes]`` logits of the character after the window.  ``leaf_char_lstm()`` is LEAF's
    Shakespeare model: embedding 8, two LSTM layers of 256 units, 80 characters.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 1:
        raise ValueError(f"char_lstm needs sequences of character indices [T]; got input_shape={input_shape}")
    hidden = tuple(int(h) for h in hidden)
    if not hidden or min(hidden) < 1 or embed_dim < 1:
        raise ValueError(f"char_lstm: hidden must be positive widths and embed_dim >= 1; got hidden={hidden}, "
                         f"embed_dim={embed_dim}")
    vocab = int(vocab_size or num_classes)

    def init(key):
        keys = jax.random.split(key, len(hidden) + 2)
        dtype = layers._float_dtype(None)
        params = {"embed": {"w": jax.nn.initializers.glorot_uniform()(keys[0], (vocab, embed_dim), dtype)}}
        d_in = embed_dim
        for i, h in enumerate(hidden):
            params[f"lstm_{i}"] = lstm_init(keys[i + 1], d_in, h)
            d_in = h
        params["out"] = layers.dense_init(keys[-1], d_in, num_classes)
        return params

    def apply(params, x):
        e = params["embed"]["w"]
        a = jax.nn.one_hot(x.astype(jnp.int32), vocab, dtype=e.dtype) @ e
        for i in range(len(hidden)):
            a = lstm(params[f"lstm_{i}"], a)
        return layers.dense(params["out"], a[:, -1])

    name = f"char_lstm_{embed_dim}_{'x'.join(map(str, hidden))}"
    return Model(name, init, apply, input_shape, int(num_classes))


def leaf_char_lstm(seq_length: int = 80, vocab_size: int = 80) -> Model:
    """LEAF's Shakespeare model (``models/shakespeare/stacked_lstm.py``): embedding 8, 2 x 256 LSTM."""
    return char_lstm((seq_length,), vocab_size, embed_dim=8, hidden=(256, 256))
