"""FedAvg and its server-optimizer family (FedAvgM, FedAdagrad, FedAdam, FedYogi).

One round (McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data"; Reddi et al. 2021 for adaptive servers)::

    every active cohort node i:  x_i = LocalUpdate(x, D_i)          (from the server model x)
    Delta = sum_i p_i (x_i - x),  p_i = a_i n_i / sum_j a_j n_j      (a_i = active mask;
                                                                    n_i = 1 with weighting="uniform")
    x <- ServerOpt(x, -Delta)                                        (sgd with lr 1: x + Delta)

A round with no active node leaves the server state unchanged.

Two variants are options of the same dataclass (a few lines each):

* FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"),
  ``prox=True``: the local objective gains ``mu/2 ||w - x||^2`` (traced ``mu``).  The
  paper's model L2 term is not added (the authors' code declares it but never adds it).
* FedNova (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in
  Heterogeneous Federated Optimization"), ``normalized=True``: node changes are
  normalised by ``||a_i||_1`` and rescaled by ``tau_eff``::

      Delta = tau_eff sum_i p_i (x_i - x) / ||a_i||_1
      ||a_i||_1 = tau_i                                    (SGD, tau_i local steps)
                = [tau_i - rho (1 - rho^tau_i)/(1 - rho)] / (1 - rho)   (momentum rho)
                = (1 - (1 - lr mu)^tau_i) / (lr mu)        (SGD + proximal term)
      tau_eff = sum_i p_i ||a_i||_1  (the paper; ``tau_eff="steps"``: sum_i p_i tau_i,
                                      as the authors' code does when mu > 0)
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from edgejax.algorithms.server_optimizers import SERVER_OPTIMIZERS, make_server_optimizer, server_hparams
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState, tree_take, tree_where
from edgejax.core.local import masked_weighted_sum
from edgejax.core.regularizers import proximal_term
from edgejax.core.validation import check_choice

WEIGHTINGS = ("samples", "uniform")
TAU_EFF = ("paper", "steps")
PRESETS = {"fedavg": {}, "fedavgm": {"server_optimizer": "momentum"}, "fedadagrad": {"server_optimizer": "adagrad"},
           "fedadam": {"server_optimizer": "adam"}, "fedyogi": {"server_optimizer": "yogi"},
           "fedprox": {"prox": True}, "fednova": {"normalized": True}}


def cohort_inputs(state: SimState, data, plan: RoundPlan, weighting: str):
    """The cohort's training data, its nodes' round keys, and aggregation weights
    ``active_i * n_i`` (``samples``) or ``active_i`` (``uniform``).  With a full cohort
    (K = N) no node data is gathered."""
    full = plan.nodes.shape[0] == data.train.num_nodes
    cohort = data.train if full else tree_take(data.train, plan.nodes)
    node_rng = state.nodes.rng if full else state.nodes.rng[plan.nodes]
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(node_rng, state.round)
    size = cohort.count.astype(plan.active.dtype) if weighting == "samples" else 1.0
    return cohort, keys, plan.active * size


@dataclasses.dataclass(frozen=True)
class FedAvg:
    """FedAvg with a server optimizer on the pseudo-gradient (static options).

    Attributes:
      server_optimizer: one of ``SERVER_OPTIMIZERS`` (``sgd`` is plain FedAvg).
      weighting: ``samples`` weights node updates by their sample counts (the paper),
        ``uniform`` weights every active node equally.
      bias_correction: Adam/Yogi-style bias correction on the server (off in Reddi et al.).
      prox: FedProx's proximal term ``mu/2 ||w - x||^2`` in the local objective.
      normalized: FedNova's normalised averaging; ``tau_eff`` picks its convention.
    """

    server_optimizer: str = "sgd"
    weighting: str = "samples"
    bias_correction: bool = False
    prox: bool = False
    normalized: bool = False
    tau_eff: str = "paper"

    def __post_init__(self):
        check_choice("server optimizer", self.server_optimizer, SERVER_OPTIMIZERS)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_choice("tau_eff", self.tau_eff, TAU_EFF)

    @property
    def name(self) -> str:
        if not (self.prox or self.normalized):
            return {"sgd": "fedavg", "momentum": "fedavgm"}.get(self.server_optimizer, f"fed{self.server_optimizer}")
        base = "fednova" if self.normalized else "fedprox"
        return base if self.server_optimizer == "sgd" else f"{base}+server_{self.server_optimizer}"

    def default_hparams(self) -> dict[str, float]:
        return {**server_hparams(self.server_optimizer), **({"mu": 0.01} if self.prox else {})}

    @property
    def regularizer(self):
        """FedProx's proximal term, or ``None``."""
        return proximal_term if self.prox else None

    def init(self, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        opt = make_server_optimizer(self.server_optimizer, hparams, self.bias_correction)
        return NodeState(rng=node_rng), ServerState(params=global_params, opt_state=opt.init(global_params))

    def eval_models(self, state: SimState):
        """The models evaluation reports: the server's (no per-node models persist)."""
        return state.server.params, None

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        """One FedAvg round; returns the new state and this round's scalar metrics."""
        x = state.server.params
        cohort, keys, weights = cohort_inputs(state, data, plan, self.weighting)
        total = jnp.sum(weights)
        p = weights / jnp.maximum(total, 1e-30)
        if self.normalized:
            p = self._nova_weights(ctx, p, cohort.count, plan.step_budget, hparams)
        delta, node_loss, node_steps = ctx.local_delta(x, cohort, keys, plan.step_budget, p, hparams)

        opt = make_server_optimizer(self.server_optimizer, hparams, self.bias_correction)
        neg_delta = jax.tree_util.tree_map(jnp.negative, delta)
        updates, opt_state = opt.update(neg_delta, state.server.opt_state, x)
        server = ServerState(params=optax.apply_updates(x, updates), opt_state=opt_state)
        server = tree_where(total > 0, server, state.server)

        participants = jnp.sum(plan.active)
        metrics = {
            "train_loss": masked_weighted_sum(weights / jnp.maximum(total, 1e-30), node_loss),
            "participants": participants,
            "local_steps": jnp.sum(plan.active * node_steps),
            "bytes_up": participants * ctx.model_bytes,
            "bytes_down": participants * ctx.model_bytes,
        }
        return state._replace(server=server), metrics


    def _nova_weights(self, ctx, p, counts, budget, hparams):
        """FedNova: ``p_i tau_eff / ||a_i||_1`` (see the module docstring)."""
        name = ctx.local.optimizer
        if name not in ("sgd", "momentum") or (self.prox and name != "sgd"):
            raise ValueError(f"FedNova's normalisation is implemented for local 'sgd' (with or without the "
                             f"proximal term) and 'momentum'; got {name!r}")
        tau = jnp.minimum(ctx.local.node_steps(counts), budget).astype(p.dtype)
        if name == "momentum":
            rho = hparams["client_momentum"]
            a_norm = (tau - rho * (1 - rho ** tau) / (1 - rho)) / (1 - rho)
        elif self.prox:
            decay = hparams["client_lr"] * hparams["mu"]
            a_norm = jnp.where(decay > 0, (1 - (1 - decay) ** tau) / jnp.where(decay > 0, decay, 1.0), tau)
        else:
            a_norm = tau
        tau_eff = jnp.sum(p * (a_norm if self.tau_eff == "paper" else tau))
        return jnp.where(a_norm > 0, p * tau_eff / jnp.where(a_norm > 0, a_norm, 1.0), 0.0)

