"""Server-round parts for sub-models: averaging every parameter over the nodes that hold it.

With per-node masks ``m_i`` over the full-size layout (``edgejax.core.local.SubModelMask``)
and aggregation weights ``p_i`` (zero for absent nodes), the server's new model is, entry
by entry (HeteroFL, Diao et al. 2021; the harvest and reassembly of Chen & Qin 2020)::

    x'[e] = sum_i p_i m_i[e] x_i[e] / sum_i p_i m_i[e]     where  sum_i p_i m_i[e] > 0
    x'[e] = x[e]                                           where no active node holds e

Since a node never changes an entry outside its mask (``x_i[e] = x[e]`` there), the
numerator's change ``sum_i p_i m_i (x_i - x)`` equals the plain ``sum_i p_i (x_i - x)`` that
an execution strategy's ``delta`` returns, so the masked average is that change divided by
the coverage ``sum_i p_i m_i``.  With every mask all ones this is FedAvg's ``x + Delta``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from edgejax.core.local import masked_weighted_sum


def coverage(p: jax.Array, mask_params):
    """``sum_i p_i [m_i != 0]`` entry by entry over the cohort's masks ``[K, ...]``."""
    return jax.tree_util.tree_map(lambda m: masked_weighted_sum(p, (m != 0).astype(p.dtype)), mask_params)


def masked_average_change(change, p: jax.Array, mask_params):
    """``Delta[e] = change[e] / sum_i p_i m_i[e]`` (zero where no node with ``p_i > 0`` holds ``e``),
    from ``change = sum_i p_i (x_i - x)``; then ``x + Delta`` is the masked average above."""
    def one(d, c):
        return jnp.where(c > 0, d / jnp.where(c > 0, c, 1.0), 0.0)

    return jax.tree_util.tree_map(one, change, coverage(p, mask_params))
