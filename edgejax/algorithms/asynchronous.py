"""Asynchronous training on a parameter server, inside the compiled program.

Semantics (``edgejax.system.events``): every node downloads the current server model,
computes for its duration, pushes its update; the server applies arrivals one at a time in
finish-time order (ties in increasing node id), and all arrivals at a time are applied
before any of those nodes downloads again.  Staleness = server version now - the version
the update was computed from (the freshest update has staleness 0).

Vectorised: a ``Simulation`` round is one tick of the event clock.  The server keeps a ring
buffer ``history [D, ...]`` of its last D versions written at ``version % D`` (one shared
write index); a tick gathers every arriving node's downloaded version from it, trains the
arrivals from those stale models through the execution strategy (``per_node``, each from its
own start), then applies the updates in order with a ``lax.scan`` (the version advances and
is written to the buffer as it goes), and records the new version for the nodes that
download.  An update whose staleness at application is D or more is dropped and counted in
``dropped_stale`` (so an update is never computed from a version the buffer no longer holds).

State: ``nodes.extra = Downloaded(version [N])``; ``server.extra = AsyncServer(version,
history [D, ...], rule)`` with the rule's own state (FedBuff's buffer).

Rules (``x``: server model, ``y_i``: node i's trained model, ``Delta_i = y_i - x_{v_i}``,
``s``: staleness at application):

* ``AsyncSGD`` (Zhang et al. 2016, "Staleness-aware Async-SGD"): ``x <- x + eta c(s) Delta_i``
  with ``c = 1``, or ``1 / max(s, 1)`` when ``staleness_aware``.
* ``FedAsync`` (Xie et al. 2019): ``x <- (1 - a) x + a y_i``, ``a = alpha S(s)``, ``S`` constant,
  polynomial ``(s + 1)^-a`` or hinge (``1`` for ``s <= b``, else ``1 / (a (s - b) + 1)``); the local
  objective adds ``mu/2 ||w - x_{v_i}||^2``.
* ``FedBuff`` (Nguyen et al. 2022): ``buf <- buf + (1 + s)^-1/2 Delta_i``; every ``buffer_size``
  arrivals ``x <- x + eta buf / buffer_size`` (the paper's mean; ``aggregation="flsim"`` sums
  and normalises the weight at ``s = 1`` as FLSim does, i.e. ``eta K sqrt(2)`` times the mean).
  The server version advances once per flush.
* ``DCASGD`` (Zheng et al. 2017): ``g = -Delta_i / lr`` (the gradient, exactly, for one local
  SGD step), ``x <- x - eta (g + lambda g * g * (x - x_{v_i}))``.

``lag_tolerance`` (SAFA-style, Wu et al. 2021): an update staler than the tolerance is
discarded (``forced_resync``) and its node downloads the latest model, as a SAFA node
beyond the lag bound is forced to re-synchronise.  Every tick reports the staleness of the
applied updates (``staleness_mean``, ``staleness_max``; a histogram with
``staleness_bins``), the server version, and, like synchronous rounds, the simulated time,
bytes and energy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from edgejax.algorithms.base import Payload, Traits, describe_algorithm
from edgejax.algorithms.server import proximal
from edgejax.core.execution import Needs
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState, round_keys, tree_where
from edgejax.data.host import cohort_data
from edgejax.core.validation import check_choice
from edgejax.models.base import num_bytes

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")
FEDBUFF_AGGREGATIONS = ("mean", "flsim")


class Downloaded(NamedTuple):
    """Asynchronous nodes' state: the server ``version [N]`` each node last downloaded."""

    version: jax.Array


class AsyncServer(NamedTuple):
    """The server's ``version`` (int32), the ring buffer ``history [D, ...]`` of its last D
    versions (version v at ``v % D``) and the rule's own state."""

    version: jax.Array
    history: Any
    rule: Any = ()


def _tree_add_scaled(x, delta, c):
    return jax.tree_util.tree_map(lambda a, d: a + c * d, x, delta)


