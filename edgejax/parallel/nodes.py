"""The node axis sharded over devices: a ``nodes`` mesh axis under the same simulation code.

Every per-node array of a simulation (the node state, each node's data, the per-node
system and network arrays) has the node axis N first.  With a device mesh that has a
``nodes`` axis of D devices (``node_mesh``), those arrays are stored split over the
devices, ``ceil(N / D)`` nodes each, and everything else (the server model, the global
test set) is replicated.  The algorithms do not change: inside the compiled chunk the
arrays have their logical shapes, XLA's SPMD partitioner turns the sum over nodes of
an aggregation into a cross-device reduction, a dense mixing matrix into a sharded
matmul and a neighbour gather into a gather across shards, and the cohort's local
training runs under ``shard_map`` (``map_nodes_sharded``), each device training its
own nodes with no communication at all.  This is DrJAX's design (clients on a mesh
axis; ``drjax/_src/impls.py``), extended to gossip, masks and asynchronous buffers by
sharding whatever per-node state an algorithm keeps.

Padding: a sharded array's axis must divide evenly at the program boundary, so N is
stored padded to a multiple of D with zero rows (``NodeAxis.pad``) that the compiled
program slices off before any algorithm sees them (``NodeAxis.unpad``); inside the
program the logical N need not divide D.  The padded rows never enter a computation,
so a sharded run draws the same random numbers and gives the same results as the
single-device run, to floating-point reassociation of the cross-device sums.

The autodiff pitfall: inside ``shard_map`` a model replicated over the
``nodes`` axis must be cast device-varying (``jax.lax.pcast(..., to="varying")``)
before per-node gradients are taken, or the transpose of its implicit broadcast sums
every node's gradient over the devices.  ``map_nodes_sharded`` does it for the shared
start of a round.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

NODES = "nodes"


def node_mesh(devices=None) -> Mesh:
    """A one-axis mesh ``("nodes",)`` over ``devices`` (default: every device jax sees,
    across all processes of a multi-host run)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("node_mesh needs at least one device")
    return Mesh(np.asarray(devices), (NODES,), axis_types=(jax.sharding.AxisType.Auto,))


def check_node_mesh(mesh) -> None:
    """A ``ValueError`` unless ``mesh`` is a ``jax.sharding.Mesh`` with a ``nodes`` axis only."""
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh (see edgejax.parallel.node_mesh); got {type(mesh).__name__}")
    if tuple(mesh.axis_names) != (NODES,):
        raise ValueError(f"the simulation's mesh must have the single axis {NODES!r} (edgejax.parallel.node_mesh); "
                         f"got axes {tuple(mesh.axis_names)}")


def _pad_rows(x, rows: int):
    extra = rows - x.shape[0]
    if extra == 0:
        return x
    pad = ((0, extra),) + ((0, 0),) * (x.ndim - 1)
    return np.pad(x, pad) if isinstance(x, np.ndarray) else jnp.pad(x, pad)


