"""A simulation: static structure (model, data layout, algorithm, local training, cohort)
plus pure, jittable ``init``/``round`` functions and a host loop that runs them.

The round loop is ``lax.scan`` over a chunk of ``eval_every`` rounds followed by an
evaluation, all in one jitted program that is compiled once per run (the last,
shorter chunk reuses it: rounds past the end are skipped by a ``lax.cond`` on a
traced round count).  Between chunks the host records metrics, checks the
training loss for NaN/inf, updates the progress bar and writes results.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.core.evaluate import evaluate
from edgejax.core.local import LocalTraining, make_local_update, make_per_node_delta
from edgejax.data.federated import FederatedData
from edgejax.core.results import Results
from edgejax.core.shared_base import make_shared_base_delta, resolve_execution
from edgejax.core.state import RoundPlan, SimState
from edgejax.core.preflight import preflight
from edgejax.core.validation import check_hparams
from edgejax.models.base import Model, num_bytes, num_parameters
from edgejax.system.model import SystemModel


@dataclasses.dataclass(frozen=True)
class LocalContext:
    """What an algorithm's round needs from the simulation (static).

    ``local_update``: one node's update from given parameters (see ``make_local_update``);
    ``local_delta(x, cohort, keys, budget, p, hparams) -> (sum_i p_i (x_i - x), loss [K],
    steps [K])``: the cohort's weighted model change under the chosen execution strategy;
    ``group_size``: how node-wise work is mapped; ``model_bytes``: one model's size;
    ``local``: the static local-training description.
    """

    local_update: Any
    local_delta: Any
    group_size: int | None
    model_bytes: int
    local: LocalTraining


@dataclasses.dataclass(frozen=True, eq=False)
class Simulation:
    """N edge nodes training ``model`` on ``data`` with ``algorithm``.

    Attributes:
      model: an init/apply ``Model`` matching the data's feature shape and classes.
      data: the device-resident ``FederatedData`` (node axis N).
      algorithm: e.g. ``FedAvg(server_optimizer="adam")``.
      local: the ``LocalTraining`` schedule and optimizer.
      clients_per_round: the cohort size K (static shape); ``None`` means all N nodes.
        The number that actually takes part is the traced hyper-parameter
        ``clients_per_round`` (<= K, default K).
      system: the ``SystemModel`` (device profiles, availability, selection, stragglers,
        deadlines, simulated clock); the default has every node online and equal devices.
    """

    model: Model
    data: FederatedData
    algorithm: Any
    local: LocalTraining = LocalTraining()
    clients_per_round: int | None = None
    system: SystemModel = SystemModel()

    def __post_init__(self):
        n = self.data.num_nodes
        if tuple(self.model.input_shape) != self.data.feature_shape:
            raise ValueError(f"model {self.model.name!r} expects inputs of shape {self.model.input_shape} "
                             f"but the data has feature shape {self.data.feature_shape}")
        if self.model.num_classes != self.data.num_classes:
            raise ValueError(f"model has {self.model.num_classes} classes but the data has {self.data.num_classes}")
        k = self.clients_per_round
        if k is not None and not (isinstance(k, (int, np.integer)) and 1 <= k <= n):
            raise ValueError(f"clients_per_round={k!r} must be an integer in [1, N={n}]")
        preflight(self)

    # ----- static structure -------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self.data.num_nodes

    @property
    def cohort_size(self) -> int:
        return self.num_nodes if self.clients_per_round is None else int(self.clients_per_round)

    @functools.cached_property
    def schedule(self) -> tuple[int, int]:
        """Static ``(max local steps, shuffles per round)`` for this data."""
        return self.local.schedule(self.data.node_counts())

    @functools.cached_property
    def context(self) -> LocalContext:
        max_steps, shuffles = self.schedule
        params = jax.eval_shape(self.model.init, jax.random.PRNGKey(0))
        regularizer = getattr(self.algorithm, "regularizer", None)
        local_update = make_local_update(self.model, self.local, max_steps, shuffles, regularizer)
        group_size = self.local.resolved_group_size(self.cohort_size)
        if resolve_execution(self.model, self.local, max_steps, regularizer) == "shared_base":
            local_delta = make_shared_base_delta(self.model, self.local, max_steps, shuffles, regularizer=regularizer)
        else:
            local_delta = make_per_node_delta(local_update, group_size)
        return LocalContext(
            local_update=local_update,
            local_delta=local_delta,
            group_size=group_size,
            local=self.local,
            model_bytes=num_bytes(params),
        )

    # ----- hyper-parameters -------------------------------------------------------------
    def default_hparams(self) -> dict[str, jax.Array]:
        """All traced hyper-parameters with their defaults (a dict of scalar arrays)."""
        values = {**self.local.default_hparams(), **self.algorithm.default_hparams(),
                  **self.system.default_hparams(), "clients_per_round": float(self.cohort_size)}
        return {k: jnp.asarray(v, dtype=jnp.result_type(float)) for k, v in values.items()}

    def hparams(self, overrides: dict | None = None) -> dict[str, jax.Array]:
        """Defaults updated with ``overrides``; unknown names and bad values raise ``ValueError``."""
        hp = self.default_hparams()
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(hp))
        if unknown:
            raise ValueError(f"unknown hyper-parameter(s) {unknown}; this simulation takes {sorted(hp)}")
        for name, value in overrides.items():
            hp[name] = jnp.asarray(value, dtype=hp[name].dtype)
        check_hparams(hp, self.cohort_size)
        return hp

    # ----- pure functions ---------------------------------------------------------------
    def init(self, key: jax.Array, hparams: dict) -> SimState:
        """Initial state: one global model from ``key``, per-node keys, algorithm state."""
        k_model, k_nodes, k_run, k_system = jax.random.split(key, 4)
        params = self.model.init(k_model)
        node_rng = jax.random.split(k_nodes, self.num_nodes)
        nodes, server = self.algorithm.init(params, node_rng, hparams)
        return SimState(round=jnp.zeros((), jnp.int32), rng=k_run, nodes=nodes, server=server,
                        system=self.system.init(k_system, self.num_nodes))

    def _plan(self, state: SimState, data: FederatedData, hparams: dict):
        key = jax.random.fold_in(state.rng, state.round)
        return self.system.plan(key, state.system, state.round, hparams, self.cohort_size, self.local,
                                data.train.count, self.context.model_bytes)

    def plan(self, state: SimState, hparams: dict) -> RoundPlan:
        """The system model's plan for the state's next round (drawn from the run's key)."""
        return self._plan(state, self.data, hparams)[0]

    def round(self, state: SimState, data: FederatedData, hparams: dict):
        """One round: the system model draws a plan, the algorithm runs it, the clock charges it."""
        plan, system = self._plan(state, data, hparams)
        state, metrics = self.algorithm.round(self.context, state, data, plan, hparams)
        per_node = metrics["bytes_up"] / jnp.maximum(metrics["participants"], 1.0)
        cost, system = self.system.charge(system, plan, self.local, data.train.count, per_node)
        return state._replace(round=state.round + 1, system=system), {**metrics, **cost}

    def run_rounds(self, state: SimState, data: FederatedData, hparams: dict, num_rounds: int,
                   active_rounds: jax.Array | None = None):
        """``num_rounds`` rounds in one ``lax.scan``; rounds at index >= ``active_rounds`` are skipped.

        Returns the new state and the per-round metrics stacked on a leading axis.
        """
        active_rounds = num_rounds if active_rounds is None else active_rounds
        metric_shapes = jax.eval_shape(self.round, state, data, hparams)[1]

        def body(st, i):
            def skip(s):
                return s, jax.tree_util.tree_map(lambda m: jnp.full(m.shape, jnp.nan, m.dtype), metric_shapes)

            return jax.lax.cond(i < active_rounds, lambda s: self.round(s, data, hparams), skip, st)

        return jax.lax.scan(body, state, jnp.arange(num_rounds))

    def evaluate(self, state: SimState, data: FederatedData) -> dict:
        """Metrics of the algorithm's models: ``eval_models(state) -> (model, node models or None)``
        (FedAvg: the server model; decentralized: the node average and every node's own model)."""
        params, node_params = self.algorithm.eval_models(state)
        return evaluate(self.model, params, data, self.context.group_size, node_params)

    def run_chunk(self, state, data, hparams, num_rounds: int, active_rounds):
        """``run_rounds`` followed by ``evaluate``: the program the host loop calls."""
        state, round_metrics = self.run_rounds(state, data, hparams, num_rounds, active_rounds)
        return state, round_metrics, self.evaluate(state, data)

    def sweep(self, rounds: int, hparams: dict, seeds) -> tuple[dict, dict]:
        """Run ``P`` configurations as ONE vmapped program: ``hparams`` maps names to arrays of
        length ``P`` (names left out keep their defaults), ``seeds`` has length ``P``.

        Returns ``(round_metrics, final_eval)``: each metric stacked as ``[P, rounds]`` and
        the final evaluation as ``[P]``.  Point ``p`` equals ``run(rounds, seed=seeds[p],
        hparams={k: v[p]})`` (same numbers up to floating-point reassociation).
        """
        seeds = np.asarray(seeds)
        defaults = self.default_hparams()
        unknown = sorted(set(hparams) - set(defaults))
        if unknown:
            raise ValueError(f"unknown hyper-parameter(s) {unknown}; this simulation takes {sorted(defaults)}")
        check_hparams({**defaults, **hparams}, self.cohort_size, points=seeds.size)
        stacked = {k: jnp.broadcast_to(jnp.asarray(hparams.get(k, v), v.dtype), seeds.shape)
                   for k, v in defaults.items()}

        def one(seed, hp):
            state = self.init(jax.random.PRNGKey(seed), hp)
            state, metrics = self.run_rounds(state, self.data, hp, rounds)
            return metrics, self.evaluate(state, self.data)

        return jax.jit(jax.vmap(one))(jnp.asarray(seeds), stacked)

    @functools.cached_property
    def _jit_chunk(self):
        donate = (0,) if jax.default_backend() != "cpu" else ()
        return jax.jit(self.run_chunk, static_argnums=(3,), donate_argnums=donate)

    @functools.cached_property
    def _jit_evaluate(self):
        return jax.jit(self.evaluate)

    # ----- host loop --------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Static configuration as plain values (for ``run.json``)."""
        params = jax.eval_shape(self.model.init, jax.random.PRNGKey(0))
        local = dataclasses.asdict(self.local)
        if callable(local["optimizer"]):
            local["optimizer"] = getattr(local["optimizer"], "__name__", repr(local["optimizer"]))
        return {"model": self.model.name, "model_parameters": num_parameters(params),
                "dataset": self.data.name, "num_nodes": self.num_nodes, "cohort_size": self.cohort_size,
                "algorithm": dataclasses.asdict(self.algorithm) | {"name": self.algorithm.name},
                "local": local, "max_local_steps": self.schedule[0]}

    def run(self, rounds: int, **options) -> Results:
        """Run ``rounds`` rounds: the host loop ``edgejax.core.runner.run`` (see there for the
        options: ``seed``, ``hparams``, ``eval_every``, ``out_dir``, ``progress``,
        ``checkpoint_every``, ``keep_checkpoints``, ``resume``, ``overwrite``)."""
        from edgejax.core.runner import run

        return run(self, rounds, **options)
