"""Argument checks shared by the static configuration classes, and the valid ranges of the
traced hyper-parameters (one table, ``HPARAM_RANGES``, checked by ``check_hparams``)."""
from __future__ import annotations

import math
from typing import Iterable, Mapping, NamedTuple

import numpy as np


def check_choice(name: str, value, allowed: Iterable) -> None:
    """``ValueError`` naming ``value`` and the allowed choices unless ``value in allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose from {allowed}")


def check_seed(seed) -> None:
    """``ValueError`` unless ``seed`` is an integer in [0, 2**32 - 1] (the range of a PRNG key's seed)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32 - 1]; got {seed!r}")


COHORT = "K"  # the upper bound of ``clients_per_round``: the static cohort size


class Range(NamedTuple):
    """A valid interval ``low..high``; ``closed_*`` include the end; ``integer`` asks for whole numbers."""

    low: float
    high: float | str
    closed_low: bool = True
    closed_high: bool = True
    integer: bool = False

    def upper(self, cohort_size: int | None) -> float:
        """The upper end, with ``COHORT`` replaced by the cohort size (inf when unknown)."""
        if self.high == COHORT:
            return math.inf if cohort_size is None else float(cohort_size)
        return float(self.high)

    def describe(self, cohort_size: int | None = None) -> str:
        text = (f"{'[' if self.closed_low else '('}{self.low:g}, {self.upper(cohort_size):g}"
                f"{']' if self.closed_high else ')'}")
        return ("an integer in " if self.integer else "") + text

    def bad(self, values: np.ndarray, cohort_size: int | None) -> np.ndarray:
        """Mask of ``values`` outside the range (or not whole numbers where ``integer``)."""
        high = self.upper(cohort_size)
        ok = (values >= self.low) if self.closed_low else (values > self.low)
        ok &= (values <= high) if self.closed_high else (values < high)
        if self.integer:
            ok &= values == np.round(values)
        return ~ok


_INF = math.inf
_PROBABILITY = Range(0.0, 1.0)
_RATE = Range(0.0, _INF, closed_low=False, closed_high=False)
_NONNEGATIVE = Range(0.0, _INF, closed_high=False)
_DECAY = Range(0.0, 1.0, closed_high=False)

#: Known traced hyper-parameters and their valid ranges; names not listed are only checked for finiteness.
HPARAM_RANGES: dict[str, Range] = {
    "client_lr": _RATE, "server_lr": _RATE,
    "client_momentum": _DECAY, "server_momentum": _DECAY,
    "client_b1": _DECAY, "client_b2": _DECAY, "server_b1": _DECAY, "server_b2": _DECAY,
    "client_decay": _DECAY,
    "client_eps": _RATE, "server_tau": _RATE,
    "client_weight_decay": _NONNEGATIVE, "mu": _NONNEGATIVE,
    "alpha": _RATE,  # FedDyn's regularisation (the server divides by it); FedAsync narrows it (Traits.ranges)
    "staleness_a": _NONNEGATIVE, "staleness_b": _NONNEGATIVE, "dc_lambda": _NONNEGATIVE,
    "duration_jitter": _NONNEGATIVE,
    "dropout": _PROBABILITY, "straggler_fraction": _PROBABILITY, "link_failure": _PROBABILITY,
    "deadline": _RATE,
    "consensus_step": Range(0.0, 1.0, closed_low=False),
    "clients_per_round": Range(1.0, COHORT, integer=True),
    "cclip_tau": _RATE, "norm_bound": _RATE,  # CenteredClipping's radius, NormBounded's bound
}


def check_hparams(hparams: Mapping, cohort_size: int | None = None, points: int | None = None,
                  ranges: Mapping[str, Range] | None = None) -> None:
    """``ValueError`` naming the hyper-parameter, its value and its valid range, for the first one
    out of range (``ranges``, the owner's own, else ``HPARAM_RANGES``) or not finite.

    Values are scalars, or one value per sweep point (then the error names the point index);
    with ``points`` each value must be a scalar or have exactly ``points`` entries.
    """
    for name, value in hparams.items():
        values = np.asarray(value, dtype=float)
        if points is not None and values.shape not in ((), (points,)):
            raise ValueError(f"hyper-parameter {name} has {values.size} values (shape {values.shape}) "
                             f"but the sweep has {points} points")
        rule = (ranges or {}).get(name, HPARAM_RANGES.get(name))
        bad = ~np.isfinite(values)
        if rule is not None:
            bad |= rule.bad(values, cohort_size)
        if bad.any():
            where = "" if values.ndim == 0 else f" at sweep point {int(np.flatnonzero(bad.ravel())[0])}"
            shown = values.ravel()[np.flatnonzero(bad.ravel())[0]]
            allowed = rule.describe(cohort_size) if rule else "a finite number"
            raise ValueError(f"hyper-parameter {name}={shown:g}{where} is outside its valid range: "
                             f"{allowed}")