@dataclasses.dataclass(frozen=True)
class _AsyncServerAlgorithm:
    """Shared machinery: the ring buffer, the tick, the metrics (see the module docstring)."""

    buffer_depth: int = 16
    lag_tolerance: int | None = None
    staleness_bins: int = 0
    log_events: bool = False

    def __post_init__(self):
        if not isinstance(self.buffer_depth, int) or self.buffer_depth < 1:
            raise ValueError(f"buffer_depth must be a positive integer; got {self.buffer_depth!r}")
        if self.lag_tolerance is not None and (not isinstance(self.lag_tolerance, int) or self.lag_tolerance < 0):
            raise ValueError(f"lag_tolerance must be None or a non-negative integer; got {self.lag_tolerance!r}")

    # ----- protocol --------------------------------------------------------------------------
    def terms(self) -> tuple:
        return ()

    def traits(self) -> Traits:
        """Every arrival trains from its own (stale) start; the rule reads each trained model."""
        return Traits(asynchronous=True, needs=Needs(terms=self.terms(), start="own", output="models"))

    def payload(self, params, num_nodes: int) -> Payload:
        """One model down at each download, one update up at each arrival."""
        return Payload(num_bytes(params), num_bytes(params))

    def describe(self) -> dict:
        return describe_algorithm(self)

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        n = node_rng.shape[0]
        history = jax.tree_util.tree_map(
            lambda p: jnp.zeros((self.buffer_depth, *p.shape), p.dtype).at[0].set(p), global_params)
        server = AsyncServer(jnp.zeros((), jnp.int32), history, self.init_rule(global_params))
        return (NodeState(rng=node_rng, extra=Downloaded(jnp.zeros((n,), jnp.int32))),
                ServerState(global_params, (), server))

    def init_rule(self, params):
        return ()

    def eval_models(self, state: SimState):
        return state.server.params, None

    # ----- the rule: apply one update ----------------------------------------------------------
    def apply(self, x, y, start, staleness, rule, hparams):
        """``(new x, whether the version advances, new rule state)`` for one arrival."""
        raise NotImplementedError

    # ----- one tick ------------------------------------------------------------------------------
    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        server, depth = state.server.extra, self.buffer_depth
        cohort = cohort_data(data.train, plan.nodes, full=False)   # in arrival order, so always gathered
        keys = round_keys(state.nodes.rng[plan.nodes], state.round)
        downloaded = state.nodes.extra.version[plan.nodes]
        in_buffer = server.version - downloaded < depth
        start = jax.tree_util.tree_map(lambda h: jnp.take(h, downloaded % depth, axis=0), server.history)
        budget = jnp.where(in_buffer, plan.step_budget, 0)
        trained = ctx.execution.train(start, cohort, keys, budget, hparams)
        arriving = (plan.active > 0) & in_buffer

        def apply_one(carry, slot):
            x, version, history, rule = carry
            y, x0, v, arrives = slot
            staleness = version - v
            fresh = arrives & (staleness < depth)
            applies = fresh if self.lag_tolerance is None else fresh & (staleness <= self.lag_tolerance)
            new_x, advances, new_rule = self.apply(x, y, x0, staleness, rule, hparams)
            x = tree_where(applies, new_x, x)
            rule = tree_where(applies, new_rule, rule)
            version = version + (applies & advances).astype(jnp.int32)
            history = jax.tree_util.tree_map(lambda h, p: h.at[version % depth].set(p), history, x)
            return (x, version, history, rule), (applies, fresh, jnp.where(applies, staleness, -1))

        init = (state.server.params, server.version, server.history, server.rule)
        (x, version, history, rule), (applied, fresh, staleness) = jax.lax.scan(
            apply_one, init, (trained.params, start, downloaded, arriving))
        nodes = state.nodes._replace(extra=Downloaded(jnp.where(plan.restart, version, state.nodes.extra.version)))
        new_state = state._replace(nodes=nodes,
                                   server=state.server._replace(params=x, extra=AsyncServer(version, history, rule)))
        return new_state, self._metrics(ctx, plan, trained, applied, fresh, staleness, version)

    def _metrics(self, ctx, plan, trained, applied, fresh, staleness, version):
        count = jnp.sum(applied)
        weights = applied.astype(trained.loss.dtype)
        stale = jnp.where(applied, staleness, 0).astype(trained.loss.dtype)
        arrived = jnp.sum(plan.active > 0)
        metrics = {
            "train_loss": jnp.where(count > 0, jnp.sum(weights * trained.loss) / jnp.maximum(count, 1), jnp.nan),
            "participants": count.astype(trained.loss.dtype),
            "local_steps": jnp.sum(weights * trained.steps),
            "bytes_up": (arrived * ctx.payload.up).astype(trained.loss.dtype),
            "bytes_down": (jnp.sum(plan.restart) * ctx.payload.down).astype(trained.loss.dtype),
            "staleness_mean": jnp.sum(stale) / jnp.maximum(count, 1),
            "staleness_max": jnp.max(jnp.where(applied, staleness, 0)).astype(trained.loss.dtype),
            "dropped_stale": jnp.sum((plan.active > 0) & ~fresh).astype(trained.loss.dtype),
            "forced_resync": jnp.sum(fresh & ~applied).astype(trained.loss.dtype),
            "server_version": version.astype(trained.loss.dtype),
        }
        for b in range(self.staleness_bins):
            top = staleness >= b if b == self.staleness_bins - 1 else staleness == b
            metrics[f"staleness_hist_{b}"] = jnp.sum(applied & top).astype(trained.loss.dtype)
        if self.log_events:
            metrics |= {"event_node": jnp.where(applied, plan.nodes, -1), "event_staleness": staleness}
        return metrics


