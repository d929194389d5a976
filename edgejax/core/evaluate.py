"""Evaluation of a model on the global test set and on every node's local test split."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from edgejax.core.local import map_nodes
from edgejax.core.nodedata import FederatedData
from edgejax.models.base import Model, weighted_correct, weighted_cross_entropy

NODE_PERCENTILES = (10, 50, 90)


def _sums(model: Model, params, x, y, w):
    """(sum of weighted losses, weighted correct count) of one batch."""
    logits = model.apply(params, x)
    return weighted_cross_entropy(logits, y, w) * jnp.sum(w), weighted_correct(logits, y, w)


def evaluate(model: Model, params, data: FederatedData, group_size: int | None = None) -> dict:
    """Test loss and accuracy of ``params`` on the global test set, and the distribution of its
    accuracy over the nodes' local test splits (mean, min and percentiles over nodes that have
    a local test split; NaN when none has one)."""
    test = data.test
    batch = min(test.x.shape[0], 1024)
    shape = (test.x.shape[0] // batch, batch)
    batches = (test.x.reshape(*shape, *test.x.shape[1:]), test.y.reshape(shape), test.mask.reshape(shape))
    loss_sums, correct = jax.lax.map(lambda b: _sums(model, params, *b), batches)
    total = jnp.maximum(jnp.sum(test.mask), 1.0)

    local = data.local_test

    def node_accuracy(args):
        x, y, count = args
        w = (jnp.arange(x.shape[0]) < count).astype(jnp.float32)
        return _sums(model, params, x, y, w)[1] / jnp.maximum(count, 1)

    node_acc = map_nodes(node_accuracy, (local.x, local.y, local.count), group_size)
    node_acc = jnp.where(local.count > 0, node_acc, jnp.nan)
    metrics = {
        "test_loss": jnp.sum(loss_sums) / total,
        "test_accuracy": jnp.sum(correct) / total,
        "node_accuracy_mean": jnp.nanmean(node_acc),
        "node_accuracy_min": jnp.nanmin(node_acc),
    }
    for q in NODE_PERCENTILES:
        metrics[f"node_accuracy_p{q}"] = jnp.nanpercentile(node_acc, q)
    return metrics
