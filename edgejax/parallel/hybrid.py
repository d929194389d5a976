"""Hybrid data x pipeline parallelism (HetPipe-style) as a local-execution strategy.

HetPipe (Park et al., USENIX ATC 2020, "HetPipe: Enabling Large DNN Training on (Whimpy)
Heterogeneous GPU Clusters through Integration of Pipelined Model Parallelism and Data
Parallelism") runs several pipelines side by side, each a group of devices holding one model
split into stages.  Here the mesh is ``('replicas', 'stages')``: every cohort node's local
update runs as a GPipe pipeline over ``stages`` (``edgejax.parallel.pipeline``), and the cohort's
nodes are spread over ``replicas`` (the node axis is sharded over it; the cohort is padded to a
multiple of the replica count with copies of its last node that get a step budget of 0 and
are sliced off afterwards).

``Pipelined(mesh, microbatches, stage_of_layer)`` is what ``LocalTraining(execution=...)``
takes, for any algorithm: ``build`` returns a strategy with ``PerNode``'s ``train``/``delta``
interface (``edgejax.core.execution``) whose per-node update is ``make_local_update`` (same
minibatches, optimizer, step budget and local terms) with the model's gradient from the
pipeline, so a run gives the numbers of ``per_node`` to rounding.  Every stage device runs the
optimizer on the whole (replicated) model and the gradient is assembled by a ``psum`` over
``stages``: exact for any optimizer, at the cost of redundant optimizer work and a model-sized
all-reduce a production pipeline would not need.  It refuses what it cannot do exactly (a model
that is not a dense stack, per-node sub-model masks) with a ``ValueError`` naming the reason.

Simulated time: ``Pipelined.from_plan(mesh, plan)`` keeps a ``StagePlan``
(``edgejax.parallel.stages``); ``step_time_s(batch_size)`` is the pipeline's time for one local
step and ``plan.ratio_to_single_device`` its ratio to the fastest device running the whole model.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from edgejax.core.execution import Needs, PerNode
from edgejax.core.local import LocalResult, LocalTraining, SubModelMask, make_local_update
from edgejax.models.base import Model
from edgejax.parallel.pipeline import STAGES, stage_value_and_grad
from edgejax.parallel.stages import StagePlan

REPLICAS = "replicas"


@dataclasses.dataclass(frozen=True)
class Pipelined:
    """Hybrid execution: cohort nodes over the mesh's ``replicas`` axis, each node's model a GPipe
    pipeline over its ``stages`` axis (static, hashable configuration; see the module docstring).

    Attributes:
      mesh: a ``jax.sharding.Mesh`` with exactly the axes ``replicas`` and ``stages``.
      microbatches: ``M``, microbatches per local minibatch (a batch ``M`` does not divide is
        padded with weight-0 samples: exact).
      stage_of_layer: the stage of every dense layer (``None``: balanced training FLOPs).
      plan: the ``StagePlan`` the split came from (``from_plan``), for the simulated step time.
    """

    mesh: Mesh
    microbatches: int = 1
    stage_of_layer: tuple[int, ...] | None = None
    plan: StagePlan | None = None
    name: ClassVar[str] = "pipelined"

    def __post_init__(self):
        if not isinstance(self.mesh, Mesh) or sorted(self.mesh.axis_names) != sorted((REPLICAS, STAGES)):
            raise ValueError(f"Pipelined needs a jax.sharding.Mesh with axes ({REPLICAS!r}, {STAGES!r}); got "
                             f"{getattr(self.mesh, 'axis_names', self.mesh)!r}")
        # the node axis is sharded over `replicas` by the compiler inside a shard_map that is manual
        # over `stages` only, which needs automatic (not explicit) axis types
        object.__setattr__(self, "mesh", Mesh(self.mesh.devices, self.mesh.axis_names))
        if not isinstance(self.microbatches, int) or self.microbatches < 1:
            raise ValueError(f"microbatches must be a positive integer; got {self.microbatches!r}")
        if self.stage_of_layer is not None:
            object.__setattr__(self, "stage_of_layer", tuple(int(s) for s in self.stage_of_layer))
        if self.plan is not None:
            if (self.plan.microbatches, self.plan.stage_of_layer) != (self.microbatches, self.stage_of_layer):
                raise ValueError(f"plan has microbatches={self.plan.microbatches}, stage_of_layer="
                                 f"{self.plan.stage_of_layer}, but Pipelined got microbatches={self.microbatches}, "
                                 f"stage_of_layer={self.stage_of_layer}: use Pipelined.from_plan")
            if self.plan.num_stages != self.mesh.shape[STAGES]:
                raise ValueError(f"plan has {self.plan.num_stages} stages but the mesh's {STAGES!r} axis has "
                                 f"{self.mesh.shape[STAGES]} devices")

    @classmethod
    def from_plan(cls, mesh: Mesh, plan: StagePlan) -> "Pipelined":
        """The pipeline of ``plan`` (its split and microbatch count), keeping it for ``step_time_s``."""
        return cls(mesh, plan.microbatches, plan.stage_of_layer, plan)

    def step_time_s(self, batch_size: int) -> float:
        """Simulated seconds of one local step of ``batch_size`` samples (``StagePlan.step_time_s``)."""
        if self.plan is None:
            raise ValueError("this Pipelined has no StagePlan (device speeds); build it with Pipelined.from_plan")
        return self.plan.step_time_s(batch_size)

    def compute_scale(self) -> float:
        """The factor the simulated clock multiplies each node's compute time and energy by
        (``Simulation.payload``): ``plan.ratio_to_single_device``, the pipeline's time over
        that of the plan's fastest device running the whole model (a node's device profile is
        that device); 1 without a plan."""
        return 1.0 if self.plan is None else float(self.plan.ratio_to_single_device)

    def unsupported(self, model: Model, needs: Needs) -> str | None:
        """Why the pipeline cannot be exact for this model and algorithm, or ``None``."""
        if model.layers is None:
            return (f"model {model.name!r} is not a dense stack (Model.layers is None); the pipeline splits a "
                    "tuple of DenseLayer (e.g. edgejax.models.zoo.mlp)")
        if needs.masked:
            return ("every node trains its own sub-model (a per-node parameter mask), while the pipeline trains "
                    "the full dense stack")
        return None

    def build(self, model: Model, spec: LocalTraining, max_steps: int, shuffles: int, group_size: int | None,
              needs: Needs) -> "PipelinedLocal":
        """The strategy for ``edgejax.core.execution.build_execution`` (``group_size`` is unused:
        the cohort is spread over ``replicas``)."""
        reason = self.unsupported(model, needs)
        if reason is not None:
            raise ValueError(f"execution=Pipelined cannot be exact here: {reason}. Use execution='per_node'.")
        value_and_grad = stage_value_and_grad(model, self.stage_of_layer, self.microbatches, self.mesh.shape[STAGES])
        update = make_local_update(model, spec, max_steps, shuffles, needs.terms, model_value_and_grad=value_and_grad)
        return PipelinedLocal(update, None, needs.start == "shared", mesh=self.mesh)


@dataclasses.dataclass(frozen=True, eq=False)
class PipelinedLocal(PerNode):
    """``PerNode`` with the cohort spread over ``replicas`` and every update pipelined over ``stages``
    (``delta`` is ``PerNode``'s, over this ``train``)."""

    mesh: Mesh = dataclasses.field(kw_only=True)
    name: str = "pipelined"

    def train(self, start, cohort, keys, budget, hparams, node_args=None, opt_state=None,
              mask: SubModelMask | None = None) -> LocalResult:
        if mask is not None:
            raise ValueError("the pipelined execution trains the full model; it cannot train per-node sub-models "
                             "(masks)")
        k = budget.shape[0]
        padded = k + (-k % self.mesh.shape[REPLICAS])
        index = jnp.minimum(jnp.arange(padded), k - 1)
        spread = NamedSharding(self.mesh, P(REPLICAS))

        def nodes(tree):
            return jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a[index], spread), tree)

        node_budget = jnp.where(jnp.arange(padded) < k, budget[index], 0)
        stacked_start = None if self.shared_start else start
        per_node = nodes((stacked_start, cohort.x, cohort.y, cohort.count, keys, node_budget,
                          {} if node_args is None else node_args, opt_state))
        shared = start if self.shared_start else None

        def body(shared, per_node, hparams):
            def one(args):
                params0, x, y, count, key, budget_i, args_i, state_i = args
                params0 = shared if self.shared_start else params0
                return self.update(params0, x, y, count, key, budget_i, hparams, args_i, state_i)

            return jax.vmap(one)(per_node)

        result = jax.shard_map(body, mesh=self.mesh, in_specs=(P(), P(), P()), out_specs=P(),
                               axis_names={STAGES})(shared, per_node, hparams)
        return jax.tree_util.tree_map(lambda a: a[:k], result)