def staleness_weight(kind: str, staleness, hparams) -> jax.Array:
    """FedAsync's ``S(t - tau)``: ``constant`` 1; ``polynomial`` ``(s + 1)^-a`` (traced
    ``staleness_a``); ``hinge`` 1 for ``s <= b``, else ``1 / (a (s - b) + 1)`` (traced
    ``staleness_a``, ``staleness_b``)."""
    s = jnp.asarray(staleness, jnp.result_type(float))
    if kind == "constant":
        return jnp.ones_like(s)
    a = hparams["staleness_a"]
    if kind == "polynomial":
        return (s + 1) ** (-a)
    return jnp.where(s <= hparams["staleness_b"], 1.0, 1.0 / (a * (s - hparams["staleness_b"]) + 1))


@dataclasses.dataclass(frozen=True)
class AsyncSGD(_AsyncServerAlgorithm):
    """Asynchronous SGD on a parameter server; ``staleness_aware`` divides the step by
    ``max(s, 1)`` (Zhang et al. 2016).  Traced ``server_lr``."""

    staleness_aware: bool = False

    @property
    def name(self) -> str:
        return "async_sgd"

    def default_hparams(self) -> dict[str, float]:
        return {"server_lr": 1.0}

    def apply(self, x, y, start, staleness, rule, hparams):
        c = hparams["server_lr"]
        if self.staleness_aware:
            c = c / jnp.maximum(staleness, 1).astype(jnp.result_type(float))
        return _tree_add_scaled(x, jax.tree_util.tree_map(jnp.subtract, y, start), c), True, rule


