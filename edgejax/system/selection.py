"""Which nodes form the cohort: availability-aware client selection as masks over a fixed-size cohort.

Every selector returns ``(nodes int32 [K], active [K])`` with ``K = cohort_size`` static and
``active`` a float mask in ``default_float()`` (1.0 = takes part; the ``RoundPlan.active``
convention), and takes ``count`` (how many to pick, ``<= K``) as a possibly traced scalar,
so a sweep over it needs no recompilation.  ``available`` is a bool (or 0/1) mask ``[N]``,
e.g. from ``Availability.step``.

Each selector ranks all ``N`` nodes by a score:

* ``cohort_size < N``: the cohort is the ``K`` best-ranked nodes (``lax.top_k`` / a sort),
  best first, and the first ``count`` of them that are eligible are active;
* ``cohort_size == N``: the cohort is every node in node order (``nodes = arange(N)``, no
  gather of node data needed) and the selection is the mask ``rank < count``.

Ineligible nodes (unavailable, or failing the selector's own criterion) always rank after
every eligible node and are never active, so if fewer than ``count`` nodes are eligible only
those are active.  To build a ``RoundPlan``: ``step_budget = where(active > 0, max_steps, 0)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from edgejax.core.state import default_float

__all__ = ["select_uniform", "select_deadline_greedy", "select_tier"]


def _check_sizes(num_nodes: int, cohort_size: int) -> None:
    if not 1 <= cohort_size <= num_nodes:
        raise ValueError(f"cohort_size = {cohort_size} must be in [1, number of nodes {num_nodes}]")


def _from_order(order: jax.Array, eligible: jax.Array, cohort_size: int, count) -> tuple[jax.Array, jax.Array]:
    """Cohort and mask from ``order`` (all node ids, best first, eligible before ineligible)."""
    n = order.shape[0]
    if cohort_size == n:
        nodes = jnp.arange(n, dtype=jnp.int32)
        rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
        ok = eligible
    else:
        nodes = order[:cohort_size].astype(jnp.int32)
        rank = jnp.arange(cohort_size, dtype=jnp.int32)
        ok = eligible[nodes]
    active = (rank < jnp.asarray(count)) & ok
    return nodes, active.astype(default_float())


def _from_scores(scores: jax.Array, eligible: jax.Array, cohort_size: int, count) -> tuple[jax.Array, jax.Array]:
    """Cohort and mask from scores (higher is better)."""
    n = scores.shape[0]
    if cohort_size == n:
        nodes = jnp.arange(n, dtype=jnp.int32)
        rank = jnp.argsort(jnp.argsort(-scores))
        ok = eligible
    else:
        _, nodes = jax.lax.top_k(scores, cohort_size)
        nodes = nodes.astype(jnp.int32)
        rank = jnp.arange(cohort_size)
        ok = eligible[nodes]
    active = (rank < jnp.asarray(count)) & ok
    return nodes, active.astype(default_float())


def select_uniform(key: jax.Array, available: jax.Array, cohort_size: int, count
                   ) -> tuple[jax.Array, jax.Array]:
    """``count`` nodes uniformly at random without replacement among the AVAILABLE nodes.

    Available nodes get scores ``U[0, 1)``, unavailable ones ``U[0, 1) - 2`` (so they rank
    after every available node and are marked inactive).  Each available node is chosen with
    probability ``min(count, A) / A`` where ``A`` is the number available (McMahan et al.
    2017's uniform sampling when every node is available).
    """
    available = jnp.asarray(available) > 0
    _check_sizes(available.shape[0], cohort_size)
    u = jax.random.uniform(key, available.shape)
    scores = jnp.where(available, u, u - 2.0)
    return _from_scores(scores, available, cohort_size, count)


def select_deadline_greedy(key: jax.Array, est_time: jax.Array, available: jax.Array, deadline,
                           cohort_size: int, count) -> tuple[jax.Array, jax.Array]:
    """FedCS-style selection (Nishio & Yonetani 2019): the ``count`` fastest available nodes
    whose estimated round time ``est_time [N]`` (seconds, e.g. ``node_times`` summed over the
    full profiles) fits ``deadline`` (traced scalar).

    FedCS adds clients greedily by their time until the deadline is reached; with independent
    links (our clock's model: no shared, sequential upload channel) that greedy is: sort the
    eligible nodes (available and ``est_time <= deadline``) by ``est_time`` ascending, ties
    broken uniformly at random with ``key``, and take the first ``count``.  Nodes that do not
    fit (or have a NaN estimate) are never active.  The cohort order for ``cohort_size < N``
    is fastest first.
    """
    available = jnp.asarray(available) > 0
    n = available.shape[0]
    _check_sizes(n, cohort_size)
    est = jnp.asarray(est_time)
    if est.shape != (n,):
        raise ValueError(f"est_time has shape {est.shape}, expected ({n},) like available")
    eligible = available & (est <= jnp.asarray(deadline, est.dtype))
    tie = jax.random.uniform(key, (n,))
    primary = jnp.where(eligible, est, jnp.inf)
    # jnp.lexsort: the LAST key is the primary one.
    order = jnp.lexsort((tie, primary, ~eligible))
    return _from_order(order, eligible, cohort_size, count)


def select_tier(key: jax.Array, tiers: jax.Array, available: jax.Array, cohort_size: int, count,
                num_tiers: int, *, tier_weights=None) -> tuple[jax.Array, jax.Array]:
    """TiFL-style selection (Chai et al. 2020): draw ONE tier per round, then ``count`` nodes
    uniformly without replacement among that tier's available nodes.

    The tier is drawn uniformly among the tiers that have at least one available node (TiFL's
    static uniform tier policy); ``tier_weights [num_tiers]`` (optional, may be traced, >= 0)
    gives other selection probabilities, renormalised over those tiers (TiFL's adaptive policy
    updates such weights from per-tier accuracy between rounds; that bookkeeping is left to the
    caller).  If no tier with positive weight has an available node, no node is active.  ``tiers [N]`` are ints in
    ``[0, num_tiers)`` (e.g. ``DeviceProfiles.tier``); nodes outside that range are never chosen.
    """
    available = jnp.asarray(available) > 0
    n = available.shape[0]
    _check_sizes(n, cohort_size)
    tiers = jnp.asarray(tiers).astype(jnp.int32)
    if tiers.shape != (n,):
        raise ValueError(f"tiers has shape {tiers.shape}, expected ({n},) like available")
    if int(num_tiers) != num_tiers or num_tiers < 1:
        raise ValueError(f"num_tiers = {num_tiers} must be a positive integer")
    k_tier, k_nodes = jax.random.split(key)
    in_range = (tiers >= 0) & (tiers < num_tiers)
    per_tier = jnp.zeros((num_tiers,), jnp.int32).at[tiers].add((available & in_range).astype(jnp.int32),
                                                                 mode="drop")
    has = per_tier > 0
    if tier_weights is None:
        logits = jnp.where(has, 0.0, -jnp.inf)
    else:
        w = jnp.broadcast_to(jnp.asarray(tier_weights, default_float()), (num_tiers,))
        logits = jnp.where(has & (w > 0), jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)
    chosen = jax.random.categorical(k_tier, logits)
    eligible = available & in_range & (tiers == chosen)
    return select_uniform(k_nodes, eligible, cohort_size, count)