@dataclasses.dataclass(frozen=True, eq=False)
class NodeAxis:
    """How one simulation's node axis (``num_nodes``) lies on ``mesh``'s ``nodes`` axis.

    A leaf of a state or data pytree is per-node when its first dimension is N (the
    layout convention of ``SimState`` and ``FederatedData``); it is then stored padded
    to ``padded_nodes`` and split over the devices, and every other leaf is replicated.
    """

    mesh: Mesh
    num_nodes: int

    @property
    def devices(self) -> int:
        return self.mesh.shape[NODES]

    @property
    def padded_nodes(self) -> int:
        return math.ceil(self.num_nodes / self.devices) * self.devices

    def _per_node(self, leaf, rows: int) -> bool:
        return getattr(leaf, "ndim", 0) >= 1 and leaf.shape[0] == rows

    def pad(self, tree):
        """Logical ``[N, ...]`` leaves to the stored ``[padded_nodes, ...]`` (zero rows added)."""
        return jax.tree_util.tree_map(
            lambda x: _pad_rows(x, self.padded_nodes) if self._per_node(x, self.num_nodes) else x, tree)

    def unpad(self, stored, logical):
        """Stored leaves back to their logical shapes: the per-node leaves of ``logical`` (the
        same pytree's logical arrays or shape structs) sliced to ``[N, ...]``.  (Deciding from
        the stored shapes alone would also slice a leaf whose logical length is the padded N.)"""
        return jax.tree_util.tree_map(
            lambda x, like: x[:self.num_nodes] if self._per_node(like, self.num_nodes) else x, stored, logical)

    def shardings(self, tree):
        """``NamedSharding`` for every leaf of a logical pytree's stored form (arrays or shape
        structs): per-node leaves split over ``nodes``, the rest replicated."""
        split, whole = NamedSharding(self.mesh, PartitionSpec(NODES)), NamedSharding(self.mesh, PartitionSpec())
        return jax.tree_util.tree_map(lambda x: split if self._per_node(x, self.num_nodes) else whole, tree)

    def place(self, tree):
        """A logical pytree (host or device arrays) padded and put on the mesh (in a multi-host
        run every process passes the same values, as host arrays)."""
        if jax.process_count() > 1:
            tree = jax.tree_util.tree_map(np.asarray, tree)
        return jax.device_put(self.pad(tree), self.shardings(tree))

    def to_host(self, stored_tree, logical):
        """A stored pytree as logical host arrays (what results and checkpoints keep), gathered
        from every process in a multi-host run (``logical``: as for ``unpad``)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            stored_tree = multihost_utils.process_allgather(stored_tree, tiled=True)
        return self.unpad(jax.tree_util.tree_map(np.asarray, stored_tree), logical)

    def constrain(self, tree):
        """Inside a compiled program: keep the logical per-node leaves split over ``nodes``."""
        split = NamedSharding(self.mesh, PartitionSpec(NODES))
        return jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x, split) if self._per_node(x, self.num_nodes) else x, tree)


def shard_rows(fn: Callable, mesh: Mesh, rows: Any, *replicated: Any) -> Any:
    """``fn(*replicated, rows_d)`` on every device ``d`` of ``mesh``'s ``nodes`` axis, ``rows_d``
    its block of ``rows`` (leading axis K), under ``shard_map``; K is padded with zero rows
    to a multiple of the device count and the result sliced back to K rows."""
    k = jax.tree_util.tree_leaves(rows)[0].shape[0]
    padded = math.ceil(k / mesh.shape[NODES]) * mesh.shape[NODES]
    rows = jax.tree_util.tree_map(lambda x: _pad_rows(x, padded), rows)
    out = jax.shard_map(lambda args, *rest: fn(*rest, args), mesh=mesh,
                        in_specs=(PartitionSpec(NODES),) + (PartitionSpec(),) * len(replicated),
                        out_specs=PartitionSpec(NODES))(rows, *replicated)
    return jax.tree_util.tree_map(lambda x: x[:k], out)


def map_nodes_sharded(fn: Callable, shared: Any, node_args: Any, mesh: Mesh, group_size: int | None,
                      map_nodes: Callable) -> Any:
    """``fn(shared, node_args_i)`` for every row of ``node_args`` (leading axis K), each
    device of ``mesh`` mapping its own rows with ``map_nodes(..., group_size)`` (``shard_rows``).

    ``shared`` (replicated; may be ``None``) is cast device-varying inside ``shard_map``
    before ``fn`` sees it (see the module docstring).  The padding rows are all zero, so
    ``fn`` must give finite or discarded results for them (a node with no data and step
    budget 0).
    """
    def local(shared_, args):
        if shared_ is not None:
            shared_ = jax.tree_util.tree_map(lambda x: jax.lax.pcast(x, NODES, to="varying"), shared_)
        return map_nodes(lambda a: fn(shared_, a), args, group_size)

    return shard_rows(local, mesh, node_args, shared)
