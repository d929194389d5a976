"""Who is online this round: node availability processes, drawn inside the jitted round.

An ``Availability`` is static structure (a frozen dataclass, hashed by identity so it can
sit in a static config); its per-round draw is pure JAX:

    state = avail.init(key, n)                                  # bool [N]
    available, state = avail.step(key_t, state, round_, hparams)  # bool [N] each round

Kinds:

``"always"``
    every node is available every round.
``"bernoulli"``
    independent per node and round: offline with probability ``hparams["dropout"]`` (a
    traced scalar, or an array ``[N]`` of per-node probabilities), available otherwise.
``"markov"``
    a two-state (on/off) Markov chain per node (the Gilbert-Elliott model of intermittent
    devices): an online node goes offline with probability ``1 / mean_on`` per round and
    an offline node comes back with probability ``1 / mean_off``, so on- and off-periods
    are geometric with means ``mean_on`` and ``mean_off`` rounds and the stationary
    fraction online is ``mean_on / (mean_on + mean_off)``.  ``init`` draws the state from
    that stationary distribution, so every round (the first included) is stationary.
    Convention: ``step`` first moves the chain, then reports the NEW state as this round's
    availability (``init``'s state is "before round 0").
``"trace"``
    a recorded availability log ``trace [R, N]`` (bool or 0/1); round ``t`` uses row
    ``t % R`` (wrap-around).  The trace is embedded in the program as a constant.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Availability", "KINDS"]

KINDS = ("always", "bernoulli", "markov", "trace")


@dataclasses.dataclass(frozen=True, eq=False)
class Availability:
    """Which nodes are online each round (see the module docstring for the kinds)."""

    kind: str = "always"
    mean_on: float = 10.0
    mean_off: float = 5.0
    trace: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown availability kind {self.kind!r}; choose one of {list(KINDS)}")
        if self.kind == "markov":
            for name in ("mean_on", "mean_off"):
                value = getattr(self, name)
                if not (np.isfinite(value) and value >= 1):
                    raise ValueError(f"{name} = {value} must be a finite number >= 1 (mean rounds per period; "
                                     f"the switching probability is 1/{name})")
        if self.kind == "trace":
            if self.trace is None:
                raise ValueError("kind='trace' needs trace, a bool/0-1 array [rounds, N]")
            arr = np.asarray(self.trace)
            if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
                raise ValueError(f"trace must be a non-empty 2-D array [rounds, N], got shape {arr.shape}")
            if arr.dtype != np.bool_:
                bad = ~np.isin(arr, (0, 1))
                if bad.any():
                    r, i = np.argwhere(bad)[0]
                    raise ValueError(f"trace[{r}, {i}] = {arr[r, i].item()!r} must be 0 or 1 (or bool)")
            arr = arr.astype(np.bool_)
            arr.setflags(write=False)
            object.__setattr__(self, "trace", arr)
        elif self.trace is not None:
            raise ValueError(f"trace is only used with kind='trace', not {self.kind!r}")

    # ------------------------------------------------------------------------------------
    def default_hparams(self) -> dict[str, float]:
        """Traced hyper-parameters and their defaults: ``{"dropout": 0.0}`` for bernoulli."""
        return {"dropout": 0.0} if self.kind == "bernoulli" else {}

    @property
    def p_on(self) -> float:
        """Markov: stationary probability of being online, ``mean_on / (mean_on + mean_off)``."""
        return self.mean_on / (self.mean_on + self.mean_off)

    def init(self, key: jax.Array, n: int) -> jax.Array:
        """Initial state, bool ``[N]`` (currently online)."""
        self._check_n(n)
        if self.kind == "markov":
            return jax.random.uniform(key, (n,)) < self.p_on
        return jnp.ones((n,), jnp.bool_)

    def step(self, key: jax.Array, state: jax.Array, round_, hparams: dict | None = None
             ) -> tuple[jax.Array, jax.Array]:
        """``(available bool [N], new state)`` for round ``round_`` (may be traced)."""
        n = state.shape[0]
        self._check_n(n)
        if self.kind == "always":
            return jnp.ones((n,), jnp.bool_), state
        if self.kind == "bernoulli":
            dropout = (hparams or {}).get("dropout", 0.0)
            available = jax.random.uniform(key, (n,)) >= jnp.asarray(dropout)
            return available, state
        if self.kind == "markov":
            u = jax.random.uniform(key, (n,))
            new = jnp.where(state, u >= 1.0 / self.mean_on, u < 1.0 / self.mean_off)
            return new, new
        # trace
        rows = self.trace.shape[0]
        row = jnp.take(jnp.asarray(self.trace), jnp.mod(jnp.asarray(round_, jnp.int32), rows), axis=0)
        return row, state

    def stationary_fraction(self, hparams: dict | None = None) -> float:
        """Expected fraction of nodes available in a round (long-run average)."""
        if self.kind == "always":
            return 1.0
        if self.kind == "bernoulli":
            dropout = (hparams or self.default_hparams())["dropout"]
            return float(1.0 - np.mean(np.asarray(dropout)))
        if self.kind == "markov":
            return float(self.p_on)
        return float(self.trace.mean())

    def _check_n(self, n: int) -> None:
        if self.kind == "trace" and n != self.trace.shape[1]:
            raise ValueError(f"the availability trace has {self.trace.shape[1]} nodes (columns) but the "
                             f"simulation has {n}")
