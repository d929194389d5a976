"""Server optimizers acting on the FedAvg pseudo-gradient.

The server treats ``-Delta_t`` (``Delta_t`` = the weighted mean of the nodes' model
changes ``x_i - x``) as a gradient and applies an optax transformation:

* ``sgd``:      ``x <- x + eta Delta`` (FedAvg; ``eta = 1`` is McMahan et al. 2017).
* ``momentum``: ``v <- beta v + Delta;  x <- x + eta v`` (FedAvgM, Hsu et al. 2019).
* ``adagrad``, ``adam``, ``yogi``: Reddi et al. 2021, "Adaptive Federated
  Optimization", Algorithm 2::

      m_t = b1 m_{t-1} + (1 - b1) Delta_t
      FedAdagrad: v_t = v_{t-1} + Delta_t^2
      FedAdam:    v_t = b2 v_{t-1} + (1 - b2) Delta_t^2
      FedYogi:    v_t = v_{t-1} - (1 - b2) Delta_t^2 sign(v_{t-1} - Delta_t^2)
      x_{t+1}   = x_t + eta m_t / (sqrt(v_t) + tau)

  with ``m_{-1} = 0`` and ``v_{-1} = tau^2`` (the paper asks ``v_{-1} >= tau^2``).
  Convention: the paper has no bias correction and that is the default here.
  ``bias_correction=True`` divides ``m`` and ``v`` by ``1 - b^t`` as optax's
  ``adam``/``yogi`` do (note also that ``optax.yogi`` starts ``v`` at 1e-6, not tau^2).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from edgejax.core.state import default_float

SERVER_OPTIMIZERS = ("sgd", "momentum", "adagrad", "adam", "yogi")

_DEFAULTS = {
    "sgd": {"server_lr": 1.0},
    "momentum": {"server_lr": 1.0, "server_momentum": 0.9},
    "adagrad": {"server_lr": 0.1, "server_b1": 0.0, "server_tau": 1e-3},
    "adam": {"server_lr": 0.01, "server_b1": 0.9, "server_b2": 0.99, "server_tau": 1e-3},
    "yogi": {"server_lr": 0.01, "server_b1": 0.9, "server_b2": 0.99, "server_tau": 1e-3},
}


class AdaptiveState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adaptive_server(kind: str, b1, b2, tau, bias_correction: bool = False) -> optax.GradientTransformation:
    """Reddi et al.'s adaptive server step as an optax transformation of ``g = -Delta``.

    Maps a gradient ``g`` to ``m / (sqrt(v) + tau)`` (moments of ``g``).  Fed ``g = -Delta``
    and chained with ``optax.scale(-eta)`` it gives ``x + eta m / (sqrt(v) + tau)`` with the
    moments of ``Delta`` (``v`` only sees ``g^2 = Delta^2``).  ``b2`` is unused by ``adagrad``.
    """
    if kind not in ("adagrad", "adam", "yogi"):
        raise ValueError(f"unknown adaptive server optimizer {kind!r}")

    def init_fn(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        nu = jax.tree_util.tree_map(lambda p: jnp.full_like(p, tau ** 2), params)
        return AdaptiveState(count=jnp.zeros((), jnp.int32), mu=zeros, nu=nu)

    def second_moment(v, g):
        g2 = g * g
        if kind == "adagrad":
            return v + g2
        if kind == "adam":
            return b2 * v + (1 - b2) * g2
        return v - (1 - b2) * g2 * jnp.sign(v - g2)

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree_util.tree_map(second_moment, state.nu, updates)
        count = state.count + 1
        mu_hat, nu_hat = mu, nu
        if bias_correction:
            t = count.astype(default_float())
            mu_hat = jax.tree_util.tree_map(lambda m: m / (1 - b1 ** t), mu)
            if kind != "adagrad":
                nu_hat = jax.tree_util.tree_map(lambda v: v / (1 - b2 ** t), nu)
        out = jax.tree_util.tree_map(lambda m, v: m / (jnp.sqrt(v) + tau), mu_hat, nu_hat)
        return out, AdaptiveState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def check_server_optimizer(optimizer) -> None:
    """A name in ``SERVER_OPTIMIZERS`` or a callable ``hparams -> optax.GradientTransformation``
    (as ``LocalTraining``'s optimizer), else a ``ValueError`` naming the value."""
    if not callable(optimizer) and optimizer not in SERVER_OPTIMIZERS:
        raise ValueError(f"unknown server optimizer {optimizer!r}; choose from {SERVER_OPTIMIZERS} or pass a "
                         "callable hparams -> optax.GradientTransformation (fed the pseudo-gradient -Delta)")


def server_optimizer_name(optimizer) -> str:
    """A name for ``optimizer``: its own, or a callable's ``__name__``."""
    return optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "custom")


def server_hparams(optimizer) -> dict[str, float]:
    """Traced hyper-parameters of the server optimizer with their defaults (a callable gets
    ``server_lr``, 1.0, to read from ``hparams`` as it likes)."""
    check_server_optimizer(optimizer)
    return {"server_lr": 1.0} if callable(optimizer) else dict(_DEFAULTS[optimizer])


def make_server_optimizer(name, hparams: dict, bias_correction: bool = False) -> optax.GradientTransformation:
    """The server optimizer as optax, fed with the gradient ``-Delta``: a name in
    ``SERVER_OPTIMIZERS``, or a callable ``hparams -> optax.GradientTransformation``
    (e.g. ``lambda h: optax.sgd(h["server_lr"], nesterov=True, momentum=0.9)``)."""
    h = hparams
    if callable(name):
        return name(h)
    if name == "sgd":
        return optax.sgd(h["server_lr"])
    if name == "momentum":
        return optax.sgd(h["server_lr"], momentum=h["server_momentum"])
    b2 = h.get("server_b2", 0.0)
    return optax.chain(scale_by_adaptive_server(name, h["server_b1"], b2, h["server_tau"], bias_correction),
                       optax.scale(-h["server_lr"]))
