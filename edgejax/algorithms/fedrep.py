"""FedRep (Collins, Hassani, Mokhtari & Shakkottai 2021, "Exploiting Shared Representations for
Personalized Federated Learning", Algorithm 1).

The model's parameters are split by top-level name into a shared **body** (the representation
``phi``) and a **head** (``head``: the names of the output layers, default ``("out",)``; for
``ej.models.mlp`` the last layer is ``dense_<n>``).  The server keeps and averages the body;
every node keeps its own head ``h_i`` (``nodes.extra.head [N, ...]``, starting at the initial
model's head).  One round, for the active nodes of the cohort::

    head:   h_i <- head_epochs epochs of the local optimizer on F_i(phi^t, h)  over h  (phi^t fixed)
    body:   phi_i = the local schedule (LocalTraining) on F_i(phi, h_i)        over phi (h_i fixed),
            from phi^t
    server: phi^{t+1} = ServerOpt(phi^t, -sum_i p_i (phi_i - phi^t))

Each phase starts a fresh local optimizer; the body's steps are capped by the round's step
budget (stragglers), the head's are not.  Only the body travels (``payload``: the body's bytes
each way).  ``eval_models`` returns the server model and, per node, ``(phi, h_i)``: that is
``own_accuracy_*``.  The server model's own head (``node_accuracy_*``, ``test_*``) is not part of
FedRep; here it is the ``p``-weighted mean of the active nodes' new heads each round, a reporting
convention that training never reads.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from edgejax.algorithms.base import Payload, Traits, check_same_model
from edgejax.algorithms.personalized import scan_minibatches, static_schedule
from edgejax.algorithms.server import (WEIGHTINGS, cohort_inputs, gather, normalize, scatter, server_metrics,
                                       weighted_change)
from edgejax.core.execution import Needs
from edgejax.core.local import map_nodes, masked_weighted_sum
from edgejax.core.state import NodeState, ServerState, SimState, tree_broadcast, tree_where
from edgejax.core.validation import check_choice
from edgejax.models.base import Model, num_bytes


class Heads(NamedTuple):
    """FedRep's per-node state: ``head [N, ...]``, each node's head parameters."""

    head: object


def _split(params: dict, head: tuple[str, ...]):
    return ({k: v for k, v in params.items() if k not in head}, {k: v for k, v in params.items() if k in head})


@dataclasses.dataclass(frozen=True)
class FedRep:
    """FedRep over ``model`` with head layers ``head`` and ``head_epochs`` head epochs a round."""

    model: Model
    head: tuple[str, ...] = ("out",)
    head_epochs: int = 10
    weighting: str = "samples"

    def __post_init__(self):
        check_choice("weighting", self.weighting, WEIGHTINGS)
        object.__setattr__(self, "head", tuple(self.head))
        if not isinstance(self.head_epochs, int) or self.head_epochs < 1:
            raise ValueError(f"FedRep: head_epochs must be a positive integer, got {self.head_epochs!r}")
        names = set(jax.eval_shape(self.model.init, jax.random.PRNGKey(0)))
        if not self.head or not set(self.head) < names:
            raise ValueError(f"FedRep: head {self.head} must name some, not all, of the model's top-level "
                             f"parameters {sorted(names)}")

    @property
    def name(self) -> str:
        return "fedrep"

    def traits(self) -> Traits:
        return Traits(needs=Needs(output="models"))

    def payload(self, params, num_nodes: int) -> Payload:
        """The body each way; heads never leave the nodes."""
        body = num_bytes(_split(params, self.head)[0])
        return Payload(body, body)

    def default_hparams(self) -> dict[str, float]:
        return {}

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model.name, "head": list(self.head), "head_epochs": self.head_epochs,
                "weighting": self.weighting}

    def init(self, ctx, global_params, node_rng, hparams):
        check_same_model(self, self.model, ctx)
        _, head = _split(global_params, self.head)
        return (NodeState(rng=node_rng, extra=Heads(tree_broadcast(head, node_rng.shape[0]))),
                ServerState(global_params))

    def eval_models(self, state: SimState):
        body, _ = _split(state.server.params, self.head)
        heads = state.nodes.extra.head
        n = jax.tree_util.tree_leaves(heads)[0].shape[0]
        return state.server.params, {**tree_broadcast(body, n), **heads}

    def round(self, ctx, state: SimState, data, plan, hparams):
        spec, model = ctx.local, self.model
        body0, _ = _split(state.server.params, self.head)
        cohort = cohort_inputs(state, data, plan, self.weighting)
        heads = gather(state.nodes.extra.head, plan, cohort.full)
        size = cohort.data.x.shape[1]
        head_max, head_shuffles = static_schedule(spec, size, self.head_epochs)
        body_max, body_shuffles = static_schedule(spec, size)

        def phase(loss_of, params0, x, y, count, key, n_steps, max_steps, shuffles):
            opt = spec.make_optimizer(hparams)

            def step(carry, xb, yb, wb):
                params, opt_state = carry
                loss, grads = jax.value_and_grad(loss_of)(params, xb, yb, wb)
                updates, opt_state = opt.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), loss

            (params, _), loss = scan_minibatches(step, (params0, opt.init(params0)), x, y, count, key, n_steps,
                                                 max_steps, shuffles, spec)
            return params, loss

        def node(args):
            head, x, y, count, key, budget = args
            k_head, k_body = jax.random.split(key)
            head_steps = self.head_epochs * spec.steps_per_epoch(count)
            head, _ = phase(lambda h, xb, yb, wb: model.loss.fn(model.apply({**body0, **h}, xb), yb, wb),
                            head, x, y, count, k_head, head_steps, head_max, head_shuffles)
            body_steps = jnp.minimum(spec.node_steps(count), budget)
            body, loss = phase(lambda b, xb, yb, wb: model.loss.fn(model.apply({**b, **head}, xb), yb, wb),
                               body0, x, y, count, k_body, body_steps, body_max, body_shuffles)
            return head, body, loss, body_steps.astype(jnp.float32)

        c = cohort.data
        new_heads, bodies, loss, steps = map_nodes(node, (heads, c.x, c.y, c.count, cohort.keys, plan.step_budget),
                                                   ctx.group_size)
        active = plan.active > 0
        new_heads = jax.tree_util.tree_map(
            lambda new, old: jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old), new_heads, heads)
        p = normalize(cohort.weights)
        any_active = jnp.sum(cohort.weights) > 0
        delta = weighted_change(p, bodies, body0)
        body = jax.tree_util.tree_map(jnp.add, body0, delta)
        mean_head = jax.tree_util.tree_map(lambda h: masked_weighted_sum(p, h), new_heads)
        server = tree_where(any_active, ServerState({**body, **mean_head}), state.server)
        nodes = state.nodes._replace(extra=Heads(scatter(state.nodes.extra.head, new_heads, plan, cohort.full)))
        return state._replace(server=server, nodes=nodes), server_metrics(p, loss, steps, plan, ctx.payload)
