"""Checks of a ``FederatedData`` before any compute: non-finite features, labels outside the
classes or skipping classes, an empty test split.

Only real samples are read (padding is skipped); the arrays are copied to the host once.
"""
from __future__ import annotations

import warnings

import numpy as np

from edgejax.data.host import HostNodeData


def _real(split, node: bool):
    """Host copies of the real samples of a split: ``x [S, ...]``, ``y [S]``, and each sample's node (or None)."""
    if isinstance(split, HostNodeData):   # host-resident (edgejax.data.host): the pool rows the nodes own
        x, y = split.source.real_samples()
        return x, y, None
    x, y = np.asarray(split.x), np.asarray(split.y)
    if not node:
        keep = np.asarray(split.mask) > 0
        return x[keep], y[keep], None
    keep = np.arange(x.shape[1])[None, :] < np.asarray(split.count)[:, None]
    return x[keep], y[keep], np.nonzero(keep)[0]


def check_data(data) -> None:
    """``ValueError`` for NaN/inf features, labels outside ``[0, num_classes)`` (float labels are
    regression targets: they must be finite) or an empty global test split, naming the split, node and sample; a ``UserWarning`` when classes
    below ``num_classes`` have no training sample (a stray label makes a larger problem)."""
    if float(np.asarray(data.test.mask).sum()) == 0:
        raise ValueError(f"the test split of dataset {data.name!r} is empty; evaluation needs test samples")
    classes = data.num_classes
    for label, split, node in (("training", data.train, True), ("local test", data.local_test, True),
                               ("test", data.test, False)):
        if split is None:
            continue
        x, y, owner = _real(split, node)
        where = (lambda i: "") if owner is None else (lambda i: f" of node {owner[i]}")
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), int(np.prod(x.shape[1:])))).all(axis=1))
        if bad.size:
            raise ValueError(f"{label} features{where(bad[0])} are not finite (NaN or inf in {bad.size} samples) "
                             f"in dataset {data.name!r}")
        if np.issubdtype(y.dtype, np.floating):   # regression targets: finite, no classes
            bad = np.flatnonzero(~np.isfinite(y.reshape(len(y), int(np.prod(y.shape[1:])))).all(axis=1))
            if bad.size:
                raise ValueError(f"{label} targets{where(bad[0])} are not finite ({bad.size} samples) in dataset "
                                 f"{data.name!r}")
            continue
        bad = np.flatnonzero((y < 0) | (y >= classes))
        if bad.size:
            raise ValueError(f"{label} label {y[bad[0]]}{where(bad[0])} is outside [0, {classes}) "
                             f"({bad.size} samples) in dataset {data.name!r}")
        if label == "training":
            _warn_missing_classes(y, classes, data.name)


def _warn_missing_classes(y: np.ndarray, classes: int, name: str) -> None:
    missing = np.flatnonzero(np.bincount(y, minlength=classes) == 0)
    if missing.size:
        shown = ", ".join(str(c) for c in missing[:10]) + (" ..." if missing.size > 10 else "")
        warnings.warn(f"dataset {name!r} has {classes} classes but no training sample of {missing.size} of them "
                      f"({shown}); a stray label (max label {int(y.max())}) may have made the problem larger",
                      UserWarning, stacklevel=6)  # the caller of Simulation(...)