@dataclasses.dataclass(frozen=True)
class FedAsync(_AsyncServerAlgorithm):
    """FedAsync (Xie et al. 2019, "Asynchronous Federated Optimization"): ``x <- (1 - a) x + a y``
    with ``a = alpha S(s + staleness_offset)``.  Convention: the default offset 0 gives the
    freshest update ``S(0)``; Xie et al. index so that the freshest has ``t - tau = 1``
    (``staleness_offset=1``).  Traced ``alpha`` (the paper's mixing weight), ``mu`` (the
    proximal term toward the downloaded model), ``staleness_a``, ``staleness_b``."""

    staleness: str = "polynomial"
    staleness_offset: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_choice("staleness function", self.staleness, STALENESS_FUNCTIONS)

    @property
    def name(self) -> str:
        return f"fedasync_{self.staleness}"

    def terms(self) -> tuple:
        return (proximal("mu"),)

    def default_hparams(self) -> dict[str, float]:
        hp = {"alpha": 0.6, "mu": 0.0}
        if self.staleness != "constant":
            hp["staleness_a"] = 0.5
        if self.staleness == "hinge":
            hp |= {"staleness_a": 10.0, "staleness_b": 4.0}
        return hp

    def apply(self, x, y, start, staleness, rule, hparams):
        a = hparams["alpha"] * staleness_weight(self.staleness, staleness + self.staleness_offset, hparams)
        return jax.tree_util.tree_map(lambda u, v: (1 - a) * u + a * v, x, y), True, rule


class Buffer(NamedTuple):
    """FedBuff's server buffer: the weighted sum of updates and how many it holds."""

    total: Any
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class FedBuff(_AsyncServerAlgorithm):
    """FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous
    Aggregation"): see the module docstring.  Traced ``server_lr``."""

    buffer_size: int = 10
    aggregation: str = "mean"

    def __post_init__(self):
        super().__post_init__()
        check_choice("aggregation", self.aggregation, FEDBUFF_AGGREGATIONS)
        if not isinstance(self.buffer_size, int) or self.buffer_size < 1:
            raise ValueError(f"buffer_size must be a positive integer; got {self.buffer_size!r}")

    @property
    def name(self) -> str:
        return f"fedbuff_{self.buffer_size}"

    def default_hparams(self) -> dict[str, float]:
        return {"server_lr": 1.0}

    def init_rule(self, params):
        return Buffer(jax.tree_util.tree_map(jnp.zeros_like, params), jnp.zeros((), jnp.int32))

    def apply(self, x, y, start, staleness, rule, hparams):
        weight = (1.0 + staleness.astype(jnp.result_type(float))) ** -0.5
        if self.aggregation == "flsim":
            weight = weight * jnp.sqrt(2.0)
        total = _tree_add_scaled(rule.total, jax.tree_util.tree_map(jnp.subtract, y, start), weight)
        count = rule.count + 1
        full = count == self.buffer_size
        scale = hparams["server_lr"] / (self.buffer_size if self.aggregation == "mean" else 1)
        new_x = tree_where(full, _tree_add_scaled(x, total, scale), x)
        empty = jax.tree_util.tree_map(jnp.zeros_like, total)
        return new_x, full, Buffer(tree_where(full, empty, total), jnp.where(full, 0, count))


@dataclasses.dataclass(frozen=True)
class DCASGD(_AsyncServerAlgorithm):
    """DC-ASGD (Zheng et al. 2017, "Asynchronous SGD with Delay Compensation"), the constant
    ``lambda`` variant (traced ``dc_lambda``) with server step ``server_lr``.  The gradient is
    recovered from the update as ``g = (x_{v_i} - y_i) / client_lr``, exact for one local SGD
    step (``LocalTraining(steps=1, optimizer="sgd")``); with more steps it compensates the
    accumulated update."""

    @property
    def name(self) -> str:
        return "dcasgd"

    def default_hparams(self) -> dict[str, float]:
        return {"server_lr": 0.1, "dc_lambda": 0.04}

    def apply(self, x, y, start, staleness, rule, hparams):
        lr, lam = hparams["server_lr"], hparams["dc_lambda"]

        def step(w, yi, w_bak):
            g = (w_bak - yi) / hparams["client_lr"]
            return w - lr * (g + lam * g * g * (w - w_bak))

        return jax.tree_util.tree_map(step, x, y, start), True, rule
