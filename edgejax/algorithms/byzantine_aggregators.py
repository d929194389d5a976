"""Byzantine-robust aggregators over whole updates (distances and norms of the flattened update,
every leaf together), for ``aggregator=`` of the server algorithms and FedBuff.

Over the ``n`` rows ``u_i`` that take part (``mask``; rows outside it are never read):

* ``Krum(byzantine=f)`` (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent"): ``score(i) = sum_{j in N_i} ||u_i - u_j||^2`` over the
  ``c = n - f - 2`` rows ``j != i`` closest to ``u_i``; the row of least score (ties: the lowest
  index).  ``MultiKrum(byzantine=f, select=m)``: the mean of the ``m`` rows of least score (ties:
  the lower index first; all ``n`` rows when ``n < m``).  ``n`` is traced (absent nodes), so when
  ``n - f - 2 < 1`` the score runs over all ``n - 1`` other rows (Krum is then the medoid).
* ``GeometricMedian(iterations, eps)``, RFA (Pillutla et al. 2022, "Robust Aggregation for
  Federated Learning"): the smoothed Weiszfeld algorithm with the weights ``alpha_i``, from the
  weighted mean, ``iterations`` times: ``v <- sum_i beta_i u_i / sum_i beta_i``,
  ``beta_i = alpha_i / max(eps, ||u_i - v||)``.
* ``CenteredClipping(tau, iterations)`` (Karimireddy, He & Jaggi 2021, "Learning from History
  for Byzantine Robust Optimization"): from the previous aggregate ``v`` (the aggregator's state;
  zeros before the first), ``v <- v + (1/n) sum_i (u_i - v) min(1, tau / ||u_i - v||)``; traced
  ``cclip_tau``.
* ``NormBounded(max_norm)`` (Sun et al. 2019, "Can You Really Backdoor Federated Learning?"):
  ``sum_i w_i u_i min(1, M / ||u_i||)``, every row clipped to norm ``M`` (traced ``norm_bound``)
  then FedAvg's weighted sum.

Krum, Multi-Krum and centered clipping ignore the weights' sizes (the papers' statistics are
unweighted) and, like the coordinate-wise ones (``robust_aggregators``), return the statistic
scaled by ``sum_i weights_i``, zero when no row takes part; the geometric median and norm
bounding use the weights as RFA and FedAvg do.  None is fusable: each reads every row.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.algorithms.robust_aggregators import scaled_statistic
from edgejax.core.local import masked_weighted_sum


def _leading(v, u):
    """``v [K]`` shaped to broadcast against ``u [K, ...]``."""
    return v.reshape(v.shape + (1,) * (u.ndim - 1))


def _present(updates, mask):
    """The rows outside ``mask`` replaced by zeros (a NaN there cannot reach a distance)."""
    return jax.tree_util.tree_map(lambda u: jnp.where(_leading(mask, u), u, 0), updates)


def _norms(rows):
    """``||u_i||`` over every leaf of each row ``[K]``."""
    squares = [jnp.sum(jnp.square(u).reshape(u.shape[0], -1), axis=1) for u in jax.tree_util.tree_leaves(rows)]
    return jnp.sqrt(sum(squares))


def _distances_to(rows, v):
    """``||u_i - v||`` over every leaf ``[K]``."""
    return _norms(jax.tree_util.tree_map(lambda u, c: u - c, rows, v))


def _squared_distances(rows):
    """``||u_i - u_j||^2 [K, K]`` over every leaf, one row ``i`` at a time (memory ``K`` updates)."""
    def against(row):
        return sum(jnp.sum(jnp.square(u - r).reshape(u.shape[0], -1), axis=1)
                   for u, r in zip(jax.tree_util.tree_leaves(rows), jax.tree_util.tree_leaves(row)))
    return jax.lax.map(against, rows)


def _weighted_rows(alpha, rows):
    """``sum_i alpha_i u_i`` in each leaf's dtype (rows with ``alpha_i = 0`` add exactly nothing)."""
    return jax.tree_util.tree_map(lambda u: masked_weighted_sum(alpha.astype(u.dtype), u), rows)


def _krum_scores(rows, mask, byzantine):
    """Every row's Krum score (``+inf`` outside ``mask``; module docstring)."""
    k = mask.shape[0]
    n = jnp.sum(mask)
    pairs = mask[:, None] & mask[None, :] & ~jnp.eye(k, dtype=bool)
    nearest = jnp.sort(jnp.where(pairs, _squared_distances(rows), jnp.inf), axis=1)
    closest = jnp.where(n - byzantine - 2 >= 1, n - byzantine - 2, n - 1)
    score = jnp.sum(jnp.where(jnp.arange(k)[None, :] < closest, nearest, 0), axis=1)
    return jnp.where(mask, score, jnp.inf)


