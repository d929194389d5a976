"""Split learning: the model cut at a layer, the layers below on the devices, the rest on a server.

``SplitModel(model, cut)`` cuts a dense stack (``Model.layers``: MLPs) before layer ``cut``
(``1 <= cut < len(layers)``): the **device part** is layers ``0 .. cut-1`` (with their
activations), the **server part** layers ``cut ..`` and ``apply(params, x) =
server(server_params, device(device_params, x))``.  A node sends its minibatch's activations at
the cut (``[B, d_cut]``, the "smashed data") and receives their gradients; the server
back-propagates its loss through its part and returns ``dL/da``, the node finishes the chain
rule through its part.  Every step's gradient is therefore the full model's.

Three algorithms over it (``ServerState.params`` is always the whole model, device part and
server part joined; evaluation reads it):

* ``SplitFed(variant="v1")`` (Thapa et al. 2022, "SplitFed: When Federated Learning Meets Split
  Learning", SFLV1): every cohort node trains its device part and its own copy of the server
  part in parallel; at the round's end both parts are averaged with FedAvg's weights
  ``p_i = a_i n_i / sum_j a_j n_j``.  The two parts of node i together take exactly the full
  model's local steps, so SFLV1 **is** FedAvg on the full model (the round runs through the
  execution strategy like FedAvg's; a test checks it); what differs is the traffic and the
  device compute charged.
* ``SplitFed(variant="v2")`` (SFLV2): one shared server part, the device parts averaged at the
  round's end.  The order implemented, for local step ``t = 0, 1, ..`` and, within a step, for
  the cohort's nodes ``k`` in cohort order (``plan.nodes``; absent nodes and nodes past their
  steps skipped)::

      a_k = device(d_k, x_k^t)                              (d_k: node k after its step t-1)
      g_s, g_a = grad of L(server(s, a_k), y_k^t) at (s, a_k)
      s <- opt_s(s, g_s)                                    (the server part, after node k-1's step t)
      d_k <- opt_k(d_k, J_device(d_k, x_k^t)^T g_a)
      end of round: d <- d + sum_k p_k (d_k - d),  x = (d, s)

  The paper's server processes the smashed batches one at a time in the order they arrive;
  this is the round-robin arrival order.  It is computed exactly, not approximated: within
  step t every node's forward pass reads only its own ``d_k`` (from step t-1), so the forwards
  and the device backward passes run vectorized over the cohort, and only the server's updates
  are a ``lax.scan`` over the cohort's nodes; the result equals the sequential loop above.
* ``SplitLearning`` (vanilla split learning, Gupta & Raskar 2018, "Distributed learning of deep
  neural network over multiple agents"): the cohort's nodes are served one after another in
  cohort order, each running its local steps on ``(d, s)`` (its device part received from the
  previous node, the one shared server part), then handing ``d`` to the next: a ``lax.scan``
  over the cohort.  The round's model is the last node's ``d`` with ``s``.

Optimizers: device parts use the local optimizer (``LocalTraining``), reset every round (SFL) or
for every node (``SplitLearning``, where it does not travel with ``d``); the server part of
SFLV2 / ``SplitLearning`` uses the same optimizer and hyper-parameters and keeps its state
across rounds (``ServerState.opt_state``).  SFLV1's server copies, like FedAvg's models, start a
fresh optimizer each round.  SFLV2 and ``SplitLearning`` run their own step loop (the nodes are
coupled through the server at every step, which no execution strategy expresses); they accept
``execution="per_node"`` or ``"auto"`` only, and the model's own loss only (no ``LocalTerm``).

Payload (per participating node and round): up ``r_i * d_cut * itemsize`` activations plus the
device part's bytes, down the same (their gradients plus the device part): ``r_i`` are the
sample rows node i puts through the cut in a round, ``activation_rows(local, counts)``: the
real samples of its minibatches (``E n_i`` with epochs), given to the algorithm as ``rows``.
SFL uploads the trained device part for averaging and downloads the average; vanilla SL
receives the device part from its predecessor and passes it on.  A step budget (stragglers)
is charged at the planned rows.  ``compute`` is the device part's share of the full model's
training FLOPs, ``sum_{l < cut} d_in d_out / sum_l d_in d_out`` (biases and activations
neglected).  The server's compute is not charged by the clock (``edgejax.system.clock`` times
the nodes only).  ``SplitLearning`` is ``Traits(sequential=True)``: its nodes are served one
after another, so the clock charges the sum of their times (each node's download, device
compute and upload), not the slowest one's; SplitFed's nodes run in parallel (the slowest
one's).  Label privacy (the server
sees the labels here) and activation privacy (what the smashed data reveals) are out of scope.

The cut is one static layer index for every node (no per-node cuts).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from edgejax.algorithms.base import EvaluatesServerModel, Payload, Traits, check_same_model, describe_algorithm
from edgejax.algorithms.personalized import scan_minibatches, static_schedule
from edgejax.algorithms.server import WEIGHTINGS, cohort_inputs, normalize, server_metrics
from edgejax.core.execution import Needs
from edgejax.core.local import LocalTraining, masked_weighted_sum
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState, tree_broadcast, tree_where
from edgejax.core.validation import check_choice
from edgejax.models import layers as dense_layers
from edgejax.models.base import Model, num_bytes
from edgejax.models.zoo import ACTIVATIONS

VARIANTS = ("v1", "v2")


@dataclasses.dataclass(frozen=True)
class SplitModel:
    """``model`` (a dense stack, ``Model.layers``) cut before layer ``cut``: the device part
    holds layers ``[0, cut)``, the server part ``[cut, L)``."""

    model: Model
    cut: int

    def __post_init__(self):
        stack = self.model.layers
        if stack is None:
            raise ValueError(f"split learning cuts a dense stack (Model.layers); model {self.model.name!r} "
                             "describes no layers")
        names = tuple(layer.name for layer in stack)
        if len(stack) < 2:
            raise ValueError(f"cut={self.cut!r}: model {self.model.name!r} has one layer {names}; a cut needs two or more")
        if isinstance(self.cut, bool) or not isinstance(self.cut, (int, np.integer)) or not 1 <= self.cut < len(stack):
            raise ValueError(f"cut={self.cut!r} must be an integer in [1, {len(stack) - 1}] for model "
                             f"{self.model.name!r} with {len(stack)} layers {names}")

    @property
    def device_layers(self) -> tuple:
        return self.model.layers[:self.cut]

    @property
    def server_layers(self) -> tuple:
        return self.model.layers[self.cut:]

    @property
    def width(self) -> int:
        """``d_cut``: the activations' width at the cut."""
        return self.model.layers[self.cut].d_in

    def split(self, params) -> tuple[dict, dict]:
        """``(device params, server params)`` of a whole model's ``params``."""
        return ({l.name: params[l.name] for l in self.device_layers},
                {l.name: params[l.name] for l in self.server_layers})

    def join(self, device, server) -> dict:
        return {**device, **server}

    def device(self, device_params, x):
        """The activations at the cut: ``x`` flattened, then the device layers."""
        return _stack(self.device_layers, device_params, x.reshape(x.shape[0], self.model.layers[0].d_in))

    def server(self, server_params, a):
        """The model's outputs from the activations ``a [B, d_cut]``."""
        return _stack(self.server_layers, server_params, a)

    def apply(self, params, x):
        device, server = self.split(params)
        return self.server(server, self.device(device, x))

    def compute_fraction(self) -> float:
        """The device part's share of the training FLOPs: ``sum_{l<cut} d_in d_out / sum_l d_in d_out``."""
        flops = [l.d_in * l.d_out for l in self.model.layers]
        return sum(flops[:self.cut]) / sum(flops)


