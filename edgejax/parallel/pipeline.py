"""GPipe pipeline parallelism for dense-stack models with ``jax.shard_map`` on a ``stages`` mesh axis.

GPipe (Huang et al., NeurIPS 2019, "GPipe: Efficient Training of Giant Neural Networks using
Pipeline Parallelism"): the layers are split into ``S`` contiguous stages, one per device, and
a minibatch of ``B`` samples into ``M`` microbatches.  On tick ``t = 0 .. M + S - 2`` stage
``s`` runs the forward pass of microbatch ``t - s`` (idle, i.e. computing on masked-out
filler, when that is outside ``0 .. M-1``) and sends its output activations to stage ``s + 1``
with ``ppermute``.  The backward pass is ``jax.grad`` of this schedule: the transpose of every
``ppermute`` sends the activation gradients from stage ``s + 1`` back to ``s``, in reverse tick
order, which is GPipe's backward schedule (every microbatch's activations are kept).

Uniform shapes under ``shard_map`` (exact padding): every stage holds ``Lmax`` layer slots
(the most layers any stage has) of ``W x W`` weights, ``W`` the widest layer input or output.
A layer's weights sit in the top-left corner of its slot with zeros elsewhere, activations
are zero-padded to ``W``, and a slot a stage does not use passes its input through
unchanged.  A padded output unit computes ``act(0)`` and a padded weight row multiplies it by
exactly zero, so the real units and the loss are those of the unpartitioned model; the
gradients of the real entries are the model's, and the padding's are dropped.  The price is
compute: ``Lmax W^2`` multiply-adds per sample per stage, however narrow its layers.

Loss: ``L = sum_b w_b l_b / max(sum_b w_b, 1)`` over the whole minibatch, with ``l_b =
loss.fn(f(x_b)[None], y_b[None], [1])`` the per-sample loss: exactly ``loss.fn(f(x), y, w)``
for losses of that weighted-mean form (both of ``edgejax.models.base``'s).  A batch that
``M`` does not divide is padded with weight-0 samples (which add exactly nothing).

Parameters enter the pipeline in the model's own layout, replicated over ``stages``; every
stage takes its layers out of them, and autodiff transposes that replication into a ``psum``
over ``stages``, which assembles the full gradient (each stage contributes its own layers'
gradients and exact zeros elsewhere).  That is the gradient we want here, unlike the pitfall in
Within one pipeline every stage computes part of one loss.  Other mesh axes (data
replicas) must see the parameters as device-varying (``jax.lax.pcast``) before this is called.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from edgejax.models.base import Model
from edgejax.models.zoo import ACTIVATIONS
from edgejax.parallel.stages import check_stage_of_layer, dense_layers, plan_stages

STAGES = "stages"


def resolve_stages(model: Model, stage_of_layer, num_stages: int) -> tuple[int, ...]:
    """``stage_of_layer`` checked (``stages.check_stage_of_layer``); ``None``: the layers split over
    ``num_stages`` stages with balanced training FLOPs (``plan_stages`` on equal devices)."""
    if stage_of_layer is None:
        return plan_stages(model, np.ones(num_stages), batch_size=1, microbatches=1, bandwidth=math.inf).stage_of_layer
    return check_stage_of_layer(model, stage_of_layer, num_stages)


def stage_value_and_grad(model: Model, stage_of_layer, microbatches: int, num_stages: int):
    """``(params, x, y, w) -> (loss, grads)`` of the GPipe schedule, to be called inside a
    ``shard_map`` whose ``stages`` axis has ``num_stages`` devices (see the module docstring).

    ``params`` in the model's layout, replicated over ``stages``; the loss and the gradients
    come back replicated over ``stages``, equal to ``jax.value_and_grad`` of
    ``model.loss.fn(model.apply(params, x), y, w)``.
    """
    layers = dense_layers(model)
    stages = resolve_stages(model, stage_of_layer, num_stages)
    if not isinstance(microbatches, (int, np.integer)) or microbatches < 1:
        raise ValueError(f"microbatches must be a positive integer; got {microbatches!r}")
    if layers[0].d_in != math.prod(model.input_shape) or layers[-1].d_out != model.num_classes:
        raise ValueError(f"model {model.name!r}: its layers map {layers[0].d_in} -> {layers[-1].d_out} features, "
                         f"but its input has {math.prod(model.input_shape)} and it has {model.num_classes} outputs")
    n_stages, m_count = int(num_stages), int(microbatches)
    width = max(max(layer.d_in, layer.d_out) for layer in layers)
    per_stage = [[i for i, s in enumerate(stages) if s == stage] for stage in range(n_stages)]
    slots = max(len(ids) for ids in per_stage)
    table = [ids + [-1] * (slots - len(ids)) for ids in per_stage]          # [S, Lmax] layer index or -1
    used = sorted({layer.activation for layer in layers if layer.activation is not None})
    codes = np.array([[0 if i < 0 or layers[i].activation is None else 1 + used.index(layers[i].activation)
                       for i in row] for row in table], np.int32)
    active = np.array([[i >= 0 for i in row] for row in table])
    perm = [(s, s + 1) for s in range(n_stages - 1)]
    loss_fn, num_out = model.loss.fn, layers[-1].d_out

    def slot_params(params, i, dtype):
        if i < 0:
            return jnp.zeros((width, width), dtype), jnp.zeros((width,), dtype)
        layer = layers[i]
        entry = params[layer.name]
        return (jnp.pad(entry["w"], ((0, width - layer.d_in), (0, width - layer.d_out))),
                jnp.pad(entry["b"], (0, width - layer.d_out)))

    def run_stage(a, w_stage, b_stage, code_stage, active_stage):
        def slot(a, inputs):
            w, b, code, on = inputs
            z = a @ w + b
            out = z
            for k, name in enumerate(used):
                out = jnp.where(code == k + 1, ACTIVATIONS[name](z), out)
            return jnp.where(on, out, a), None

        return jax.lax.scan(slot, a, (w_stage, b_stage, code_stage, active_stage))[0]

    def per_sample_loss(out, y):
        return jax.vmap(lambda o, t: loss_fn(o[None], t[None], jnp.ones((1,), o.dtype)))(out, y)

    def loss(params, x, y, w):
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        stage = jax.lax.axis_index(STAGES)
        padded = [[slot_params(params, i, dtype) for i in row] for row in table]
        w_all = jnp.stack([jnp.stack([p[0] for p in row]) for row in padded])   # [S, Lmax, W, W]
        b_all = jnp.stack([jnp.stack([p[1] for p in row]) for row in padded])   # [S, Lmax, W]
        w_stage, b_stage = w_all[stage], b_all[stage]
        code_stage, active_stage = jnp.asarray(codes)[stage], jnp.asarray(active)[stage]
        batch = x.shape[0]
        extra = -batch % m_count
        size = (batch + extra) // m_count
        a0 = jnp.pad(x.reshape(batch, layers[0].d_in).astype(dtype), ((0, extra), (0, width - layers[0].d_in)))
        xs = a0.reshape(m_count, size, width)
        ys = jnp.pad(y, ((0, extra),) + ((0, 0),) * (y.ndim - 1)).reshape(m_count, size, *y.shape[1:])
        ws = jnp.pad(w, (0, extra)).reshape(m_count, size)
        first, last = stage == 0, stage == n_stages - 1

        def tick(carry, t):
            received, total = carry
            a = jnp.where(first, xs[jnp.minimum(t, m_count - 1)], received)
            out = run_stage(a, w_stage, b_stage, code_stage, active_stage)
            k = t - (n_stages - 1)                       # the microbatch the last stage finishes now
            kc = jnp.maximum(k, 0)
            part = jnp.sum(ws[kc] * per_sample_loss(out[:, :num_out], ys[kc]))
            total = total + jnp.where(last & (k >= 0), part, 0.0)
            sent = jax.lax.ppermute(out, STAGES, perm) if perm else out
            return (sent, total), None

        start = jax.lax.pcast((jnp.zeros((size, width), dtype), jnp.zeros((), dtype)), STAGES, to="varying")
        (_, total), _ = jax.lax.scan(tick, start, jnp.arange(m_count + n_stages - 1))
        return jax.lax.psum(total, STAGES) / jnp.maximum(jnp.sum(w), 1.0)

    return jax.value_and_grad(loss)


def pipeline_value_and_grad(model: Model, mesh: Mesh, stage_of_layer=None, microbatches: int = 1):
    """``(params, x, y, w) -> (loss, grads)``: the GPipe pipeline of ``model`` over the mesh's
    ``stages`` axis (``S`` = its size), equal to ``jax.value_and_grad`` of
    ``model.loss.fn(model.apply(params, x), y, w)`` (the weighted mean loss) to rounding.

    ``stage_of_layer``: the stage of every layer (``None``: balanced training FLOPs; or a
    ``StagePlan.stage_of_layer``); ``microbatches``: ``M``.  Everything is replicated over the
    mesh's other axes.  Jit the result.
    """
    if STAGES not in mesh.axis_names:
        raise ValueError(f"the mesh needs a {STAGES!r} axis; got axes {mesh.axis_names}")
    inner = stage_value_and_grad(model, stage_of_layer, microbatches, mesh.shape[STAGES])
    return jax.shard_map(inner, mesh=mesh, in_specs=(P(), P(), P(), P()), out_specs=(P(), P()))
