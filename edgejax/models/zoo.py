"""Vmap-friendly models: logistic and linear regression, MLP, GEMM-conv CNN, 1-D conv net."""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from edgejax.models import layers
from edgejax.models.base import SQUARED_ERROR, DenseLayer, Model

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu, "sigmoid": jax.nn.sigmoid}


def _flat_dim(input_shape: Sequence[int]) -> int:
    return int(math.prod(input_shape))


def logistic_regression(input_shape: Sequence[int], num_classes: int) -> Model:
    """Multinomial logistic regression: ``logits = flatten(x) W + b``."""
    input_shape = tuple(input_shape)
    d = _flat_dim(input_shape)

    def init(key):
        return {"out": layers.dense_init(key, d, num_classes)}

    def apply(params, x):
        return layers.dense(params["out"], x.reshape(x.shape[0], d))

    return Model("logreg", init, apply, input_shape, num_classes, layers=(DenseLayer("out", d, num_classes),))


def linear_regression(input_shape: Sequence[int], outputs: int = 1) -> Model:
    """Least squares: ``y_hat = flatten(x) W + b`` with the ``SQUARED_ERROR`` loss (float targets)."""
    return logistic_regression(input_shape, outputs)._replace(name="linreg", loss=SQUARED_ERROR)


def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (200, 200),
        activation: str = "relu") -> Model:
    """Fully connected network ``d -> hidden... -> num_classes`` (e.g. FedAvg's 2NN: 200, 200)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
    input_shape, hidden = tuple(input_shape), tuple(int(h) for h in hidden)
    widths = (_flat_dim(input_shape), *hidden, num_classes)
    act = ACTIVATIONS[activation]

    def init(key):
        keys = jax.random.split(key, len(widths) - 1)
        return {f"dense_{i}": layers.dense_init(k, widths[i], widths[i + 1]) for i, k in enumerate(keys)}

    def apply(params, x):
        a = x.reshape(x.shape[0], widths[0])
        for i in range(len(widths) - 1):
            a = layers.dense(params[f"dense_{i}"], a)
            if i < len(widths) - 2:
                a = act(a)
        return a

    name = "mlp" if activation == "relu" else f"mlp_{activation}"
    n = len(widths) - 1
    stack = tuple(DenseLayer(f"dense_{i}", widths[i], widths[i + 1], activation if i < n - 1 else None)
                  for i in range(n))
    return Model(f"{name}_{'x'.join(map(str, hidden))}", init, apply, input_shape, num_classes, layers=stack)


def cnn(input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (32, 64),
        kernel: int = 3, hidden: int = 128) -> Model:
    """The small CNN of FedAvg/pfl benchmarks: [conv k x k, ReLU, 2x2 max-pool] x 2, dense, dense.

    Convolutions are in GEMM form (see ``layers``), so the vmapped model is batched matmuls.
    """
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs image inputs [H, W, C]; got input_shape={tuple(input_shape)}")
    h, w, c = input_shape
    channels = tuple(int(ch) for ch in channels)
    for _ in channels:
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"input_shape={tuple(input_shape)} is too small for {len(channels)} poolings")
    flat = h * w * channels[-1]

    def init(key):
        keys = jax.random.split(key, len(channels) + 2)
        c_ins = (c, *channels[:-1])
        params = {f"conv_{i}": layers.conv2d_init(keys[i], kernel, ci, co)
                  for i, (ci, co) in enumerate(zip(c_ins, channels))}
        params["dense"] = layers.dense_init(keys[-2], flat, hidden)
        params["out"] = layers.dense_init(keys[-1], hidden, num_classes)
        return params

    def apply(params, x):
        for i in range(len(channels)):
            x = layers.max_pool2d(jax.nn.relu(layers.conv2d(params[f"conv_{i}"], x, kernel)))
        x = jax.nn.relu(layers.dense(params["dense"], x.reshape(x.shape[0], flat)))
        return layers.dense(params["out"], x)

    return Model("cnn", init, apply, tuple(input_shape), num_classes)


def conv1d_net(input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (32, 64),
               kernel: int = 5) -> Model:
    """1-D conv net for sequences / audio features ``[T, C]``: [conv, ReLU, pool] x n, global mean, dense."""
    if len(input_shape) != 2:
        raise ValueError(f"conv1d needs sequence inputs [T, C]; got input_shape={tuple(input_shape)}")
    t, c = input_shape
    channels = tuple(int(ch) for ch in channels)
    if t < 2 ** len(channels):
        raise ValueError(f"input length T={t} is too short for {len(channels)} poolings")

    def init(key):
        keys = jax.random.split(key, len(channels) + 1)
        c_ins = (c, *channels[:-1])
        params = {f"conv_{i}": layers.conv1d_init(keys[i], kernel, ci, co)
                  for i, (ci, co) in enumerate(zip(c_ins, channels))}
        params["out"] = layers.dense_init(keys[-1], channels[-1], num_classes)
        return params

    def apply(params, x):
        for i in range(len(channels)):
            x = layers.max_pool1d(jax.nn.relu(layers.conv1d(params[f"conv_{i}"], x, kernel)))
        return layers.dense(params["out"], x.mean(axis=1))

    return Model("conv1d", init, apply, tuple(input_shape), num_classes)


MODELS = {"logreg": logistic_regression, "mlp": mlp, "cnn": cnn, "conv1d": conv1d_net}


def get_model(name: str, input_shape: Sequence[int], num_classes: int, **kwargs) -> Model:
    """Build a model by name (``logreg``, ``mlp``, ``cnn``, ``conv1d``) for the given data shape."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](tuple(input_shape), int(num_classes), **kwargs)
