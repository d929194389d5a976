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
from jax.sharding import Mesh

from edgejax.algorithms.base import REQUIRED_METRICS, Algorithm, AsynchronousAlgorithm, missing_parts
from edgejax.core.evaluate import evaluate
from edgejax.core.event_loop import run_ticks, skipped_metric
from edgejax.core.execution import RoundContext, build_execution, resolve_execution
from edgejax.core.local import LocalTraining, make_minibatch_gradient
from edgejax.core.results import Results
from edgejax.core.state import RoundPlan, SimState, default_float, round_keys
from edgejax.core.streams import stream_key
from edgejax.data.federated import FederatedData
from edgejax.data.host import HostNodeData
from edgejax.core.preflight import preflight
from edgejax.core.validation import check_choice, check_hparams
from edgejax.models.base import Model, num_bytes, num_parameters
from edgejax.parallel.nodes import NodeAxis, check_node_mesh
from edgejax.system.clock import Payload
from edgejax.system.model import SystemModel

# XLA:CPU compiles faster without its fusion emitters, with the same training bits on every program measured
# (an evaluation's mean can differ in its last bit: tests/test_simulation.py): init always (it runs once; W1:
# 2.3-2.4 s instead of 2.6-3.0 s, benchmarks/results/startup-cpu.md), the round chunk of a run with
# compile="fast" (the default run's: about 4 s instead of 7 s, its rounds 10-25% slower)
FAST_COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
# compile="auto" compiles for speed only when the run's local training would take longer than that saves:
# above about 5e10 FLOPs (a few seconds of this arithmetic on one CPU core, of which 25% is about a second)
FAST_COMPILE_MAX_FLOPS = 5e10
COMPILE_CHOICES = ("optimized", "fast", "auto")


