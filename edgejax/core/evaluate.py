"""Evaluation of a model on the global test set and on every node's local test split."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from edgejax.core.local import map_nodes
from edgejax.data.federated import FederatedData, NodeData
from edgejax.models.base import Model

NODE_PERCENTILES = (10, 50, 90)
WORST_FRACTION = 0.1   # "worst 10%": the mean over the lowest ceil(0.1 N) nodes


def _sums(model: Model, params, x, y, w):
    """(sum of weighted losses, weighted correct count) of one batch (for a model without
    an accuracy, e.g. regression, the second is the loss sum too)."""
    outputs = model.apply(params, x)
    loss = model.loss.fn(outputs, y, w) * jnp.sum(w)
    correct = loss if model.loss.correct is None else model.loss.correct(outputs, y, w)
    return loss, correct


def _node_accuracies(model: Model, params, local: NodeData, group_size, per_node: bool) -> jax.Array:
    """Accuracy (for models without one: loss) on each node's local test split of ``params``
    (shared) or of node i's own ``params[i]`` (``per_node``); NaN for nodes without a split."""

    def accuracy(args):
        node_params, x, y, count = args
        w = (jnp.arange(x.shape[0]) < count).astype(jnp.float32)
        return _sums(model, node_params, x, y, w)[1] / jnp.maximum(count, 1)

    if per_node:
        acc = map_nodes(accuracy, (params, local.x, local.y, local.count), group_size)
    else:
        acc = map_nodes(lambda a: accuracy((params, *a)), (local.x, local.y, local.count), group_size)
    return jnp.where(local.count > 0, acc, jnp.nan)


def worst_mean(values: jax.Array, fraction: float = WORST_FRACTION) -> jax.Array:
    """The mean of the lowest ``ceil(fraction N)`` values among those not NaN (all of them when
    fewer are valid)."""
    valid = ~jnp.isnan(values)
    k = max(1, math.ceil(fraction * values.shape[0]))
    low = jnp.sort(jnp.where(valid, values, jnp.inf))[:k]   # NaN sorted last
    take = jnp.arange(k) < jnp.maximum(jnp.minimum(jnp.sum(valid), k), 1)
    return jnp.sum(jnp.where(take, low, 0.0)) / jnp.sum(take)


def node_distribution(prefix: str, values: jax.Array) -> dict:
    """Over the nodes, ignoring NaN (a node without a split): ``_mean``, ``_min``, ``_worst10``
    (the mean of the worst ``ceil(10% N)``), the percentiles ``_p10``, ``_p50``, ``_p90`` and
    ``_std`` (the spread)."""
    out = {f"{prefix}_mean": jnp.nanmean(values), f"{prefix}_min": jnp.nanmin(values),
           f"{prefix}_worst10": worst_mean(values)}
    for q in NODE_PERCENTILES:
        out[f"{prefix}_p{q}"] = jnp.nanpercentile(values, q)
    return out | {f"{prefix}_std": jnp.nanstd(values)}


def evaluate(model: Model, params, data: FederatedData, group_size: int | None = None,
             node_params=None) -> dict:
    """Metrics of a model and, optionally, of every node's own model.

    * ``test_loss``, ``test_accuracy``: ``params`` on the global test set;
    * ``node_accuracy_{mean,min,worst10,p10,p50,p90,std}``: ``params`` on each node's local
      test split (``node_distribution``);
    * with ``node_params`` (a pytree with a leading node axis, e.g. decentralized
      training): ``own_accuracy_*``, node i's own model on node i's local test split.

    A model whose loss reports no accuracy (``Model.loss.correct is None``, regression)
    gets ``test_loss`` and the per-node loss distributions ``node_loss_*`` / ``own_loss_*``.
    Metrics are in the parameters' float dtype (float64 under ``jax.enable_x64``).
    """
    test = data.test
    batch = min(test.x.shape[0], 1024)
    shape = (test.x.shape[0] // batch, batch)
    batches = (test.x.reshape(*shape, *test.x.shape[1:]), test.y.reshape(*shape, *test.y.shape[1:]), test.mask.reshape(shape))
    loss_sums, correct = jax.lax.map(lambda b: _sums(model, params, *b), batches)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    total = jnp.maximum(jnp.sum(test.mask), 1.0).astype(dtype)
    kind = "accuracy" if model.loss.correct is not None else "loss"
    metrics = {"test_loss": jnp.sum(loss_sums) / total}
    if kind == "accuracy":
        metrics["test_accuracy"] = jnp.sum(correct).astype(dtype) / total
    if data.local_test is None:   # host-resident data (edgejax.data.host): the global test set only
        return metrics
    metrics |= node_distribution(f"node_{kind}", _node_accuracies(model, params, data.local_test, group_size, False))
    if node_params is not None:
        own = _node_accuracies(model, node_params, data.local_test, group_size, True)
        metrics |= node_distribution(f"own_{kind}", own)
    return metrics