def _check_count(owner, name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{owner}: {name}={value!r} must be an integer >= {low}")


def _check_positive(owner, name, value):
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not 0 < value < math.inf:
        raise ValueError(f"{owner}: {name}={value!r} must be a positive finite number")


def _krum_mean(updates, weights, mask, byzantine, select):
    """The mean of the ``select`` present rows of least Krum score, scaled by the total weight."""
    rows = _present(updates, mask)
    score = _krum_scores(rows, mask, byzantine)
    k = mask.shape[0]
    rank = jnp.zeros(k, jnp.int32).at[jnp.argsort(score, stable=True)].set(jnp.arange(k, dtype=jnp.int32))
    chosen = mask & (rank < select)
    return scaled_statistic(_weighted_rows(chosen / jnp.maximum(jnp.sum(chosen), 1), rows), weights, mask)


@dataclasses.dataclass(frozen=True)
class Krum:
    """The row of least Krum score, ``byzantine`` rows tolerated (module docstring; Blanchard
    et al. 2017)."""

    byzantine: int
    name = "krum"
    fusable = False

    def __post_init__(self):
        _check_count("Krum", "byzantine", self.byzantine, 0)

    def default_hparams(self) -> dict[str, float]:
        return {}

    def init(self, params):
        return ()

    def update(self, updates, weights, mask, state, key, hparams):
        return _krum_mean(updates, weights, mask, self.byzantine, 1), state, {}


@dataclasses.dataclass(frozen=True)
class MultiKrum:
    """The mean of the ``select`` rows of least Krum score, ``byzantine`` rows tolerated (module
    docstring; Blanchard et al. 2017); ``select=1`` is ``Krum``."""

    byzantine: int
    select: int
    name = "multikrum"
    fusable = False

    def __post_init__(self):
        _check_count("MultiKrum", "byzantine", self.byzantine, 0)
        _check_count("MultiKrum", "select", self.select, 1)

    def default_hparams(self) -> dict[str, float]:
        return {}

    def init(self, params):
        return ()

    def update(self, updates, weights, mask, state, key, hparams):
        return _krum_mean(updates, weights, mask, self.byzantine, self.select), state, {}


@dataclasses.dataclass(frozen=True)
class GeometricMedian:
    """RFA's smoothed Weiszfeld approximation of the weighted geometric median (module
    docstring; Pillutla et al. 2022); ``iterations=0`` is the weighted mean."""

    iterations: int = 4
    eps: float = 1e-6
    name = "geomedian"
    fusable = False

    def __post_init__(self):
        _check_count("GeometricMedian", "iterations", self.iterations, 0)
        _check_positive("GeometricMedian", "eps", self.eps)

    def default_hparams(self) -> dict[str, float]:
        return {}

    def init(self, params):
        return ()

    def update(self, updates, weights, mask, state, key, hparams):
        rows = _present(updates, mask)
        w = jnp.where(mask, weights, 0)
        alpha = w / jnp.maximum(jnp.sum(w), jnp.finfo(w.dtype).tiny)

        def weiszfeld(_, v):
            beta = alpha / jnp.maximum(self.eps, _distances_to(rows, v))
            return _weighted_rows(beta / jnp.maximum(jnp.sum(beta), jnp.finfo(beta.dtype).tiny), rows)

        v = jax.lax.fori_loop(0, self.iterations, weiszfeld, _weighted_rows(alpha, rows))
        return scaled_statistic(v, weights, mask), state, {}


@dataclasses.dataclass(frozen=True)
class CenteredClipping:
    """Centered clipping around the previous aggregate (module docstring; Karimireddy et al.
    2021).  ``tau`` is the default of the traced ``cclip_tau``; the state is the centre ``v``
    after this step (the aggregate when the weights sum to 1, as FedAvg's and FedBuff's do),
    left as it was when no row takes part."""

    tau: float = 10.0
    iterations: int = 1
    name = "cclip"
    fusable = False

    def __post_init__(self):
        _check_positive("CenteredClipping", "tau", self.tau)
        _check_count("CenteredClipping", "iterations", self.iterations, 1)

    def default_hparams(self) -> dict[str, float]:
        return {"cclip_tau": float(self.tau)}

    def init(self, params):
        return jax.tree_util.tree_map(jnp.zeros_like, params)

    def update(self, updates, weights, mask, state, key, hparams):
        rows = _present(updates, mask)
        tau = hparams["cclip_tau"]
        share = mask / jnp.maximum(jnp.sum(mask), 1)

        def clip_step(_, v):
            distance = _distances_to(rows, v)
            keep = jnp.where(distance > tau, tau / jnp.where(distance > tau, distance, 1), 1)
            moved = jax.tree_util.tree_map(lambda u, c: u - c, rows, v)
            step = _weighted_rows(share * keep, moved)
            return jax.tree_util.tree_map(lambda c, s: (c + s).astype(c.dtype), v, step)

        v = jax.lax.fori_loop(0, self.iterations, clip_step, state)
        v = jax.tree_util.tree_map(lambda new, old: jnp.where(jnp.any(mask), new, old), v, state)
        return scaled_statistic(v, weights, mask), v, {}


@dataclasses.dataclass(frozen=True)
class NormBounded:
    """Every row clipped to L2 norm ``max_norm`` (the default of the traced ``norm_bound``), then
    the weighted sum (module docstring; Sun et al. 2019)."""

    max_norm: float = 1.0
    name = "normbound"
    fusable = False

    def __post_init__(self):
        _check_positive("NormBounded", "max_norm", self.max_norm)

    def default_hparams(self) -> dict[str, float]:
        return {"norm_bound": float(self.max_norm)}

    def init(self, params):
        return ()

    def update(self, updates, weights, mask, state, key, hparams):
        rows = _present(updates, mask)
        bound, norm = hparams["norm_bound"], _norms(rows)
        keep = jnp.where(norm > bound, bound / jnp.where(norm > bound, norm, 1), 1)
        return _weighted_rows(jnp.where(mask, weights, 0) * keep, rows), state, {}
