"""Local execution strategies: how a cohort's local updates are computed.

Every algorithm trains its cohort through one interface, built once per simulation by
``build_execution``:

``train(start, cohort, keys, budget, hparams, node_args=None, opt_state=None, mask=None) -> LocalResult``
    every cohort node's trained model (stacked ``[K, ...]``); ``start`` is the shared model
    (``Needs.start == "shared"``) or every node's own model ``[K, ...]`` (``"own"``);
    ``opt_state`` is the cohort's optimizer state to continue from (``None``: fresh);
    ``mask`` the cohort's ``SubModelMask`` ``[K, ...]`` (``Needs.masked``; ``None``: every
    node trains the full model).
``delta(x, cohort, keys, budget, p, hparams, node_args=None, mask=None) -> (delta, loss [K], steps [K])``
    ``sum_i p_i (x_i - x)`` for nodes starting from the shared ``x``: all that FedAvg-style
    aggregation needs (a strategy may compute it without ever forming ``x_i``).  With
    masks, ``x_i - x`` is exactly zero outside node i's mask, so this sum is the numerator
    of the per-entry masked average (``edgejax.algorithms.submodels``).

Strategies (``LocalTraining.execution``; the same numbers, to rounding, either way):

* ``per_node``: every node trains its own copy of the model, mapped with ``vmap`` or
  ``lax.map`` over groups (``LocalTraining.group_size``).  General.
* ``shared_base``: the exact low-rank identity of ``edgejax.core.shared_base``; no
  per-node weight copy exists.  Only ``delta``, only for what that module lists.
* ``auto``: ``shared_base`` where it is exact and cheaper, else ``per_node``.
* an execution object (e.g. ``edgejax.parallel.Pipelined``): hashable static config with a
  ``name`` and ``build(model, spec, max_steps, shuffles, group_size, needs)`` returning a
  strategy with this interface; ``build`` raises the ``ValueError`` when it cannot be exact.

What a strategy must support is stated by the algorithm as ``Needs`` (its local terms,
where nodes start, what it reads back, whether optimizer state persists); a strategy
says why it cannot be exact for those needs, model and optimizer (``unsupported``), and
asking for it anyway is a ``ValueError`` naming the reason, for every algorithm.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from edgejax.core.local import (LocalResult, LocalTerm, LocalTraining, SubModelMask, make_local_update, map_nodes,
                                masked_weighted_sum)
from edgejax.core.shared_base import (make_shared_base_delta, shared_base_is_cheaper, shared_base_unsupported,
                                      terms_unsupported)
from edgejax.core.validation import check_choice
from edgejax.models.base import Model
from edgejax.parallel.nodes import map_nodes_sharded

STARTS = ("shared", "own")
OUTPUTS = ("delta", "models")


@dataclasses.dataclass(frozen=True)
class Needs:
    """What an algorithm asks of local execution (static).

    Attributes:
      terms: the ``LocalTerm``s added to every node's objective.
      start: ``shared`` (every cohort node starts from one model, the server's) or ``own``
        (every node continues its own model: decentralized training).
      output: ``delta`` (only ``sum_i p_i (x_i - x)`` is read) or ``models`` (each node's
        trained model is read, e.g. SCAFFOLD's control variates).
      keep_optimizer: the local optimizer state persists across rounds (else it is reset
        at the start of every round).
      masked: every node trains a sub-model given by its own ``SubModelMask`` over the
        full-size parameter layout (``edgejax.core.local``), passed as ``mask``.
      factor_starts: with ``start="own"``, ``shared_base`` may train the nodes in its per-node
        factor form (``edgejax.core.shared_base``, ``own_starts``) and return their models
        (asynchronous arrivals; the decentralized algorithms keep ``per_node``).
    """

    terms: tuple[LocalTerm, ...] = ()
    start: str = "shared"
    output: str = "delta"
    keep_optimizer: bool = False
    masked: bool = False
    factor_starts: bool = False

    def __post_init__(self):
        check_choice("start", self.start, STARTS)
        check_choice("output", self.output, OUTPUTS)


@dataclasses.dataclass(frozen=True, eq=False)
class PerNode:
    """The ``per_node`` strategy: ``update`` (``make_local_update``) mapped over the cohort."""

    update: Callable
    group_size: int | None
    shared_start: bool
    mesh: Any = None
    name: str = "per_node"

    def train(self, start, cohort, keys, budget, hparams, node_args=None, opt_state=None,
              mask: SubModelMask | None = None) -> LocalResult:
        node_args = {} if node_args is None else node_args

        def one(shared, args):
            params0, xs, ys, count, key, node_budget, args_i, state_i, mask_i, batches_i = args
            params0 = shared if self.shared_start else params0
            return self.update(params0, xs, ys, count, key, node_budget, hparams, args_i, state_i, mask_i, batches_i)

        shared, stacked_start = (start, None) if self.shared_start else (None, start)
        args = (stacked_start, cohort.x, cohort.y, cohort.count, keys, budget, node_args, opt_state, mask,
                getattr(cohort, "minibatches", ()))
        if self.mesh is not None:
            return map_nodes_sharded(one, shared, args, self.mesh, self.group_size, map_nodes)
        return map_nodes(lambda a: one(shared, a), args, self.group_size)

    def delta(self, x, cohort, keys, budget, p, hparams, node_args=None, mask: SubModelMask | None = None):
        result = self.train(x, cohort, keys, budget, hparams, node_args, mask=mask)
        delta = jax.tree_util.tree_map(lambda xi, x0: masked_weighted_sum(p, xi - x0), result.params, x)
        return delta, result.loss, result.steps


@dataclasses.dataclass(frozen=True, eq=False)
class SharedBase:
    """The ``shared_base`` strategy (``edgejax.core.shared_base``): ``delta`` from a shared start,
    and ``train`` from every node's own start where the algorithm allows it (``Needs.factor_starts``:
    the per-node factor form, each model formed once at the end).  ``node_factors`` (where the
    changes have a factor form: no weight decay or pulls) trains nodes from a shared start
    and returns their changes as ``LayerFactors`` (asynchronous updates kept until they arrive)."""

    local_delta: Callable | None
    own_deltas: Callable | None = None
    node_factors: Callable | None = None
    name: str = "shared_base"

    def train(self, start, cohort, keys, budget, hparams, node_args=None, opt_state=None, mask=None) -> LocalResult:
        if self.own_deltas is None:
            raise NotImplementedError("shared_base forms no per-node models here; build_execution never selects "
                                      "it for an algorithm that reads them without Needs(factor_starts=True)")
        delta, loss, steps = self.own_deltas(start, cohort, keys, budget, None, hparams)
        return LocalResult(jax.tree_util.tree_map(jax.numpy.add, start, delta), (), loss, steps)

    def delta(self, x, cohort, keys, budget, p, hparams, node_args=None, mask=None):
        if mask is not None:
            raise ValueError("shared_base cannot train per-node sub-models (masks); an algorithm that passes "
                             "masks declares Needs(masked=True), which makes build_execution choose per_node")
        return self.local_delta(x, cohort, keys, budget, p, hparams)


def shared_base_reason(model: Model, spec: LocalTraining, needs: Needs) -> str | None:
    """Why ``shared_base`` cannot be exact for this model, local training and algorithm, or ``None``."""
    if needs.start == "own" and not needs.factor_starts:
        return "every node starts from its own model (decentralized training); shared_base needs one shared start"
    if needs.output == "models" and not needs.factor_starts:
        return "the algorithm reads every node's trained model, which shared_base never forms"
    if needs.masked:
        return ("every node trains its own sub-model (a per-node parameter mask), while shared_base's "
                "identity needs every node to train the same full weights")
    if needs.keep_optimizer and spec.optimizer != "sgd":
        return "the local optimizer state persists across rounds; shared_base starts every round from zero momentum"
    return shared_base_unsupported(model, spec) or terms_unsupported(spec, needs.terms)


def resolve_execution(model: Model, spec: LocalTraining, max_steps: int, needs: Needs = Needs()) -> str:
    """``per_node`` or ``shared_base`` for ``spec.execution`` (``auto`` decided here), or an
    execution object's ``name``.

    Raises ``ValueError`` naming the reason when ``shared_base`` is asked for explicitly
    but cannot be exact.
    """
    if not isinstance(spec.execution, str):
        return spec.execution.name
    if spec.execution == "per_node":
        return "per_node"
    reason = shared_base_reason(model, spec, needs)
    if spec.execution == "shared_base":
        if reason is not None:
            raise ValueError(f"execution='shared_base' cannot be exact here: {reason}. "
                             "Use execution='per_node' (or 'auto', which falls back to it).")
        return "shared_base"
    if reason is None and shared_base_is_cheaper(model, spec, max_steps):
        return "shared_base"
    return "per_node"


def build_execution(model: Model, spec: LocalTraining, max_steps: int, shuffles: int, group_size: int | None,
                    needs: Needs = Needs(), mesh=None) -> Any:
    """The strategy ``spec.execution`` resolves to, built for this model, schedule and algorithm
    (an execution object builds its own); with a node ``mesh`` (``edgejax.parallel.node_mesh``)
    ``per_node`` trains each device's share of the cohort under ``shard_map``."""
    if not isinstance(spec.execution, str):
        if mesh is not None:
            raise ValueError(f"execution {spec.execution.name!r} places the nodes on its own mesh; build the "
                             "Simulation without mesh= (a node mesh is for the per_node and shared_base executions)")
        return spec.execution.build(model, spec, max_steps, shuffles, group_size, needs)
    if resolve_execution(model, spec, max_steps, needs) == "shared_base":
        if needs.start == "own":
            factors = None if spec.weight_decay or needs.terms else make_shared_base_delta(
                model, spec, max_steps, shuffles, node_factors=True)
            return SharedBase(None, make_shared_base_delta(model, spec, max_steps, shuffles, terms=needs.terms,
                                                           own_starts=True), factors)
        return SharedBase(make_shared_base_delta(model, spec, max_steps, shuffles, terms=needs.terms))
    update = make_local_update(model, spec, max_steps, shuffles, needs.terms)
    return PerNode(update, group_size, shared_start=needs.start == "shared", mesh=mesh)


@dataclasses.dataclass(frozen=True, eq=False)
class RoundContext:
    """What an algorithm's ``init`` and ``round`` get from the simulation (static).

    ``execution``: the built strategy (``train`` / ``delta``, see the module docstring);
    ``model``: the simulation's ``Model``; ``local``: the ``LocalTraining`` schedule; ``model_bytes``: one model's size;
    ``payload``: the algorithm's bytes up and down per participating node
    (``Algorithm.payload``); ``params_shape``: one model's parameters as shape structs
    (e.g. for a compressed message's size); ``group_size``: how other node-wise work (evaluation) is mapped;
    ``num_nodes``: N; ``cohort_size``: K (asynchronous training: the most arrivals in one tick);
    ``minibatch_gradient``: one node's ``make_minibatch_gradient`` (``value_and_grad`` below).
    """

    execution: Any
    model: Model
    local: LocalTraining
    model_bytes: int
    payload: Any
    params_shape: Any
    group_size: int | None
    num_nodes: int
    cohort_size: int
    minibatch_gradient: Callable | None = None

    def value_and_grad(self, params, cohort, keys):
        """Every cohort node's model loss ``[K]`` and gradient ``[K, ...]`` at its own ``params [K, ...]``
        on its first minibatch with its key (``edgejax.core.local.make_minibatch_gradient``),
        mapped over the nodes as local training is (``group_size``)."""
        def one(args):
            return self.minibatch_gradient(*args)

        return map_nodes(one, (params, cohort.x, cohort.y, cohort.count, keys), self.group_size)
