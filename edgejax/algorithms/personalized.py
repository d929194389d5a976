"""Shared parts of the personalized algorithms and the personalized evaluation.

Personalized federated learning keeps, beside (or instead of) one global model, a model per node
that is judged on that node's own data.  Four algorithms follow the protocol of
``edgejax.algorithms.base``, each in its own module:

* ``FineTuned`` (``finetune.py``): FedAvg, then every node's k local steps from the global model;
* ``Ditto`` (``ditto.py``, Li et al. 2021): FedAvg plus a personal model per node trained with the
  proximal pull ``lambda/2 ||v - w||^2`` toward the global model;
* ``FedRep`` (``fedrep.py``, Collins et al. 2021): a shared body averaged by the server, a head
  kept by each node (head epochs, then body epochs);
* ``APFL`` (``apfl.py``, Deng et al. 2020): each node's mixture ``alpha v + (1 - alpha) w``.

Every one of them returns its per-node models from ``eval_models``, so ``Simulation.evaluate``
reports ``own_accuracy_*`` (each node's own model on its own held-out split, ``data.local_test``)
next to ``node_accuracy_*`` (the global model on the same splits).  :func:`personalized_report`
adds the summary personalized FL papers report: the mean, the worst 10% and the spread.

``scan_minibatches`` is the on-device minibatch loop of ``edgejax.core.local`` (the same
shuffles and batch positions) for algorithms whose local step is not one optimizer step on one
loss (FedRep's frozen parts, APFL's coupled updates); it is mapped over the cohort with
``map_nodes`` (``vmap`` or ``lax.map`` in groups), never a Python loop over nodes.  These two
algorithms do not go through ``ctx.execution``, so with a node mesh (``Simulation(mesh=...)``) their
local loops are not split over the devices (same numbers, one device's worth of parallelism).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from edgejax.core.evaluate import _node_accuracies, node_distribution
from edgejax.core.local import LocalTraining, batch_positions, node_shuffles
from edgejax.core.state import tree_where


def static_schedule(spec: LocalTraining, size: int, epochs: int | None = None) -> tuple[int, int]:
    """Static ``(max_steps, shuffles)`` bounding every node of padded size ``size``: ``epochs`` (or
    the schedule's epochs) times ``ceil(size / B)`` steps, or the schedule's fixed ``steps``."""
    spe = max(-(-size // spec.batch_size), 1)
    if epochs is not None:
        return epochs * spe, epochs
    if spec.steps is not None:
        return spec.steps, spec.steps
    return spec.epochs * spe, spec.epochs


def scan_minibatches(step: Callable, carry, x, y, count, key, n_steps, max_steps: int, shuffles: int,
                     spec: LocalTraining):
    """Run ``carry, loss = step(carry, xb, yb, wb)`` on one node's minibatches (``core.local``'s
    shuffles and batch positions); steps ``>= n_steps`` are masked out.  Returns the final carry
    and the mean loss over the steps taken."""
    order = node_shuffles(key, count, x.shape[0], shuffles)

    def body(state, t):
        carry, loss_sum = state
        slots, wb = batch_positions(spec, t, count, order)
        new, loss = step(carry, x[slots], y[slots], wb)
        active = t < n_steps
        return (tree_where(active, new, carry), loss_sum + jnp.where(active, loss, 0.0)), None

    zero = jnp.zeros_like(n_steps, dtype=jnp.result_type(float))
    (carry, loss_sum), _ = jax.lax.scan(body, (carry, zero), jnp.arange(max_steps))
    return carry, loss_sum / jnp.maximum(n_steps.astype(loss_sum.dtype), 1.0)


def personalized_report(sim, state, data=None) -> dict:
    """Each node's own model and the global model on each node's held-out split (``data.local_test``).

    Returns ``personal_*`` (node i's model from ``eval_models``) and ``global_*`` (the server model)
    with ``edgejax.core.evaluate.node_distribution``'s ``_mean``, ``_min``, ``_worst10`` (the mean
    over the worst ``ceil(10% N)`` nodes with a split), ``_p10``, ``_p50``, ``_p90`` and ``_std``
    (spread) of the accuracy (or, for regression, the loss; then "worst" is still the lowest
    values, so read ``_mean`` and ``_std``), plus the per-node arrays ``personal_nodes`` /
    ``global_nodes`` (NaN for a node without a split).  An algorithm with no per-node models
    (FedAvg and the other server algorithms) gets the ``global_*`` part only, its baseline.
    """
    data = sim.data if data is None else data
    params, node_params = sim.algorithm.eval_models(state)
    if data.local_test is None:
        raise ValueError("personalized_report needs each node's held-out split (data.local_test); this data has "
                         "none (host-resident data keeps the global test set only)")
    group = sim.context.group_size
    glob = _node_accuracies(sim.model, params, data.local_test, group, False)
    report = {**node_distribution("global", glob), "global_nodes": glob}
    if node_params is not None:
        own = _node_accuracies(sim.model, node_params, data.local_test, group, True)
        report |= {**node_distribution("personal", own), "personal_nodes": own}
    return report
