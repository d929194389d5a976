"""``SystemModel``: devices and network inside the jitted round.

Each round, drawn from the state's rng (no host round-trip):

1. availability (always / Bernoulli dropout / two-state Markov / a user's trace) says who is online;
2. selection picks the cohort among the online nodes: ``uniform`` (McMahan et al. 2017),
   ``deadline`` (FedCS-style: the fastest nodes whose estimated round time fits the
   deadline), or ``tier`` (TiFL-style: one random tier, uniform inside it);
3. stragglers (the FedProx paper's simulation): a traced fraction ``straggler_fraction`` of
   the selected nodes are stragglers; ``drop`` removes them (FedAvg), ``partial_epochs``
   gives each a uniformly random number of epochs in ``1..E-1`` (FedProx; in ``steps``
   mode a random number of steps in ``1..S-1``);
4. the deadline policy (``wait_all``, ``drop_late``, ``partial``) turns the traced
   ``deadline`` (seconds) into the final active mask and step budgets.

With ``link_failures=True`` the plan also says which links of the algorithm's
communication graph are up (``RoundPlan.live_links``): each undirected link fails
independently with the traced probability ``link_failure`` (the same draw at both ends).

Plans and charges use the same costs: the algorithm's ``Payload`` (bytes up and down per
participating node, which may differ, and the fraction of the full model's training compute
it runs; each a scalar or one value per node, gathered to the cohort with ``plan.nodes``).
After the round, the simulated clock charges every active node download + compute + upload
under its ``DeviceProfiles`` and reports the makespan, the cumulative simulated time and the
energy; each node's ``busy_until`` (the simulated time at which it finished its last round's
work) is kept in the state.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from edgejax import network as tp
from edgejax.core.state import RoundPlan, default_float, tree_take
from edgejax.core.streams import stream_key
from edgejax.core.validation import check_choice
from edgejax.system.availability import Availability
from edgejax.system.clock import POLICIES, deadline_plan, node_times, round_cost
from edgejax.system.events import EventState, base_durations, schedule_window, start_events
from edgejax.system.profiles import DeviceProfiles, uniform_profiles
from edgejax.system.selection import select_deadline_greedy, select_tier, select_uniform

SELECTIONS = ("uniform", "deadline", "tier")
STRAGGLERS = ("none", "drop", "partial_epochs")


class SystemState(NamedTuple):
    """``profiles`` (per node), ``online`` (availability state [N]), ``clock`` (simulated
    seconds), ``busy_until [N]`` (simulated time at which each node finishes, or finished, its
    work), ``events`` (asynchronous training: the event clock's slots and jobs,
    ``edgejax.system.events.EventState``; ``()`` otherwise)."""

    profiles: DeviceProfiles
    online: jax.Array
    clock: jax.Array
    busy_until: jax.Array
    events: EventState | tuple = ()


@dataclasses.dataclass(frozen=True, eq=False)
class SystemModel:
    """Static description of the devices and the network (see the module docstring).

    Attributes:
      profiles: per-node ``DeviceProfiles``; ``None`` gives every node ``uniform_profiles``.
      availability: an ``Availability`` process.
      selection: one of ``SELECTIONS``.
      stragglers: one of ``STRAGGLERS``.
      deadline_policy: one of ``edgejax.system.clock.POLICIES``.
      num_tiers: tiers for ``tier`` selection (``profiles.tier`` in ``0..num_tiers-1``).
      link_failures: links of the algorithm's graph fail each round with the traced
        probability ``link_failure`` (decentralized algorithms on a fixed graph with
        Metropolis-Hastings weights, which are rebuilt on the live links).
      jitter: asynchronous training draws every job's duration as the profile's time (or the
        ``durations`` trace's) times mean-one lognormal noise of traced spread
        ``duration_jitter``, drawn per (node, job) (see ``edgejax.system.events``).
      durations: asynchronous training: a user's trace of job durations ``[N, J]`` in seconds
        (node i's job k lasts ``durations[i, k % J]``) instead of the profiles' times.
    """

    profiles: DeviceProfiles | None = None
    availability: Availability = Availability()
    selection: str = "uniform"
    stragglers: str = "none"
    deadline_policy: str = "wait_all"
    num_tiers: int = 3
    link_failures: bool = False
    jitter: bool = False
    durations: np.ndarray | None = None

    def __post_init__(self):
        if self.durations is not None:
            trace = np.array(self.durations, dtype=float)
            if trace.ndim != 2 or 0 in trace.shape:
                raise ValueError(f"durations must be a non-empty [N, J] array of seconds; got shape {trace.shape}")
            bad = np.argwhere(~(np.isfinite(trace) & (trace > 0)))
            if bad.size:
                i, k = bad[0]
                raise ValueError(f"durations[{i}, {k}] = {float(trace[i, k])!r} must be finite and > 0 seconds")
            trace.setflags(write=False)
            object.__setattr__(self, "durations", trace)
        check_choice("selection", self.selection, SELECTIONS)
        check_choice("stragglers", self.stragglers, STRAGGLERS)
        check_choice("deadline_policy", self.deadline_policy, POLICIES)

    def default_hparams(self) -> dict[str, float]:
        """Traced system hyper-parameters: ``dropout``, ``straggler_fraction``, ``deadline``."""
        hp = dict(self.availability.default_hparams())
        if self.stragglers != "none":
            hp["straggler_fraction"] = 0.0
        if self.deadline_policy != "wait_all" or self.selection == "deadline":
            hp["deadline"] = 60.0
        if self.link_failures:
            hp["link_failure"] = 0.0
        if self.jitter:
            hp["duration_jitter"] = 0.5
        return hp

    def init(self, key: jax.Array, n: int) -> SystemState:
        profiles = uniform_profiles(n) if self.profiles is None else self.profiles
        if profiles.speed.shape[0] != n:
            raise ValueError(f"the device profiles describe {profiles.speed.shape[0]} nodes but N={n}")
        return SystemState(profiles, self.availability.init(key, n), jnp.zeros((), default_float()),
                           jnp.zeros((n,), default_float()))

    def plan(self, key, system: SystemState, round_, hparams, cohort_size: int, local, counts,
             payload, links: tp.NeighbourTable | None = None) -> tuple[RoundPlan, SystemState]:
        """This round's ``RoundPlan`` and the next availability state.

        ``payload``: the algorithm's ``Payload`` (bytes up and down, compute fraction); ``links``:
        the communication graph's neighbour table when links can fail (``link_failures``).
        """
        k_avail, k_select, k_strag, k_epochs = jax.random.split(key, 4)
        online, state = self.availability.step(k_avail, system.online, round_, hparams)
        count = hparams["clients_per_round"]
        profiles = system.profiles
        if self.selection == "uniform":
            nodes, active = select_uniform(k_select, online, cohort_size, count)
        elif self.selection == "tier":
            nodes, active = select_tier(k_select, profiles.tier, online, cohort_size, count, self.num_tiers)
        else:
            est = sum(node_times(profiles, local.node_steps(counts), local.batch_size, payload.down, payload.up,
                                 payload.compute))
            nodes, active = select_deadline_greedy(k_select, est, online, hparams["deadline"], cohort_size, count)
        planned = local.node_steps(counts[nodes])
        budget = jnp.where(active > 0, planned, 0)
        if self.stragglers != "none":
            straggler = (jax.random.uniform(k_strag, active.shape) < hparams["straggler_fraction"]) & (active > 0)
            if self.stragglers == "drop":
                active = jnp.where(straggler, 0.0, active).astype(active.dtype)
                budget = jnp.where(straggler, 0, budget)
            else:
                budget = jnp.where(straggler, self._partial_budget(k_epochs, local, counts[nodes], planned), budget)
        if self.deadline_policy != "wait_all":
            cohort = payload.take(nodes)
            active, limit = deadline_plan(self.deadline_policy, hparams["deadline"], tree_take(profiles, nodes),
                                          active, budget, local.batch_size, cohort.down, cohort.up, cohort.compute)
            budget = jnp.minimum(budget, limit)
        budget = jnp.where(active > 0, budget, 0).astype(jnp.int32)
        live = ()
        if self.link_failures:
            live = tp.draw_live_edges(stream_key(key, "link_failures"), links, hparams["link_failure"])
        return RoundPlan(nodes.astype(jnp.int32), active, budget, live), system._replace(online=state)

    @staticmethod
    def _partial_budget(key, local, counts, planned):
        """FedProx's stragglers: a uniform number of epochs in 1..E-1 (steps in 1..S-1)."""
        units = local.epochs if local.epochs is not None else local.steps
        per_unit = local.steps_per_epoch(counts) if local.epochs is not None else jnp.ones_like(counts)
        drawn = jax.random.randint(key, counts.shape, 1, jnp.maximum(units, 2))
        return jnp.minimum(drawn * per_unit, planned)

    def charge(self, system: SystemState, plan: RoundPlan, local, counts, payload,
               sequential: bool = False) -> tuple[dict, SystemState]:
        """Simulated time and energy of the round just run (``payload``: the algorithm's
        ``Payload``, as planned); advances the clock and ``busy_until``.  The round takes its
        slowest active node's time; ``sequential`` (static: nodes served one after another in
        cohort order, ``Traits.sequential``): the sum of their times, node ``k`` finishing
        after the active nodes before it."""
        steps = jnp.minimum(local.node_steps(counts[plan.nodes]), plan.step_budget)
        cohort = payload.take(plan.nodes)
        cost = round_cost(tree_take(system.profiles, plan.nodes), plan.active, steps, local.batch_size,
                          cohort.down, cohort.up, cohort.compute)
        ends = jnp.cumsum(cost.total_s) if sequential else cost.total_s   # inactive nodes cost 0
        elapsed = jnp.sum(cost.total_s) if sequential else cost.makespan_s
        clock = system.clock + elapsed
        finished = jnp.where(plan.active > 0, system.clock + ends, system.busy_until[plan.nodes])
        metrics = {"round_time_s": elapsed, "sim_time_s": clock, "energy_j": jnp.sum(cost.energy_j)}
        return metrics, system._replace(clock=clock, busy_until=system.busy_until.at[plan.nodes].set(finished))

    # ----- asynchronous training: the event clock (edgejax.system.events) --------------------
    def _jitter(self, hparams):
        return hparams["duration_jitter"] if self.jitter else None

    def start_events(self, key, system: SystemState, local, counts, payload, hparams, concurrency: int | None,
                     cohort_size: int) -> SystemState:
        """Every slot's first job starts at time 0 (``concurrency`` nodes in flight; ``None``: all)."""
        n = counts.shape[0]
        if self.durations is not None and self.durations.shape[0] != n:
            raise ValueError(f"the durations trace describes {self.durations.shape[0]} nodes but N={n}")
        base = base_durations(system.profiles, local.node_steps(counts), local.batch_size, payload)
        events, busy = start_events(key, base, n, concurrency, cohort_size, self._jitter(hparams), self.durations)
        return system._replace(busy_until=busy, events=events)

    def schedule_window(self, run_key, first_tick, ticks_left, system: SystemState, hparams, local, counts, payload,
                        *, window: int, cohort_size: int, bounded: bool):
        """The next window of arrivals (``edgejax.system.events.schedule_window``) and the new state:
        the clock at the window's last tick, availability stepped once per tick, ``busy_until``
        of the nodes that started a job."""
        win, events, online, clock = schedule_window(
            run_key, first_tick, ticks_left, system.events, system.online, system.clock, system.profiles,
            self.availability, hparams, window=window, cohort=cohort_size, bounded=bounded,
            steps=local.node_steps(counts), batch_size=local.batch_size, payload=payload,
            jitter=self._jitter(hparams), trace=self.durations)
        started = jnp.where(jnp.arange(win.restart_node.shape[0]) < win.n_restarts, win.restart_node, counts.shape[0])
        busy = system.busy_until.at[started].set(events.finish[win.restart_slot], mode="drop")
        return win, system._replace(events=events, online=online, clock=clock, busy_until=busy)
