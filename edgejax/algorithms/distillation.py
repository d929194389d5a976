"""Federated distillation: FedMD (Li & Wang 2019, "FedMD: Heterogenous Federated Learning via
Model Distillation", NeurIPS 2019 FL workshop, arXiv 1910.03581).

Nodes never exchange weights: every node keeps its own model ``f_i`` and the nodes agree on
their class scores on a shared public set ``X0``.  One round (the paper's collaboration loop,
Algorithm 1) for the active cohort nodes ``A``::

    Communicate:  z_i = f_i(X0_t)                         logits [M, C] on this round's public samples
    Aggregate:    z~  = (1 / |A|) sum_{i in A} z_i         the consensus (a plain mean over the active nodes)
    Digest:       f_i <- distill_steps steps of SGD (lr distill_lr) on  D(f_i(X0_t[b]), z~[b])
    Revisit:      f_i <- LocalUpdate(f_i, D_i)            the local schedule on the node's private data

``X0_t`` is the whole public set (``public_per_round=None``) or, as in the authors' code, a
fresh random subset of ``public_per_round`` samples each round (the same for every node,
drawn from the run's key).  Digest step ``s`` uses the public samples ``(s B + j) mod M``,
``j < B`` (``B = distill_batch``, default all ``M``: full-batch steps).  The distance ``D``
(``distill_loss``), averaged over the batch:

* ``"l1"``: ``mean_{b,c} |z_bc - z~_bc|``, the mean absolute error on logits that the authors'
  code trains the digest with (the paper only says "approach the consensus");
* ``"l2"``: ``mean_{b,c} (z_bc - z~_bc)^2``;
* ``"kl"``: ``T^2 mean_b KL(softmax(z~_b / T) || softmax(z_b / T))`` with the traced
  temperature ``distill_temperature`` (Hinton et al.'s distillation loss, as FedDF uses).

The digest runs plain SGD (the authors' code uses Adam with their training learning rate);
the revisit is the simulation's ``LocalTraining``.  Nodes start from one initial model and
the paper's transfer-learning phase (training every model to convergence on the labelled
public data, then on its private data) is not part of the loop: pre-train the model first,
or note that the first round's consensus comes from the initial models.

Heterogeneous models: under ``vmap`` every node shares one parameter layout, so different
architectures are sub-models of one model (``scheme``: ``WidthScaled`` or ``ClassSubsets``,
``edgejax.algorithms.heterogeneous``); node ``i``'s logits are those of ``params * m_i`` and
the digest and revisit change only the entries of its mask.  With ``ClassSubsets`` a node's
logits of classes it does not hold are the zero its masked output columns give, and the
consensus averages them like any other logit.

Cost: a node sends its logits and receives the consensus, ``M * C * itemsize`` bytes each way
(``itemsize`` of the parameters' dtype: 4 for float32; the subset's indices are not counted,
they can be drawn from a shared seed); ``payload`` and the metrics ``bytes_up``/``bytes_down``
count these.  The clock charges the revisit (``steps * batch_size``) at the node's
sub-model compute fraction; the public forward pass and the digest steps are not charged.

Evaluation (``eval_models``): every node's own model is its result, reported as
``own_accuracy_*`` (node ``i``'s model on its local test split; the paper's per-party
accuracy); the global ``test_*`` metrics are of the node average, which FedMD never forms
(reported because the protocol evaluates one model; it is not a FedMD result).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.algorithms.base import Payload, Traits, check_same_model
from edgejax.algorithms.decentralized import node_mean
from edgejax.algorithms.heterogeneous import submodel_costs
from edgejax.algorithms.server import gather, scatter, server_metrics
from edgejax.core.execution import Needs
from edgejax.core.local import map_nodes, mask_tree, masked_weighted_sum
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState, round_keys, tree_broadcast
from edgejax.core.streams import stream_key
from edgejax.core.validation import check_choice
from edgejax.data.host import cohort_data
from edgejax.models.base import Model

DISTILL_LOSSES = ("l1", "l2", "kl")


def distill_loss(kind: str, logits: jax.Array, target: jax.Array, temperature) -> jax.Array:
    """The digest distance ``D(z, z~)`` of a batch (see the module docstring)."""
    if kind == "l1":
        return jnp.mean(jnp.abs(logits - target))
    if kind == "l2":
        return jnp.mean((logits - target) ** 2)
    q = jax.nn.softmax(target / temperature, axis=-1)
    log_p = jax.nn.log_softmax(logits / temperature, axis=-1)
    kl = jnp.sum(jnp.where(q > 0, q * (jnp.log(jnp.where(q > 0, q, 1.0)) - log_p), 0.0), axis=-1)
    return temperature ** 2 * jnp.mean(kl)


@dataclasses.dataclass(frozen=True, eq=False)
class FedMD:
    """FedMD (static options; see the module docstring).

    Attributes:
      model: the model every node trains (the full model when ``scheme`` is given).
      public_x: the public set's inputs ``[P, *model.input_shape]`` (no labels are used); a
        constant of the compiled round, so keep it to a few thousand samples.
      public_per_round: ``M``, public samples drawn afresh each round (``None``: all ``P``).
      distill_steps: digest SGD steps per round (0: no digest, rounds are local training).
      distill_batch: public samples per digest step (``None``: all ``M``).
      distill_loss: one of ``DISTILL_LOSSES``.
      scheme: ``None`` (every node trains the full model) or a sub-model scheme
        (``WidthScaled``, ``ClassSubsets``) over ``model``.
    """

    model: Model
    public_x: Any
    public_per_round: int | None = None
    distill_steps: int = 1
    distill_batch: int | None = None
    distill_loss: str = "l1"
    scheme: Any = None

    def __post_init__(self):
        check_choice("distill_loss", self.distill_loss, DISTILL_LOSSES)
        shape = tuple(np.shape(self.public_x))
        if len(shape) < 1 or shape[0] < 1 or shape[1:] != tuple(self.model.input_shape):
            raise ValueError(f"public_x must have shape [P >= 1, *{tuple(self.model.input_shape)}] (the model's "
                             f"input shape); got {shape}")
        p = shape[0]
        per_round = self.public_per_round
        if per_round is not None and not (_is_int(per_round) and 1 <= per_round <= p):
            raise ValueError(f"public_per_round={self.public_per_round!r} must be an integer in [1, P={p}] or None")
        if not (_is_int(self.distill_steps) and self.distill_steps >= 0):
            raise ValueError(f"distill_steps={self.distill_steps!r} must be a non-negative integer")
        batch = self.distill_batch
        if batch is not None and not (_is_int(batch) and 1 <= batch <= self.num_public):
            raise ValueError(f"distill_batch={self.distill_batch!r} must be an integer in [1, {self.num_public}] "
                             "(the public samples per round) or None")
        if self.scheme is not None and self.scheme.model.num_classes != self.model.num_classes:
            raise ValueError(f"the scheme's model has {self.scheme.model.num_classes} classes but model has "
                             f"{self.model.num_classes}")

    @property
    def name(self) -> str:
        return "fedmd"

    @property
    def num_public(self) -> int:
        """``M``: public samples per round."""
        return int(np.shape(self.public_x)[0]) if self.public_per_round is None else int(self.public_per_round)

    def traits(self) -> Traits:
        return Traits(needs=Needs(start="own", output="models", masked=self.scheme is not None))

    def payload(self, params, num_nodes: int) -> Payload:
        """Logits up, the consensus down (``M * C * itemsize`` bytes each); compute: the node's
        sub-model fraction of the full model's training FLOPs (1 without a scheme)."""
        itemsize = jax.tree_util.tree_leaves(params)[0].dtype.itemsize
        size = float(self.num_public * self.model.num_classes * itemsize)
        compute = 1.0 if self.scheme is None else submodel_costs(self.scheme, params, num_nodes)[1]
        return Payload(size, size, compute)

    def default_hparams(self) -> dict[str, float]:
        return {"distill_lr": 0.01, **({"distill_temperature": 1.0} if self.distill_loss == "kl" else {})}

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model.name, "public_x": list(np.shape(self.public_x)),
                "public_per_round": self.public_per_round, "distill_steps": self.distill_steps,
                "distill_batch": self.distill_batch, "distill_loss": self.distill_loss,
                "scheme": None if self.scheme is None else self.scheme.describe()}

    def init(self, ctx, global_params, node_rng, hparams) -> tuple[NodeState, ServerState]:
        """Every node starts from the global model (with the scheme's block structure applied)."""
        check_same_model(self, self.model, ctx)
        if self.scheme is not None:
            self.scheme.check(node_rng.shape[0])
            structure = self.scheme.structure(jax.tree_util.tree_leaves(global_params)[0].dtype)
            if structure is not None:
                global_params = jax.tree_util.tree_map(lambda w, m: w * m, global_params, structure)
        return NodeState(rng=node_rng, params=tree_broadcast(global_params, node_rng.shape[0])), ServerState(params=())

    def eval_models(self, state: SimState):
        """The node average (not a FedMD model; see the module docstring) and every node's own model."""
        return node_mean(state.nodes.params), state.nodes.params

    def public_batch(self, state: SimState) -> jax.Array:
        """This round's public samples ``X0_t [M, ...]``."""
        public = jnp.asarray(self.public_x, jax.tree_util.tree_leaves(state.nodes.params)[0].dtype)
        if self.public_per_round is None:
            return public
        key = stream_key(jax.random.fold_in(state.rng, state.round), "public_subset")
        return public[jax.random.choice(key, public.shape[0], (self.public_per_round,), replace=False)]

    def round(self, ctx, state: SimState, data, plan: RoundPlan, hparams):
        full = plan.nodes.shape[0] == data.train.num_nodes
        params = gather(state.nodes.params, plan, full)
        keys = round_keys(gather(state.nodes.rng, plan, full), state.round)
        masks = None
        if self.scheme is not None:
            masks = self.scheme.masks(state.round, plan.nodes, keys, jax.tree_util.tree_leaves(params)[0].dtype)
        public = self.public_batch(state)
        apply = self.model.apply

        def logits(args):
            p, m = args
            return apply(p if m is None else mask_tree(p, m), public)

        # Communicate and aggregate: the active nodes' mean logits
        node_logits = map_nodes(logits, (params, masks), ctx.group_size)
        p = plan.active / jnp.maximum(jnp.sum(plan.active), 1.0)
        consensus = masked_weighted_sum(p, node_logits)

        # Digest: SGD toward the consensus on the public samples
        batch = self.num_public if self.distill_batch is None else self.distill_batch
        temperature = hparams.get("distill_temperature", 1.0)

        def objective(w, m, idx):
            z = apply(w if m is None else mask_tree(w, m), public[idx])
            return distill_loss(self.distill_loss, z, consensus[idx], temperature)

        def digest(args):
            w, m = args

            def step(w, s):
                idx = (s * batch + jnp.arange(batch)) % self.num_public
                loss, g = jax.value_and_grad(objective)(w, m, idx)
                if m is not None:
                    g = mask_tree(g, m)
                return jax.tree_util.tree_map(lambda a, b: a - hparams["distill_lr"] * b, w, g), loss

            w, losses = jax.lax.scan(step, w, jnp.arange(self.distill_steps))
            return w, jnp.mean(losses) if self.distill_steps else jnp.zeros((), consensus.dtype)

        digested, digest_loss = map_nodes(digest, (params, masks), ctx.group_size)

        # Revisit: the local schedule on the private data, from the digested model
        cohort = cohort_data(data.train, plan.nodes, full)
        result = ctx.execution.train(digested, cohort, keys, plan.step_budget, hparams, mask=masks)
        on = plan.active > 0
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(on.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
                                     result.params, params)
        nodes = state.nodes._replace(params=scatter(state.nodes.params, new, plan, full))

        metrics = server_metrics(p, result.loss, result.steps, plan, ctx.payload)
        metrics["distill_loss"] = jnp.where(jnp.sum(plan.active) > 0, masked_weighted_sum(p, digest_loss), jnp.nan)
        return state._replace(nodes=nodes), metrics


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
