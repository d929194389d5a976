"""The privacy accounting of a run: which epsilon ``Simulation.run`` reports every round, and what
``run.json`` says about it, for the run's DP aggregator (``GaussianDP``: user-level central DP;
``LocalDP``: local DP), with ``dp-accounting``'s RDP accountant."""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import numpy as np

from edgejax.algorithms.attacks import Attacked
from edgejax.algorithms.local_privacy import LocalDP, local_epsilon
from edgejax.algorithms.privacy import GaussianDP, epsilon


class Accounting(NamedTuple):
    """``epsilon(rounds)``: epsilon after each of those round counts; ``statement``: run.json's ``privacy``."""

    epsilon: Callable
    statement: dict


def _never_private(rounds):
    return np.full(np.shape(np.atleast_1d(rounds)), np.inf)


def privacy_accountant(sim, hparams: dict) -> Accounting | None:
    """The run's ``Accounting`` where its aggregator is ``GaussianDP`` or ``LocalDP`` (``None`` for any
    other, and, with a warning, for asynchronous training, whose participation follows the event
    clock, and for a DP aggregator inside ``Attacked``); a ``ValueError`` where a synchronous ``GaussianDP`` cohort is not a uniform sample of all
    N users (``edgejax.algorithms.privacy``)."""
    aggregator = getattr(sim.algorithm, "aggregator", None)
    if isinstance(aggregator, Attacked) and isinstance(aggregator.inner, (GaussianDP, LocalDP)):
        warnings.warn(f"{sim.algorithm.name}: {aggregator.inner.name} noises every aggregation, but no epsilon is "
                      "reported under an attack: ALIE's and IPM's rows are computed from the honest updates, which "
                      "the accounting does not cover", UserWarning, stacklevel=3)
        return None
    if isinstance(aggregator, LocalDP):
        return _local(sim, aggregator, float(hparams["ldp_noise_multiplier"]))
    if not isinstance(aggregator, GaussianDP):
        return None
    system = sim.system
    z = float(hparams["dp_noise_multiplier"])   # as the run holds it (the noise drawn uses this value)
    aggregator.check_noise(z, getattr(sim.algorithm, "buffer_size", sim.cohort_size))   # the rows aggregated
    if sim.algorithm.traits().asynchronous:
        warnings.warn(f"{sim.algorithm.name}: GaussianDP noises every flush, but no epsilon is reported: asynchronous "
                      "participation follows the event clock, not a uniform sample of the users", UserWarning,
                      stacklevel=3)
        return None
    reason = (f"selection={system.selection!r}" if system.selection != "uniform"
              else f"availability {system.availability.kind!r}" if system.availability.kind != "always" else None)
    if reason is not None:
        raise ValueError(f"GaussianDP's accounting assumes a uniformly sampled cohort of all N users; this run has "
                         f"{reason}. Use the uniform selection of always-online users, or another aggregator")
    q = sim.cohort_size / sim.num_nodes
    statement = {"accountant": "dp_accounting RDP", "delta": aggregator.delta,
                 "sampling": f"Poisson, q = K/N = {sim.cohort_size}/{sim.num_nodes} (the cohort is a fixed-size "
                             "uniform sample)"}
    if z == 0:
        return Accounting(_never_private, statement)
    epsilon(z, q, 1, aggregator.delta)   # before any compute: the accountant is there and takes these values
    return Accounting(lambda rounds: epsilon(z, q, rounds, aggregator.delta), statement)


def _local(sim, aggregator: LocalDP, z: float) -> Accounting | None:
    if sim.algorithm.traits().asynchronous:
        warnings.warn(f"{sim.algorithm.name}: LocalDP noises every node's update, but no epsilon is reported: "
                      "asynchronous participation follows the event clock", UserWarning, stacklevel=4)
        return None
    statement = {"accountant": "dp_accounting RDP", "delta": aggregator.delta,
                 "model": "local DP: a node that took part in every round so far, its Gaussian releases composed "
                          "with no amplification by sampling"}
    if z == 0:
        return Accounting(_never_private, statement)
    local_epsilon(z, 1, aggregator.delta)   # before any compute
    return Accounting(lambda rounds: local_epsilon(z, rounds, aggregator.delta), statement)
