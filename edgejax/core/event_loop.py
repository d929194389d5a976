"""The host-free loop of asynchronous training: ticks of the event clock, a window at a time.

``run_ticks`` runs ``num_ticks`` ticks (one metrics row each, as a synchronous round has):
the system model schedules a window of arrivals (``SystemModel.schedule_window``, no model
involved), the algorithm trains and applies them (``window_step``), and the window's
per-tick metrics are written at their rows.  A window never splits a tick, so the rows
are the same whatever the window size; ``Simulation.round`` is ``run_ticks`` of one tick.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def skipped_metric(shape_dtype):
    """A metric of a round or tick not run: NaN for float metrics, -1 for integer ones (e.g.
    ``log_events``' node ids)."""
    fill = jnp.nan if jnp.issubdtype(shape_dtype.dtype, jnp.inexact) else -1
    return jnp.full(shape_dtype.shape, fill, shape_dtype.dtype)


def run_ticks(sim, state, data, hparams, num_ticks: int, active_ticks=None):
    """``num_ticks`` ticks (``active_ticks`` of them run; the other rows are NaN / -1):
    ``(state, metrics stacked [num_ticks, ...])``."""
    algorithm, ctx = sim.algorithm, sim.context
    window = max(algorithm.window, sim.cohort_size)
    bounded = algorithm.slots(sim.num_nodes) < sim.num_nodes
    active_ticks = num_ticks if active_ticks is None else active_ticks

    def one_window(state, ticks_left):
        win, system = sim.system.schedule_window(
            state.rng, state.round, ticks_left, state.system, hparams, sim.local, data.train.count, ctx.payload,
            window=window, cohort_size=sim.cohort_size, bounded=bounded)
        state, metrics = algorithm.window_step(ctx, state._replace(system=system), data, win, hparams)
        metrics |= {"round_time_s": win.elapsed_s, "sim_time_s": win.time, "energy_j": win.energy_j}
        return state._replace(round=state.round + win.n_ticks), win.n_ticks, metrics

    shapes = jax.eval_shape(one_window, state, 1)[2]
    rows0 = {k: skipped_metric(jax.ShapeDtypeStruct((num_ticks, *s.shape[1:]), s.dtype)) for k, s in shapes.items()}

    def body(carry):
        state, done, _, rows = carry
        state, ticks, metrics = one_window(state, active_ticks - done)
        at = done + jnp.arange(window + 1)
        at = jnp.where(jnp.arange(window + 1) < ticks, at, num_ticks)
        rows = {k: rows[k].at[at].set(metrics[k], mode="drop") for k in rows}
        return state, done + ticks, ticks > 0, rows

    def more(carry):
        _, done, progressed, _ = carry
        return (done < active_ticks) & progressed

    state, _, _, rows = jax.lax.while_loop(more, body, (state, jnp.zeros((), jnp.int32), jnp.asarray(True), rows0))
    return state, rows
