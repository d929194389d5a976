"""User-level differential privacy on the aggregator seam: DP-FedAvg's Gaussian mechanism and its
accounting with Google's ``dp-accounting`` (RDP).

``GaussianDP(clip, noise_multiplier, delta)`` (McMahan et al. 2018, "Learning Differentially
Private Recurrent Language Models", Algorithm 1 with the fixed-denominator estimator)::

    clip_C(u) = u min(1, C / ||u||)                       (flat L2 over the whole update)
    aggregate = (sum_{i in mask} clip_C(u_i) + N(0, (z C)^2 I)) / K

``K`` is the cohort size (the static number of rows), so an absent node changes only the sum;
the sum's sensitivity to adding or removing one user is ``C``.  The weights' sizes are not used
(every user counts the same, which the sensitivity needs; use ``weighting="uniform"`` for a
non-DP baseline with the same weights).  Traced ``dp_clip`` (C) and ``dp_noise_multiplier`` (z),
whose defaults are the constructor's values; the noise comes from the server step's key.
In FedBuff's flush the rows are the K buffered, staleness-weighted updates.

Adaptive clipping (``target_quantile`` gamma; Andrew et al. 2021, "Differentially Private Learning
with Adaptive Clipping", Algorithm 1 with the geometric update): the clip norm follows the
gamma-quantile of the update norms, privately.  Every row also sends ``b_i = 1[||u_i|| <= C_t]``,
centred so that one user moves the sum by at most 1/2::

    b    = (sum_{i in mask} (b_i - 1/2) + N(0, sigma_b^2)) / K + 1/2
    C_t+1 = C_t exp(-eta_C (b - gamma))                       (eta_C: ``clip_lr``)

and the update is noised with ``z_u = (z^-2 - (2 sigma_b)^-2)^-1/2`` instead of ``z``, so that the
two releases together are one Gaussian mechanism of noise multiplier ``z`` (their Theorem 1, the
count's multiplier being ``sigma_b / (1/2)``): the accounting is unchanged.  ``count_noise`` is
``sigma_b`` (default ``K / 20``, the paper's choice); ``2 sigma_b > z`` is required.  The state is ``C_t / dp_clip`` (1 at the start: the traced
``dp_clip`` is the initial norm); ``dp_clip_norm`` reports the norm each round clipped at.

Accounting (``epsilon``): ``dp_accounting.rdp.RdpAccountant`` (integer orders 2..64 and up to
512, ``RDP_ORDERS``) composing, once per round, a
Poisson-sampled Gaussian mechanism with sampling rate ``q = K / N`` and noise multiplier ``z``
(``dp_accounting.PoissonSampledDpEvent``), the assumption of McMahan et al.'s analysis;
edgejax draws a fixed-size uniform cohort, which the Poisson accountant treats as approximate
(said in ``run.json``).  ``Simulation.run`` then reports ``epsilon`` at ``delta`` every round
(``edgejax.algorithms.accounting``).
It refuses the accounting where the cohort is not a uniform sample of all N users (another
selection rule, an availability process, or asynchronous training, whose participation is
set by the event clock): the synchronous cases are refused; asynchronously the noise is added at
every flush and no epsilon is claimed (a warning says so).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


def check_finite_positive(name: str, value, allow_zero: bool = False, owner: str = "GaussianDP") -> None:
    """``ValueError`` naming ``owner``'s option ``name`` unless ``value`` is a finite positive (or, with
    ``allow_zero``, non-negative) number."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{owner}: {name}={value!r} must be a finite {'non-negative' if allow_zero else 'positive'} "
                         "number")


def masked_rows(leaves, mask):
    """The rows of ``leaves [K, ...]`` that take part (others zeroed) and every row's flat L2 norm ``[K]``."""
    k = mask.shape[0]
    present = [jnp.where(mask.reshape((-1,) + (1,) * (u.ndim - 1)), u, 0) for u in leaves]
    return present, jnp.sqrt(sum(jnp.sum(jnp.square(u).reshape(k, -1), axis=1) for u in present))


