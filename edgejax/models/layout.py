"""The GEMM-layer chain of a model: which parameter entries belong to which units, and FLOPs.

Sub-model methods (HeteroFL's narrow models, class-specific sub-networks) keep some of the
hidden units of every layer.  In this zoo every weight-carrying layer is a GEMM
``z = a W + b`` with ``W [rows, cols]`` (dense layers, and convolutions in the GEMM form of
``edgejax.models.layers``), and the layers form a chain: layer ``l``'s output units are the
channels layer ``l + 1`` reads.  Row ``r`` of ``W`` reads input channel ``r mod c_in``, where
``c_in`` is the previous layer's ``cols`` (the first layer reads the data and has no
hidden input):

* a ``k x k`` convolution's rows are ``(kernel position, channel)`` with the channel
  fastest (``_patches2d`` concatenates shifted ``[.., C]`` slices), so row ``r`` is channel
  ``r mod C``;
* a dense layer after a flatten of ``[H, W, C]`` reads ``(y, x, channel)``, again with the
  channel fastest; a dense layer after a dense layer or a global mean reads channel ``r``.

``gemm_layout(model)`` finds the chain: the top-level entries ``{"w": [rows, cols], "b":
[cols]}`` of the parameters in natural order (``conv_0, conv_1, dense, out``; ``dense_0 ..
dense_10``), checks that every ``rows`` is a multiple of the previous ``cols``, and, from
the model's jaxpr, how many output positions each layer's GEMM computes per sample
(``H * W`` for a 2-D convolution, ``T`` for a 1-D one, 1 for a dense layer).

FLOPs (``forward_flops``): ``2 * positions_l * (held entries of W_l)`` per sample summed
over layers, i.e. two FLOPs per multiply-accumulate of the GEMMs; biases, activations and
pooling are not counted.  A training step costs three forward passes per sample (the
forward GEMMs, the input-gradient GEMMs and the weight-gradient GEMMs: ``TRAIN_FACTOR``).
"""
from __future__ import annotations

import math
import re
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from edgejax.core.state import default_float
from edgejax.models.base import Model

TRAIN_FACTOR = 3


class GemmLayer(NamedTuple):
    """One GEMM layer of the chain: ``params[name] = {"w": [rows, cols], "b": [cols]}``;
    ``c_in``: the input channels it reads (row ``r`` reads channel ``r mod c_in``; ``0`` for
    the first layer, whose input is the data); ``positions``: output positions per sample."""

    name: str
    rows: int
    cols: int
    c_in: int
    positions: int


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def gemm_layout(model: Model, order: Sequence[str] | None = None) -> tuple[GemmLayer, ...]:
    """The model's GEMM chain, first layer to last (see the module docstring).

    ``order``: the layer names from input to output, when the natural order of the names is
    not the chain's order.  Raises ``ValueError`` naming the layer when the parameters are
    not such a chain.
    """
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    names = sorted(params, key=_natural_key) if order is None else list(order)
    if sorted(names) != sorted(params):
        raise ValueError(f"order {names} must list every top-level parameter entry {sorted(params)} once")
    positions = _gemm_positions(model, params)
    layers, c_prev = [], 0
    for name in names:
        entry = params[name]
        if not (isinstance(entry, dict) and set(entry) == {"w", "b"} and entry["w"].ndim == 2
                and entry["b"].shape == entry["w"].shape[1:]):
            raise ValueError(f"parameter entry {name!r} is not a GEMM layer {{'w': [rows, cols], 'b': [cols]}}; "
                             f"got {jax.tree_util.tree_map(lambda a: a.shape, entry)}")
        rows, cols = entry["w"].shape
        if c_prev and rows % c_prev:
            raise ValueError(f"layer {name!r} has {rows} rows, not a multiple of the {c_prev} channels of the "
                             "layer before it: the parameters are not a chain in this order (pass order=...)")
        layers.append(GemmLayer(name, rows, cols, c_prev, positions[name]))
        c_prev = cols
    return tuple(layers)


def check_layout(layout: tuple[GemmLayer, ...], params) -> None:
    """Raise ``ValueError`` naming the first layer of ``layout`` that ``params`` (one model) lacks
    or holds with another shape, or a parameter entry the layout does not list."""
    for layer in layout:
        entry = params.get(layer.name) if isinstance(params, dict) else None
        shapes = None
        if isinstance(entry, dict):
            shapes = (tuple(jnp.shape(entry.get("w"))), tuple(jnp.shape(entry.get("b"))))
        if shapes != ((layer.rows, layer.cols), (layer.cols,)):
            raise ValueError(f"the sub-models were built for a layer {layer.name!r} with w [{layer.rows}, "
                             f"{layer.cols}], but the simulation's model has {shapes}: build the scheme from the "
                             "same model")
    extra = sorted(set(params) - {layer.name for layer in layout})
    if extra:
        raise ValueError(f"the simulation's model has parameter entries {extra} that the sub-models' layout lacks: "
                         "build the scheme from the same model")


