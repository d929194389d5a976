"""Run sweep points with an execution strategy, in memory-bounded chunks."""
from __future__ import annotations

import time

import jax
import numpy as np

from edgejax.models.base import num_bytes
from edgejax.sweep.grid import zip_points
from edgejax.sweep.program import compiled, eval_rounds, resolve_strategy
from edgejax.sweep.results import SweepResults

DEFAULT_MEMORY_BYTES = 2 << 30


def point_bytes(sim) -> int:
    """Rough device memory of one point in flight: its state plus four model copies per cohort
    node (local weights, gradients, optimizer state, update)."""
    return num_bytes(sim.state_shape) + 4 * sim.cohort_size * num_bytes(sim.params_shape)


def _chunk_size(sim, strategy: str, total: int, chunk_size: int | None, memory_bytes: int) -> int:
    if strategy == "loop":
        return 1
    if chunk_size is not None:
        if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
        return min(int(chunk_size), total)
    return max(1, min(total, memory_bytes // point_bytes(sim)))


def stack(sim, overrides: list[dict]) -> dict[str, np.ndarray]:
    """Every point's full hyper-parameters (validated by ``sim.hparams``; an error names the
    point), stacked on axis 0."""
    rows = []
    for p, point in enumerate(overrides):
        try:
            rows.append(sim.hparams(point))
        except ValueError as err:
            raise ValueError(f"sweep point {p} {point}: {err}") from None
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


class _Placement:
    """Where a chunk's points go: with several devices and the ``vmap`` strategy, the chunk
    (rounded up to a multiple of the device count) is split over a ``points`` mesh axis, so
    the vmapped program runs ``chunk / D`` points on every device (GSPMD); else as given."""

    def __init__(self, devices: list, chunk: int):
        self.chunk = -(-chunk // len(devices)) * len(devices) if len(devices) > 1 else chunk
        self.sharding = None
        if len(devices) > 1:
            mesh = jax.sharding.Mesh(np.asarray(devices), ("points",))
            self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("points"))

    def __call__(self, seeds, hparams):
        if self.sharding is None:
            return seeds, hparams
        return jax.device_put((seeds, hparams), self.sharding)


def _points_over_devices(strategy: str, chunk: int) -> _Placement:
    return _Placement(jax.devices() if strategy == "vmap" else jax.devices()[:1], chunk)


def execute(sim, rounds: int, seeds, hparams: dict[str, np.ndarray], *, eval_every: int, strategy: str = "auto",
            chunk_size: int | None = None, group_size: int | None = None, memory_bytes: int = DEFAULT_MEMORY_BYTES,
            progress: bool = False):
    """Run ``r`` = (``seeds[r]``, entry ``r`` of every ``hparams`` array, see ``stack``) for every ``r``.

    Returns ``(rounds {k: [R, rounds]}, evals {k: [R, E]})`` as NumPy arrays; run ``r``
    equals ``sim.run(rounds, seed=seeds[r], hparams={k: v[r]}, eval_every=eval_every)``.
    """
    for name, value in (("rounds", rounds), ("eval_every", eval_every)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    seeds, total = np.asarray(seeds), len(next(iter(hparams.values())))
    if seeds.shape != (total,) or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(f"seeds must be {total} integers, one per point; got {seeds.tolist()!r}")
    eval_every = min(eval_every, rounds)
    strategy = resolve_strategy(strategy)
    chunk = _chunk_size(sim, strategy, total, chunk_size, memory_bytes)
    if group_size is not None and (strategy != "map" or not isinstance(group_size, (int, np.integer))
                                   or group_size < 1):
        raise ValueError(f"group_size={group_size!r} needs strategy 'map' and a positive integer "
                         f"(strategy is {strategy!r})")
    fn = compiled(sim, strategy, rounds, eval_every, group_size)
    place = _points_over_devices(strategy, chunk)
    chunk = place.chunk
    outputs = []
    bar = _progress(total, progress)
    try:
        for start in range(0, total, chunk):
            idx = np.minimum(np.arange(start, start + chunk), total - 1)  # the last chunk repeats its last point
            if strategy == "loop":
                out = fn(seeds[start], {k: v[start] for k, v in hparams.items()}, sim.data)
                out = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], out)
            else:
                out = fn(*place(seeds[idx], {k: v[idx] for k, v in hparams.items()}), sim.data)
                out = jax.tree_util.tree_map(lambda a: np.asarray(a)[: total - start], out)
            outputs.append(out)
            bar.update(min(chunk, total - start))
    finally:
        bar.close()
    return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *outputs)


def sweep(sim, rounds: int, points: list[dict] | dict | None = None, seeds=(0,), *, eval_every: int = 10,
          strategy: str = "auto", chunk_size: int | None = None, group_size: int | None = None,
          memory_bytes: int = DEFAULT_MEMORY_BYTES, progress: bool = False) -> SweepResults:
    """``Simulation.sweep``: run every point (a list of hyper-parameter dicts, or a dict of zipped
    lists) with every seed.

    ``strategy``: ``auto`` (``loop`` on a CPU, ``vmap`` on accelerators), ``loop``, ``map``
    or ``vmap``; ``chunk_size`` points per program call (``map``/``vmap``; default: as many as
    ``memory_bytes`` allows; with several devices ``vmap`` rounds it up to a multiple of their
    count and splits every chunk over them); ``group_size``: ``map`` only, points vmapped per step.  The compiled program is reused by later sweeps of ``sim``
    with the same ``rounds`` and ``eval_every``.
    """
    if sim.mesh is not None:
        raise ValueError("a sweep maps points on one device; a simulation with a node mesh runs with run() "
                         "(build the sweep's Simulation without mesh=)")
    points = zip_points(points) if isinstance(points, dict) else list(points or [{}])
    seeds = [int(s) for s in seeds]
    runs = [(p, s) for p in range(len(points)) for s in seeds]
    start = time.perf_counter()
    hparams = stack(sim, points)
    index, run_seeds = np.array([p for p, _ in runs]), np.array([s for _, s in runs])
    round_metrics, evals = execute(sim, rounds, run_seeds, {k: v[index] for k, v in hparams.items()},
                                   eval_every=eval_every, strategy=strategy, chunk_size=chunk_size,
                                   group_size=group_size, memory_bytes=memory_bytes, progress=progress)
    config = {**sim.describe(), "rounds": rounds, "eval_every": min(eval_every, rounds),
              "strategy": resolve_strategy(strategy)}
    full = [{k: v[p].tolist() for k, v in hparams.items()} for p in range(len(points))]
    return SweepResults(points=points, hparams=full, runs=runs, rounds=round_metrics, evals=evals,
                        eval_rounds=eval_rounds(rounds, min(eval_every, rounds)), config=config,
                        wall_time_s=time.perf_counter() - start)


def _progress(total: int, enabled: bool):
    """A tqdm bar over sweep points (a no-op bar when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="point", desc="sweep", leave=False, disable=not enabled)