def clip_rows(updates, mask, clip):
    """Every taking-part row of ``updates`` clipped to L2 norm ``clip`` (others zero), and the norms."""
    leaves, tree = jax.tree_util.tree_flatten(updates)
    present, norms = masked_rows(leaves, mask)
    factor = jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-30))
    clipped = [factor.astype(u.dtype).reshape((-1,) + (1,) * (u.ndim - 1)) * u for u in present]
    return jax.tree_util.tree_unflatten(tree, clipped), norms


@dataclasses.dataclass(frozen=True)
class GaussianDP:
    """DP-FedAvg's clipped sum plus Gaussian noise over the fixed cohort size (module docstring)."""

    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    target_quantile: float | None = None
    clip_lr: float = 0.2
    count_noise: float | None = None
    fusable = False

    def __post_init__(self):
        check_finite_positive("clip", self.clip)
        check_finite_positive("noise_multiplier", self.noise_multiplier, allow_zero=True)
        if not (isinstance(self.delta, float) and 0 < self.delta < 1):
            raise ValueError(f"GaussianDP: delta={self.delta!r} must be a float in (0, 1)")
        if self.target_quantile is not None and not (isinstance(self.target_quantile, (int, float))
                                                      and 0 < self.target_quantile < 1):
            raise ValueError(f"GaussianDP: target_quantile={self.target_quantile!r} must be in (0, 1) (or None: a "
                             "fixed clip)")
        check_finite_positive("clip_lr", self.clip_lr)
        if self.count_noise is not None:
            check_finite_positive("count_noise", self.count_noise)

    @property
    def name(self) -> str:
        return "gaussian_dp" if self.target_quantile is None else f"gaussian_dp_adaptive_{self.target_quantile:g}"

    def count_sigma(self, rows: int) -> float:
        """``sigma_b``, the noise on the clipped-count release: ``count_noise``, or ``rows / 20``."""
        return rows / 20 if self.count_noise is None else float(self.count_noise)

    def check_noise(self, noise_multiplier: float, rows: int) -> None:
        """With adaptive clipping, ``z < 2 sigma_b`` (else the update's share of the noise is not real)."""
        if self.target_quantile is not None and noise_multiplier >= 2 * self.count_sigma(rows):
            raise ValueError(f"GaussianDP adaptive clipping: noise_multiplier {noise_multiplier} must be below 2 x "
                             f"count_noise = {2 * self.count_sigma(rows)} (rows per aggregation: {rows}); raise "
                             "count_noise")

    def default_hparams(self) -> dict[str, float]:
        return {"dp_clip": float(self.clip), "dp_noise_multiplier": float(self.noise_multiplier)}

    def init(self, params):
        return () if self.target_quantile is None else jnp.ones((), jnp.result_type(float))

    def update(self, updates, weights, mask, state, key, hparams):
        leaves, tree = jax.tree_util.tree_flatten(updates)
        k = mask.shape[0]
        present, norms = masked_rows(leaves, mask)
        z = hparams["dp_noise_multiplier"]
        adaptive = self.target_quantile is not None
        clip = hparams["dp_clip"] * state if adaptive else hparams["dp_clip"]
        if adaptive:   # the update's share of the noise: z_u^-2 = z^-2 - (2 sigma_b)^-2
            z = (1.0 / jnp.square(z) - 1.0 / (2 * self.count_sigma(k)) ** 2) ** -0.5
        factor = jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-30))
        std = z * clip
        noised = [(jnp.tensordot(factor.astype(u.dtype), u, axes=1)
                   + std * jax.random.normal(jax.random.fold_in(key, i), u.shape[1:], u.dtype)) / k
                  for i, u in enumerate(present)]
        metrics = {"dp_clipped": jnp.sum(mask & (norms > clip)).astype(jnp.result_type(float))}
        if adaptive:   # the noised fraction of unclipped rows moves the norm toward the target quantile
            centred = jnp.sum(jnp.where(mask, (norms <= clip).astype(state.dtype) - 0.5, 0))
            noise = self.count_sigma(k) * jax.random.normal(jax.random.fold_in(key, len(leaves)), (), state.dtype)
            state = state * jnp.exp(-self.clip_lr * ((centred + noise) / k + 0.5 - self.target_quantile))
            metrics["dp_clip_norm"] = jnp.asarray(clip, jnp.result_type(float))
        return jax.tree_util.tree_unflatten(tree, noised), state, metrics


