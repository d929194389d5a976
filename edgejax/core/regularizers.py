"""Terms an algorithm adds to the local objective, ``regularizer(params, anchor, node_args, hparams)``."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def proximal_term(params, anchor, node_args, hparams):
    """FedProx (Li et al. 2020): ``mu/2 ||w - w_global||^2`` (``anchor``: the model the update started from)."""
    sq = sum(jnp.sum((w - w0) ** 2) for w, w0 in zip(jax.tree_util.tree_leaves(params),
                                                   jax.tree_util.tree_leaves(anchor)))
    return 0.5 * hparams["mu"] * sq
