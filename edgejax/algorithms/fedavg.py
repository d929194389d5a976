"""FedAvg and its server-optimizer family (FedAvgM, FedAdagrad, FedAdam, FedYogi).

One round (McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data"; Reddi et al. 2021 for adaptive servers)::

    every active cohort node i:  x_i = LocalUpdate(x, D_i)          (from the server model x)
    Delta = sum_i p_i (x_i - x),  p_i = a_i n_i / sum_j a_j n_j      (a_i = active mask;
                                                                    n_i = 1 with weighting="uniform")
    x <- ServerOpt(x, -Delta)                                        (sgd with lr 1: x + Delta)

A round with no active node leaves the server state unchanged.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from edgejax.algorithms.server_optimizers import SERVER_OPTIMIZERS, make_server_optimizer, server_hparams
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState, tree_take, tree_where
from edgejax.core.local import masked_weighted_sum

WEIGHTINGS = ("samples", "uniform")
PRESETS = {"fedavg": "sgd", "fedavgm": "momentum", "fedadagrad": "adagrad", "fedadam": "adam", "fedyogi": "yogi"}


@dataclasses.dataclass(frozen=True)
class FedAvg:
    """FedAvg with a server optimizer on the pseudo-gradient (static options).

    Attributes:
      server_optimizer: one of ``SERVER_OPTIMIZERS`` (``sgd`` is plain FedAvg).
      weighting: ``samples`` weights node updates by their sample counts (the paper),
        ``uniform`` weights every active node equally.
      bias_correction: Adam/Yogi-style bias correction on the server (off in Reddi et al.).
    """

    server_optimizer: str = "sgd"
    weighting: str = "samples"
    bias_correction: bool = False

    def __post_init__(self):
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise ValueError(f"unknown server optimizer {self.server_optimizer!r}; choose from {SERVER_OPTIMIZERS}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose from {WEIGHTINGS}")

    @property
    def name(self) -> str:
        return {v: k for k, v in PRESETS.items()}[self.server_optimizer]

    def default_hparams(self) -> dict[str, float]:
        return server_hparams(self.server_optimizer)

    def init(self, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        opt = make_server_optimizer(self.server_optimizer, hparams, self.bias_correction)
        return NodeState(rng=node_rng), ServerState(params=global_params, opt_state=opt.init(global_params))

    def eval_models(self, state: SimState):
        """The models evaluation reports: the server's (no per-node models persist)."""
        return state.server.params, None

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        """One FedAvg round; returns the new state and this round's scalar metrics."""
        x = state.server.params
        full = plan.nodes.shape[0] == data.train.num_nodes
        cohort = data.train if full else tree_take(data.train, plan.nodes)
        node_rng = state.nodes.rng if full else state.nodes.rng[plan.nodes]
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(node_rng, state.round)

        size = cohort.count.astype(plan.active.dtype) if self.weighting == "samples" else 1.0
        weights = plan.active * size
        total = jnp.sum(weights)
        p = weights / jnp.maximum(total, 1e-30)
        delta, node_loss, node_steps = ctx.local_delta(x, cohort, keys, plan.step_budget, p, hparams)

        opt = make_server_optimizer(self.server_optimizer, hparams, self.bias_correction)
        neg_delta = jax.tree_util.tree_map(jnp.negative, delta)
        updates, opt_state = opt.update(neg_delta, state.server.opt_state, x)
        server = ServerState(params=optax.apply_updates(x, updates), opt_state=opt_state)
        server = tree_where(total > 0, server, state.server)

        participants = jnp.sum(plan.active)
        metrics = {
            "train_loss": masked_weighted_sum(p, node_loss),
            "participants": participants,
            "local_steps": jnp.sum(plan.active * node_steps),
            "bytes_up": participants * ctx.model_bytes,
            "bytes_down": participants * ctx.model_bytes,
        }
        return state._replace(server=server), metrics