# integer Renyi orders: computed exactly by the accountant (its fractional orders below 2 may not
# converge at the large sampling rates of cross-device cohorts)
RDP_ORDERS = tuple(range(2, 65)) + (80, 96, 128, 192, 256, 512)


def import_dp_accounting():
    """The ``dp_accounting`` module, or an ``ImportError`` saying how to install it."""
    try:
        import dp_accounting
    except ImportError as err:
        raise ImportError("privacy accounting needs the dp-accounting package: pip install 'edgejax[privacy]' "
                          "(or pip install dp-accounting)") from err
    return dp_accounting


def composed_epsilon(event, counts, delta: float) -> np.ndarray:
    """``epsilon`` at ``delta`` after each of ``counts`` (an int or an array) compositions of the
    ``dp_accounting`` event ``event``, from the RDP accountant over ``RDP_ORDERS``."""
    dp_accounting = import_dp_accounting()
    out = []
    for count in np.atleast_1d(counts):
        accountant = dp_accounting.rdp.RdpAccountant(RDP_ORDERS)
        accountant.compose(event, int(count))
        out.append(accountant.get_epsilon(delta))
    return np.asarray(out)


def epsilon(noise_multiplier: float, sampling_rate: float, rounds, delta: float) -> np.ndarray:
    """``epsilon`` after each of ``rounds`` (an int or an array of round counts) of a
    Poisson-sampled Gaussian mechanism, from ``dp_accounting``'s RDP accountant."""
    dp_accounting = import_dp_accounting()
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return composed_epsilon(event, rounds, delta)


def noise_for_epsilon(target_epsilon: float, rounds: int, sampling_rate: float, delta: float) -> float:
    """The noise multiplier ``z`` at which ``rounds`` rounds of the Poisson-sampled Gaussian
    mechanism (sampling rate ``q = K / N``) reach ``target_epsilon`` at ``delta``, as ``epsilon``
    accounts them: ``dp_accounting.calibrate_dp_mechanism`` (Brent's method, to 1e-4 in ``z``) over
    the same RDP accountant, rounded up so that ``epsilon(z) <= target_epsilon``.  E.g.
    ``GaussianDP(noise_multiplier=noise_for_epsilon(2.0, 100, 0.01, 1e-5))``."""
    for name, value in (("target_epsilon", target_epsilon), ("sampling_rate", sampling_rate), ("delta", delta)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"noise_for_epsilon: {name}={value!r} must be a finite positive number")
    if sampling_rate > 1 or delta >= 1:
        raise ValueError(f"noise_for_epsilon: sampling_rate={sampling_rate!r} must be in (0, 1] and "
                         f"delta={delta!r} in (0, 1)")
    if not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"noise_for_epsilon: rounds={rounds!r} must be a positive integer")
    dp_accounting = import_dp_accounting()

    def event(z):
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(z)), int(rounds))

    z = dp_accounting.calibrate_dp_mechanism(lambda: dp_accounting.rdp.RdpAccountant(RDP_ORDERS), event,
                                             float(target_epsilon), float(delta), tol=1e-4)
    while epsilon(z, sampling_rate, int(rounds), delta)[0] > target_epsilon:   # within tol of the root, above it
        z *= 1 + 1e-4
    return float(z)
