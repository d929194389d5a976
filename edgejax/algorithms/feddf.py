"""FedDF: FedAvg followed by server-side ensemble distillation (Lin et al. 2020, "Ensemble
Distillation for Robust Model Fusion in Federated Learning", Algorithm 1).

After FedAvg's aggregation the server fine-tunes the averaged model ``x`` on an unlabelled
public set ``X0`` toward the ensemble of the round's node models (the paper's AVGLOGITS)::

    z~ = (1 / |A|) sum_{i in A} f(x_i, X0)                 the active nodes' mean logits [P, C]
    x <- x - distill_lr grad_x  T^2 mean_b KL(softmax(z~_b / T) || softmax(f(x, X0_b) / T))

for ``distill_steps`` steps, step ``s`` on the public samples ``(s B + j) mod P``, ``j < B``
(``B = distill_batch``, default all ``P``).  Conventions: plain SGD with the traced
``distill_lr`` and a fixed number of steps (the paper uses Adam with early stopping on a
validation split); traced temperature ``distill_temperature`` (the paper's 1).  Everything
else is FedAvg's (server optimizer, weighting, aggregator): FedDF is FedAvg's
``after_aggregate`` hook, reading every node's trained model (``per_node`` training).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.algorithms.distillation import distill_loss
from edgejax.algorithms.fedavg import FedAvg
from edgejax.core.local import map_nodes, masked_weighted_sum
from edgejax.core.state import tree_where


@dataclasses.dataclass(frozen=True, eq=False)
class FedDF(FedAvg):
    """FedAvg + ensemble distillation on ``public_x [P, ...]`` (see the module docstring); the
    other options are ``FedAvg``'s."""

    public_x: Any = None
    distill_steps: int = 10
    distill_batch: int | None = None
    # an array option: compared and hashed by identity, as FedMD is (not by FedAvg's fields alone)
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __post_init__(self):
        super().__post_init__()
        if self.public_x is None or np.ndim(self.public_x) < 2 or np.shape(self.public_x)[0] < 1:
            raise ValueError(f"FedDF needs public_x, the unlabelled public inputs [P >= 1, ...]; got "
                             f"{None if self.public_x is None else np.shape(self.public_x)}")
        if not (isinstance(self.distill_steps, (int, np.integer)) and self.distill_steps >= 1):
            raise ValueError(f"distill_steps={self.distill_steps!r} must be a positive integer")
        p = np.shape(self.public_x)[0]
        if self.distill_batch is not None and not (isinstance(self.distill_batch, (int, np.integer))
                                                   and 1 <= self.distill_batch <= p):
            raise ValueError(f"distill_batch={self.distill_batch!r} must be an integer in [1, P={p}] or None")

    @property
    def name(self) -> str:
        base = super().name
        return "feddf" if base == "fedavg" else f"feddf[{base}]"

    def describe(self) -> dict:
        return {**super().describe(), "public_x": list(np.shape(self.public_x))}

    def default_hparams(self) -> dict[str, float]:
        return {**super().default_hparams(), "distill_lr": 0.1, "distill_temperature": 1.0}

    def reads_node_models(self) -> bool:
        return True

    def after_aggregate(self, ctx, state, server, models, active, hparams):
        """Distil the active nodes' mean logits on the public set into the new server model."""
        public = jnp.asarray(self.public_x, jax.tree_util.tree_leaves(server.params)[0].dtype)
        apply = ctx.model.apply
        weights = active / jnp.maximum(jnp.sum(active), 1)
        teacher = masked_weighted_sum(weights, map_nodes(lambda w: apply(w, public), models, ctx.group_size))
        batch = public.shape[0] if self.distill_batch is None else self.distill_batch
        temperature = hparams["distill_temperature"]

        def step(w, s):
            idx = (s * batch + jnp.arange(batch)) % public.shape[0]
            loss, g = jax.value_and_grad(lambda v: distill_loss("kl", apply(v, public[idx]), teacher[idx],
                                                                temperature))(w)
            return jax.tree_util.tree_map(lambda a, b: a - hparams["distill_lr"] * b, w, g), loss

        distilled, losses = jax.lax.scan(step, server.params, jnp.arange(self.distill_steps))
        any_active = jnp.any(active)
        server = tree_where(any_active, server._replace(params=distilled), server)
        return server, {"distill_loss": jnp.where(any_active, jnp.mean(losses), jnp.nan)}
