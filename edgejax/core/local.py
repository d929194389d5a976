"""The local update: every node runs minibatch steps of an optax optimizer on its own data.

One node's update is a ``lax.scan`` over at most ``max_steps`` steps; the cohort is
mapped over with ``jax.vmap`` (or ``lax.map`` in groups of nodes, see
``LocalTraining.group_size``).  Minibatches are drawn on the device:

* each epoch is a fresh uniform shuffle of the node's ``n_i`` samples (sampling
  without replacement); batches never straddle epochs, so the last batch of an
  epoch holds ``n_i mod B`` samples (its padded slots carry weight 0);
* ``epochs=E``: node ``i`` runs ``E * ceil(n_i / B)`` steps;
  ``steps=K``: every node runs ``K`` steps (a node with ``n_i < B`` uses all its
  samples in every step);
* a per-node ``step_budget`` (partial work, from the ``RoundPlan``) caps the steps;
  a step past the budget is masked out: parameters and optimizer state stay put.

The local objective is the model's own loss (``Model.loss``) on the minibatch plus the
``LocalTerm``s the algorithm adds (FedProx's proximal pull, SCAFFOLD's correction,
FedDyn's linear and quadratic terms, ...), summed.  How the cohort's updates are
computed (``per_node`` copies or the ``shared_base`` identity) is an execution strategy,
see ``edgejax.core.execution``.

Sub-models (per-node parameter masks, ``SubModelMask``): a node may train only part of the
full-size parameter layout (HeteroFL's narrow models, class-specific sub-networks).  Under
``vmap`` every node keeps the full shapes and a 0/1 mask of the same shapes says which
entries it holds: the forward pass uses ``params * mask`` and every step changes only held
entries (``w <- where(mask, w + u, w)``, ``u`` the optimizer's update), so the entries outside
the mask stay exactly at their start value whatever the optimizer, weight decay or local
terms would do to them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from edgejax.core.state import tree_where
from edgejax.core.validation import check_choice
from edgejax.models.base import Model

LOCAL_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adagrad", "rmsprop")
EXECUTIONS = ("per_node", "shared_base", "auto")
WEIGHT_DECAY = (False, True, "all", "weights")

_OPTIMIZER_HPARAMS = {
    "sgd": {"client_lr": 0.05},
    "momentum": {"client_lr": 0.05, "client_momentum": 0.9},
    "nesterov": {"client_lr": 0.05, "client_momentum": 0.9},
    "adam": {"client_lr": 1e-3, "client_b1": 0.9, "client_b2": 0.999, "client_eps": 1e-8},
    "adagrad": {"client_lr": 0.05, "client_eps": 1e-7},
    "rmsprop": {"client_lr": 1e-3, "client_decay": 0.9, "client_eps": 1e-8},
}


@dataclasses.dataclass(frozen=True)
class LocalTraining:
    """Static description of the local update.

    Attributes:
      batch_size: samples per local step ``B``.
      epochs: local epochs ``E`` (the FedAvg convention; 1 when neither ``epochs`` nor
        ``steps`` is given); exclusive with ``steps``.
      steps: a fixed number of local steps per node instead of epochs.
      optimizer: a name in ``LOCAL_OPTIMIZERS`` or a callable ``hparams -> optax
        GradientTransformation`` (any optax optimizer; read its traced
        hyper-parameters from the dict, e.g. ``lambda h: optax.adamw(h["client_lr"])``).
        The optimizer state is reset at the start of every round.
      group_size: how the cohort is mapped: ``None`` vmaps all nodes at once (best
        on GPU/TPU); an int runs ``lax.map`` over groups of that many vmapped nodes
        (best on a CPU with small per-node batches: ``benchmarks/cross_device.py``); ``"auto"``
        vmaps on GPU/TPU and on a CPU uses the largest group of at most 8 that divides
        the cohort (vmap if that is below 4).  Same numbers either way.
      weight_decay: add ``client_weight_decay * w`` to every local gradient (coupled L2
        weight decay, ``optax.add_decayed_weights`` before the optimizer; traced
        ``client_weight_decay``, default 1e-4): ``True`` or ``"all"`` decays every
        parameter, ``"weights"`` only the weight matrices and kernels (leaves with two or
        more dimensions; biases are not decayed, the common convention), ``False`` none.
      execution: how the cohort's local updates are computed. ``per_node``: every
        node holds its own copy of the model while it trains (the general strategy).
        ``shared_base``: no per-node weight copies; for dense-layer models
        (``Model.layers``) trained by ``sgd``/``momentum``/``nesterov`` every node's
        weights are the shared global weights plus a low-rank sum of its past
        (input, output-gradient) factors, so the big matmuls run once over the whole
        cohort with the shared weights (exact, see ``edgejax.core.shared_base``); a
        configuration where that is not exact raises ``ValueError``.  ``auto``:
        ``shared_base`` where it is exact and its factor history is smaller than the
        weights, else ``per_node``.  Or an execution object (hashable static config with a
        ``name`` and ``build(model, spec, max_steps, shuffles, group_size, needs)`` returning
        a strategy with ``train``/``delta``, see ``edgejax.core.execution``), e.g.
        ``edgejax.parallel.Pipelined``.  Same numbers (to rounding) either way.
    """

    batch_size: int = 10
    epochs: int | None = None
    steps: int | None = None
    optimizer: str | Callable = "sgd"
    group_size: int | str | None = "auto"
    execution: Any = "auto"
    weight_decay: bool | str = False

    def __post_init__(self):
        if self.epochs is not None and self.steps is not None:
            raise ValueError(f"give epochs or steps, not both; got epochs={self.epochs}, steps={self.steps}")
        if self.epochs is None and self.steps is None:
            object.__setattr__(self, "epochs", 1)
        for name in ("batch_size", "epochs", "steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if isinstance(self.optimizer, str) and self.optimizer not in LOCAL_OPTIMIZERS:
            raise ValueError(f"unknown local optimizer {self.optimizer!r}; choose from {LOCAL_OPTIMIZERS} "
                             "or pass a callable hparams -> optax.GradientTransformation")
        if isinstance(self.execution, str):
            check_choice("execution", self.execution, EXECUTIONS)
        elif not (callable(getattr(self.execution, "build", None)) and isinstance(getattr(self.execution, "name", None),
                                                                                   str)):
            raise ValueError(f"execution must be one of {EXECUTIONS} or an object with a name and a build(model, spec, "
                             f"max_steps, shuffles, group_size, needs) method; got {self.execution!r}")
        check_choice("weight_decay", self.weight_decay, WEIGHT_DECAY)
        if self.group_size not in ("auto", None) and not (isinstance(self.group_size, int) and self.group_size >= 1):
            raise ValueError(f"group_size must be None, 'auto' or a positive integer; got {self.group_size!r}")

    def default_hparams(self) -> dict[str, float]:
        """Traced hyper-parameters of the local optimizer and their defaults."""
        hp = {"client_lr": 0.05} if callable(self.optimizer) else dict(_OPTIMIZER_HPARAMS[self.optimizer])
        return hp | ({"client_weight_decay": 1e-4} if self.weight_decay else {})

    def make_optimizer(self, hparams: dict) -> optax.GradientTransformation:
        """The local optax optimizer, built from (possibly traced) hyper-parameters."""
        base = self._base_optimizer(hparams)
        if self.weight_decay:
            mask = decays_leaf if self.weight_decay == "weights" else None
            return optax.chain(optax.add_decayed_weights(hparams["client_weight_decay"], mask=mask), base)
        return base

    def _base_optimizer(self, hparams: dict) -> optax.GradientTransformation:
        h, name = hparams, self.optimizer
        if callable(name):
            return name(h)
        if name == "sgd":
            return optax.sgd(h["client_lr"])
        if name in ("momentum", "nesterov"):
            return optax.sgd(h["client_lr"], momentum=h["client_momentum"], nesterov=name == "nesterov")
        if name == "adam":
            return optax.adam(h["client_lr"], b1=h["client_b1"], b2=h["client_b2"], eps=h["client_eps"])
        if name == "adagrad":
            return optax.adagrad(h["client_lr"], eps=h["client_eps"])
        return optax.rmsprop(h["client_lr"], decay=h["client_decay"], eps=h["client_eps"])

    def steps_per_epoch(self, count):
        """``ceil(n_i / B)`` (at least 1), for host ints or traced arrays."""
        return jnp.maximum((count + self.batch_size - 1) // self.batch_size, 1)

    def node_steps(self, count):
        """Local steps node ``i`` runs with ``count`` samples (before any step budget)."""
        if self.steps is not None:
            return jnp.full_like(count, self.steps)
        return self.epochs * self.steps_per_epoch(count)

    def minibatches(self, key: jax.Array, count, size: int, max_steps: int, shuffles: int):
        """The minibatches local training draws for one node: ``(slots [max_steps, B], weights
        [max_steps, B])``, rows of the node's padded data ``[size, ...]`` and 1 for a real sample,
        0 for padding.  The order: ``shuffles`` permutations of the node's ``count`` samples from
        ``key`` (``node_shuffles``: uniform scores, padded rows scored 2, argsort); step ``t`` takes
        positions ``(t mod s) B .. (t mod s) B + B - 1`` of permutation ``min(t // s, shuffles - 1)``
        with ``s = steps_per_epoch(count)``, a position at or past ``count`` being padding.  Steps at
        or past ``node_steps(count)`` (or the step budget) are not run.  ``key`` is the node's round
        key (``Simulation.minibatches`` gives a round's slots for every cohort node)."""
        order = node_shuffles(key, count, size, shuffles)
        return jax.vmap(batch_positions, in_axes=(None, 0, None, None))(self, jnp.arange(max_steps), count, order)

    def schedule(self, counts: np.ndarray) -> tuple[int, int]:
        """Static ``(max_steps, shuffles)`` for nodes with these sample counts."""
        counts = np.asarray(counts)
        spe = np.maximum(-(-counts // self.batch_size), 1)
        if self.steps is not None:
            return self.steps, int(-(-self.steps // spe.min()))
        return int(self.epochs * spe.max()), self.epochs

    def resolved_group_size(self, cohort: int) -> int | None:
        """The group size actually used for a cohort of ``cohort`` nodes."""
        size = self.group_size
        if size == "auto":
            if jax.default_backend() != "cpu":
                return None
            # the largest group of <= 8 nodes that divides the cohort (a remainder group would
            # compile the local update a second time); tiny divisors gain nothing over vmap
            size = max(d for d in range(1, 9) if cohort % d == 0)
            if size < 4:
                return None
        if size is None or size >= cohort:
            return None
        return size


def map_nodes(fn: Callable, node_args, group_size: int | None):
    """Apply ``fn`` to every node's slice of ``node_args`` (a pytree with a leading node axis).

    ``vmap`` over all nodes, or ``lax.map`` over groups of ``group_size`` vmapped nodes.
    """
    if group_size is None:
        return jax.vmap(fn)(node_args)
    return jax.lax.map(fn, node_args, batch_size=group_size)


def node_shuffles(key: jax.Array, count: jax.Array, size: int, shuffles: int) -> jax.Array:
    """``[shuffles, size]`` independent permutations; each lists the ``count`` valid slots first."""
    scores = jax.random.uniform(key, (shuffles, size))
    scores = jnp.where(jnp.arange(size) < count, scores, 2.0)
    return jnp.argsort(scores, axis=-1)


def batch_positions(spec: LocalTraining, step: jax.Array, count: jax.Array, order: jax.Array):
    """Slots of step ``step``'s minibatch and their weights (1 real sample, 0 padding)."""
    spe = spec.steps_per_epoch(count)
    epoch, within = step // spe, step % spe
    pos = within * spec.batch_size + jnp.arange(spec.batch_size)
    weights = (pos < count).astype(jnp.float32)
    epoch = jnp.minimum(epoch, order.shape[0] - 1)
    slots = order[epoch, jnp.minimum(pos, order.shape[1] - 1)]
    return slots, weights


def step_positions(spec: LocalTraining, step, count, order, minibatches=()):
    """Step ``step``'s slots and weights: ``batch_positions`` of the node's own shuffle, or the
    explicit ``minibatches = (slots [S, B], weights [S, B])`` a plan gave the node."""
    if minibatches:
        slots, weights = minibatches
        return slots[step], weights[step]
    return batch_positions(spec, step, count, order)


class LocalTerm(NamedTuple):
    """A term an algorithm adds to every node's local objective.

    ``loss(params, anchor, node_arg, hparams) -> scalar``: ``anchor`` is the model the
    node's update started from this round (the server model it received, or its own
    model in decentralized training); ``node_arg`` is the per-node pytree the algorithm
    passes for this term (``node_args[name]``; ``()`` when it passes none).

    ``pull``: the name of the traced hyper-parameter ``mu`` when the term is exactly the
    pull ``mu/2 ||w - anchor||^2`` (FedProx, FedDyn's quadratic part); an execution
    strategy asks this to know whether it can stay exact (``shared_base`` folds a pull
    into its closed form and supports no other term).
    """

    name: str
    loss: Callable[[Any, Any, Any, dict], jax.Array]
    pull: str | None = None


class SubModelMask(NamedTuple):
    """Which part of the full model one node trains (stacked ``[K, ...]`` for a cohort).

    ``params``: a pytree of the model's parameter structure with 1 where the node holds the
    entry and 0 elsewhere (in the parameters' float dtype).  ``outputs``: ``()`` (the loss
    sees every output) or a 0/1 vector ``[num_classes]``: outputs with 0 are left out of the
    node's softmax (their logits are pushed to ``-inf`` before the loss, so the node's
    cross-entropy is a softmax over its own classes only).  Excluded logits become the
    dtype's most negative finite value (probability exactly 0; padded slots, which carry
    weight 0, stay finite).  Every training label of the node must have ``outputs = 1``.
    """

    params: Any
    outputs: Any = ()


def mask_tree(params, mask: SubModelMask):
    """``params * mask.params`` leafwise: the sub-model's entries of a full-size pytree."""
    return jax.tree_util.tree_map(lambda w, m: w * m, params, mask.params)


def restrict_outputs(outputs: jax.Array, mask: SubModelMask) -> jax.Array:
    """Logits outside ``mask.outputs`` set to the most negative finite value (all kept when
    ``outputs`` is ``()``)."""
    if isinstance(mask.outputs, tuple):
        return outputs
    return jnp.where(mask.outputs > 0, outputs, jnp.finfo(outputs.dtype).min)


class LocalResult(NamedTuple):
    """One node's (or, stacked, the cohort's) local update: the trained ``params``, the
    optimizer state after the last step, the mean minibatch ``loss`` over the steps taken
    (the model's loss, without the terms) and how many ``steps`` ran."""

    params: Any
    opt_state: Any
    loss: jax.Array
    steps: jax.Array


def decays_leaf(params):
    """The ``weight_decay="weights"`` mask: weight matrices and kernels (ndim >= 2), not biases."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_local_update(model: Model, spec: LocalTraining, max_steps: int, shuffles: int,
                      terms: tuple[LocalTerm, ...] = (), model_value_and_grad: Callable | None = None):
    """Build ``update(params0, x, y, count, key, budget, hparams, node_args=None, opt_state=None,
    mask=None) -> LocalResult`` for one node.

    ``model_value_and_grad``: ``(params, x, y, w) -> (loss, grads)`` of the model's loss on a
    minibatch, replacing ``jax.value_and_grad`` of ``model.loss.fn(model.apply(params, x), y, w)``
    (e.g. a pipelined computation, ``edgejax.parallel``); the terms' gradients are added to it.
    It cannot be combined with masks.

    The objective is ``model.loss`` on the minibatch plus every ``LocalTerm`` in ``terms``
    (``node_args``: a dict term name -> that term's per-node pytree).  ``opt_state``: the
    optimizer state to continue from (a node that keeps its optimizer across rounds);
    ``None`` starts a fresh one from ``params0``.  ``mask``: the node's ``SubModelMask``
    (``None``: the full model).  With a mask, the model's loss is that of
    ``apply(params * mask.params, x)`` (outputs restricted to ``mask.outputs``), the
    gradient (terms included) is multiplied by ``mask.params`` and a step changes only
    entries where ``mask.params`` is non-zero: ``w_{t+1} = where(m, w_t + u_t, w_t)`` with
    ``u_t`` the optimizer's update of the masked gradient.
    """
    loss_fn = model.loss.fn

    def objective(params, xb, yb, wb, hparams, params0, node_args, mask):
        if mask is None:
            loss = loss_fn(model.apply(params, xb), yb, wb)
        else:
            loss = loss_fn(restrict_outputs(model.apply(mask_tree(params, mask), xb), mask), yb, wb)
        total = loss
        for term in terms:
            total = total + term.loss(params, params0, node_args.get(term.name, ()), hparams)
        return total, loss

    grad_fn = (jax.grad(objective, has_aux=True) if model_value_and_grad is None
               else _with_model_gradient(model_value_and_grad, terms))

    def update(params0, x, y, count, key, budget, hparams, node_args=None, opt_state=None,
               mask: SubModelMask | None = None, minibatches=()) -> LocalResult:
        opt = spec.make_optimizer(hparams)
        order = node_shuffles(key, count, x.shape[0], shuffles)
        n_steps = jnp.minimum(spec.node_steps(count), budget)
        args = node_args or {}

        def step(carry, t):
            params, opt_state, loss_sum = carry
            slots, wb = step_positions(spec, t, count, order, minibatches)
            grads, loss = grad_fn(params, x[slots], y[slots], wb, hparams, params0, args, mask)
            if mask is not None:
                grads = mask_tree(grads, mask)
            updates, new_opt_state = opt.update(grads, opt_state, params)
            stepped = optax.apply_updates(params, updates)
            if mask is not None:
                stepped = jax.tree_util.tree_map(lambda new, old, m: jnp.where(m != 0, new, old), stepped, params,
                                                 mask.params)
            active = t < n_steps
            params = tree_where(active, stepped, params)
            opt_state = tree_where(active, new_opt_state, opt_state)
            return (params, opt_state, loss_sum + jnp.where(active, loss, 0.0)), None

        start = opt.init(params0) if opt_state is None else opt_state
        # the loss sum starts as a zero shaped like n_steps: per node (device-varying) under shard_map too
        zero = jnp.zeros_like(n_steps, dtype=jnp.result_type(float))
        (params, opt_state, loss_sum), _ = jax.lax.scan(step, (params0, start, zero), jnp.arange(max_steps))
        steps = n_steps.astype(jnp.float32)
        return LocalResult(params, opt_state, loss_sum / jnp.maximum(steps, 1.0), steps)

    return update


def make_minibatch_gradient(model: Model, spec: LocalTraining, shuffles: int):
    """Build ``value_and_grad(params, x, y, count, key) -> (loss, grads)`` for one node: the
    model's loss and its gradient at ``params`` on the first minibatch local training draws with
    ``key`` (step 0 of ``node_shuffles`` / ``batch_positions``: the node's whole data when
    ``batch_size >= n_i``)."""

    def loss(params, xb, yb, wb):
        return model.loss.fn(model.apply(params, xb), yb, wb)

    def value_and_grad(params, x, y, count, key):
        slots, wb = batch_positions(spec, jnp.zeros((), jnp.int32), count,
                                    node_shuffles(key, count, x.shape[0], shuffles))
        return jax.value_and_grad(loss)(params, x[slots], y[slots], wb)

    return value_and_grad


def _with_model_gradient(model_value_and_grad: Callable, terms: tuple[LocalTerm, ...]):
    """``grad_fn`` of ``make_local_update`` from a given model loss gradient plus the terms' gradients."""

    def terms_total(params, hparams, params0, node_args):
        return sum(term.loss(params, params0, node_args.get(term.name, ()), hparams) for term in terms)

    terms_grad = jax.grad(terms_total)

    def grad_fn(params, xb, yb, wb, hparams, params0, node_args, mask):
        if mask is not None:
            raise ValueError("a model_value_and_grad override trains the full model; it cannot train sub-models (masks)")
        loss, grads = model_value_and_grad(params, xb, yb, wb)
        if terms:
            grads = jax.tree_util.tree_map(jnp.add, grads, terms_grad(params, hparams, params0, node_args))
        return grads, loss

    return grad_fn


def masked_weighted_sum(p: jax.Array, values: jax.Array) -> jax.Array:
    """``sum_i p_i values_i`` over the leading axis, where nodes with ``p_i = 0`` add exactly
    nothing (a ``where``, so even a NaN/inf from an absent node cannot leak in)."""
    mask = (p > 0).reshape(p.shape + (1,) * (values.ndim - 1))
    return jnp.tensordot(p, jnp.where(mask, values, 0), axes=1)
