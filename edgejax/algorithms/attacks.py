"""Byzantine attacks on the aggregator seam: a fraction of each aggregation's rows replaced by what
an attacker sends, before the (robust or not) aggregator sees them.

``Attacked(inner, attack, fraction, strength)``: of the ``n`` rows that take part, ``m = round(f n)``
drawn uniformly from the aggregation's key are Byzantine (a fresh draw every round or flush: the
threat model is "a fraction f of each cohort is malicious", not a fixed set of nodes; use
``flip_labels`` for fixed nodes with poisoned data).  With ``mu`` and ``sigma`` the coordinate-wise
mean and standard deviation of the honest rows (the attacker is omniscient, as the papers assume),
a Byzantine row becomes:

* ``sign_flip``: ``-s u_i`` (its own update reversed and scaled, ``s = strength``, default 1);
* ``scale``: ``s u_i`` (a boosted update, default ``s = 10``);
* ``gaussian``: ``N(0, s^2 I)`` (noise in place of an update, default ``s = 1``);
* ``alie`` (Baruch et al. 2019, "A Little Is Enough"): ``mu - z sigma`` with the paper's
  ``z = Phi^-1((n - k) / n)``, ``k = floor(n / 2 + 1) - m`` (``strength`` overrides ``z``);
* ``ipm`` (Xie et al. 2020, "Fall of Empires: inner product manipulation"): ``-eps mu``
  (``eps = strength``, default 0.5).

The honest rows are passed through unchanged; ``byzantine_rows`` reports ``m``.  The wrapper is
not fusable (it reads every row), so the algorithm trains per node, as with any robust aggregator.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from edgejax.algorithms.aggregation import Mean, check_aggregator
from edgejax.core.validation import check_choice

ATTACKS = ("sign_flip", "scale", "gaussian", "alie", "ipm")
DEFAULT_STRENGTH = {"sign_flip": 1.0, "scale": 10.0, "gaussian": 1.0, "alie": None, "ipm": 0.5}


@dataclasses.dataclass(frozen=True)
class Attacked:
    """``inner`` over the rows after a fraction of them is replaced by an attack (module docstring)."""

    inner: Any = Mean()
    attack: str = "sign_flip"
    fraction: float = 0.2
    strength: float | None = None
    fusable = False

    def __post_init__(self):
        check_aggregator(self.inner)
        check_choice("attack", self.attack, ATTACKS)
        if not isinstance(self.fraction, (int, float)) or not 0 <= self.fraction < 1:
            raise ValueError(f"Attacked: fraction={self.fraction!r} must be in [0, 1)")
        if self.strength is not None and (not isinstance(self.strength, (int, float))
                                          or not np.isfinite(self.strength)):
            raise ValueError(f"Attacked: strength={self.strength!r} must be a finite number (or None: the "
                             f"attack's default)")

    @property
    def name(self) -> str:
        return f"{self.inner.name}_under_{self.attack}_{self.fraction:g}"

    def default_hparams(self) -> dict[str, float]:
        return self.inner.default_hparams()

    def init(self, params):
        return self.inner.init(params)

    def byzantine(self, mask, key):
        """``[K]`` bool: ``round(fraction n)`` of the ``n`` rows in ``mask``, drawn uniformly with ``key``."""
        n = jnp.sum(mask)
        m = jnp.round(self.fraction * n).astype(jnp.int32)
        scores = jnp.where(mask, jax.random.uniform(key, mask.shape), 2.0)   # absent rows last
        rank = jnp.argsort(jnp.argsort(scores))
        return mask & (rank < m)

    def update(self, updates, weights, mask, state, key, hparams):
        pick_key, noise_key, inner_key = jax.random.split(key, 3)
        bad = self.byzantine(mask, pick_key)
        honest = mask & ~bad
        n, m = jnp.sum(mask), jnp.sum(bad)
        leaves, tree = jax.tree_util.tree_flatten(updates)
        attacked = [self._attack(u, bad, honest, n, m, jax.random.fold_in(noise_key, i)) for i, u in enumerate(leaves)]
        aggregate, state, metrics = self.inner.update(jax.tree_util.tree_unflatten(tree, attacked), weights, mask,
                                                      state, inner_key, hparams)
        return aggregate, state, {**metrics, "byzantine_rows": m.astype(jnp.result_type(float))}

    def _attack(self, u, bad, honest, n, m, key):
        """Leaf ``u [K, ...]`` with the Byzantine rows replaced."""
        strength = DEFAULT_STRENGTH[self.attack] if self.strength is None else self.strength
        rows = bad.reshape((-1,) + (1,) * (u.ndim - 1))
        if self.attack == "sign_flip":
            sent = -strength * u
        elif self.attack == "scale":
            sent = strength * u
        elif self.attack == "gaussian":
            sent = strength * jax.random.normal(key, u.shape, u.dtype)
        else:
            h = honest.reshape(rows.shape).astype(u.dtype)
            count = jnp.maximum(jnp.sum(honest), 1).astype(u.dtype)
            mu = jnp.sum(h * u, axis=0) / count
            if self.attack == "ipm":
                sent = jnp.broadcast_to(-strength * mu, u.shape)
            else:
                sigma = jnp.sqrt(jnp.sum(h * jnp.square(u - mu), axis=0) / count)
                if strength is None:   # the paper's z: the honest majority just above the median
                    k = jnp.floor(n / 2 + 1) - m
                    z = ndtri(jnp.clip((n - k) / jnp.maximum(n, 1), 1e-6, 1 - 1e-6)).astype(u.dtype)
                else:
                    z = jnp.asarray(strength, u.dtype)
                sent = jnp.broadcast_to(mu - z * sigma, u.shape)
        return jnp.where(rows, sent.astype(u.dtype), u)


def flip_labels(data, nodes):
    """``data`` with the training labels of ``nodes`` flipped, ``y -> C - 1 - y`` (label flipping, a
    data-poisoning attack by fixed nodes; their local test splits and the global test set keep the
    true labels).  ``nodes``: node ids."""
    nodes = np.unique(np.asarray(nodes, dtype=np.int64))
    n = data.train.count.shape[0]
    if nodes.size and (nodes.min() < 0 or nodes.max() >= n):
        raise ValueError(f"flip_labels: nodes must be ids in [0, {n}); got {nodes.tolist()}")
    if not hasattr(data.train, "y"):
        raise ValueError("flip_labels needs the node data on the device (host-resident data has no label array)")
    flip = jnp.zeros((n,), bool).at[nodes].set(True)[:, None]
    return data.replace(train=data.train._replace(y=jnp.where(flip, data.num_classes - 1 - data.train.y,
                                                               data.train.y)))
