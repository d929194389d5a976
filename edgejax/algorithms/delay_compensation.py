"""DC-ASGD with the gradient itself (Zheng et al. 2017, "Asynchronous Stochastic Gradient Descent
with Delay Compensation", Algorithm 1): the worker computes ``g = grad f(w_bak)`` on one
minibatch at the model it downloaded and pushes it; the server applies::

    w <- w - eta (g + lambda g * g * (w - w_bak))

``DCASGD`` recovers ``g`` from a trained model as ``(w_bak - y) / client_lr``, which is the
gradient only for one local SGD step; here the gradient is sent, so the rule is exact whatever
``LocalTraining``'s steps or optimizer (only its batch size and the node's key, which pick the
minibatch, are used: ``RoundContext.value_and_grad``).  Traced ``server_lr`` (eta) and
``dc_lambda``; a message is one model-sized gradient each way, as ``DCASGD``'s.
"""
from __future__ import annotations

import dataclasses

import jax

from edgejax.algorithms.asynchronous import DCASGD


@dataclasses.dataclass(frozen=True)
class ExactDCASGD(DCASGD):
    """DC-ASGD whose nodes send their minibatch gradient at the downloaded model (module docstring)."""

    @property
    def name(self) -> str:
        return "dcasgd_exact"

    def local_work(self, ctx, start, cohort, keys, budget, hparams):
        """Every arrival's loss and gradient at its downloaded model; one gradient step each."""
        loss, grads = ctx.value_and_grad(start, cohort, keys)
        return grads, loss, (budget > 0).astype(loss.dtype)

    def apply(self, x, g, start, staleness, rule, key, hparams):
        lr, lam = hparams["server_lr"], hparams["dc_lambda"]
        step = jax.tree_util.tree_map(lambda w, gi, w_bak: w - lr * (gi + lam * gi * gi * (w - w_bak)), x, g, start)
        return step, True, rule, 1.0
