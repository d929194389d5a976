"""Class-subset sub-models: a shared trunk and class-specific upper layers (Chen & Qin 2020).

Chen & Qin ("Exploring Decentralized Collaboration in Heterogeneous Edge Training", IEEE/ACM
SEC 2020) decouple a CNN into sub-models that can be trained independently, one per subset
of classes a device cares about, and reassemble the parameters harvested from the devices
into one global model (related: Fed2, Yu et al. KDD 2021, which averages feature groups
assigned to classes).  On the GEMM chain of ``edgejax.models.layout`` (layers ``0..L``, ``L``
the output layer) with decoupling depth ``D`` (``0 <= D <= L``):

* layers ``l < D`` are the shared trunk: every node holds all of them;
* the units of every hidden layer ``D <= l < L`` (width ``c_l``) are split into ``G``
  contiguous groups, unit ``u`` in group ``floor(u G / c_l)`` (sizes differ by at most one;
  ``c_l >= G`` is required); output ``c`` (a class) is in group ``class_groups[c]``
  (default: class ``c`` is group ``c``, ``G = C``);
* the model is block-structured above the trunk: a grouped unit feeds only the units and
  outputs of its own group (``W_l[r, c]`` with both ends grouped is zero unless the groups
  agree; trunk units feed every unit).  The global model is initialised with those blocks
  zero and no node ever holds them, so they stay zero (``structure``);
* node ``i`` with classes ``S_i`` holds the trunk, the units of the groups of ``S_i`` (and
  their in-group weights), and the output columns ``W_L[:, c]``, ``b_L[c]`` of ``c in S_i``.

Softmax over a restricted output (``outputs``): with ``"restricted"`` (default) a node's
cross-entropy is the softmax over its own classes, ``p(y | x) = exp z_y / sum_{c in S_i}
exp z_c``: the sub-model is a classifier of ``S_i`` only, as in Chen & Qin, and a node is
never pushed to lower the logits of classes it has not seen.  With ``"zero"`` the other
classes' logits are the zero the masked output columns give (HeteroFL's code masks absent
labels' logits to 0), so the softmax still has ``C`` terms.  Harvest: every entry is
averaged over the nodes that held it (``edgejax.algorithms.submodels``); the reassembled
model is evaluated on all classes.  A node's class subset must contain every label of its
training data (``from_data`` takes them from the data; ``check_data`` checks given ones).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.core.local import SubModelMask
from edgejax.core.validation import check_choice
from edgejax.data.host import HostNodeData
from edgejax.models.base import Model
from edgejax.models.layout import chain_mask, gemm_layout

OUTPUTS = ("restricted", "zero")


def data_classes(data) -> tuple[tuple[int, ...], ...]:
    """The sorted labels of every node's training data (``FederatedData``; host-resident
    data, ``edgejax.data.host``, is read from its pool)."""
    if isinstance(data.train, HostNodeData):
        source = data.train.source
        y, count = source.pool_y[source.index], source.count
    else:
        y, count = np.asarray(data.train.y), np.asarray(data.train.count)
    return tuple(tuple(sorted(set(y[i, :count[i]].tolist()))) for i in range(y.shape[0]))


@dataclasses.dataclass(frozen=True)
class ClassSubsets:
    """Class-subset sub-models of ``model`` (see the module docstring).

    Attributes:
      model: the full model (a GEMM chain).
      classes: each node's class subset (length N, each a non-empty tuple of labels).
      depth: ``D``, the index of the first class-specific layer in the chain (0 ..
        number of layers - 1; the last value leaves only the output layer class-specific).
      class_groups: the group of each class (length C; default: one group per class).
      outputs: ``"restricted"`` or ``"zero"`` (the softmax over a node's outputs).
    """

    model: Model
    classes: tuple[tuple[int, ...], ...]
    depth: int
    class_groups: tuple[int, ...] | None = None
    outputs: str = "restricted"

    def __post_init__(self):
        check_choice("outputs", self.outputs, OUTPUTS)
        num_classes = self.model.num_classes
        object.__setattr__(self, "classes", tuple(tuple(int(c) for c in s) for s in self.classes))
        for i, subset in enumerate(self.classes):
            if not subset or not all(0 <= c < num_classes for c in subset):
                raise ValueError(f"node {i}'s class subset {subset} must be non-empty labels in [0, {num_classes})")
        groups = tuple(range(num_classes)) if self.class_groups is None else tuple(int(g) for g in self.class_groups)
        if len(groups) != num_classes or sorted(set(groups)) != list(range(max(groups) + 1)):
            raise ValueError(f"class_groups {groups} must give each of the {num_classes} classes a group, "
                             "using every group id 0..G-1")
        object.__setattr__(self, "class_groups", groups)
        last = len(self.layout) - 1
        if not 0 <= self.depth <= last:
            raise ValueError(f"depth={self.depth} must be in [0, {last}] for the {last + 1} layers "
                             f"{[layer.name for layer in self.layout]}")
        for layer in self.layout[self.depth:last]:
            if layer.cols < self.num_groups:
                raise ValueError(f"layer {layer.name!r} has {layer.cols} units, fewer than the {self.num_groups} "
                                 "groups it is split into")

    @classmethod
    def from_data(cls, model: Model, data, depth: int, **options) -> "ClassSubsets":
        """Every node's subset is the set of labels in its training data."""
        return cls(model, data_classes(data), depth, **options)

    @functools.cached_property
    def layout(self):
        return gemm_layout(self.model)

    @property
    def num_groups(self) -> int:
        return max(self.class_groups) + 1

    @property
    def name(self) -> str:
        return "class_subsets"

    def describe(self) -> dict:
        return {"kind": "class_subsets", "model": self.model.name, "depth": self.depth, "outputs": self.outputs,
                "class_groups": list(self.class_groups), "classes": [list(c) for c in self.classes]}

    def check(self, num_nodes: int) -> None:
        """One subset per node."""
        if len(self.classes) != num_nodes:
            raise ValueError(f"ClassSubsets has {len(self.classes)} class subsets but there are N={num_nodes} nodes")

    def check_data(self, data) -> None:
        """Raise ``ValueError`` naming the first node with a training label outside its subset."""
        self.check(data.num_nodes)
        for i, (have, declared) in enumerate(zip(data_classes(data), self.classes)):
            extra = sorted(set(have) - set(declared))
            if extra:
                raise ValueError(f"node {i} has training labels {extra} outside its class subset {declared}")

    def unit_groups(self) -> list[np.ndarray]:
        """Group of every output unit of every layer (``-1``: trunk), output layer included."""
        g, last = self.num_groups, len(self.layout) - 1
        groups = []
        for l, layer in enumerate(self.layout):
            if l == last:
                groups.append(np.asarray(self.class_groups))
            elif l < self.depth:
                groups.append(np.full(layer.cols, -1))
            else:
                groups.append(np.arange(layer.cols) * g // layer.cols)
        return groups

    def structure(self, dtype):
        """The block structure every node's mask lies in (1 where some node may hold an entry)."""
        return chain_mask(self.layout, [None] * len(self.layout), [jnp.asarray(g) for g in self.unit_groups()], dtype)

    def node_masks(self, nodes: jax.Array, dtype) -> SubModelMask:
        """The sub-models the system model plans and charges ``nodes [K]`` for (every round's)."""
        return self.masks(0, nodes, None, dtype)

    def masks(self, round_, nodes: jax.Array, keys: jax.Array, dtype) -> SubModelMask:
        """The cohort's masks ``[K, ...]`` (the same every round)."""
        membership = np.zeros((len(self.classes), self.model.num_classes), bool)
        for i, subset in enumerate(self.classes):
            membership[i, list(subset)] = True
        groups = self.unit_groups()
        in_group = np.zeros((len(self.classes), self.num_groups), bool)
        for c, g in enumerate(self.class_groups):
            in_group[:, g] |= membership[:, c]
        node_classes, node_groups = jnp.asarray(membership)[nodes], jnp.asarray(in_group)[nodes]
        group_arrays = [jnp.asarray(g) for g in groups]

        def one(cls_i, grp_i):
            keeps = [(g < 0) | grp_i[jnp.maximum(g, 0)] for g in group_arrays[:-1]] + [cls_i]
            return chain_mask(self.layout, keeps, group_arrays, dtype)

        params = jax.vmap(one)(node_classes, node_groups)
        outputs = node_classes.astype(dtype) if self.outputs == "restricted" else ()
        return SubModelMask(params, outputs)
