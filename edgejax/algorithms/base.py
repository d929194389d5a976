"""The algorithm protocol: the one extension point every training algorithm plugs into.

An algorithm is a frozen dataclass of static options with pure methods (the feel of
optax's ``GradientTransformation`` and evosax's ``init/ask/tell``; traced
hyper-parameters live in a dict, never on the object).  ``Simulation`` reads only what
this protocol names, so FedAvg, SCAFFOLD, FedDyn, the gossip family and a user's own
algorithm are interchangeable.

``name``
    a short identifier (``run.json``, tables, the CLI).
``traits() -> Traits``
    static facts the simulation and the system model read: ``full_cohort`` (every node
    trains every round: decentralized training, ``clients_per_round`` must be ``None``),
    ``topology`` (the communication graph, whose arrays go to ``SimState.network`` and whose
    links the system model may fail; ``None`` without one), ``asynchronous`` (a round is a
    tick of the event clock, ``edgejax.system.events``: the plan is the next arrivals),
    ``ranges`` (``(name, Range)`` pairs for the algorithm's own hyper-parameters where the
    shared table ``edgejax.core.validation.HPARAM_RANGES`` is too wide for it) and
    ``needs`` (what local execution must support: the ``LocalTerm``s added to the
    local objective, where nodes start, whether each node's model is read back, whether
    the local optimizer state persists; see ``edgejax.core.execution.Needs``) and
    ``sequential`` (the cohort's nodes train one after another, in cohort order, as in
    vanilla split learning: the clock charges the sum of their times, not the slowest).
``payload(params, num_nodes) -> Payload``
    bytes one participating node sends (``up``) and receives (``down``) in a round and the
    fraction of the full model's training compute it runs (``compute``, default 1)
    (``params``: one model's shape structs); each a scalar or one value per node ``[N]``
    (sub-models: what each node really holds and trains).  The system model uses the same
    numbers to plan deadlines and to charge the clock (``edgejax.system.clock``).
``default_hparams() -> dict[str, float]``
    the algorithm's traced hyper-parameters and defaults (names must not collide with
    those of the local schedule or the system model: ``Simulation`` raises naming both).
``init(ctx, params, node_rng, hparams) -> (NodeState, ServerState)``
    the initial node and server state from one global model ``params`` and the per-node
    keys ``node_rng [N, 2]``.  Algorithm-specific state goes in ``NodeState.extra`` /
    ``ServerState.extra`` as the algorithm's own ``NamedTuple`` (documented with it).
``round(ctx, state, data, plan, hparams) -> (SimState, metrics)``
    one round from the system model's ``RoundPlan``; train the cohort through
    ``ctx.execution`` (never a hand-written map over nodes); return the new state (the
    simulation advances ``state.round`` and charges the clock) and the scalar metrics
    ``REQUIRED_METRICS`` (plus any of the algorithm's own, e.g. ``consensus_distance``);
    ``train_loss`` is NaN in a round in which no node took part.
``eval_models(state) -> (params, node_params | None)``
    the model evaluated on the test sets (the server model, or the network average) and,
    where nodes keep their own models, the stacked node models.
``describe() -> dict``
    the static options as plain values (``run.json``); ``describe_algorithm`` gives it to
    any dataclass.

``ctx`` is a ``RoundContext`` (``edgejax.core.execution``): the built execution strategy,
the local schedule, one model's size in bytes, this algorithm's ``payload`` and one
message's bytes (gossip), N, the group size for node-wise maps.

See "Writing an algorithm" in the README for a walk through ``FedDyn``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax

from edgejax.core.execution import Needs, RoundContext
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState
from edgejax.system.clock import Payload

__all__ = ["Algorithm", "AsynchronousAlgorithm", "DescribedByFields", "EvaluatesServerModel", "Payload",
           "REQUIRED_METRICS", "Traits", "describe_algorithm", "missing_parts"]

# the scalar metrics every round (or tick) reports
REQUIRED_METRICS = ("train_loss", "participants", "local_steps", "bytes_up", "bytes_down")


class Traits(NamedTuple):
    """Static facts about an algorithm (see the module docstring)."""

    full_cohort: bool = False
    needs: Needs = Needs()
    topology: Any = None
    asynchronous: bool = False
    ranges: tuple = ()
    sequential: bool = False


class _Parts(Protocol):
    """The parts every algorithm has, synchronous or asynchronous (see the module docstring)."""

    @property
    def name(self) -> str: ...

    def traits(self) -> Traits: ...

    def payload(self, params, num_nodes: int) -> Payload: ...

    def default_hparams(self) -> dict[str, float]: ...

    def init(self, ctx: RoundContext, params, node_rng, hparams) -> tuple[NodeState, ServerState]: ...

    def eval_models(self, state: SimState) -> tuple[Any, Any]: ...

    def describe(self) -> dict: ...


@runtime_checkable
class Algorithm(_Parts, Protocol):
    """What ``Simulation`` requires of an algorithm (see the module docstring)."""

    def round(self, ctx: RoundContext, state: SimState, data, plan: RoundPlan, hparams) -> tuple[SimState, dict]: ...


@runtime_checkable
class AsynchronousAlgorithm(_Parts, Protocol):
    """What ``Simulation`` requires of an asynchronous algorithm (``Traits.asynchronous``): the
    protocol's parts but ``round``, and the event clock's (``edgejax.core.event_loop``): ``slots(N)``
    (nodes in flight), ``check_nodes(N)``, ``window`` (arrivals trained together) and
    ``window_step(ctx, state, data, window, hparams) -> (state, per-tick metrics)``; optionally
    ``start_downloads(ctx, server, events, train, hparams)`` (the downloads at time 0)."""

    def slots(self, num_nodes: int) -> int: ...

    def check_nodes(self, num_nodes: int) -> None: ...

    window: int

    def window_step(self, ctx: RoundContext, state: SimState, data, window, hparams) -> tuple[SimState, dict]: ...


def missing_parts(algorithm) -> list[str]:
    """The protocol parts ``algorithm`` lacks (``AsynchronousAlgorithm``'s when its traits say it
    is asynchronous, else ``Algorithm``'s); empty when it follows the protocol."""
    asynchronous = hasattr(algorithm, "traits") and algorithm.traits().asynchronous
    protocol = AsynchronousAlgorithm if asynchronous else Algorithm
    if isinstance(algorithm, protocol):
        return []
    layers = (_Parts, protocol)
    parts = [n for cls in layers for n in (*vars(cls), *cls.__dict__.get("__annotations__", {}))
             if not n.startswith("_")]
    return [n for n in dict.fromkeys(parts) if not hasattr(algorithm, n)]


def check_same_model(algorithm, model, ctx: RoundContext) -> None:
    """An algorithm built over its own ``model`` (FedMD, FedRep, APFL) must be given the
    simulation's: the same parameter names and shapes, else a ``ValueError`` naming both."""
    mine = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    same = jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(ctx.params_shape) and all(
        a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(ctx.params_shape)))
    if not same:
        raise ValueError(f"{algorithm.name} was built over model {model.name!r}, whose parameters differ from those "
                         f"of the simulation's model {ctx.model.name!r}; build it over the model the Simulation trains")


class DescribedByFields:
    """Mixin for a dataclass algorithm: ``describe()`` is ``describe_algorithm(self)``."""

    def describe(self) -> dict:
        return describe_algorithm(self)


class EvaluatesServerModel:
    """Mixin for an algorithm whose nodes keep no model: ``eval_models`` is the server's model."""

    def eval_models(self, state: SimState):
        return state.server.params, None


def describe_algorithm(algorithm) -> dict:
    """A dataclass algorithm's fields as plain values plus its name."""
    return {"name": algorithm.name, **_fields(algorithm)}


def _fields(value) -> dict:
    return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}


def _plain(value):
    """Plain JSON-able values: dataclasses (an aggregator, a topology) as their type and fields,
    arrays by shape, others by repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **_fields(value)}
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if hasattr(value, "shape"):
        return f"array{tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if callable(value) and hasattr(value, "__name__"):   # e.g. an optimizer factory: its name, not its address
        return value.__name__
    return repr(value)
