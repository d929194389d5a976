"""Device profiles: how fast each node computes and communicates, and what it costs in energy.

A ``DeviceProfiles`` is a pytree of per-node arrays ``[N]`` (node axis first, like every
other per-node leaf), so it travels into a jitted round as data and is gathered to a cohort
with ``edgejax.core.state.tree_take(profiles, nodes)``.

Units: ``speed`` in training samples per second, bandwidths in bytes per second,
``latency`` in seconds added to every message, ``energy_per_sample`` in joules per training
sample, ``energy_per_byte`` in joules per byte sent or received, ``tier`` an ``int32`` index
with 0 the fastest tier.

Generators run on the host with ``np.random.default_rng(seed)`` (a profile is fixed for a
run, drawn once) and return float arrays in ``edgejax.core.state.default_float()`` (float64
under ``jax.enable_x64``, else float32) and ``tier`` as ``int32``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.core.state import default_float

__all__ = [
    "DeviceProfiles",
    "uniform_profiles",
    "lognormal_profiles",
    "tiered_profiles",
    "profiles_from_arrays",
    "profiles_from_csv",
    "profiles_to_csv",
    "tier_counts",
]


class DeviceProfiles(NamedTuple):
    """Per-node device characteristics, every field an array ``[N]``."""

    speed: jax.Array              # samples per second of local training
    up_bandwidth: jax.Array       # bytes per second
    down_bandwidth: jax.Array     # bytes per second
    latency: jax.Array            # seconds added per message
    energy_per_sample: jax.Array  # joules per training sample
    energy_per_byte: jax.Array    # joules per byte sent or received
    tier: jax.Array               # int32 tier index (0 = fastest)

    @property
    def num_nodes(self) -> int:
        return int(self.speed.shape[0])


_FLOAT_FIELDS = ("speed", "up_bandwidth", "down_bandwidth", "latency", "energy_per_sample",
                 "energy_per_byte")
_POSITIVE = ("speed", "up_bandwidth", "down_bandwidth")          # must be > 0
_NONNEGATIVE = ("latency", "energy_per_sample", "energy_per_byte")  # must be >= 0


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _as_field(name: str, value, n: int | None) -> np.ndarray:
    """``value`` as a float64 1-D host array of length ``n`` (scalars broadcast)."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        if n is None:
            raise ValueError(f"{name} must be a 1-D array of per-node values, got a scalar")
        arr = np.full(n, float(arr))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per node), got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values but speed has {n} nodes")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = _first_bad(bad)
        raise ValueError(f"{name}[{i}] = {arr[i]} is not finite")
    if name in _POSITIVE and (arr <= 0).any():
        i = _first_bad(arr <= 0)
        raise ValueError(f"{name}[{i}] = {arr[i]:g} must be > 0")
    if name in _NONNEGATIVE and (arr < 0).any():
        i = _first_bad(arr < 0)
        raise ValueError(f"{name}[{i}] = {arr[i]:g} must be >= 0")
    return arr


def profiles_from_arrays(speed, up_bandwidth, down_bandwidth=None, latency=0.0, energy_per_sample=0.0,
                         energy_per_byte=0.0, tier=None) -> DeviceProfiles:
    """Validated ``DeviceProfiles`` from per-node host arrays.

    ``speed`` and ``up_bandwidth`` are 1-D of length ``N``; the other fields may be 1-D of
    length ``N`` or scalars (broadcast).  ``down_bandwidth=None`` means a symmetric link
    (``down_bandwidth = up_bandwidth``); ``tier=None`` puts every node in tier 0.
    Speeds and bandwidths must be finite and ``> 0``; latency and energies finite and
    ``>= 0``; tiers non-negative integers.  A ``ValueError`` names the field and the first
    bad node, e.g. ``"speed[3] = -1 must be > 0"``.
    """
    speed_np = _as_field("speed", speed, None)
    n = speed_np.shape[0]
    if n == 0:
        raise ValueError("speed is empty: profiles need at least one node")
    values = {"speed": speed_np, "up_bandwidth": _as_field("up_bandwidth", up_bandwidth, n)}
    values["down_bandwidth"] = (values["up_bandwidth"].copy() if down_bandwidth is None
                                else _as_field("down_bandwidth", down_bandwidth, n))
    values["latency"] = _as_field("latency", latency, n)
    values["energy_per_sample"] = _as_field("energy_per_sample", energy_per_sample, n)
    values["energy_per_byte"] = _as_field("energy_per_byte", energy_per_byte, n)
    if tier is None:
        tier_np = np.zeros(n, np.int32)
    else:
        t = _as_field("tier", tier, n)
        bad = (t != np.round(t)) | (t < 0)
        if bad.any():
            i = _first_bad(bad)
            raise ValueError(f"tier[{i}] = {t[i]:g} must be a non-negative integer")
        tier_np = t.astype(np.int32)
    dtype = default_float()
    return DeviceProfiles(**{k: jnp.asarray(values[k], dtype) for k in _FLOAT_FIELDS},
                          tier=jnp.asarray(tier_np, jnp.int32))


