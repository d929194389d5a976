"""The host loop: runs a ``Simulation``'s compiled round chunks, logs metrics, checks for
divergence, shows progress, writes results, takes checkpoints and resumes from them.

Rounds in which no node took part (``participants == 0``, reported by the algorithms with
``train_loss`` NaN) are ignored by the divergence check; a run in which every round was
empty warns.
"""
from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from pathlib import Path

import jax
import numpy as np

from edgejax.algorithms.accounting import privacy_accountant
from edgejax.core import rundir
from edgejax.core.callbacks import Chunk
from edgejax.core.results import Results, run_info
from edgejax.core.validation import check_seed


class DivergenceError(RuntimeError):
    """The training loss became NaN or inf; ``results`` holds every finished round."""

    def __init__(self, message: str, round_: int, results: Results):
        super().__init__(message)
        self.round = round_
        self.results = results


class RunFailed(RuntimeError):
    """Writing the results failed (disk full, read-only...); ``results`` holds every finished round."""

    def __init__(self, message: str, results: Results):
        super().__init__(message)
        self.results = results


class RunInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after a chunk; ``results`` holds every finished round."""

    def __init__(self, message: str, signal_name: str, results: Results):
        super().__init__(message)
        self.signal = signal_name
        self.results = results


def run(sim, rounds: int, *, seed: int = 0, hparams: dict | None = None, eval_every: int = 10,
        out_dir: str | Path | None = None, progress: bool = False, checkpoint_every: int | None = None,
        keep_checkpoints: int = 2, resume: bool = False, overwrite: bool = False,
        extra_config: dict | None = None, callbacks=(), compile: str = "optimized") -> Results:
    """Run ``rounds`` rounds from seed ``seed``, evaluating every ``eval_every`` rounds.

    Returns ``Results``.  With ``out_dir`` (claimed before any compute: it must be writable
    and hold no other run unless ``overwrite`` or ``resume``) each chunk's rows are appended
    to ``metrics.csv`` and ``run.json`` is replaced atomically, so a killed run keeps what it
    finished.  ``checkpoint_every=k`` saves the full state and the metrics at the end of
    the chunk that reaches each multiple of k rounds (the last ``keep_checkpoints`` are
    kept, in ``out_dir/checkpoints``), and at the end of the first chunk; ``resume=True``
    continues the run in ``out_dir`` from its newest checkpoint (from round 0, with a
    warning, when a run with ``checkpoint_every`` has none yet), with the same arguments,
    and gives bit-identical results.
    A failed write (disk full, read-only) stops the run, marks ``run.json`` ``failed: ...``
    when it still can and raises ``RunFailed``; resume it once the disk is fixed.
    A NaN/inf training loss stops the run at the end of its chunk and raises
    ``DivergenceError`` naming the first bad round; SIGINT/SIGTERM stop it at the end of the
    current chunk (with a checkpoint when checkpointing) and raise ``RunInterrupted``.
    ``extra_config`` is stored in ``run.json``'s configuration (the CLI keeps its options there).
    ``callbacks`` are called after every chunk (``edgejax.core.callbacks``); one that returns
    ``True`` stops the run there (``Results.status`` names it); those with ``close()`` are closed
    when the run ends.
    ``compile`` chooses how the round chunk is compiled: ``"optimized"`` (XLA's defaults),
    ``"fast"`` (on a CPU without XLA's fusion emitters: about half the compile time, rounds
    10-25% slower, the same training bits on every program measured, an evaluation's mean
    possibly different in its last bit) or ``"auto"`` (fast when the
    run's local training is small, ``Simulation.chunk_program``; the command line's default).
    """
    for name, value in (("rounds", rounds), ("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    check_seed(seed)
    callbacks = tuple(callbacks)
    for callback in callbacks:
        if not callable(callback):
            raise ValueError(f"callbacks must be callables taking a Chunk (edgejax.core.callbacks); got {callback!r}")
    if out_dir is None and (checkpoint_every or resume):
        raise ValueError("checkpoint_every and resume need an out_dir")
    if jax.process_count() > 1 and (checkpoint_every or resume or (out_dir is not None and jax.process_index())):
        raise ValueError("in a multi-host run only process 0 writes results (out_dir), and checkpoint_every / "
                         "resume are single-process only (edgejax.parallel.multihost)")
    program = sim.chunk_program(rounds, compile)
    hp = sim.hparams(hparams)
    accountant = privacy_accountant(sim, hp)
    chunk = min(eval_every, rounds)
    config = {**sim.describe(), "seed": seed, "rounds": rounds, "eval_every": chunk,
              "hparams": {k: np.asarray(v).tolist() for k, v in hp.items()}, **(extra_config or {})}
    if accountant is not None:
        config["privacy"] = accountant.statement
    output = None if out_dir is None else _Output(out_dir, config, checkpoint_every, keep_checkpoints,
                                                  overwrite, resume)
    run_ = _Run(config, output)
    try:
        return _loop(sim, program, hp, rounds, chunk, run_, sim._jit_init(jax.random.PRNGKey(seed), hp), resume,
                     progress, callbacks, accountant)
    except OSError as err:
        if output is None:
            raise
        raise run_.failed(err) from err
    finally:
        if output is not None:
            output.close()
        for callback in callbacks:
            if hasattr(callback, "close"):
                callback.close()


def _loop(sim, program, hp: dict, rounds: int, chunk: int, run_: "_Run", state, resume: bool, progress: bool,
          callbacks: tuple = (), accountant=None) -> Results:
    """The chunks of ``run`` (``program``: the compiled chunk) from its initial (or restored) state
    to the end or a stop."""
    restored = run_.restore(sim.logical_state(state)) if resume else None
    if restored is not None:
        done, state = restored[0], sim.stored_state(restored[1])
    else:
        done = 0   # the initial evaluation: the chunk's program with no active round (one program to compile)
        state, _, first_eval = program(state, sim.stored_data, hp, chunk, 0)   # the state donated, returned unchanged
        run_.log.add_eval(0, first_eval)
        run_.claim()
    bar = _progress(rounds, done, progress)
    stopped_by = None
    with _StopSignals() as stop:
        try:
            while done < rounds and not stop.received and stopped_by is None:
                n = min(chunk, rounds - done)
                state, round_metrics, eval_metrics = program(state, sim.stored_data, hp, chunk, n)
                round_metrics = {k: np.asarray(v)[:n] for k, v in round_metrics.items()}
                if accountant is not None:   # DP: epsilon after each round (edgejax.algorithms.accounting)
                    round_metrics["epsilon"] = accountant.epsilon(np.arange(done + 1, done + n + 1))
                _check_divergence(round_metrics, done, run_)
                run_.log.add_rounds(done, round_metrics)
                done += n
                run_.log.add_eval(done, eval_metrics)
                bar.update(n)
                shown = "test_accuracy" if "test_accuracy" in eval_metrics else "test_loss"
                bar.set_postfix({shown: f"{float(eval_metrics[shown]):.3f}"})
                stopped_by = _call_back(callbacks, Chunk(done - n + 1, done, round_metrics, _scalars(eval_metrics),
                                                         _kept(sim.logical_state(state)))) if callbacks else None
                due = run_.checkpoint_due(done - n, done) or stopped_by is not None
                run_.record("running", sim.logical_state(state) if due else None)
        finally:
            bar.close()
    if stop.received:
        status = f"interrupted ({stop.received}) after round {done}"
        run_.record(status, sim.logical_state(state))
        raise RunInterrupted(f"run {status}", stop.received, run_.results(status))
    _warn_if_never_trained(run_.log)
    status = "finished" if stopped_by is None else f"stopped by {stopped_by!r} after round {done}"
    run_.record(status)
    return run_.results(status, sim.logical_state(state))


def _kept(state):
    """A copy of ``state`` a callback may keep: the next chunk is given (donated) the run's own
    buffers and overwrites them."""
    return jax.tree_util.tree_map(lambda a: a.copy() if isinstance(a, jax.Array) else a, state)


def _call_back(callbacks: tuple, chunk: Chunk):
    """Call every callback with ``chunk``; the first that asks to stop, or ``None``."""
    stop = None
    for callback in callbacks:
        if callback(chunk) is True and stop is None:
            stop = callback
    return stop


def _scalars(metrics: dict) -> dict:
    """An evaluation's metrics as Python floats (non-scalars kept as arrays)."""
    return {k: float(v) if np.ndim(v) == 0 else np.asarray(v) for k, v in metrics.items()}


def _check_divergence(metrics: dict[str, np.ndarray], done: int, run_: "_Run"):
    """Raise ``DivergenceError`` at the first round with participants and a NaN/inf training loss."""
    bad = np.flatnonzero(~np.isfinite(metrics["train_loss"]) & (metrics["participants"] > 0))
    if not bad.size:
        return
    run_.log.add_rounds(done, {k: v[: bad[0]] for k, v in metrics.items()})
    value, bad_round = metrics["train_loss"][bad[0]], done + int(bad[0]) + 1
    status = f"diverged: training loss {value} at round {bad_round}"
    run_.record(status)
    raise DivergenceError(f"training loss became {value} at round {bad_round}; "
                          f"rounds 1..{bad_round - 1} are kept in the results", bad_round, run_.results(status))


def _warn_if_never_trained(log: "_MetricLog"):
    """Warn when no node took part in any round, or in the last half of the run (e.g. an
    asynchronous run whose nodes all went offline after their first updates)."""
    participants = np.asarray(log.rounds.get("participants", []))
    check = "check dropout, availability, deadline, stragglers and clients_per_round"
    if participants.size and not participants.any():
        warnings.warn(f"no node took part in any of the {participants.size} rounds, so the model never "
                      f"trained; {check}", RuntimeWarning, stacklevel=3)
        return
    took_part = np.flatnonzero(participants > 0)
    if participants.size >= 4 and took_part.size and took_part[-1] + 1 <= participants.size // 2:
        warnings.warn(f"no node took part after round {took_part[-1] + 1} of {participants.size}: the model "
                      f"stopped training there; {check}", RuntimeWarning, stacklevel=3)


class _Run:
    """What a run has so far: its metric log, its output folder (or ``None``) and its clock."""

    def __init__(self, config: dict, output: "_Output | None"):
        self.config, self.output, self.log = config, output, _MetricLog()
        self.started, self.clock, self.previous_wall = rundir.now(), time.perf_counter(), 0.0

    def wall_time(self) -> float:
        return self.previous_wall + time.perf_counter() - self.clock

    def restore(self, template) -> tuple[int, object] | None:
        """``(round, state)`` of the newest checkpoint (the log and the clock continue from it),
        or ``None`` when there is none."""
        restored = self.output.restore(template)
        if restored is None:
            return None
        done, state, self.log, self.started, self.previous_wall = restored
        return done, state

    def checkpoint_due(self, before: int, after: int) -> bool:
        return self.output is not None and self.output.checkpoint_due(before, after)

    def claim(self):
        """Write ``run.json`` (status ``running``, no round yet), so that a run killed right after
        its first checkpoint can be resumed; ``metrics.csv`` waits for the first chunk's columns."""
        if self.output is not None:
            self.output.write_info(self.log, "running", self.started, self.wall_time())

    def record(self, status: str, state=None):
        """Write the results so far, and a checkpoint of ``state`` when checkpointing, if there is a folder."""
        if self.output is not None:
            self.output.record(self.log, status, self.started, self.wall_time(),
                               state if self.output.checkpoints else None)

    def results(self, status: str, state=None) -> Results:
        return self.log.results(self.config, self.wall_time(), status, state, self.started)

    def failed(self, err: OSError) -> RunFailed:
        """``RunFailed`` for a write that raised ``err``; ``run.json`` says so if it can still be
        written (and is left as it was when resuming failed before any round: it knows more)."""
        status = f"failed: cannot write to {self.output.out}: {err.strerror or err}"
        try:
            if self.log.num_rounds:
                self.output.write_info(self.log, status, self.started, self.wall_time())
        except OSError:
            pass  # the disk refuses run.json too: it keeps its last status
        return RunFailed(f"run {status} (after round {self.log.num_rounds})", self.results(status))


class _Output:
    """A run's folder: metrics appended per chunk, ``run.json`` replaced, checkpoints."""

    def __init__(self, out_dir, config: dict, checkpoint_every, keep: int, overwrite: bool, resume: bool):
        self.out = rundir.prepare(out_dir, overwrite=overwrite, resume=resume)
        self.config, self.every = config, checkpoint_every
        self.metrics = rundir.MetricsFile(self.out)
        self.checkpoints = None
        if checkpoint_every or resume:
            from edgejax.core.checkpoint import Checkpoints

            self.checkpoints = Checkpoints(self.out / rundir.CHECKPOINTS, keep)

    def checkpoint_due(self, before: int, after: int) -> bool:
        """At the end of the first chunk (so that a run killed before round k resumes from it) and
        of the chunk reaching each multiple of k."""
        return bool(self.every) and (before == 0 or after // self.every > before // self.every)

    def record(self, log: "_MetricLog", status: str, started: str, wall_time: float, state=None):
        """Append the new metric rows, save a checkpoint of ``state`` if given, update ``run.json``."""
        self.metrics.append(*log.take_pending())
        if state is not None and self.checkpoints.latest() != log.num_rounds:
            self.checkpoints.save(log.num_rounds, state, {**log.as_dict(), "wall_time_s": wall_time})
        self.write_info(log, status, started, wall_time)

    def write_info(self, log: "_MetricLog", status: str, started: str, wall_time: float):
        info = run_info(self.config, status, log.num_rounds, started, wall_time, log.last_eval())
        latest = self.checkpoints.latest() if self.checkpoints else None
        rundir.write_info(self.out, {**info, "metrics_rows": self.metrics.rows, "checkpoint_round": latest,
                                     "pid": os.getpid()})

    def restore(self, template):
        """``(round, state, log, started, wall time)`` of the newest checkpoint, after checking the
        configuration; ``metrics.csv`` is rewritten to end at that round.  ``None`` (with a
        warning) when a checkpointing run has no complete checkpoint: it starts again from round 0."""
        info = rundir.read_info(self.out)
        stored, current = info["config"], rundir.as_json(self.config)
        differ = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
        if differ:
            raise ValueError(f"cannot resume {self.out}: its configuration differs in {differ}")
        if self.checkpoints.latest() is None and self.every:
            warnings.warn(f"{self.out} holds no complete checkpoint: the run starts again from round 0",
                          RuntimeWarning, stacklevel=5)
            return None
        done, state, metrics = self.checkpoints.restore(template)
        wall_time = metrics.pop("wall_time_s")
        log = _MetricLog.from_dict(metrics)
        self.metrics.reset(*log.take_pending())
        return done, state, log, info.get("started"), wall_time

    def close(self):
        if self.checkpoints is not None:
            self.checkpoints.close()


class _MetricLog:
    """Accumulates host copies of per-round and per-evaluation metrics; ``take_pending``
    returns the rows added since its last call."""

    def __init__(self, rounds: dict | None = None, evals: dict | None = None):
        self.rounds: dict[str, list] = rounds or {}
        self.evals: dict[str, list] = evals or {}
        self._taken = (0, 0)

    @classmethod
    def from_dict(cls, d: dict) -> "_MetricLog":
        return cls(d["rounds"], d["evals"])

    def as_dict(self) -> dict:
        return {"rounds": self.rounds, "evals": self.evals}

    @property
    def num_rounds(self) -> int:
        return len(self.rounds.get("round", ()))

    def add_rounds(self, first: int, metrics: dict[str, np.ndarray]):
        count = len(next(iter(metrics.values())))
        self.rounds.setdefault("round", []).extend(range(first + 1, first + count + 1))
        for k, v in metrics.items():
            self.rounds.setdefault(k, []).extend(np.asarray(v).tolist())

    def add_eval(self, round_: int, metrics: dict):
        self.evals.setdefault("round", []).append(round_)
        for k, v in metrics.items():
            self.evals.setdefault(k, []).append(float(v))

    def last_eval(self) -> dict[str, float]:
        return {k: v[-1] for k, v in self.evals.items()}

    def take_pending(self) -> tuple[dict, dict]:
        """``(rounds, evals)`` added since the last call."""
        r, e = self._taken
        pending = {k: v[r:] for k, v in self.rounds.items()}, {k: v[e:] for k, v in self.evals.items()}
        self._taken = (self.num_rounds, len(self.evals.get("round", ())))
        return pending

    def results(self, config: dict, wall_time: float, status: str, state, started: str | None) -> Results:
        as_arrays = lambda d: {k: np.asarray(v) for k, v in d.items()}  # noqa: E731
        return Results(as_arrays(self.rounds), as_arrays(self.evals), config, status, wall_time, state, started)


class _StopSignals:
    """Turns SIGINT/SIGTERM into a request to stop after the current chunk (main thread only);
    a second signal of the same kind acts at once."""

    def __enter__(self):
        self.received, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        signal.signal(signum, self.previous[signum])

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class _NoProgress:
    def update(self, n):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _progress(total: int, done: int, enabled: bool):
    """A tqdm bar over rounds (tqdm is imported only when one is shown)."""
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="round", desc="rounds", leave=False)