def _gemm_positions(model: Model, params) -> dict[str, int]:
    """Output positions per sample of each layer's GEMM, read from the jaxpr of ``apply`` (batch 1)."""
    x = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
    closed = jax.make_jaxpr(model.apply)(params, x)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    weight_vars = {}
    for var, (path, _) in zip(closed.jaxpr.invars, leaves):
        keys = [getattr(p, "key", None) for p in path]
        if len(keys) == 2 and keys[1] == "w":
            weight_vars[var] = keys[0]
    found: dict[str, int] = {}
    for eqn in closed.jaxpr.eqns:
        if eqn.primitive.name != "dot_general" or eqn.invars[1] not in weight_vars:
            continue
        name = weight_vars[eqn.invars[1]]
        if name in found:
            raise ValueError(f"the weight of layer {name!r} is used by more than one matrix product")
        found[name] = math.prod(eqn.invars[0].aval.shape[:-1])
    missing = sorted(set(weight_vars.values()) - set(found))
    if missing:
        raise ValueError(f"layers {missing} are not used as the right operand of a matrix product in "
                         f"{model.name}.apply; gemm_layout needs GEMM layers (edgejax.models.layers)")
    return found


def layer_mask(layer: GemmLayer, keep_in, keep_out, group_in=None, group_out=None, dtype=jnp.float32) -> dict:
    """The 0/1 mask ``{"w": [rows, cols], "b": [cols]}`` of one layer.

    ``keep_in [c_in]`` / ``keep_out [cols]``: which input channels and output units the
    sub-model holds (``None``: all; the first layer's input is always all).  Entry
    ``W[r, c]`` is held iff ``keep_in[r mod c_in]`` and ``keep_out[c]``, and, with groups,
    ``group_in[r mod c_in] < 0 or group_in[r mod c_in] == group_out[c]`` (an input unit of
    group ``-1``, a shared trunk unit, feeds every output; a grouped unit only its own
    group's outputs).  ``b[c]`` is held iff ``keep_out[c]``.  Arrays may be traced.
    """
    channel = jnp.arange(layer.rows) % max(layer.c_in, 1)
    rows = jnp.ones((layer.rows,), bool) if keep_in is None or layer.c_in == 0 else jnp.asarray(keep_in)[channel]
    cols = jnp.ones((layer.cols,), bool) if keep_out is None else jnp.asarray(keep_out, bool)
    w = rows[:, None] & cols[None, :]
    if group_in is not None and layer.c_in:
        g_in = jnp.asarray(group_in)[channel]
        w = w & ((g_in[:, None] < 0) | (g_in[:, None] == jnp.asarray(group_out)[None, :]))
    return {"w": w.astype(dtype), "b": cols.astype(dtype)}


def forward_flops(layout: tuple[GemmLayer, ...], mask_params) -> jax.Array:
    """Forward FLOPs per sample of the sub-model held by ``mask_params`` (one node's mask, or
    ``[K, ...]`` stacked: one value per node): ``sum_l 2 * positions_l * sum(mask_l["w"] != 0)``
    (in the default float dtype: float32 rounds counts above 2^24)."""
    total = 0.0
    for layer in layout:
        held = jnp.sum(mask_params[layer.name]["w"] != 0, axis=(-2, -1)).astype(default_float())
        total = total + 2.0 * layer.positions * held
    return total


def full_forward_flops(layout: tuple[GemmLayer, ...]) -> float:
    """Forward FLOPs per sample of the full model: ``sum_l 2 * positions_l * rows_l * cols_l``."""
    return float(sum(2 * layer.positions * layer.rows * layer.cols for layer in layout))


def chain_mask(layout: tuple[GemmLayer, ...], keep_units, groups=None, dtype=jnp.float32) -> dict:
    """One node's 0/1 parameter mask over the whole chain (``layer_mask`` per layer).

    ``keep_units[l]``: the output units of layer ``l`` the node holds (``[cols_l]`` bool, or
    ``None`` for all); layer ``l + 1`` reads exactly those as its held input channels.
    ``groups[l]``: the group of each output unit of layer ``l`` (``[cols_l]`` int, ``-1`` for
    shared units), or ``groups=None`` for no grouping.
    """
    mask, keep_in, group_in = {}, None, None
    for l, layer in enumerate(layout):
        group_out = None if groups is None else groups[l]
        mask[layer.name] = layer_mask(layer, keep_in, keep_units[l], group_in, group_out, dtype)
        keep_in, group_in = keep_units[l], group_out
    return mask
