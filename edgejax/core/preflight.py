"""Checks a ``Simulation`` runs when it is built, before anything is compiled."""
from __future__ import annotations

from edgejax.core.memory import check_memory
from edgejax.data.checks import check_data


def preflight(sim) -> None:
    """The data (``data.checks.check_data``) and the memory estimate (``core.memory.check_memory``)."""
    check_data(sim.data)
    check_memory(sim)
