"""Local fine-tuning after FedAvg: the simplest personalization baseline.

Every round is a FedAvg-family round (``base``, any ``FedAvg`` configuration); then **every** node
``i`` (all N, not only the cohort) starts from the new global model ``x`` and runs the local
schedule on its own training split, at most ``finetune_steps`` steps (``None``: the whole local
schedule, e.g. its epochs)::

    v_i = LocalUpdate(x, D_i)   (k steps)      personal model of node i, evaluated on node i's held-out split

The fine-tuned models are never sent anywhere and never change ``x``.  They are kept in
``nodes.params [N, ...]`` so that ``eval_models`` returns them (``own_accuracy_*`` next to the
global model's ``node_accuracy_*``).  Cost: the fine-tuning of all N nodes each round (trained
with the same execution strategy as the cohort, which is ``per_node``, since the models are read;
it runs inside the local update's scan with the steps after the k-th masked, so each node costs a
full local schedule whatever k is);
the system model charges only the FedAvg part (fine-tuning is a local evaluation procedure).
Fine-tuning uses the local optimizer and its hyper-parameters (``client_lr``) and a key folded
from each node's key, so it draws other minibatches than the round's training.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from edgejax.algorithms.base import DescribedByFields, Traits
from edgejax.algorithms.fedavg import FedAvg
from edgejax.core.state import SimState, round_keys, tree_broadcast
from edgejax.core.streams import stream_key
from edgejax.data.host import cohort_data


@dataclasses.dataclass(frozen=True)
class FineTuned(DescribedByFields):
    """FedAvg (``base``) followed by ``finetune_steps`` local steps of every node from the global model."""

    base: FedAvg = FedAvg()
    finetune_steps: int | None = None

    def __post_init__(self):
        if not isinstance(self.base, FedAvg):
            raise ValueError(f"FineTuned: base must be a FedAvg configuration, got {type(self.base).__name__}")
        if self.finetune_steps is not None and (not isinstance(self.finetune_steps, int) or self.finetune_steps < 1):
            raise ValueError(f"FineTuned: finetune_steps must be None or a positive integer, got {self.finetune_steps!r}")

    @property
    def name(self) -> str:
        return f"{self.base.name}+finetune"

    def traits(self) -> Traits:
        needs = self.base.traits().needs
        return Traits(needs=dataclasses.replace(needs, output="models"))

    def payload(self, params, num_nodes: int):
        return self.base.payload(params, num_nodes)

    def default_hparams(self) -> dict[str, float]:
        return self.base.default_hparams()

    def init(self, ctx, global_params, node_rng, hparams):
        nodes, server = self.base.init(ctx, global_params, node_rng, hparams)
        return nodes._replace(params=tree_broadcast(global_params, node_rng.shape[0])), server

    def eval_models(self, state: SimState):
        return state.server.params, state.nodes.params

    def finetune(self, ctx, state: SimState, data, hparams):
        """Every node's fine-tuned model ``[N, ...]`` from the server model (also usable on its own)."""
        n = data.train.num_nodes
        rng = jax.vmap(lambda k: stream_key(k, "finetune"))(state.nodes.rng)   # not training's minibatches
        budget = jnp.full((n,), jnp.iinfo(jnp.int32).max if self.finetune_steps is None else self.finetune_steps,
                          jnp.int32)
        # plain local steps: a FedProx base's pull toward x is switched off (mu = 0) while fine-tuning
        hp = {**hparams, "mu": jnp.zeros_like(hparams["mu"])} if self.base.prox else hparams
        every = cohort_data(data.train, jnp.arange(n, dtype=jnp.int32), True)
        return ctx.execution.train(state.server.params, every, round_keys(rng, state.round), budget, hp).params

    def round(self, ctx, state: SimState, data, plan, hparams):
        state, metrics = self.base.round(ctx, state, data, plan, hparams)
        return state._replace(nodes=state.nodes._replace(params=self.finetune(ctx, state, data, hparams))), metrics
