"""The model interface: a named init/apply pair with its training loss."""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class DenseLayer(NamedTuple):
    """One layer of a dense stack: ``a_out = activation(a_in @ params[name]["w"] + params[name]["b"])``.

    ``activation`` is a name in ``edgejax.models.zoo.ACTIVATIONS`` or ``None`` (the output layer).
    """

    name: str
    d_in: int
    d_out: int
    activation: str | None = None


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Softmax cross-entropy averaged over the samples with weight > 0.

    ``sum_b w_b CE(logits_b, y_b) / max(sum_b w_b, 1)``: padded slots of a partial
    batch carry weight 0 and do not count.
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1.0)


def weighted_correct(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted count of correct arg-max predictions."""
    return jnp.sum(weights * (jnp.argmax(logits, axis=-1) == labels))


def weighted_squared_error(outputs: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Half the squared error summed over output dimensions, averaged over samples with weight > 0:
    ``sum_b w_b ||f(x_b) - y_b||^2 / 2 / max(sum_b w_b, 1)`` (targets ``[B]`` or ``[B, d_out]``)."""
    targets = targets.reshape(outputs.shape).astype(outputs.dtype)
    losses = 0.5 * jnp.sum((outputs - targets) ** 2, axis=-1)
    return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1.0)


class Loss(NamedTuple):
    """A training loss ``fn(outputs [B, d_out], labels [B, ...], weights [B]) -> scalar`` (the
    weighted mean over samples with weight > 0) and, for classifiers, ``correct(outputs,
    labels, weights) -> weighted count`` (``None``: no accuracy is reported)."""

    name: str
    fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    correct: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None


CROSS_ENTROPY = Loss("cross_entropy", weighted_cross_entropy, weighted_correct)
SQUARED_ERROR = Loss("squared_error", weighted_squared_error, None)


class Model(NamedTuple):
    """A model as two pure functions and its loss.

    ``init(key) -> params`` builds one node's parameters; ``apply(params, x) -> logits``
    maps a batch ``x [B, *input_shape]`` to ``[B, num_classes]``.  Both are plain
    functions of pytrees, so ``jax.vmap`` over a leading node axis of ``params``
    gives every node its own model.  ``Model`` is hashable and is static
    configuration: a different model is a different compiled program.

    ``layers``: optional static description of ``apply`` as a stack of dense layers
    (a tuple of ``DenseLayer``, first to last; the input is ``x`` flattened to
    ``[B, layers[0].d_in]``).  Where given it must describe ``apply`` exactly: the
    ``shared_base`` local-update execution computes the model from it (see
    ``edgejax.core.shared_base``).  ``None`` for models that are not dense stacks
    (convolutional nets).

    ``loss``: the training loss (default ``CROSS_ENTROPY``; ``SQUARED_ERROR`` for
    regression, where ``num_classes`` is the output dimension and no accuracy is reported).
    """

    name: str
    init: Callable[[jax.Array], dict]
    apply: Callable[[dict, jax.Array], jax.Array]
    input_shape: tuple[int, ...]
    num_classes: int
    layers: tuple[DenseLayer, ...] | None = None
    loss: Loss = CROSS_ENTROPY


def num_parameters(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def num_bytes(params) -> int:
    """Bytes of a parameter pytree as stored (what one full model upload costs)."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
