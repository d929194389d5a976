"""Stage assignment: contiguous layers onto S heterogeneous devices, PipeDream-style dynamic programming.

PipeDream (Narayanan et al., SOSP 2019, "PipeDream: Generalized Pipeline Parallelism for DNN
Training") partitions a layer chain into contiguous stages by dynamic programming so that the
slowest stage, which paces the whole pipeline, is as fast as possible.  Here the devices are
heterogeneous (HetPipe, Park et al., USENIX ATC 2020) and taken in the given order: stage ``s``
runs on device ``s``.

Cost model, per microbatch of ``m`` samples (``m = ceil(B / M)`` for a minibatch of ``B``
samples in ``M`` microbatches):

* compute of stage ``s`` holding layers ``i..j-1`` on a device of ``v_s`` FLOP/s:
  ``C_s = m * sum_{l=i}^{j-1} F_l / v_s``, with ``F_l = TRAIN_FACTOR * 2 * d_in_l * d_out_l``
  the forward+backward FLOPs of dense layer ``l`` per sample (``edgejax.models.layout``: a
  training step is three forward GEMMs);
* transfer over link ``s`` (device ``s`` to ``s + 1``): the stage's output activations forward
  and their gradients back, ``X_s = 2 * m * d_out_{j-1} * bytes / bw_s`` (0 for the last stage);
* stage time ``T_s = C_s + X_s`` (transfers are not overlapped with compute), bottleneck
  ``T = max_s T_s``.

The dynamic programme ``f(s, j) = min_{i} max(f(s-1, i), T(layers i..j-1 on device s-1))``
(``f(1, j) = T(layers 0..j-1 on device 0)``) finds the split with the smallest bottleneck in
``O(S L^2)``.  GPipe (Huang et al., NeurIPS 2019) runs the ``M`` microbatches' forward passes,
then their backward passes, through the ``S`` stages, so one minibatch takes
``(M + S - 1) * T`` and the bubble (idle fraction of every stage) is ``(S - 1) / (M + S - 1)``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from edgejax.models.base import DenseLayer, Model
from edgejax.models.layout import TRAIN_FACTOR
from edgejax.system.profiles import DeviceProfiles


def dense_layers(model_or_layers) -> tuple[DenseLayer, ...]:
    """The dense stack of a ``Model`` (its ``layers``) or a sequence of ``DenseLayer``s, checked
    to be a chain (``d_out`` of every layer is the ``d_in`` of the next)."""
    if isinstance(model_or_layers, Model):
        if model_or_layers.layers is None:
            raise ValueError(f"model {model_or_layers.name!r} is not a dense stack (Model.layers is None); "
                             "pipeline partitioning needs a tuple of DenseLayer (e.g. edgejax.models.zoo.mlp)")
        layers = tuple(model_or_layers.layers)
    else:
        layers = tuple(model_or_layers)
    if not layers or not all(isinstance(layer, DenseLayer) for layer in layers):
        raise ValueError(f"expected a non-empty sequence of DenseLayer; got {layers!r}")
    for prev, nxt in zip(layers, layers[1:]):
        if prev.d_out != nxt.d_in:
            raise ValueError(f"layer {nxt.name!r} reads d_in={nxt.d_in} but layer {prev.name!r} gives "
                             f"d_out={prev.d_out}: the layers are not a chain")
    return layers


def layer_train_flops(layers: Sequence[DenseLayer]) -> np.ndarray:
    """Forward+backward FLOPs per sample of every layer: ``TRAIN_FACTOR * 2 * d_in * d_out``."""
    return np.array([TRAIN_FACTOR * 2.0 * layer.d_in * layer.d_out for layer in layers])


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """A pipeline's stage assignment and its simulated cost (all times in seconds).

    Attributes:
      stage_of_layer: the stage of every layer (contiguous, ``0 .. S-1``).
      microbatches: ``M``; ``microbatch_size``: ``m = ceil(B / M)`` samples.
      compute_s: per stage, forward+backward compute of one microbatch ``C_s``.
      transfer_s: per stage, sending one microbatch's activations to the next stage and
        receiving their gradients back ``X_s`` (0 for the last stage).
      activation_bytes: per link ``s -> s+1`` (``S - 1`` values), one microbatch's activations.
      single_device_s: the whole minibatch's forward+backward on the fastest device alone.
    """

    stage_of_layer: tuple[int, ...]
    microbatches: int
    microbatch_size: int
    compute_s: tuple[float, ...]
    transfer_s: tuple[float, ...]
    activation_bytes: tuple[int, ...]
    single_device_s: float

    @property
    def num_stages(self) -> int:
        return len(self.compute_s)

    @property
    def stage_time_s(self) -> tuple[float, ...]:
        """``T_s = C_s + X_s`` per stage, one microbatch."""
        return tuple(c + x for c, x in zip(self.compute_s, self.transfer_s))

    @property
    def bottleneck_s(self) -> float:
        """``max_s T_s``: the time per microbatch of the slowest stage."""
        return max(self.stage_time_s)

    @property
    def bubble_fraction(self) -> float:
        """GPipe's idle fraction ``(S - 1) / (M + S - 1)``."""
        return (self.num_stages - 1) / (self.microbatches + self.num_stages - 1)

    @property
    def pipeline_time_s(self) -> float:
        """One minibatch of ``M`` microbatches, forward and backward: ``(M + S - 1) * max_s T_s``."""
        return (self.microbatches + self.num_stages - 1) * self.bottleneck_s

    @property
    def ratio_to_single_device(self) -> float:
        """``pipeline_time_s / single_device_s``: below 1 the pipeline is faster than the fastest
        device alone (the factor to charge a simulated clock that assumes one device)."""
        return self.pipeline_time_s / self.single_device_s

    def step_time_s(self, batch_size: int) -> float:
        """Simulated time of one local step of ``batch_size`` samples through this pipeline:
        ``(M + S - 1) * ceil(batch_size / M) * max_s T_s / m`` (every cost is linear in the
        microbatch size, so the plan's split stays optimal for any batch size)."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        m = -(-int(batch_size) // self.microbatches)
        return (self.microbatches + self.num_stages - 1) * m * self.bottleneck_s / self.microbatch_size


def _positive(name: str, values, count: int, allow_inf: bool = False) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(count, float(arr))
    if arr.shape != (count,):
        raise ValueError(f"{name} must be a scalar or have {count} values; got shape {arr.shape}")
    bad = ~((np.isfinite(arr) | (allow_inf & (arr == np.inf))) & (arr > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] = {arr[i]} must be positive" + (" (inf: free links)" if allow_inf else
                                                                        " and finite"))
    return arr


def check_stage_of_layer(model_or_layers, stage_of_layer, num_stages: int) -> tuple[int, ...]:
    """``stage_of_layer`` as a tuple, checked: one entry per layer, contiguous stages ``0 .. S-1``
    in order, each holding at least one layer."""
    layers = dense_layers(model_or_layers)
    if not isinstance(num_stages, (int, np.integer)) or not 1 <= num_stages <= len(layers):
        raise ValueError(f"{num_stages} stages for a model of {len(layers)} layers: give between 1 and "
                         f"{len(layers)} stages (every stage needs a layer)")
    stages = tuple(int(s) for s in stage_of_layer)
    if len(stages) != len(layers):
        raise ValueError(f"stage_of_layer has {len(stages)} entries for {len(layers)} layers")
    steps = np.diff(stages)
    if stages[0] != 0 or np.any((steps != 0) & (steps != 1)) or stages[-1] != num_stages - 1:
        raise ValueError(f"stage_of_layer={stages} must assign contiguous layers to stages 0..{num_stages - 1} in "
                         "order, every stage at least one layer")
    return stages


def plan_stages(model_or_layers, speeds, *, batch_size: int, microbatches: int, bandwidth=None,
                dtype_bytes: int = 4, stage_of_layer=None) -> StagePlan:
    """The contiguous split of the dense stack over ``len(speeds)`` devices with the smallest
    bottleneck stage time (see the module docstring for the cost model and the recursion).

    ``speeds``: FLOP/s per device (stage ``s`` runs on device ``s``), or ``DeviceProfiles``,
    whose ``speed`` (training samples/s of the whole model) is converted to FLOP/s with this
    model's training FLOPs per sample.  ``bandwidth``: bytes/s per link ``s -> s+1`` (a scalar
    or ``S - 1`` values); ``None`` with ``DeviceProfiles`` takes ``min(up_bandwidth[s],
    down_bandwidth[s+1])``.  ``dtype_bytes``: bytes per activation value.  Ties between splits
    go to the one whose stages end earliest.  ``stage_of_layer``: cost this given split instead
    of searching for the best one.
    """
    layers = dense_layers(model_or_layers)
    flops = layer_train_flops(layers)
    if isinstance(speeds, DeviceProfiles):
        up, down = np.asarray(speeds.up_bandwidth, np.float64), np.asarray(speeds.down_bandwidth, np.float64)
        if bandwidth is None:
            bandwidth = np.minimum(up[:-1], down[1:])
        speeds = np.asarray(speeds.speed, np.float64) * flops.sum()
    num_stages = int(np.size(speeds))
    if num_stages < 1 or num_stages > len(layers):
        raise ValueError(f"{num_stages} devices (stages) for {len(layers)} layers: every stage needs at least one "
                         "layer, so give between 1 and the number of layers devices")
    for name, value in (("batch_size", batch_size), ("microbatches", microbatches), ("dtype_bytes", dtype_bytes)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if microbatches > batch_size:
        raise ValueError(f"microbatches={microbatches} exceeds batch_size={batch_size}")
    v = _positive("speeds", speeds, num_stages)
    if bandwidth is None and num_stages > 1:
        raise ValueError("bandwidth (bytes/s per link between consecutive stages) is required for more than one stage")
    bw = _positive("bandwidth", 1.0 if bandwidth is None else bandwidth, max(num_stages - 1, 1), allow_inf=True)
    m = -(-batch_size // microbatches)
    prefix = np.concatenate([[0.0], np.cumsum(flops)])
    out_bytes = [m * layer.d_out * dtype_bytes for layer in layers]

    def compute_time(i: int, j: int, s: int) -> float:
        return m * (prefix[j] - prefix[i]) / v[s]

    def transfer_time(j: int, s: int) -> float:
        return 2.0 * out_bytes[j - 1] / bw[s] if s < num_stages - 1 else 0.0

    if stage_of_layer is None:
        stage_of_layer = _best_split(len(layers), num_stages, compute_time, transfer_time)
    stage_of_layer = check_stage_of_layer(layers, stage_of_layer, num_stages)
    bounds = [stage_of_layer.index(s) for s in range(num_stages)] + [len(layers)]
    compute = tuple(float(compute_time(bounds[s], bounds[s + 1], s)) for s in range(num_stages))
    transfer = tuple(float(transfer_time(bounds[s + 1], s)) for s in range(num_stages))
    act = tuple(int(out_bytes[bounds[s + 1] - 1]) for s in range(num_stages - 1))
    return StagePlan(stage_of_layer, int(microbatches), int(m), compute, transfer, act,
                     float(batch_size * prefix[-1] / v.max()))


def _best_split(n: int, num_stages: int, compute_time, transfer_time) -> tuple[int, ...]:
    """The dynamic programme of the module docstring: ``best[s, j]`` is the smallest bottleneck of
    layers ``0..j-1`` on devices ``0..s-1``, ``cut[s, j]`` where its last stage starts."""
    best = np.full((num_stages + 1, n + 1), math.inf)
    cut = np.zeros((num_stages + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for s in range(1, num_stages + 1):
        for j in range(s, n - (num_stages - s) + 1):
            for i in range(s - 1, j):
                value = max(best[s - 1, i], compute_time(i, j, s - 1) + transfer_time(j, s - 1))
                if value < best[s, j]:
                    best[s, j], cut[s, j] = value, i
    ends = [n]
    for s in range(num_stages, 1, -1):
        ends.append(int(cut[s, ends[-1]]))
    bounds = [0, *reversed(ends)]
    return tuple(s for s in range(num_stages) for _ in range(bounds[s], bounds[s + 1]))
