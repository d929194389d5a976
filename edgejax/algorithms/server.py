"""Parts that server-based rounds are composed from.

A server round is: gather the cohort (``cohort_inputs``, ``gather``), train it through the
execution strategy with the algorithm's ``LocalTerm``s (``proximal``, ``linear``),
aggregate (``normalize``, the algorithm's aggregator over the model changes:
``aggregated_change``, the weighted mean by default; FedNova's ``normalized_weights``), apply the server step (an optax ``GradientTransformation`` on the
pseudo-gradient ``-Delta``: ``server_step``), scatter per-node state back (``scatter``)
and report ``server_metrics``.  FedAvg, the Reddi server optimizers, FedProx, FedNova,
SCAFFOLD and FedDyn are each a few lines over these parts.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from edgejax.algorithms.aggregation import aggregator_key
from edgejax.core.local import LocalTerm, masked_weighted_sum
from edgejax.core.state import RoundPlan, ServerState, SimState, round_keys, tree_take, tree_where
from edgejax.data.host import cohort_data

WEIGHTINGS = ("samples", "uniform")


def _pull(params, anchor, node_arg, hparams, coef):
    sq = sum(jnp.sum((w - w0) ** 2) for w, w0 in zip(jax.tree_util.tree_leaves(params),
                                                   jax.tree_util.tree_leaves(anchor)))
    return 0.5 * hparams[coef] * sq


def proximal(coef: str = "mu") -> LocalTerm:
    """``coef/2 ||w - anchor||^2`` (FedProx, Li et al. 2020; ``anchor``: the model the node
    received); ``coef`` names the traced hyper-parameter.  A ``pull``, so ``shared_base``
    stays exact with it under local SGD."""
    return LocalTerm(f"proximal[{coef}]", lambda p, a, arg, h: _pull(p, a, arg, h, coef), pull=coef)


def _inner(params, anchor, vector, hparams):
    return sum(jnp.sum(v * w) for v, w in zip(jax.tree_util.tree_leaves(vector), jax.tree_util.tree_leaves(params)))


def linear(name: str) -> LocalTerm:
    """``<v_i, w>`` with node i's vector ``v_i`` passed as ``node_args[name]``: adds the constant
    ``v_i`` to every local gradient (SCAFFOLD's ``c - c_i``, FedDyn's ``-grad L_i(theta_i)``)."""
    return LocalTerm(name, _inner)


class Cohort(NamedTuple):
    """This round's cohort: its training ``data`` (``NodeData`` ``[K, ...]``), its nodes' round
    ``keys [K, 2]``, aggregation ``weights [K]`` (zero for absent nodes) and whether it is
    every node in order (``full``, static: no gather or scatter is needed)."""

    data: Any
    keys: jax.Array
    weights: jax.Array
    full: bool


def cohort_inputs(state: SimState, data, plan: RoundPlan, weighting: str) -> Cohort:
    """The cohort's data, keys (``fold_in(node_rng, round)``) and weights ``active_i * n_i``
    (``samples``) or ``active_i`` (``uniform``).  With a full cohort (K = N) nothing is gathered."""
    full = plan.nodes.shape[0] == data.train.num_nodes
    cohort = cohort_data(data.train, plan.nodes, full)
    keys = round_keys(gather(state.nodes.rng, plan, full), state.round)
    size = cohort.count.astype(plan.active.dtype) if weighting == "samples" else 1.0
    return Cohort(cohort, keys, plan.active * size, full)


def gather(tree, plan: RoundPlan, full: bool):
    """The cohort's rows of a per-node pytree ``[N, ...] -> [K, ...]``."""
    return tree if full else tree_take(tree, plan.nodes)


def scatter(tree, values, plan: RoundPlan, full: bool):
    """Write the cohort's rows ``values [K, ...]`` back into ``tree [N, ...]``."""
    if full:
        return values
    return jax.tree_util.tree_map(lambda a, v: a.at[plan.nodes].set(v), tree, values)


def normalize(weights: jax.Array) -> jax.Array:
    """``p_i = w_i / sum_j w_j`` (all zero when no node takes part)."""
    return weights / jnp.maximum(jnp.sum(weights), 1e-30)


