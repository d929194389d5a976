"""Byzantine-robust coordinate-wise aggregators (Yin et al. 2018, "Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates").

Over the ``m`` rows that take part (``mask``), coordinate by coordinate:

* ``CoordinateMedian``: ``med_j = median_i u_ij`` (the mean of the two middle values when
  ``m`` is even, as ``numpy.median``).
* ``TrimmedMean(trim=beta)``: drop the ``floor(beta m)`` largest and smallest values of each
  coordinate and average the rest (``scipy.stats.trim_mean``'s convention), ``0 <= beta < 1/2``.

Both ignore the weights' sizes (the paper's statistics are unweighted) and return the
statistic scaled by ``sum_i weights_i`` (the aggregator contract of
``edgejax.algorithms.aggregation``: 1 for FedAvg's normalised weights and for FedBuff's
``1/K`` rows), and zero when no row takes part.  They are not linear in the updates, so the
algorithm reads every node's update (``per_node`` training).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def _sorted_columns(u, mask):
    """Every coordinate's values sorted over the rows, rows outside ``mask`` last (``+inf``)."""
    keep = mask.reshape(mask.shape + (1,) * (u.ndim - 1))
    return jnp.sort(jnp.where(keep, u, jnp.inf), axis=0)


def scaled_statistic(statistic, weights, mask):
    """The aggregator contract: the statistic times the rows' total weight; zero with no row."""
    total = jnp.sum(jnp.where(mask, weights, 0))
    return jax.tree_util.tree_map(lambda s: jnp.where(jnp.any(mask), total * s, 0).astype(s.dtype), statistic)


@dataclasses.dataclass(frozen=True)
class CoordinateMedian:
    """The coordinate-wise median of the rows that take part (module docstring)."""

    name = "median"
    fusable = False

    def default_hparams(self) -> dict[str, float]:
        return {}

    def init(self, params):
        return ()

    def update(self, updates, weights, mask, state, key, hparams):
        m = jnp.maximum(jnp.sum(mask), 1)

        def median(u):
            s = _sorted_columns(u, mask)
            return 0.5 * (jnp.take(s, (m - 1) // 2, axis=0) + jnp.take(s, m // 2, axis=0))

        return scaled_statistic(jax.tree_util.tree_map(median, updates), weights, mask), state, {}


@dataclasses.dataclass(frozen=True)
class TrimmedMean:
    """The coordinate-wise ``trim``-trimmed mean of the rows that take part (module docstring)."""

    trim: float = 0.1
    name = "trimmed_mean"
    fusable = False

    def __post_init__(self):
        if not isinstance(self.trim, (int, float)) or not 0 <= self.trim < 0.5:
            raise ValueError(f"TrimmedMean: trim={self.trim!r} must be in [0, 0.5) (the fraction dropped at "
                             "each end of every coordinate)")

    def default_hparams(self) -> dict[str, float]:
        return {}

    def init(self, params):
        return ()

    def update(self, updates, weights, mask, state, key, hparams):
        m = jnp.sum(mask)
        cut = jnp.floor(self.trim * m.astype(jnp.float32) + 1e-6).astype(m.dtype)   # floor(beta m), exact for
        kept = jnp.maximum(m - 2 * cut, 1)                                             # the fractions users write

        def trimmed(u):
            s = _sorted_columns(u, mask)
            rank = jnp.arange(u.shape[0]).reshape((-1,) + (1,) * (u.ndim - 1))
            inside = (rank >= cut) & (rank < m - cut)
            return jnp.sum(jnp.where(inside, s, 0), axis=0) / kept.astype(u.dtype)

        return scaled_statistic(jax.tree_util.tree_map(trimmed, updates), weights, mask), state, {}
