"""Shared fixtures: small hand-built federated problems and float64 mode."""
from __future__ import annotations

import os

os.environ.setdefault("EDGEJAX_COMPILATION_CACHE", "0")  # the CLI tests run in-process: keep the user cache out

import jax
import numpy as np
import pytest

from edgejax.data.federated import FederatedData, pad_nodes, pad_test


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats (for comparisons with NumPy references)."""
    with jax.enable_x64(True):
        yield


def make_data(node_sizes, *, dim=5, num_classes=3, seed=0, dtype=np.float64, local_test=2, name="toy"):
    """A random linear-classification problem split over nodes of the given sizes.

    Returns ``(FederatedData, [x_i], [y_i])`` where ``x_i, y_i`` are node i's training arrays.
    """
    rng = np.random.default_rng(seed)
    n = sum(node_sizes)
    x = rng.normal(size=(n + local_test * len(node_sizes) + 20, dim)).astype(dtype)
    y = rng.integers(0, num_classes, size=len(x)).astype(np.int32)
    bounds = np.cumsum([0, *node_sizes])
    train_parts = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(node_sizes))]
    test_parts = [n + local_test * i + np.arange(local_test) for i in range(len(node_sizes))]
    test = np.arange(n + local_test * len(node_sizes), len(x))
    data = FederatedData(train=pad_nodes(x, y, train_parts), local_test=pad_nodes(x, y, test_parts),
                         test=pad_test(x[test], y[test]), num_classes=num_classes, name=name)
    return data, [x[p] for p in train_parts], [y[p] for p in train_parts]
