"""Argument checks shared by the static configuration classes."""
from __future__ import annotations

from typing import Iterable


def check_choice(name: str, value, allowed: Iterable) -> None:
    """``ValueError`` naming ``value`` and the allowed choices unless ``value in allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose from {allowed}")