def weighted_change(p: jax.Array, models, x):
    """``Delta = sum_i p_i (x_i - x)`` over the cohort's trained ``models [K, ...]``."""
    return jax.tree_util.tree_map(lambda xi, x0: masked_weighted_sum(p, xi - x0), models, x)


def aggregated_change(aggregator, p, models, x, state: SimState, hparams):
    """``aggregator`` over the cohort's changes ``x_i - x`` with weights ``p`` (rows with
    ``p_i > 0`` take part) and the round's aggregator key: ``(Delta, aggregator state, metrics)``.
    With ``Mean`` this is ``sum_i p_i (x_i - x)`` (``weighted_change``)."""
    changes = jax.tree_util.tree_map(jnp.subtract, models, x)
    return aggregator.update(changes, p, p > 0, state.server.aggregator, round_aggregator_key(state), hparams)


def round_aggregator_key(state: SimState):
    """The aggregator's key for this round's server step."""
    return aggregator_key(jax.random.fold_in(state.rng, state.round))


def server_step(optimizer: optax.GradientTransformation, server: ServerState, delta, any_active,
                extra=None, aggregator=None) -> ServerState:
    """``x <- x + optimizer(-Delta)``, the server's new ``extra`` and aggregator state alongside
    (``None``: unchanged); when no node took part (``any_active`` false) the whole server state
    is left unchanged."""
    neg_delta = jax.tree_util.tree_map(jnp.negative, delta)
    updates, opt_state = optimizer.update(neg_delta, server.opt_state, server.params)
    new = server._replace(params=optax.apply_updates(server.params, updates), opt_state=opt_state,
                          extra=server.extra if extra is None else extra,
                          aggregator=server.aggregator if aggregator is None else aggregator)
    return tree_where(any_active, new, server)


def normalized_weights(local, p, counts, budget, hparams, prox_coef: str | None, tau_eff: str):
    """FedNova (Wang et al. 2020): ``p_i tau_eff / ||a_i||_1`` with

    ``||a_i||_1 = tau_i`` (SGD), ``[tau_i - rho (1 - rho^tau_i)/(1 - rho)] / (1 - rho)``
    (momentum rho), ``(1 - (1 - lr mu)^tau_i) / (lr mu)`` (SGD + proximal term);
    ``tau_eff = sum_i p_i ||a_i||_1`` (``"paper"``) or ``sum_i p_i tau_i`` (``"steps"``, the
    authors' code when mu > 0).
    """
    name = local.optimizer
    if name not in ("sgd", "momentum") or (prox_coef is not None and name != "sgd"):
        raise ValueError(f"FedNova's normalisation is implemented for local 'sgd' (with or without the "
                         f"proximal term) and 'momentum'; got {name!r}")
    tau = jnp.minimum(local.node_steps(counts), budget).astype(p.dtype)
    if name == "momentum":
        rho = hparams["client_momentum"]
        a_norm = (tau - rho * (1 - rho ** tau) / (1 - rho)) / (1 - rho)
    elif prox_coef is not None:
        decay = hparams["client_lr"] * hparams[prox_coef]
        a_norm = jnp.where(decay > 0, (1 - (1 - decay) ** tau) / jnp.where(decay > 0, decay, 1.0), tau)
    else:
        a_norm = tau
    tau_eff_value = jnp.sum(p * (a_norm if tau_eff == "paper" else tau))
    return jnp.where(a_norm > 0, p * tau_eff_value / jnp.where(a_norm > 0, a_norm, 1.0), 0.0)


def server_metrics(p, node_loss, node_steps, plan: RoundPlan, payload) -> dict:
    """The protocol's round metrics: ``train_loss`` (the ``p``-weighted node loss; NaN when no
    node took part), ``participants``, ``local_steps``, and the bytes moved (each participant's
    ``payload``: a scalar times the participants, or the per-node bytes summed over them)."""
    participants = jnp.sum(plan.active)
    cohort = payload.take(plan.nodes)

    def moved(size):
        return participants * size if np.ndim(size) == 0 else jnp.sum(jnp.where(plan.active > 0, size, 0.0))

    return {
        "train_loss": jnp.where(participants > 0, masked_weighted_sum(p, node_loss), jnp.nan),
        "participants": participants,
        "local_steps": jnp.sum(plan.active * node_steps),
        "bytes_up": moved(cohort.up),
        "bytes_down": moved(cohort.down),
    }
