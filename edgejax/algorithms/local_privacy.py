"""Local differential privacy on the aggregator seam: every node clips its update and adds its
own Gaussian noise before it leaves the device, so the server (or anyone on the link) sees only
noised updates.

``LocalDP(clip, noise_multiplier, delta, inner)``, for each row ``i`` that takes part::

    v_i = clip_C(u_i) + N(0, (z C)^2 I)          clip_C(u) = u min(1, C / ||u||)  (flat L2)
    aggregate = inner(v, weights, mask)           (``Mean()`` by default: sum_i w_i v_i)

Traced ``ldp_clip`` (C) and ``ldp_noise_multiplier`` (z).  Each release is a Gaussian mechanism
of sensitivity ``2C`` under replacement of the node's data (``C`` under its removal, the
convention of DP-FedAvg): ``epsilon`` reports, at ``delta``, a node that took part in every
round so far, its releases composed by ``dp_accounting``'s RDP accountant with noise multiplier
``z`` and no amplification by sampling (the server knows who took part).  Any aggregator may be
``inner`` (a robust one over the noised rows, say); with FedBuff the buffered rows, already
staleness-weighted (a weight <= 1 only lowers the sensitivity), are what each node releases, and
no epsilon is claimed (participation follows the event clock).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edgejax.algorithms.aggregation import Mean, check_aggregator, with_aggregator
from edgejax.algorithms.privacy import check_finite_positive, clip_rows, composed_epsilon, import_dp_accounting


@dataclasses.dataclass(frozen=True)
class LocalDP:
    """Every node's update clipped and noised on the device, then ``inner`` (module docstring)."""

    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    inner: Any = Mean()
    fusable = False

    def __post_init__(self):
        check_finite_positive("clip", self.clip, owner="LocalDP")
        check_finite_positive("noise_multiplier", self.noise_multiplier, allow_zero=True, owner="LocalDP")
        if not (isinstance(self.delta, float) and 0 < self.delta < 1):
            raise ValueError(f"LocalDP: delta={self.delta!r} must be a float in (0, 1)")
        check_aggregator(self.inner)

    @property
    def name(self) -> str:
        return "local_dp" + with_aggregator(self.inner)

    def default_hparams(self) -> dict[str, float]:
        return {"ldp_clip": float(self.clip), "ldp_noise_multiplier": float(self.noise_multiplier),
                **self.inner.default_hparams()}

    def init(self, params):
        return self.inner.init(params)

    def update(self, updates, weights, mask, state, key, hparams):
        clip = hparams["ldp_clip"]
        clipped, norms = clip_rows(updates, mask, clip)
        std = hparams["ldp_noise_multiplier"] * clip
        leaves, tree = jax.tree_util.tree_flatten(clipped)
        noise_key, inner_key = jax.random.split(key)
        noised = [u + std * jax.random.normal(jax.random.fold_in(noise_key, i), u.shape, u.dtype)
                  for i, u in enumerate(leaves)]   # every row its own draw, as each device draws its own
        aggregate, state, metrics = self.inner.update(jax.tree_util.tree_unflatten(tree, noised), weights, mask,
                                                      state, inner_key, hparams)
        clipped_rows = jnp.sum(mask & (norms > clip)).astype(jnp.result_type(float))
        return aggregate, state, {**metrics, "ldp_clipped": clipped_rows}


def local_epsilon(noise_multiplier: float, releases, delta: float) -> np.ndarray:
    """``epsilon`` at ``delta`` of a node after each of ``releases`` (an int or an array of counts)
    Gaussian releases of noise multiplier ``z`` (``dp_accounting``'s RDP accountant, no sampling)."""
    return composed_epsilon(import_dp_accounting().GaussianDpEvent(noise_multiplier), releases, delta)