def uniform_profiles(n: int, *, speed: float = 100.0, up_bandwidth: float = 1e6,
                     down_bandwidth: float = 1e7, latency: float = 0.05, energy_per_sample: float = 1e-3,
                     energy_per_byte: float = 1e-7) -> DeviceProfiles:
    """``n`` identical devices (all in tier 0)."""
    _check_n(n)
    return profiles_from_arrays(np.full(n, float(speed)), np.full(n, float(up_bandwidth)),
                                down_bandwidth, latency, energy_per_sample, energy_per_byte)


def _check_n(n: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n = {n} must be a positive integer (the number of nodes)")


def quantile_tiers(speed: np.ndarray, num_tiers: int) -> np.ndarray:
    """Equal-count speed tiers, tier 0 the fastest.

    Nodes are ranked by descending speed (ties by node index, a stable sort) and node
    of rank ``r`` gets tier ``floor(r * num_tiers / N)``: tier sizes differ by at most one
    (the faster tiers are never larger than the slower ones).
    """
    speed = np.asarray(speed)
    n = speed.shape[0]
    if int(num_tiers) != num_tiers or num_tiers < 1:
        raise ValueError(f"num_tiers = {num_tiers} must be a positive integer")
    order = np.argsort(-speed, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return (rank * int(num_tiers) // n).astype(np.int32)


def lognormal_profiles(n: int, *, seed: int = 0, speed_median: float = 100.0, speed_sigma: float = 1.0,
                       bandwidth_median: float = 1e6, bandwidth_sigma: float = 1.0, down_factor: float = 10.0,
                       latency: float = 0.05, energy_per_sample: float = 1e-3, energy_per_byte: float = 1e-7,
                       num_tiers: int = 3) -> DeviceProfiles:
    """Heavy-tailed heterogeneous devices.

    ``speed = speed_median * exp(speed_sigma * z1)`` and
    ``up_bandwidth = bandwidth_median * exp(bandwidth_sigma * z2)`` with independent standard
    normals ``z1, z2`` (so the medians are ``speed_median`` and ``bandwidth_median``);
    ``down_bandwidth = down_factor * up_bandwidth``.  Tiers are ``num_tiers`` equal-count
    speed quantiles (terciles by default), tier 0 the fastest; see ``quantile_tiers``.
    """
    _check_n(n)
    if speed_sigma < 0 or bandwidth_sigma < 0:
        raise ValueError(f"speed_sigma = {speed_sigma} and bandwidth_sigma = {bandwidth_sigma} must be >= 0")
    if not down_factor > 0:
        raise ValueError(f"down_factor = {down_factor} must be > 0")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((2, n))
    speed = float(speed_median) * np.exp(float(speed_sigma) * z[0])
    up = float(bandwidth_median) * np.exp(float(bandwidth_sigma) * z[1])
    return profiles_from_arrays(speed, up, up * float(down_factor), latency, energy_per_sample,
                                energy_per_byte, tier=quantile_tiers(speed, num_tiers))


def tier_counts(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Nodes per tier for ``n`` nodes split by ``fractions`` (largest-remainder rounding).

    Each tier first gets ``floor(f_t * n)`` nodes; the ``n - sum`` nodes left over go one
    each to the tiers with the largest remainders ``f_t * n - floor(f_t * n)``, ties to the
    lower tier index.  The counts sum to ``n`` and each is within one of ``f_t * n``.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"fractions must be a non-empty 1-D sequence, got {fractions!r}")
    if (~np.isfinite(f)).any() or (f < 0).any():
        i = _first_bad(~np.isfinite(f) | (f < 0))
        raise ValueError(f"fractions[{i}] = {f[i]} must be finite and >= 0")
    if not math.isclose(float(f.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions {tuple(fractions)} must sum to 1 (they sum to {f.sum():g})")
    exact = f / f.sum() * n
    counts = np.floor(exact + 1e-9).astype(np.int64)
    left = n - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:left]] += 1
    return counts


def _per_tier(name: str, value, num: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(num, float(arr))
    if arr.shape != (num,):
        raise ValueError(f"{name} must be a scalar or have one value per tier ({num}), got shape {arr.shape}")
    return arr


def tiered_profiles(n: int, *, seed: int = 0, fractions: Sequence[float] = (0.2, 0.5, 0.3),
                    speeds: Sequence[float] = (400.0, 100.0, 20.0),
                    up_bandwidths: Sequence[float] = (4e6, 1e6, 2e5), down_factor: float = 10.0,
                    latency=0.05, energy_per_sample=1e-3, energy_per_byte=1e-7,
                    jitter: float = 0.0) -> DeviceProfiles:
    """Devices in discrete tiers (e.g. fast / medium / slow phones), tier ``t`` a fraction ``fractions[t]``.

    Tier ``t`` has speed ``speeds[t]`` and up-link ``up_bandwidths[t]``
    (``down_bandwidth = down_factor * up_bandwidth``); ``latency``, ``energy_per_sample``
    and ``energy_per_byte`` are scalars or one value per tier.  The number of nodes per tier
    is ``tier_counts(n, fractions)`` (largest-remainder rounding: exact when ``f_t * n`` are
    integers), and which node gets which tier is a seeded permutation.  ``jitter > 0``
    multiplies each node's speed and bandwidth by independent ``exp(jitter * z)`` factors
    (log-normal spread within a tier); the tier index is unchanged.  ``speeds`` should be
    decreasing so that tier 0 is the fastest (not enforced).
    """
    _check_n(n)
    counts = tier_counts(n, fractions)
    num = counts.shape[0]
    speeds_t = _per_tier("speeds", speeds, num)
    up_t = _per_tier("up_bandwidths", up_bandwidths, num)
    if jitter < 0:
        raise ValueError(f"jitter = {jitter} must be >= 0")
    rng = np.random.default_rng(seed)
    tier = rng.permutation(np.repeat(np.arange(num), counts)).astype(np.int32)
    speed = speeds_t[tier]
    up = up_t[tier]
    if jitter > 0:
        z = rng.standard_normal((2, n))
        speed = speed * np.exp(jitter * z[0])
        up = up * np.exp(jitter * z[1])
    return profiles_from_arrays(
        speed, up, up * float(down_factor),
        _per_tier("latency", latency, num)[tier],
        _per_tier("energy_per_sample", energy_per_sample, num)[tier],
        _per_tier("energy_per_byte", energy_per_byte, num)[tier],
        tier=tier)


_REQUIRED_COLUMNS = ("speed", "up_bandwidth")
_OPTIONAL_COLUMNS = ("down_bandwidth", "latency", "energy_per_sample", "energy_per_byte", "tier")
_IGNORED_COLUMNS = ("node", "node_id", "id")


def profiles_from_csv(path) -> DeviceProfiles:
    """Profiles from a comma-separated file with a header row, one node per line.

    Columns: ``speed``, ``up_bandwidth`` (required) and optionally ``down_bandwidth``,
    ``latency``, ``energy_per_sample``, ``energy_per_byte``, ``tier``; missing optional
    columns take ``profiles_from_arrays``' defaults.  A ``node``/``node_id``/``id`` column
    is ignored (rows are taken in file order); any other column is an error (to catch
    typos).  Values are validated by ``profiles_from_arrays``.
    """
    path = Path(path)
    table = np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64, ndmin=1)
    names = tuple(table.dtype.names or ())
    for col in _REQUIRED_COLUMNS:
        if col not in names:
            raise ValueError(f"{path}: missing required column {col!r} (found {list(names)})")
    unknown = [c for c in names if c not in _REQUIRED_COLUMNS + _OPTIONAL_COLUMNS + _IGNORED_COLUMNS]
    if unknown:
        raise ValueError(f"{path}: unknown column(s) {unknown}; known columns are "
                         f"{list(_REQUIRED_COLUMNS + _OPTIONAL_COLUMNS)}")
    kwargs = {c: np.asarray(table[c]) for c in _OPTIONAL_COLUMNS if c in names}
    try:
        return profiles_from_arrays(np.asarray(table["speed"]), np.asarray(table["up_bandwidth"]), **kwargs)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def profiles_to_csv(profiles: DeviceProfiles, path) -> None:
    """Write ``profiles`` as a CSV readable by ``profiles_from_csv`` (full float precision)."""
    cols = [np.asarray(getattr(profiles, f), np.float64) for f in _FLOAT_FIELDS]
    cols.append(np.asarray(profiles.tier, np.float64))
    np.savetxt(Path(path), np.stack(cols, axis=1), delimiter=",", header=",".join(_FLOAT_FIELDS + ("tier",)),
               comments="", fmt="%.17g")
