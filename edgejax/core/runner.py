"""The host loop: runs a ``Simulation``'s compiled round chunks, logs metrics, checks for
divergence, shows progress and writes results."""
from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from edgejax.core.results import Results


class DivergenceError(RuntimeError):
    """The training loss became NaN or inf; ``results`` holds every finished round."""

    def __init__(self, message: str, round_: int, results: Results):
        super().__init__(message)
        self.round = round_
        self.results = results


def run(sim, rounds: int, *, seed: int = 0, hparams: dict | None = None, eval_every: int = 10,
        out_dir: str | Path | None = None, progress: bool = False) -> Results:
    """Run ``rounds`` rounds from seed ``seed``, evaluating every ``eval_every`` rounds.

    Returns ``Results``.  With ``out_dir`` the results are written after every
    chunk, so an interrupted run keeps what it finished.  A NaN/inf training loss
    stops the run at the end of its chunk and raises ``DivergenceError`` naming the
    first bad round; the error's ``results`` (and ``out_dir``) keep every round
    before it.
    """
    for name, value in (("rounds", rounds), ("eval_every", eval_every)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    hp = sim.hparams(hparams)
    chunk = min(eval_every, rounds)
    config = {**sim.describe(), "seed": seed, "rounds": rounds, "eval_every": chunk,
              "hparams": {k: np.asarray(v).tolist() for k, v in hp.items()}}
    state = sim.init(jax.random.PRNGKey(seed), hp)
    log = _MetricLog()
    log.add_eval(0, sim._jit_evaluate(state, sim.data))
    start = time.perf_counter()
    bar = _progress(rounds, progress)
    done = 0
    try:
        while done < rounds:
            n = min(chunk, rounds - done)
            state, round_metrics, eval_metrics = sim._jit_chunk(state, sim.data, hp, chunk, n)
            round_metrics = {k: np.asarray(v)[:n] for k, v in round_metrics.items()}
            bad = np.flatnonzero(~np.isfinite(round_metrics["train_loss"]))
            if bad.size:
                log.add_rounds(done, {k: v[: bad[0]] for k, v in round_metrics.items()})
                value, bad_round = round_metrics["train_loss"][bad[0]], done + int(bad[0]) + 1
                results = log.results(config, time.perf_counter() - start, None,
                                      status=f"diverged: training loss {value} at round {bad_round}")
                if out_dir is not None:
                    results.save(out_dir)
                raise DivergenceError(f"training loss became {value} at round {bad_round}; "
                                      f"rounds 1..{bad_round - 1} are kept in the results", bad_round, results)
            log.add_rounds(done, round_metrics)
            done += n
            log.add_eval(done, eval_metrics)
            bar.update(n)
            shown = "test_accuracy" if "test_accuracy" in eval_metrics else "test_loss"
            bar.set_postfix({shown: f"{float(eval_metrics[shown]):.3f}"})
            if out_dir is not None:
                log.results(config, time.perf_counter() - start, None, status="running").save(out_dir)
    finally:
        bar.close()
    results = log.results(config, time.perf_counter() - start, state)
    if out_dir is not None:
        results.save(out_dir)
    return results


class _MetricLog:
    """Accumulates host copies of per-round and per-evaluation metrics."""

    def __init__(self):
        self.rounds: dict[str, list] = {}
        self.evals: dict[str, list] = {}

    def add_rounds(self, first: int, metrics: dict[str, np.ndarray]):
        count = len(next(iter(metrics.values())))
        self.rounds.setdefault("round", []).extend(range(first + 1, first + count + 1))
        for k, v in metrics.items():
            self.rounds.setdefault(k, []).extend(np.asarray(v).tolist())

    def add_eval(self, round_: int, metrics: dict):
        self.evals.setdefault("round", []).append(round_)
        for k, v in metrics.items():
            self.evals.setdefault(k, []).append(float(v))

    def results(self, config, wall_time, state, status="finished") -> Results:
        as_arrays = lambda d: {k: np.asarray(v) for k, v in d.items()}  # noqa: E731
        return Results(as_arrays(self.rounds), as_arrays(self.evals), config, status, wall_time, state)


class _NoProgress:
    def update(self, n):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    """A tqdm bar over rounds (tqdm is imported only when one is shown)."""
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="round", desc="rounds", leave=False)
