"""How a server combines its nodes' updates: the aggregator seam.

An aggregator is a frozen dataclass of static options with two pure functions, in the spirit
of ``optax.GradientTransformation``::

    init(params) -> state
    update(updates [K, ...], weights [K], mask [K], state, key, hparams) -> (aggregate, state, metrics)

``updates`` are the cohort's (or FedBuff's buffer's) model changes, stacked; ``weights`` the
algorithm's aggregation weights (FedAvg's ``p_i``, zero for an absent node; FedBuff's ``1/K``
over its buffered, staleness-weighted rows); ``mask`` which rows take part; ``key`` a random
key for this server step; ``hparams`` the traced hyper-parameters (an aggregator's own come
from its ``default_hparams``).  ``metrics`` is a dict of scalars reported with the round.

The contract: ``Mean`` returns ``sum_i weights_i updates_i``, what every server algorithm did
before the seam existed, and declares itself ``fusable``: an execution strategy may compute
it without forming the per-node updates (``shared_base`` fuses it into one GEMM per layer),
and the algorithm does so.  Any other aggregator sees every row, so the algorithm trains with
per-node outputs (``Needs(output="models")``).  A non-linear aggregator returns its statistic
of the masked rows scaled by ``sum_i weights_i`` (1 for FedAvg's normalised weights), so it
replaces the mean in the same server step.

Used by ``FedAvg`` (and FedProx, FedNova, the Reddi server optimizers), ``SCAFFOLD``,
``FedDyn`` (their model averages), ``CompressedFedAvg`` (the compressed messages) and
``FedBuff`` (each flush of its buffer): ``FedAvg(aggregator=CoordinateMedian())``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from edgejax.core.local import masked_weighted_sum
from edgejax.core.streams import stream_key


@runtime_checkable
class Aggregator(Protocol):
    """What an algorithm requires of an aggregator (see the module docstring)."""

    @property
    def name(self) -> str: ...

    @property
    def fusable(self) -> bool: ...

    def default_hparams(self) -> dict[str, float]: ...

    def init(self, params) -> Any: ...

    def update(self, updates, weights, mask, state, key, hparams) -> tuple[Any, Any, dict]: ...


def check_aggregator(aggregator) -> None:
    """An ``Aggregator`` (a clear error naming what was given otherwise)."""
    if not isinstance(aggregator, Aggregator):
        raise ValueError(f"aggregator must follow edgejax.aggregators.Aggregator (name, fusable, default_hparams, "
                         f"init, update), e.g. Mean() or CoordinateMedian(); got {aggregator!r}")


def with_aggregator(aggregator) -> str:
    """An algorithm name's suffix for its aggregator: nothing for the mean, else ``+<name>``."""
    return "" if isinstance(aggregator, Mean) else f"+{aggregator.name}"


def aggregator_key(round_key):
    """The aggregator's key for a synchronous server step: the round key's ``aggregator`` stream."""
    return stream_key(round_key, "aggregator")


@dataclasses.dataclass(frozen=True)
class Mean:
    """``sum_i weights_i updates_i`` (FedAvg's weighted mean; fusable).  Rows with zero weight
    add exactly nothing (a ``where``: a NaN in an absent node's update cannot leak in)."""

    name = "mean"
    fusable = True

    def default_hparams(self) -> dict[str, float]:
        return {}

    def init(self, params):
        return ()

    def update(self, updates, weights, mask, state, key, hparams):
        weights = jnp.where(mask, weights, 0)
        return jax.tree_util.tree_map(lambda u: masked_weighted_sum(weights, u), updates), state, {}
