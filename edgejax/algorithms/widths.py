"""Width-scaled sub-models: HeteroFL, FjORD's ordered dropout and FedRolex's rolling window.

HeteroFL (Diao, Ding & Tarokh 2021, "HeteroFL: Computation and Communication Efficient
Federated Learning for Heterogeneous Clients"): node ``i`` with capability ``r_i in (0, 1]``
trains, in every hidden layer ``l`` of width ``c_l``, ``k_l(r_i) = ceil(r_i c_l)`` units; the
output layer keeps all its outputs.  On the GEMM chain of ``edgejax.models.layout`` (layer
``l``: ``W_l [rows, c_l]``, row ``r`` reading channel ``r mod c_{l-1}``) the entries a node
holds are, with ``S_l`` the set of held units of hidden layer ``l``::

    hidden layer l:  W_l[r, c] held iff (l = 0 or r mod c_{l-1} in S_{l-1}) and c in S_l;  b_l[c] iff c in S_l
    output layer L:  W_L[r, c] held iff r mod c_{L-1} in S_{L-1};                            b_L all

So a 3x3 convolution ``[9 C_in, C_out]`` keeps every kernel position of the held input
channels into the held output channels, and the dense layer after the flatten of
``[H, W, C]`` keeps every spatial position of the held channels.  ``S_l`` per ``mode``:

* ``fixed`` (HeteroFL): the first ``k_l`` units, ``S_l = {0 .. k_l - 1}``, every round.
* ``ordered_dropout`` (FjORD, Horvath et al. 2021): every round node ``i`` draws a width
  ``p`` uniformly from the ``levels`` ``<= r_i`` and holds the first ``k_l(p)`` units.  The
  paper draws ``p`` per local minibatch; here it is drawn once per round.
* ``rolling`` (FedRolex, Alam et al. 2022): in round ``t`` the window starts at unit
  ``t mod c_l`` and wraps around: ``S_l = {(t + j) mod c_l : j < k_l}``, so every unit is
  trained by small nodes in turn.

HeteroFL's "scaler" (dividing a hidden layer's output by ``r`` while training) is not done:
a sub-model's forward pass is the full model's with the entries outside ``S`` set to zero.
Aggregation (``edgejax.algorithms.submodels``): every entry is averaged over the nodes that
held it.  Capabilities: one rate per node (``rates``), e.g. from the device profiles'
tiers with ``tier_rates``; HeteroFL's levels ``a..e`` are ``HETEROFL_LEVELS``.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.core.local import SubModelMask
from edgejax.core.streams import stream_key
from edgejax.core.validation import check_choice
from edgejax.models.base import Model
from edgejax.models.layout import chain_mask, gemm_layout

MODES = ("fixed", "ordered_dropout", "rolling")
HETEROFL_LEVELS = {"a": 1.0, "b": 0.5, "c": 0.25, "d": 0.125, "e": 0.0625}


def _check_rates(name: str, rates) -> tuple[float, ...]:
    values = tuple(float(r) for r in rates)
    if not values:
        raise ValueError(f"{name} is empty")
    for i, r in enumerate(values):
        if not 0 < r <= 1:
            raise ValueError(f"{name}[{i}] = {r:g} must lie in (0, 1]")
    return values


def tier_rates(profiles, table) -> tuple[float, ...]:
    """Each node's width rate from its device tier: ``table[tier_i]`` (a sequence indexed by
    tier, or a dict tier -> rate).  Raises ``ValueError`` naming the first node whose tier
    has no rate."""
    tiers = np.asarray(profiles.tier)
    lookup = dict(table) if isinstance(table, dict) else dict(enumerate(table))
    for i, t in enumerate(tiers.tolist()):
        if t not in lookup:
            raise ValueError(f"node {i} is in tier {t}, which the rate table {lookup} does not list")
    return _check_rates("rates", [lookup[t] for t in tiers.tolist()])


@dataclasses.dataclass(frozen=True)
class WidthScaled:
    """Width-scaled sub-models of ``model`` (see the module docstring).

    Attributes:
      model: the full model (a GEMM chain, ``edgejax.models.layout.gemm_layout``).
      rates: each node's capability ``r_i in (0, 1]`` (length N).
      mode: one of ``MODES``.
      levels: FjORD's widths to draw from (``ordered_dropout``; default: the distinct
        ``rates``); each node must have a level ``<= r_i``.
    """

    model: Model
    rates: tuple[float, ...]
    mode: str = "fixed"
    levels: tuple[float, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "rates", _check_rates("rates", self.rates))
        check_choice("mode", self.mode, MODES)
        levels = sorted(set(self.rates)) if self.levels is None else self.levels
        object.__setattr__(self, "levels", _check_rates("levels", levels))
        if self.mode == "ordered_dropout" and min(self.levels) > min(self.rates):
            i = self.rates.index(min(self.rates))
            raise ValueError(f"node {i} has rate {self.rates[i]:g}, below every level {self.levels}")

    @functools.cached_property
    def layout(self):
        return gemm_layout(self.model)

    @property
    def name(self) -> str:
        return {"fixed": "heterofl", "ordered_dropout": "fjord", "rolling": "fedrolex"}[self.mode]

    def describe(self) -> dict:
        return {"kind": "width_scaled", "model": self.model.name, "mode": self.mode, "rates": list(self.rates),
                "levels": list(self.levels)}

    def check(self, num_nodes: int) -> None:
        """The rates must give one value per node."""
        if len(self.rates) != num_nodes:
            raise ValueError(f"WidthScaled has {len(self.rates)} rates but there are N={num_nodes} nodes")

    def structure(self, dtype):
        """Entries no node may ever hold: none (``None``)."""
        return None

    def _table(self, values) -> jax.Array:
        """``ceil(v c_l)`` for every value ``v`` and hidden layer ``l``: ``[len(values), L - 1]``."""
        hidden = self.layout[:-1]
        return jnp.asarray([[max(1, math.ceil(v * layer.cols)) for layer in hidden] for v in values], jnp.int32)

    def kept_counts(self, nodes: jax.Array, keys: jax.Array) -> jax.Array:
        """Held units of every hidden layer for the cohort ``nodes [K]``: ``[K, L - 1]``."""
        if self.mode != "ordered_dropout":
            return self._table(self.rates)[nodes]
        rates = np.asarray(self.rates)[:, None]
        allowed = jnp.asarray(np.asarray(self.levels)[None, :] <= rates)[nodes]          # [K, J]
        logits = jnp.where(allowed, 0.0, -jnp.inf)
        draw = jax.vmap(lambda k, lg: jax.random.categorical(stream_key(k, "width_draw"), lg))(keys, logits)
        return self._table(self.levels)[draw]

    def masks(self, round_, nodes: jax.Array, keys: jax.Array, dtype) -> SubModelMask:
        """The cohort's masks ``[K, ...]`` in round ``round_`` (``keys``: the nodes' round keys)."""
        return self._masks(round_, self.kept_counts(nodes, keys), dtype)

    def node_masks(self, nodes: jax.Array, dtype) -> SubModelMask:
        """The sub-models the system model plans and charges ``nodes [K]`` for: each node's
        width ``r_i`` (FjORD: the widest it may draw; FedRolex: round 0's window, the same
        size every round)."""
        return self._masks(0, self._table(self.rates)[nodes], dtype)

    def _masks(self, round_, counts: jax.Array, dtype) -> SubModelMask:
        hidden = self.layout[:-1]

        def one(count):
            keeps = []
            for l, layer in enumerate(hidden):
                units = jnp.arange(layer.cols)
                if self.mode == "rolling":
                    units = (units - round_) % layer.cols
                keeps.append(units < count[l])
            return chain_mask(self.layout, [*keeps, None], dtype=dtype)

        return SubModelMask(jax.vmap(one)(counts))
