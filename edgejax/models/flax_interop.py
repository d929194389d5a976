"""Flax modules as edgejax models: ``from_flax(module, example_input)``.

A ``flax.linen`` module or a ``flax.nnx`` module becomes a :class:`~edgejax.models.base.Model`
(an ``init(key) -> params`` / ``apply(params, x) -> outputs`` pair over a plain nested dict of
arrays), so it vmaps over the node axis like the zoo's models.  Only trainable parameters
are carried: a module with other state (batch-norm statistics, ``nnx`` RNG streams of
dropout, caches, any linen collection besides ``params``) is refused with a ``ValueError``
naming that state, because such state changes while training and edgejax keeps none of it
per node.

Convolutions: ``jax.vmap`` over ``lax.conv`` lowers to a grouped convolution, which runs far
slower per node than the same FLOPs as matrix products; a module whose forward pass contains
a convolution triggers a warning pointing to the zoo's GEMM-form models (``ej.models.cnn``,
``ej.models.conv1d_net``, ``edgejax.models.layers.conv2d``).
"""
from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.models.base import CROSS_ENTROPY, Loss, Model

CONV_WARNING = ("{name}: the forward pass contains a convolution (lax.conv_general_dilated); vmapped over nodes "
                "it becomes a grouped convolution, which is slow (12x slower than the same FLOPs as GEMMs on an "
                "H100). For many nodes use a GEMM-form model from the zoo (ej.models.cnn, ej.models.conv1d_net) "
                "or the layers in edgejax.models.layers (conv2d: shifted slices + one matmul).")


def _is_linen(module) -> bool:
    from flax import linen
    return isinstance(module, linen.Module)


def _is_nnx(module) -> bool:
    from flax import nnx
    return isinstance(module, nnx.Module)