def _stack(stack, params, a):
    for layer in stack:
        a = dense_layers.dense(params[layer.name], a)
        if layer.activation is not None:
            a = ACTIVATIONS[layer.activation](a)
    return a


def activation_rows(local: LocalTraining, counts) -> tuple[int, ...]:
    """The sample rows each node puts through the cut in a round: the real samples of its
    ``local.node_steps(n_i)`` minibatches (step t holds ``min(B, n_i - (t mod ceil(n_i/B)) B)``)."""
    rows = []
    for n in np.asarray(counts, dtype=int):
        spe = max(-(-n // local.batch_size), 1)
        steps = local.steps if local.steps is not None else local.epochs * spe
        t = np.arange(steps) % spe
        rows.append(int(np.sum(np.clip(n - t * local.batch_size, 0, local.batch_size))))
    return tuple(rows)


@dataclasses.dataclass(frozen=True)
class _Split(EvaluatesServerModel):
    """What the split algorithms share: the model, the cut, the rows for the payload."""

    model: Model
    cut: int = 1
    rows: Any = None

    def __post_init__(self):
        object.__setattr__(self, "split_model", SplitModel(self.model, self.cut))
        if self.rows is not None and not isinstance(self.rows, (int, np.integer)):
            object.__setattr__(self, "rows", tuple(int(r) for r in self.rows))

    def payload(self, params, num_nodes: int) -> Payload:
        """Activations and their gradients at the cut (``rows * d_cut * itemsize``) plus the
        device part, each way; ``compute``: the device part's FLOP share."""
        if self.rows is None:
            raise ValueError(f"{self.name}: rows=None; give rows=activation_rows(local, data.node_counts()) (the "
                             "samples each node puts through the cut in a round) so its traffic can be charged")
        rows = np.asarray(self.rows, dtype=float)
        if rows.ndim and rows.shape != (num_nodes,):
            raise ValueError(f"{self.name}: rows has {rows.shape[0]} entries for {num_nodes} nodes")
        device, _ = self.split_model.split(params)
        itemsize = jax.tree_util.tree_leaves(device)[0].dtype.itemsize
        size = rows * self.split_model.width * itemsize + num_bytes(device)
        return Payload(size, size, self.split_model.compute_fraction())

    def describe(self) -> dict:
        out = describe_algorithm(self)
        out["model"] = self.model.name
        return out

    def check_context(self, ctx) -> None:
        """The simulation's model, and an execution and local objective the own step loop honours."""
        check_same_model(self, self.model, ctx)
        if not (isinstance(ctx.local.execution, str) and ctx.local.execution in ("auto", "per_node")):
            raise ValueError(f"{self.name} runs its own step loop (nodes coupled through the server every step); "
                             f"execution={ctx.local.execution!r} cannot apply: use 'per_node' or 'auto'")

    def init_sequential(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        self.check_context(ctx)
        _, server = self.split_model.split(global_params)
        return NodeState(rng=node_rng), ServerState(params=global_params,
                                                    opt_state=ctx.local.make_optimizer(hparams).init(server))

    def step_parts(self, opt):
        """``client_step(d, opt_d, xb, g_a)`` and ``server_step(s, opt_s, a, yb, wb) -> (s, opt_s, g_a, loss)``."""
        sm, loss_fn = self.split_model, self.model.loss.fn

        def server_step(s, opt_s, a, yb, wb):
            loss, (g_s, g_a) = jax.value_and_grad(lambda s_, a_: loss_fn(sm.server(s_, a_), yb, wb),
                                                  argnums=(0, 1))(s, a)
            updates, opt_s = opt.update(g_s, opt_s, s)
            return optax.apply_updates(s, updates), opt_s, g_a, loss

        def client_step(d, opt_d, xb, g_a):
            _, vjp = jax.vjp(lambda d_: sm.device(d_, xb), d)
            updates, opt_d = opt.update(vjp(g_a)[0], opt_d, d)
            return optax.apply_updates(d, updates), opt_d

        return client_step, server_step


@dataclasses.dataclass(frozen=True)
class SplitFed(_Split):
    """SplitFed (Thapa et al. 2022) over ``model`` cut at ``cut``: ``variant`` ``v1`` (a server
    copy per node, averaged: FedAvg on the full model) or ``v2`` (one server part updated by
    the nodes' batches in round-robin order); see the module docstring.  ``rows``: the
    activation rows per node and round for the payload (``activation_rows``)."""

    variant: str = "v1"
    weighting: str = "samples"

    def __post_init__(self):
        check_choice("variant", self.variant, VARIANTS)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        super().__post_init__()

    @property
    def name(self) -> str:
        return f"splitfed_{self.variant}"

    def traits(self) -> Traits:
        return Traits(needs=Needs(output="delta" if self.variant == "v1" else "models"))

    def default_hparams(self) -> dict[str, float]:
        return {}

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        if self.variant == "v1":
            check_same_model(self, self.model, ctx)
            return NodeState(rng=node_rng), ServerState(params=global_params, opt_state=())
        return self.init_sequential(ctx, global_params, node_rng, hparams)

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        x = state.server.params
        cohort = cohort_inputs(state, data, plan, self.weighting)
        p = normalize(cohort.weights)
        any_active = jnp.sum(cohort.weights) > 0
        if self.variant == "v1":   # device part + own server copy per node = the full model's local update
            delta, loss, steps = ctx.execution.delta(x, cohort.data, cohort.keys, plan.step_budget, p, hparams)
            new = jax.tree_util.tree_map(jnp.add, x, delta)
            server = tree_where(any_active, state.server._replace(params=new), state.server)
        else:
            server, loss, steps = self._round_v2(ctx, state.server, cohort, plan, p, hparams)
        return state._replace(server=server), server_metrics(p, loss, steps, plan, ctx.payload)

    def _round_v2(self, ctx, server_state: ServerState, cohort, plan: RoundPlan, p, hparams):
        sm, local, data = self.split_model, ctx.local, cohort.data
        opt = local.make_optimizer(hparams)
        client_step, server_step = self.step_parts(opt)
        d0, s0 = sm.split(server_state.params)
        max_steps, shuffles = static_schedule(local, data.x.shape[1])
        batches = jax.vmap(local.minibatches, in_axes=(0, 0, None, None, None))(
            cohort.keys, data.count, data.x.shape[1], max_steps, shuffles)   # ([K, S, B], [K, S, B])
        n_steps = jnp.where(plan.active > 0, jnp.minimum(local.node_steps(data.count), plan.step_budget), 0)
        k = data.count.shape[0]
        d = tree_broadcast(d0, k)
        opt_d = jax.vmap(opt.init)(d)

        def step(carry, t):
            d, opt_d, s, opt_s, loss_sum = carry
            slots, wb = batches[0][:, t], batches[1][:, t]
            xb = jax.vmap(lambda xi, si: xi[si])(data.x, slots)
            yb = jax.vmap(lambda yi, si: yi[si])(data.y, slots)
            a = jax.vmap(sm.device)(d, xb)
            on = t < n_steps

            def serve(carry_s, node):
                s, opt_s = carry_s
                a_k, y_k, w_k, on_k = node
                new_s, new_opt, g_a, loss = server_step(s, opt_s, a_k, y_k, w_k)
                return tree_where(on_k, (new_s, new_opt), (s, opt_s)), (g_a, loss)

            (s, opt_s), (g_a, loss) = jax.lax.scan(serve, (s, opt_s), (a, yb, wb, on))
            new_d, new_opt_d = jax.vmap(client_step)(d, opt_d, xb, g_a)
            keep = jax.vmap(tree_where)
            return (keep(on, new_d, d), keep(on, new_opt_d, opt_d), s, opt_s,
                    loss_sum + jnp.where(on, loss, 0.0)), None

        zero = jnp.zeros(k, jnp.result_type(float))
        (d, _, s, opt_s, loss_sum), _ = jax.lax.scan(step, (d, opt_d, s0, server_state.opt_state, zero),
                                                     jnp.arange(max_steps))
        d_avg = jax.tree_util.tree_map(lambda di, dd: dd + masked_weighted_sum(p, di - dd), d, d0)
        steps = n_steps.astype(zero.dtype)
        server = server_state._replace(params=sm.join(d_avg, s), opt_state=opt_s)
        return (tree_where(jnp.sum(p) > 0, server, server_state), loss_sum / jnp.maximum(steps, 1.0), steps)


@dataclasses.dataclass(frozen=True)
class SplitLearning(_Split):
    """Vanilla split learning (Gupta & Raskar 2018) over ``model`` cut at ``cut``: the cohort
    served one node after another, the device part handed on, one server part (see the module
    docstring).  ``rows`` as for ``SplitFed``; ``train_loss`` weights the nodes' losses by
    ``weighting``."""

    weighting: str = "samples"

    def __post_init__(self):
        check_choice("weighting", self.weighting, WEIGHTINGS)
        super().__post_init__()

    @property
    def name(self) -> str:
        return "split_learning"

    def traits(self) -> Traits:
        """Nodes served one after another: the clock charges the sum of their times."""
        return Traits(needs=Needs(output="models"), sequential=True)

    def default_hparams(self) -> dict[str, float]:
        return {}

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        return self.init_sequential(ctx, global_params, node_rng, hparams)

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        sm, local = self.split_model, ctx.local
        cohort = cohort_inputs(state, data, plan, self.weighting)
        opt = local.make_optimizer(hparams)
        client_step, server_step = self.step_parts(opt)
        max_steps, shuffles = static_schedule(local, cohort.data.x.shape[1])
        d0, s0 = sm.split(state.server.params)
        n_steps = jnp.where(plan.active > 0, jnp.minimum(local.node_steps(cohort.data.count), plan.step_budget), 0)

        def one_step(carry, xb, yb, wb):
            d, opt_d, s, opt_s = carry
            a = sm.device(d, xb)
            s, opt_s, g_a, loss = server_step(s, opt_s, a, yb, wb)
            d, opt_d = client_step(d, opt_d, xb, g_a)
            return (d, opt_d, s, opt_s), loss

        def serve(carry, node):   # one node's local steps on (d, s); d then goes to the next node
            d, s, opt_s = carry
            x, y, count, key, steps = node
            (d, _, s, opt_s), loss = scan_minibatches(one_step, (d, opt.init(d), s, opt_s), x, y, count, key, steps,
                                                      max_steps, shuffles, local)
            return (d, s, opt_s), loss

        nodes = (cohort.data.x, cohort.data.y, cohort.data.count, cohort.keys, n_steps)
        (d, s, opt_s), loss = jax.lax.scan(serve, (d0, s0, state.server.opt_state), nodes)
        server = state.server._replace(params=sm.join(d, s), opt_state=opt_s)
        steps = n_steps.astype(loss.dtype)
        return (state._replace(server=server),
                server_metrics(normalize(cohort.weights), loss, steps, plan, ctx.payload))
