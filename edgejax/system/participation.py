"""Who takes part in a round: client sampling as masks over a fixed-size cohort."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from edgejax.core.state import RoundPlan, default_float


def uniform_cohort(key: jax.Array, num_nodes: int, cohort_size: int, count: jax.Array,
                   max_steps: int) -> RoundPlan:
    """Sample ``count`` of ``num_nodes`` nodes uniformly without replacement (McMahan et al. 2017).

    ``cohort_size`` (static) fixes the array shapes; ``count <= cohort_size`` may be
    traced, so a sweep over the participation count needs no recompilation.  The
    cohort is the ``cohort_size`` nodes with the largest uniform scores; the first
    ``count`` of them (in score order) take part, the rest carry ``active = 0`` and a
    step budget of 0.
    With ``cohort_size == num_nodes`` the cohort is every node in node order (no
    gather of node data is needed) and the sample is a mask over it.
    """
    scores = jax.random.uniform(key, (num_nodes,))
    if cohort_size == num_nodes:
        nodes = jnp.arange(num_nodes)
        rank = jnp.argsort(jnp.argsort(-scores))
    else:
        _, nodes = jax.lax.top_k(scores, cohort_size)
        rank = jnp.arange(cohort_size)
    active = (rank < count).astype(default_float())
    budget = jnp.where(active > 0, max_steps, 0).astype(jnp.int32)
    return RoundPlan(nodes=nodes.astype(jnp.int32), active=active, step_budget=budget)
