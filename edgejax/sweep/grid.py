"""Sweep points from a grid (cartesian product) or from zipped lists."""
from __future__ import annotations

import itertools

import numpy as np


def _values(name: str, values) -> list:
    values = np.asarray(values).tolist() if isinstance(values, np.ndarray) else values
    if isinstance(values, (list, tuple)):
        if not len(values):
            raise ValueError(f"sweep values for {name!r} are empty")
        return list(values)
    return [values]


def grid(values: dict) -> list[dict]:
    """Every combination of ``values`` (name -> list; a scalar is a list of one), the first name
    varying slowest: ``grid({"a": [1, 2], "b": [3, 4]})`` gives a=1,b=3; a=1,b=4; a=2,b=3; a=2,b=4."""
    names = list(values)
    return [dict(zip(names, combo)) for combo in itertools.product(*(_values(n, values[n]) for n in names))]


def zip_points(values: dict, length: int | None = None) -> list[dict]:
    """Point ``p`` takes entry ``p`` of every list; scalars apply to every point.

    All lists must have one length (``length`` when given); lists of other lengths are a
    ``ValueError`` naming them.
    """
    lists = {k: _values(k, v) for k, v in values.items()}
    sized = {k: len(v) for k, v in lists.items() if np.ndim(values[k]) >= 1}
    if length is None and len(set(sized.values())) > 1:
        raise ValueError(f"sweep lists have different lengths ({', '.join(f'{k}: {n}' for k, n in sized.items())})")
    length = max(sized.values(), default=1) if length is None else length
    for name, size in sized.items():
        if size != length:
            raise ValueError(f"sweep list {name!r} has {size} values but the sweep has {length} points")
    return [{k: (v[p] if k in sized else v[0]) for k, v in lists.items()} for p in range(length)]