def _contains_conv(jaxpr) -> bool:
    """Whether a (closed) jaxpr or any jaxpr nested in its equations holds a convolution."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            return True
        for value in eqn.params.values():
            for sub in (value if isinstance(value, (tuple, list)) else (value,)):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None and _contains_conv(getattr(inner, "jaxpr", inner)):
                    return True
    return False


def _plain(tree):
    """Nested dicts of arrays (FrozenDict and nnx.State unwrapped)."""
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def _linen_pair(module, example, apply_kwargs):
    variables = jax.eval_shape(lambda k: module.init(k, example, **apply_kwargs), jax.random.PRNGKey(0))
    other = sorted(set(variables) - {"params"})
    if other:
        raise ValueError(
            f"from_flax: {type(module).__name__} has the variable collection(s) {other} besides 'params' "
            f"(e.g. 'batch_stats' of nn.BatchNorm); edgejax carries parameters only and keeps no mutable state "
            "per node. Build the module without them (e.g. nn.LayerNorm or nn.GroupNorm instead of nn.BatchNorm).")

    def init(key):
        return _plain(module.init(key, example, **apply_kwargs)["params"])

    def apply(params, x):
        return module.apply({"params": params}, x, **apply_kwargs)

    return init, apply


def _nnx_pair(module, example, apply_kwargs):
    from flax import nnx

    built = module if isinstance(module, nnx.Module) else None

    def split(m):
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)
        extra = [(".".join(map(str, path)), type(v).__name__) for path, v in nnx.to_flat_state(rest)]
        if extra:
            listed = ", ".join(f"{p} ({t})" for p, t in extra)
            raise ValueError(
                f"from_flax: {type(m).__name__} holds state besides nnx.Param: {listed}; edgejax carries "
                "parameters only (BatchStat of nnx.BatchNorm and the RNG streams of nnx.Dropout change during "
                "training and would not be kept per node). Build the module without them (e.g. nnx.LayerNorm "
                "instead of nnx.BatchNorm, no dropout).")
        return graphdef, params

    if built is None:   # a factory rngs -> nnx.Module: a fresh draw from every key
        built = module(nnx.Rngs(0))
        if not isinstance(built, nnx.Module):
            raise TypeError(f"from_flax: the function passed as module must return an nnx.Module, got "
                            f"{type(built).__name__}")
        graphdef, template = split(built)

        def init(key):
            return _plain(nnx.to_pure_dict(split(module(nnx.Rngs(key)))[1]))
    else:               # an instance: its weights are the initial model, whatever the key
        graphdef, template = split(built)
        start = _plain(nnx.to_pure_dict(template))

        def init(key):
            return jax.tree_util.tree_map(jnp.asarray, start)

    def apply(params, x):
        state = jax.tree_util.tree_map(lambda a: a, template)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state)(x, **apply_kwargs)

    return init, apply, type(built).__name__


def from_flax(module: Any, example_input, num_classes: int | None = None, *, loss: Loss = CROSS_ENTROPY,
              name: str | None = None, apply_kwargs: dict | None = None, warn_conv: bool = True) -> Model:
    """An edgejax ``Model`` from a ``flax.linen`` or ``flax.nnx`` module (parameters only).

    Args:
      module: a ``flax.linen.Module`` (``init(key)`` is ``module.init(key, x)["params"]``, a fresh
        draw per key); a ``flax.nnx.Module`` instance (its current weights are the initial model:
        every key gives the same start); or a function ``rngs -> nnx.Module`` (e.g.
        ``lambda rngs: MyNet(rngs=rngs)``: ``init(key)`` builds it with ``nnx.Rngs(key)``).
      example_input: one batch ``[B, *input_shape]`` (any values; its shape and dtype are used).
      num_classes: the output width; default: read from the module's output ``[B, num_classes]``.
      loss: the training loss (``CROSS_ENTROPY``; ``SQUARED_ERROR`` for regression).
      name: the model's name (default ``flax_<ClassName>``).
      apply_kwargs: keyword arguments passed to every call of the module (e.g. ``{"train": False}``).
      warn_conv: warn when the forward pass contains a convolution (slow under ``vmap``).

    ``params`` are plain nested dicts of arrays (the module's own parameter names), so every
    algorithm, aggregation and byte count works on them unchanged.  Raises ``ValueError`` when the
    module holds state besides parameters (naming it), or its output is not ``[B, num_classes]``.
    """
    example = jnp.asarray(example_input)
    if example.ndim < 1 or example.shape[0] < 1:
        raise ValueError(f"from_flax: example_input must be a batch [B, *input_shape] with B >= 1, got "
                         f"shape {example.shape}")
    example = jnp.zeros((1, *example.shape[1:]), example.dtype)
    apply_kwargs = dict(apply_kwargs or {})
    if _is_linen(module):
        init, apply = _linen_pair(module, example, apply_kwargs)
        cls = type(module).__name__
    elif _is_nnx(module) or callable(module):
        init, apply, cls = _nnx_pair(module, example, apply_kwargs)
    else:
        raise TypeError(f"from_flax: expected a flax.linen.Module, a flax.nnx.Module or a function rngs -> "
                        f"nnx.Module, got {type(module).__name__}")
    name = name or f"flax_{cls}"
    from flax import errors

    params = jax.eval_shape(init, jax.random.PRNGKey(0))
    try:
        out = jax.eval_shape(apply, params, example)
    except errors.InvalidRngError as err:
        raise ValueError(
            f"from_flax: {name} asks for a random stream when applied ({err}); edgejax calls apply(params, x) "
            "without RNGs. Build it deterministic (e.g. nn.Dropout(deterministic=True)) or pass the module's own "
            "flag through apply_kwargs.") from None
    if out.ndim != 2 or out.shape[0] != 1:
        raise ValueError(f"from_flax: {name} must map [B, *input_shape] to [B, num_classes]; for input shape "
                         f"{tuple(example.shape)} it returned {tuple(out.shape)}")
    if num_classes is None:
        num_classes = int(out.shape[1])
    elif int(num_classes) != out.shape[1]:
        raise ValueError(f"from_flax: num_classes={num_classes} but {name} returns {out.shape[1]} outputs")
    if warn_conv and _contains_conv(jax.make_jaxpr(apply)(params, example).jaxpr):
        warnings.warn(CONV_WARNING.format(name=name), stacklevel=2)
    return Model(name, init, apply, tuple(int(s) for s in np.shape(example)[1:]), int(num_classes), loss=loss)