@dataclasses.dataclass(frozen=True, eq=False)
class Simulation:
    """N edge nodes training ``model`` on ``data`` with ``algorithm``.

    Attributes:
      model: an init/apply ``Model`` matching the data's feature shape and classes.
      data: the device-resident ``FederatedData`` (node axis N).
      algorithm: any object following the algorithm protocol (``edgejax.algorithms.base``),
        e.g. ``FedAvg(server_optimizer="adam")``.
      local: the ``LocalTraining`` schedule and optimizer.
      clients_per_round: the cohort size K (static shape); ``None`` means all N nodes.
        The number that actually takes part is the traced hyper-parameter
        ``clients_per_round`` (<= K, default K).
      system: the ``SystemModel`` (device profiles, availability, selection, stragglers,
        deadlines, simulated clock); the default has every node online and equal devices.
      mesh: ``None`` (one device) or a device mesh with a ``nodes`` axis
        (``edgejax.parallel.node_mesh()``): ``run`` then stores every per-node array split
        over the devices and trains each device's nodes there (``edgejax.parallel.nodes``);
        the results equal the single-device run's to floating-point reassociation.
    """

    model: Model
    data: FederatedData
    algorithm: Algorithm | AsynchronousAlgorithm
    local: LocalTraining = LocalTraining()
    clients_per_round: int | None = None
    system: SystemModel = SystemModel()
    mesh: Mesh | None = None

    def __post_init__(self):
        missing = missing_parts(self.algorithm)
        if missing:
            raise TypeError(f"{type(self.algorithm).__name__} is not an edgejax algorithm: it lacks {missing} "
                            "(see edgejax.algorithms.base)")
        n = self.data.num_nodes
        if tuple(self.model.input_shape) != self.data.feature_shape:
            raise ValueError(f"model {self.model.name!r} expects inputs of shape {self.model.input_shape} "
                             f"but the data has feature shape {self.data.feature_shape}")
        if self.model.num_classes != self.data.num_classes:
            raise ValueError(f"model has {self.model.num_classes} classes but the data has {self.data.num_classes}")
        k = self.clients_per_round
        if k is not None and not (isinstance(k, (int, np.integer)) and 1 <= k <= n):
            raise ValueError(f"clients_per_round={k!r} must be an integer in [1, N={n}]")
        traits = self.algorithm.traits()
        if traits.full_cohort and k is not None and k != n:
            raise ValueError(f"{self.algorithm.name} trains every node each round; use clients_per_round=None "
                             f"(got {k} of N={n})")
        if isinstance(self.data.train, HostNodeData) and traits.full_cohort:
            raise ValueError(f"{self.algorithm.name} trains every node every round, which needs the node data on "
                             "the device; host-resident data (edgejax.data.host) streams a sampled cohort")
        if self.system.link_failures:
            if traits.topology is None or traits.asynchronous:
                raise ValueError(f"link failures need a synchronous decentralized algorithm with a topology; "
                                 f"{self.algorithm.name} has no communication graph or is asynchronous")
            traits.topology.check_link_failures()
        if traits.asynchronous:
            self.algorithm.check_nodes(n)
        if traits.sequential and (self.system.deadline_policy != "wait_all" or self.system.selection == "deadline"):
            raise ValueError(f"{self.algorithm.name} serves its nodes one after another, so a per-node round deadline "
                             f"does not apply (deadline_policy={self.system.deadline_policy!r}, "
                             f"selection={self.system.selection!r}); use deadline_policy='wait_all' and another selection")
        if self.mesh is not None:
            check_node_mesh(self.mesh)
        self.hparam_owners()
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
    def params_shape(self):
        """One model's parameters as shape structs."""
        return jax.eval_shape(self.model.init, jax.random.PRNGKey(0))

    @functools.cached_property
    def state_shape(self) -> SimState:
        """The simulation state as shape structs (``init`` traced with the default hyper-parameters)."""
        return jax.eval_shape(self.init, jax.random.PRNGKey(0), self.default_hparams())

    @functools.cached_property
    def payload(self) -> Payload:
        """The algorithm's ``Payload`` (a plain ``(up, down)`` pair gets ``compute = 1``), checked;
        an execution object's ``compute_scale()`` (e.g. a pipeline over several devices,
        ``edgejax.parallel.Pipelined``) multiplies every node's compute."""
        payload = Payload(*self.algorithm.payload(self.params_shape, self.num_nodes))
        scale = getattr(self.local.execution, "compute_scale", None)
        if scale is not None:
            payload = payload._replace(compute=np.asarray(payload.compute) * scale())
        payload.check(self.num_nodes)
        return payload

    @functools.cached_property
    def context(self) -> RoundContext:
        """What the algorithm's ``init``/``round`` get: the execution strategy built for the
        algorithm's ``Needs``, the schedule, sizes and payload."""
        max_steps, shuffles = self.schedule
        group_size = self.local.resolved_group_size(self.cohort_size)
        needs = self.algorithm.traits().needs
        return RoundContext(
            execution=build_execution(self.model, self.local, max_steps, shuffles, group_size, needs, self.mesh),
            model=self.model,
            local=self.local,
            model_bytes=num_bytes(self.params_shape),
            payload=self.payload,
            params_shape=self.params_shape,
            group_size=group_size,
            num_nodes=self.num_nodes,
            cohort_size=self.cohort_size,
            minibatch_gradient=make_minibatch_gradient(self.model, self.local, shuffles),
        )

    @functools.cached_property
    def node_axis(self) -> NodeAxis | None:
        """How the node axis lies on ``mesh`` (``None`` on one device)."""
        return None if self.mesh is None else NodeAxis(self.mesh, self.num_nodes)

    @property
    def execution(self) -> str:
        """The local execution strategy in use (``per_node`` or ``shared_base``)."""
        return resolve_execution(self.model, self.local, self.schedule[0], self.algorithm.traits().needs)

    # ----- hyper-parameters -------------------------------------------------------------
    def hparam_owners(self) -> dict[str, str]:
        """Which part owns each traced hyper-parameter (``local``, ``algorithm``, ``system``,
        ``simulation``); a name claimed by two parts is a ``ValueError`` naming both."""
        owners: dict[str, str] = {}
        parts = (("local", self.local.default_hparams()), ("algorithm", self.algorithm.default_hparams()),
                 ("system", self.system.default_hparams()), ("simulation", {"clients_per_round": 0.0}))
        for owner, names in parts:
            for name in names:
                if name in owners:
                    raise ValueError(f"hyper-parameter {name!r} is defined by both the {owners[name]} and the "
                                     f"{owner} ({self.algorithm.name}); rename one of them")
                owners[name] = owner
        return owners

    def default_hparams(self) -> dict[str, jax.Array]:
        """All traced hyper-parameters with their defaults (a dict of scalar arrays; the names'
        owners are checked when the simulation is built, ``hparam_owners``)."""
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
        check_hparams(hp, self.cohort_size, ranges=dict(self.algorithm.traits().ranges))
        return hp

    # ----- pure functions ---------------------------------------------------------------
    def init(self, key: jax.Array, hparams: dict, params=None, node_params=None, server_opt_state=None) -> SimState:
        """Initial state: one global model from ``key`` (or the given ``params``), per-node keys,
        algorithm state.  ``node_params [N, ...]``: every node's own starting model, for
        algorithms that keep one (decentralized training, FedMD); the others refuse it.
        ``server_opt_state``: the server optimizer's starting state (e.g. FedAdam's moments), with
        the structure, shapes and dtypes of the one ``init`` builds."""
        k_model, k_nodes, k_run, k_system = jax.random.split(key, 4)
        params = self.model.init(k_model) if params is None else self._checked_params(params, "params")
        node_rng = jax.random.split(k_nodes, self.num_nodes)
        nodes, server = self.algorithm.init(self.context, params, node_rng, hparams)
        if node_params is not None:
            if nodes.params == ():
                raise ValueError(f"{self.algorithm.name} keeps no per-node models (every node starts each round from "
                                 "the server's); give its starting model as params=")
            nodes = nodes._replace(params=self._checked_params(node_params, "node_params", (self.num_nodes,)))
        if server_opt_state is not None:
            server = server._replace(opt_state=_like(server_opt_state, server.opt_state, "server_opt_state"))
        traits = self.algorithm.traits()
        network = () if traits.topology is None else traits.topology.init_state(
            self.num_nodes, self.system.link_failures, neighbours=traits.asynchronous)
        system = self.system.init(k_system, self.num_nodes)
        if traits.asynchronous:
            system = self.system.start_events(stream_key(k_system, "event_clock"), system, self.local,
                                              self.data.train.count, self.context.payload, hparams,
                                              self.algorithm.concurrency, self.cohort_size)
            if hasattr(self.algorithm, "start_downloads"):   # optional: the first downloads, once the clock started
                server = self.algorithm.start_downloads(self.context, server, system.events, self.data.train, hparams)
        return SimState(round=jnp.zeros((), jnp.int32), rng=k_run, nodes=nodes, server=server, system=system,
                        network=network)

    def _checked_params(self, params, name: str, lead: tuple = ()):
        """``params`` with the model's structure and shapes (after the ``lead`` axes) and dtypes."""
        expected = self.params_shape
        leaves, got = jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(params)
        if (jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(expected)
                or any(tuple(g.shape) != lead + tuple(e.shape) for g, e in zip(got, leaves))):
            shapes = jax.tree_util.tree_map(lambda e: lead + tuple(e.shape), expected)
            raise ValueError(f"{name} must have the model's parameters with shapes {shapes}; got "
                             f"{jax.tree_util.tree_map(lambda g: tuple(jnp.shape(g)), params)}")
        return jax.tree_util.tree_map(lambda g, e: jnp.asarray(g, e.dtype), params, expected)

    def _plan(self, state: SimState, data: FederatedData, hparams: dict):
        self._refuse_asynchronous_plan()
        key = jax.random.fold_in(state.rng, state.round)
        links = state.network.table if self.system.link_failures else None
        return self.system.plan(key, state.system, state.round, hparams, self.cohort_size, self.local,
                                data.train.count, self.context.payload, links)

    def _refuse_asynchronous_plan(self):
        if self.algorithm.traits().asynchronous:
            raise ValueError(f"{self.algorithm.name} is asynchronous: the event clock schedules its arrivals a window "
                             "at a time (edgejax.system.events), not as a per-round plan; log_events=True reports "
                             "every arrival, and SystemModel(durations=...) fixes every job's duration")

    def plan(self, state: SimState, hparams: dict) -> RoundPlan:
        """The system model's plan for the state's next round (drawn from the run's key)."""
        return self._plan(state, self.data, hparams)[0]

    def make_plan(self, nodes=None, active=None, step_budget=None, minibatches=None) -> RoundPlan:
        """A user's own ``RoundPlan`` for ``round_with_plan``: ``nodes`` (the cohort's ids, default
        ``0..K-1``), ``active`` (default all 1), ``step_budget`` (default each node's full
        schedule) and ``minibatches`` (default: drawn from the round keys): explicit
        ``(slots [K, S, B], weights [K, S, B])`` in the form ``minibatches`` returns, node
        ``nodes[k]``'s step ``t`` training on rows ``slots[k, t]`` of its padded data with the
        loss weights ``weights[k, t]`` (0: not a sample).  They replace the local update's draws
        (``LocalTraining.minibatches``); an algorithm's own extra local work (Ditto's personal
        steps, FineTuned, FedRep's head epochs, SplitFed, gradient tracking) still draws its own.
        Shapes and values are checked here.  With the full cohort (K = N) the slots are put in
        node order, as in the system model's plans (algorithms then read every node's data
        without a gather)."""
        k = self.cohort_size
        nodes = jnp.arange(k, dtype=jnp.int32) if nodes is None else jnp.asarray(nodes, jnp.int32)
        if nodes.shape != (k,):
            raise ValueError(f"nodes must have shape ({k},) (the cohort size); got {nodes.shape}")
        if not bool(jnp.all((nodes >= 0) & (nodes < self.num_nodes))) or len(set(np.asarray(nodes).tolist())) != k:
            raise ValueError(f"nodes must be {k} distinct node ids in [0, {self.num_nodes}); got {np.asarray(nodes)}")
        active = jnp.ones((k,), jnp.result_type(float)) if active is None else jnp.asarray(active, jnp.result_type(float))
        planned = self.local.node_steps(self.data.train.count[nodes]).astype(jnp.int32)
        budget = planned if step_budget is None else jnp.asarray(step_budget, jnp.int32)
        for name, value in (("active", active), ("step_budget", budget)):
            if value.shape != (k,):
                raise ValueError(f"{name} must have shape ({k},); got {value.shape}")
        if self.system.link_failures or self.algorithm.traits().asynchronous:
            raise ValueError("with link failures or asynchronous training the system model draws the plan "
                             "(live links, the event clock); use round() instead")
        batches = () if minibatches is None else self._checked_minibatches(minibatches, nodes, budget)
        if k == self.num_nodes:
            order = jnp.argsort(nodes)
            nodes, active, budget = nodes[order], active[order], budget[order]
            batches = tuple(b[order] for b in batches)
        return RoundPlan(nodes, active, jnp.where(active > 0, budget, 0), minibatches=batches)

    def _checked_minibatches(self, minibatches, nodes, budget) -> tuple:
        """``make_plan``'s ``minibatches`` checked: two ``[K, S, B]`` arrays, slots of real samples
        (``< count``) where the weight is positive, weights finite and >= 0, every step the node
        runs with a positive weight."""
        train = self.data.train
        if isinstance(train, HostNodeData) or self.mesh is not None:
            raise ValueError("explicit minibatches need the node data on one device (no host-resident data, no mesh)")
        if not isinstance(minibatches, (tuple, list)) or len(minibatches) != 2:
            raise ValueError("minibatches must be (slots [K, S, B], weights [K, S, B]), as Simulation.minibatches "
                             f"returns; got {type(minibatches).__name__}")
        slots, weights = np.asarray(minibatches[0]), np.asarray(minibatches[1], float)
        shape = (self.cohort_size, self.schedule[0], self.local.batch_size)
        for name, value in (("slots", slots), ("weights", weights)):
            if value.shape != shape:
                raise ValueError(f"minibatches {name} must have shape {shape} (cohort, max local steps, batch size); "
                                 f"got {value.shape}")
        if not np.issubdtype(slots.dtype, np.integer):
            raise ValueError(f"minibatches slots must be integers; got dtype {slots.dtype}")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(weights) | (weights < 0))[0])
            raise ValueError(f"minibatches weights must be finite and >= 0; weights{list(bad)} = {weights[bad]}")
        counts = np.asarray(train.count)[np.asarray(nodes)][:, None, None]
        bad = np.argwhere((weights > 0) & ((slots < 0) | (slots >= counts)))
        if len(bad):
            k, t, b = (int(i) for i in bad[0])
            raise ValueError(f"minibatches slots[{k}, {t}, {b}] = {slots[k, t, b]} is not one of node "
                             f"{int(nodes[k])}'s {int(counts[k, 0, 0])} samples (a positive weight needs a real sample)")
        runs = np.arange(shape[1])[None, :] < np.asarray(budget)[:, None]
        empty = np.argwhere(runs & (weights.sum(axis=2) <= 0))
        if len(empty):
            k, t = (int(i) for i in empty[0])
            raise ValueError(f"minibatches step {t} of node {int(nodes[k])} has no positive weight (the node runs "
                             "that step)")
        return jnp.asarray(np.clip(slots, 0, train.x.shape[1] - 1), jnp.int32), jnp.asarray(weights, default_float())

    def minibatches(self, state: SimState, plan: RoundPlan) -> tuple[jax.Array, jax.Array]:
        """The minibatches the cohort of ``plan`` trains on in the round ``state`` is at:
        ``(slots [K, S, B], weights [K, S, B])``, node ``plan.nodes[k]``'s step ``t`` using rows
        ``slots[k, t]`` of its padded data (weight 0: padding), drawn from its round key
        ``fold_in(state.nodes.rng[i], state.round)`` in the order ``LocalTraining.minibatches``
        documents.  That is the key every synchronous algorithm trains with, except FedRep (it
        splits the key between its two phases); steps past ``plan.step_budget`` are not run.
        A plan with explicit ``minibatches`` (``make_plan``) trains on those: they are returned."""
        if plan.minibatches:
            return plan.minibatches
        max_steps, shuffles = self.schedule
        keys = round_keys(state.nodes.rng[plan.nodes], state.round)
        counts = jnp.asarray(self.data.train.count)[plan.nodes]
        train = self.data.train
        size = train.source.index.shape[1] if isinstance(train, HostNodeData) else train.x.shape[1]
        return jax.vmap(self.local.minibatches, in_axes=(0, 0, None, None, None))(keys, counts, size, max_steps,
                                                                                 shuffles)

    def round_with_plan(self, state: SimState, data: FederatedData, plan: RoundPlan, hparams: dict):
        """One round from an explicit ``plan`` (``make_plan``, or the system model's): the algorithm
        runs it, the clock charges it, ``state.round`` advances.  Returns ``(state, metrics)``."""
        self._refuse_asynchronous_plan()
        if plan.minibatches:   # every node's row of the data carries its explicit minibatches (the cohort's)
            shape = (self.num_nodes, *plan.minibatches[0].shape[1:])
            full = (jnp.zeros(shape, jnp.int32).at[plan.nodes].set(plan.minibatches[0]),
                    jnp.zeros(shape, plan.minibatches[1].dtype).at[plan.nodes].set(plan.minibatches[1]))
            data = data.replace(train=data.train._replace(minibatches=full))
        state, metrics = self.algorithm.round(self.context, state, data, plan, hparams)
        cost, system = self.system.charge(state.system, plan, self.local, data.train.count, self.context.payload,
                                          self.algorithm.traits().sequential)
        state = state._replace(round=state.round + 1, system=system)
        return (state if self.mesh is None else self.node_axis.constrain(state)), {**metrics, **cost}

    def round(self, state: SimState, data: FederatedData, hparams: dict):
        """One round: the system model draws a plan, the algorithm runs it, the clock charges it
        (asynchronous training: one tick of the event clock)."""
        if self.algorithm.traits().asynchronous:
            state, metrics = run_ticks(self, state, data, hparams, 1)
            return state, jax.tree_util.tree_map(lambda m: m[0], metrics)
        plan, system = self._plan(state, data, hparams)
        return self.round_with_plan(state._replace(system=system), data, plan, hparams)

    def run_rounds(self, state: SimState, data: FederatedData, hparams: dict, num_rounds: int,
                   active_rounds: jax.Array | None = None):
        """``num_rounds`` rounds in one ``lax.scan``; rounds at index >= ``active_rounds`` are skipped.

        Returns the new state and the per-round metrics stacked on a leading axis.
        """
        active_rounds = num_rounds if active_rounds is None else active_rounds
        if self.algorithm.traits().asynchronous:   # windows of ticks, same rows (edgejax.core.event_loop)
            return run_ticks(self, state, data, hparams, num_rounds, active_rounds)
        metric_shapes = self._traced_round.eval_shape(state, data, hparams)[1]
        missing = [name for name in REQUIRED_METRICS if name not in metric_shapes]
        if missing:
            raise TypeError(f"{self.algorithm.name}.round must report the metrics {list(REQUIRED_METRICS)}; "
                            f"it lacks {missing}")

        def body(st, i):
            def skip(s):
                return s, jax.tree_util.tree_map(skipped_metric, metric_shapes)

            return jax.lax.cond(i < active_rounds, lambda s: self._traced_round(s, data, hparams), skip, st)

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

    def sweep(self, rounds: int, points: list[dict] | dict | None = None, seeds=(0,), *, eval_every: int = 10,
              strategy: str = "auto", chunk_size: int | None = None, group_size: int | None = None,
              memory_bytes: int | None = None, progress: bool = False):
        """Run every hyper-parameter point with every seed: an ``edgejax.sweep.SweepResults``.

        ``points``: a list of override dicts (``edgejax.sweep.grid`` builds every combination)
        or a dict of zipped lists (``{"client_lr": [0.1, 0.3], "mu": [0.0, 0.01]}``: two
        points); ``None`` is one point of defaults.  Run ``(p, s)`` equals ``run(rounds, seed=s,
        hparams=points[p], eval_every=eval_every)`` (the same numbers up to floating-point
        reassociation under ``vmap``).  Every point of one static configuration shares one
        compiled program, reused by later sweeps with the same ``rounds`` and ``eval_every``.
        ``strategy``: ``auto`` (``loop`` on a CPU, ``vmap`` on accelerators), ``loop``, ``map``
        or ``vmap``; ``chunk_size`` points per program call (``map``/``vmap``; default: as many
        as ``memory_bytes``, 2 GiB, allows); ``group_size``: ``map`` only, points vmapped per
        step; ``progress``: a progress bar over points.
        """
        from edgejax.sweep.runner import sweep

        options = {} if memory_bytes is None else {"memory_bytes": memory_bytes}
        return sweep(self, rounds, points, seeds, eval_every=eval_every, strategy=strategy, chunk_size=chunk_size,
                     group_size=group_size, progress=progress, **options)

    @functools.cached_property
    def _traced_round(self):
        """``round`` under ``jax.jit``, so that ``run_rounds`` traces it once: the metric shapes
        and the scan's body share the cached trace (XLA inlines the call)."""
        return jax.jit(self.round)

    @functools.cached_property
    def _jit_chunk(self):
        """``run_chunk`` compiled; with a ``mesh`` it takes and returns the stored (padded,
        sharded) state and data (``edgejax.parallel.nodes``)."""
        return self._chunk_program(None)

    @functools.cached_property
    def _jit_chunk_fast(self):
        """``_jit_chunk`` compiled for a short compile (``FAST_COMPILE_OPTIONS``) on a CPU; the
        same program elsewhere."""
        return self._chunk_program(FAST_COMPILE_OPTIONS) if jax.default_backend() == "cpu" else self._jit_chunk

    def chunk_program(self, rounds: int, compile: str):
        """The round chunk a run of ``rounds`` rounds calls: ``compile`` is ``"optimized"``,
        ``"fast"`` (a shorter compile, slower rounds, on a CPU) or ``"auto"`` (fast when the
        run's local training is estimated below ``FAST_COMPILE_MAX_FLOPS``)."""
        check_choice("compile", compile, COMPILE_CHOICES)
        fast = compile == "fast" or (compile == "auto" and self.training_flops(rounds) < FAST_COMPILE_MAX_FLOPS)
        return self._jit_chunk_fast if fast else self._jit_chunk

    def training_flops(self, rounds: int) -> float:
        """A rough count of a run's local-training FLOPs: ``6 x parameters x batch x max local
        steps x cohort x rounds`` (forward and backward of a dense model)."""
        return 6.0 * num_parameters(self.params_shape) * self.local.batch_size * self.schedule[0] * \
            self.cohort_size * rounds

    def _chunk_program(self, options):
        donate = (0,)   # the chunk's state is replaced by the one it returns: updated in place
        if self.mesh is None:
            return jax.jit(self.run_chunk, static_argnums=(3,), donate_argnums=donate, compiler_options=options)
        axis = self.node_axis

        def stored_chunk(state, data, hparams, num_rounds, active_rounds):
            state = axis.constrain(axis.unpad(state, self.state_shape))
            data = axis.constrain(axis.unpad(data, self.data))
            if isinstance(data.train, HostNodeData):   # host-resident clients: each device fetches its own
                data = data.replace(train=data.train.on_mesh(self.mesh))
            state, round_metrics, eval_metrics = self.run_chunk(state, data, hparams, num_rounds, active_rounds)
            return axis.pad(state), round_metrics, eval_metrics

        stored = axis.shardings(self.state_shape)
        return jax.jit(stored_chunk, static_argnums=(3,), donate_argnums=donate, out_shardings=(stored, None, None),
                       compiler_options=options)

    @functools.cached_property
    def _jit_init(self):
        """``init`` as one compiled program (eagerly it compiles dozens of tiny ones); with a
        ``mesh`` it returns the stored state.  On a CPU it is compiled without XLA's fusion
        emitters (``FAST_COMPILE_OPTIONS``)."""
        options = FAST_COMPILE_OPTIONS if jax.default_backend() == "cpu" else None
        if self.mesh is None:
            return jax.jit(self.init, compiler_options=options)
        axis = self.node_axis
        return jax.jit(lambda key, hparams: axis.pad(self.init(key, hparams)),
                       out_shardings=axis.shardings(self.state_shape), compiler_options=options)

    @functools.cached_property
    def stored_data(self) -> FederatedData:
        """The data as ``_jit_chunk`` takes it: ``data`` itself, or with a ``mesh`` padded and split."""
        return self.data if self.mesh is None else self.node_axis.place(self.data)

    def stored_state(self, state: SimState) -> SimState:
        """A logical state (e.g. a restored checkpoint) as ``_jit_chunk`` takes it."""
        return state if self.mesh is None else self.node_axis.place(state)

    def logical_state(self, state: SimState) -> SimState:
        """A state from ``_jit_chunk`` with its logical shapes (host arrays with a ``mesh``)."""
        return state if self.mesh is None else self.node_axis.to_host(state, self.state_shape)

    # ----- host loop --------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Static configuration as plain values (for ``run.json``)."""
        local = dataclasses.asdict(self.local)
        if callable(local["optimizer"]):
            local["optimizer"] = getattr(local["optimizer"], "__name__", repr(local["optimizer"]))
        return {"model": self.model.name, "model_parameters": num_parameters(self.params_shape),
                "loss": self.model.loss.name,
                "dataset": self.data.name, "num_nodes": self.num_nodes, "cohort_size": self.cohort_size,
                "algorithm": self.algorithm.describe(), "local": local, "execution": self.execution,
                "node_devices": 1 if self.mesh is None else self.node_axis.devices,
                "max_local_steps": self.schedule[0]}

    def run(self, rounds: int, **options) -> Results:
        """Run ``rounds`` rounds: the host loop ``edgejax.core.runner.run`` (see there for the
        options: ``seed``, ``hparams``, ``eval_every``, ``out_dir``, ``progress``,
        ``checkpoint_every``, ``keep_checkpoints``, ``resume``, ``overwrite``, ``callbacks``,
        ``compile``)."""
        from edgejax.core.runner import run

        return run(self, rounds, **options)


def _like(tree, reference, name: str):
    """``tree`` cast to ``reference``'s dtypes; a ``ValueError`` naming ``name`` unless its structure
    and shapes are ``reference``'s."""
    got, want = jax.tree_util.tree_structure(tree), jax.tree_util.tree_structure(reference)
    if got != want:
        raise ValueError(f"{name} must have the structure {want}; got {got}")
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(reference)):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"{name} has a leaf of shape {jnp.shape(a)} where {jnp.shape(b)} is expected")
    return jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, b.dtype), tree, reference)

