"""One sweep point as a pure function, and its compiled forms cached per static configuration.

A point is ``(seed, hparams) -> (round metrics [rounds], evaluations [E])``: the run of
``Simulation.run(rounds, seed=seed, hparams=hparams, eval_every=e)`` as one program
(``init``, an evaluation, then ``lax.scan`` over chunks of ``e`` rounds, each followed by
an evaluation; the last, shorter chunk skips its extra rounds exactly as ``run`` does).

Execution strategies (the same numbers; they change the schedule, not the maths):

* ``loop``: one compiled point, called once per point (best on a CPU, whose cores a
  single point already keeps busy);
* ``map``: ``lax.map`` over a chunk of points inside one program (``group`` points vmapped
  per step);
* ``vmap``: a chunk of points vmapped into one program (best where the device has idle
  width: GPUs, TPUs).

Compiled functions live in a ``WeakKeyDictionary`` keyed by the ``Simulation`` (static
structure) and by ``(strategy, rounds, eval_every, group)``, so calling a sweep again
compiles nothing; they hold the simulation weakly, so a dropped simulation takes its
programs with it.
"""
from __future__ import annotations

import math
import weakref

import jax
import jax.numpy as jnp

STRATEGIES = ("auto", "loop", "map", "vmap")

_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def resolve_strategy(strategy: str) -> str:
    """``auto``: ``vmap`` on accelerators, ``loop`` on a CPU (many tiny per-point programs on few cores)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"sweep strategy {strategy!r} is not one of {STRATEGIES}")
    if strategy == "auto":
        return "loop" if jax.default_backend() == "cpu" else "vmap"
    return strategy


def eval_rounds(rounds: int, eval_every: int) -> list[int]:
    """Rounds after which a point is evaluated: 0, then every ``eval_every`` and the last (as ``run``)."""
    return [0, *range(eval_every, rounds, eval_every), rounds]


def make_point(sim, rounds: int, eval_every: int):
    """``point(seed, hparams, data) -> (round metrics {k: [rounds]}, evaluations {k: [E]})``.

    The initial evaluation is the first step of the scan with zero active rounds, so the
    program holds one copy of the round chunk and one of the evaluation.
    """
    chunks = math.ceil(rounds / eval_every)

    def point(seed, hparams, data):
        state = sim.init(jax.random.PRNGKey(seed), hparams)

        def chunk(st, c):
            active = jnp.clip(rounds - (c - 1) * eval_every, 0, eval_every) * (c > 0)
            st, metrics = sim.run_rounds(st, data, hparams, eval_every, active)
            return st, (metrics, sim.evaluate(st, data))

        _, (metrics, evals) = jax.lax.scan(chunk, state, jnp.arange(chunks + 1))
        metrics = {k: v[1:].reshape(chunks * eval_every, *v.shape[2:])[:rounds] for k, v in metrics.items()}
        return metrics, evals

    return point


def compiled(sim, strategy: str, rounds: int, eval_every: int, group: int | None = None):
    """The jitted program of ``strategy`` for this simulation, built once and reused.

    ``loop``: ``f(seed, hparams, data)`` for one point; ``map`` and ``vmap``:
    ``f(seeds [C], hparams {k: [C]}, data)`` for a chunk of ``C`` points (``map``: ``group``
    points vmapped per step, one at a time when ``None``).
    """
    key = (strategy, rounds, eval_every, group)
    programs = _PROGRAMS.setdefault(sim, {})
    if key not in programs:
        point = make_point(weakref.proxy(sim), rounds, eval_every)
        if strategy == "loop":
            fn = point
        elif strategy == "vmap":
            fn = jax.vmap(point, in_axes=(0, 0, None))
        elif strategy == "map":
            def fn(seeds, hparams, data):
                return jax.lax.map(lambda a: point(a[0], a[1], data), (seeds, hparams), batch_size=group)
        else:
            raise ValueError(f"sweep strategy {strategy!r} is not one of {STRATEGIES[1:]}")
        programs[key] = jax.jit(fn)
    return programs[key]


def compile_count(sim) -> int:
    """How many programs the sweeps of this simulation have compiled so far (all strategies)."""
    return sum(fn._cache_size() for fn in _PROGRAMS.get(sim, {}).values())
