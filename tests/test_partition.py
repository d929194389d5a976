"""Tests for edgejax.data.partition: invariants, skew statistics and input validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgejax.data.partition import (
    IID,
    Dirichlet,
    Natural,
    QuantitySkew,
    Shards,
    format_partition_summary,
    parse_partition,
    partition,
    partition_summary,
)

NUM_CLASSES = 10
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(NUM_CLASSES), 500))  # 5,000 balanced
SCHEMES = [IID(), Dirichlet(0.5), Dirichlet(0.05), Shards(2), Shards(3), QuantitySkew(1.0)]


def _label_entropy(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean over nodes of the entropy (nats) of the node's label histogram."""
    ent = []
    for p in parts:
        q = np.bincount(labels[p], minlength=NUM_CLASSES) / len(p)
        q = q[q > 0]
        ent.append(-(q * np.log(q)).sum())
    return float(np.mean(ent))


def _sizes(parts: list[np.ndarray]) -> np.ndarray:
    return np.array([len(p) for p in parts])


@pytest.mark.parametrize("scheme", SCHEMES, ids=repr)
def test_every_sample_exactly_once(scheme):
    parts = partition(LABELS, scheme, 20, seed=1)
    assert len(parts) == 20
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))
    assert _sizes(parts).min() >= getattr(scheme, "min_size", 1)


@pytest.mark.parametrize("scheme", SCHEMES, ids=repr)
def test_deterministic_in_seed(scheme):
    a, b, c = (partition(LABELS, scheme, 20, seed=s) for s in (3, 3, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_sizes_and_labels():
    parts = partition(LABELS, IID(), 7)
    assert _sizes(parts).max() - _sizes(parts).min() <= 1
    assert _label_entropy(parts, LABELS) > 0.98 * np.log(NUM_CLASSES)


def test_dirichlet_skew_grows_as_alpha_shrinks():
    skewed = _label_entropy(partition(LABELS, Dirichlet(0.05), 20, seed=0), LABELS)
    flat = _label_entropy(partition(LABELS, Dirichlet(100.0), 20, seed=0), LABELS)
    assert flat > 0.95 * np.log(NUM_CLASSES)
    assert skewed < 0.5 * flat


def test_dirichlet_balance_mask_caps_node_size():
    """A node stops receiving samples once it holds n/N; it can overshoot by at most one class."""
    n, nodes, class_size = len(LABELS), 10, 500
    for seed in range(5):
        parts = partition(LABELS, Dirichlet(0.1), nodes, seed=seed)
        assert _sizes(parts).max() < n / nodes + class_size


def test_shards_classes_per_node():
    for per_node in (1, 2, 3):
        parts = partition(LABELS, Shards(per_node), 50, seed=0)
        classes = np.array([len(np.unique(LABELS[p])) for p in parts])
        # shards hold 5000 / (50 * per_node) <= 100 < 500 samples: each straddles at most one boundary
        assert classes.max() <= 2 * per_node
        assert classes.mean() <= per_node + 0.5
        sizes = _sizes(parts)
        assert sizes.max() - sizes.min() <= per_node


def test_quantity_skew_sizes_vary_more_with_small_alpha():
    def cv(alpha: float) -> float:
        s = _sizes(partition(LABELS, QuantitySkew(alpha), 20, seed=0))
        return float(s.std() / s.mean())

    assert cv(1.0) > 3 * cv(100.0)
    parts = partition(LABELS, QuantitySkew(1.0), 20, seed=0)
    assert _label_entropy(parts, LABELS) > 0.9 * np.log(NUM_CLASSES)  # labels stay i.i.d.


def test_natural_follows_groups():
    groups = np.array([7, 3, 3, 9, 7, 7, 3, 9])
    labels = np.zeros(8, np.int64)
    parts = partition(labels, Natural(), 3, groups=groups)
    for part, gid in zip(parts, (3, 7, 9)):
        np.testing.assert_array_equal(part, np.flatnonzero(groups == gid))


def test_partition_accepts_spec_strings():
    a = partition(LABELS, "dirichlet:0.5", 10, seed=5)
    b = partition(LABELS, Dirichlet(0.5), 10, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_partitioners_are_hashable_and_frozen():
    assert len({Dirichlet(0.5), Dirichlet(0.5), Shards(2), IID()}) == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        Dirichlet(0.5).alpha = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("make", [Dirichlet, QuantitySkew])
@pytest.mark.parametrize("alpha, needle", [(0, "alpha=0"), (-1, "alpha=-1"), (float("nan"), "alpha=nan")])
def test_bad_alpha(make, alpha, needle):
    with pytest.raises(ValueError, match=needle):
        make(alpha)


def test_more_nodes_than_samples():
    with pytest.raises(ValueError, match="num_nodes=11 but only 10 samples"):
        partition(np.arange(10), IID(), 11)


@pytest.mark.parametrize("num_nodes", [0, -3, 2.5, True])
def test_bad_num_nodes(num_nodes):
    with pytest.raises(ValueError, match=f"num_nodes={num_nodes!r}"):
        partition(LABELS, IID(), num_nodes)


def test_infeasible_min_size():
    with pytest.raises(ValueError, match="min_size=100.*num_nodes=60"):
        partition(LABELS, Dirichlet(0.5, min_size=100), 60)
    with pytest.raises(ValueError, match="min_size=100.*num_nodes=60"):
        partition(LABELS, QuantitySkew(0.5, min_size=100), 60)
    # enough samples in total, but alpha this small almost never gives 50 nodes >= 90 each
    with pytest.raises(ValueError, match="max_retries=5.*alpha=0.01"):
        partition(LABELS, Dirichlet(0.01, min_size=90, max_retries=5), 50)


def test_shards_need_enough_samples():
    with pytest.raises(ValueError, match="needs 20 shards but only 15 samples"):
        partition(np.arange(15) % 3, Shards(2), 10)


def test_natural_needs_matching_groups():
    with pytest.raises(ValueError, match="groups=None"):
        partition(LABELS, Natural(), 5)
    groups = np.arange(len(LABELS)) % 4
    with pytest.raises(ValueError, match="num_nodes=5 but groups has 4 distinct ids"):
        partition(LABELS, Natural(), 5, groups=groups)
    with pytest.raises(ValueError, match="groups has shape"):
        partition(LABELS, Natural(), 4, groups=groups[:-1])


def test_scheme_type_checked():
    with pytest.raises(TypeError, match="dict"):
        partition(LABELS, {"kind": "iid"}, 4)


@dataclasses.dataclass(frozen=True)
class _Broken:
    parts: tuple

    def split(self, labels, num_nodes, rng, groups=None):
        return [np.array(p) for p in self.parts]


def test_result_is_checked():
    labels = np.zeros(6)
    with pytest.raises(ValueError, match="node 1 got no samples"):
        partition(labels, _Broken(((0, 1, 2), (), (3, 4, 5))), 3)
    with pytest.raises(ValueError, match="sample 2 is assigned 2 times \\(nodes \\[0, 1\\]\\)"):
        partition(labels, _Broken(((0, 1, 2), (2, 3), (4, 5))), 3)
    with pytest.raises(ValueError, match="returned 2 parts"):
        partition(labels, _Broken(((0, 1, 2), (3, 4, 5))), 3)


# ------------------------------------------------------------------ parsing and summary


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("iid", IID()),
        (" Dirichlet:0.5 ", Dirichlet(0.5)),
        ("shards:3", Shards(3)),
        ("quantity:1.0", QuantitySkew(1.0)),
        ("natural", Natural()),
    ],
)
def test_parse_partition(spec, expected):
    assert parse_partition(spec) == expected


@pytest.mark.parametrize(
    "spec", ["", "dirichlet", "dirichlet:abc", "shards:1.5", "iid:2", "zipf:1", "dirichlet:0"]
)
def test_parse_partition_rejects(spec):
    with pytest.raises(ValueError, match="bad partition spec " + repr(spec)):
        parse_partition(spec)


def test_partition_summary():
    parts = partition(LABELS, Shards(1), 10, seed=0)
    df = partition_summary(parts, LABELS, NUM_CLASSES)
    assert list(df.columns[:4]) == ["node", "samples", "classes", "dominant_class_share"]
    assert len(df) == 10 and df["samples"].sum() == len(LABELS)
    counts = df[[f"class_{c}" for c in range(NUM_CLASSES)]].to_numpy()
    np.testing.assert_array_equal(counts.sum(axis=0), np.bincount(LABELS))
    np.testing.assert_array_equal(counts[3], np.bincount(LABELS[parts[3]], minlength=NUM_CLASSES))
    # one shard of 500 sorted labels per node, 500 samples per class: one class each
    assert (df["classes"] == 1).all() and (df["dominant_class_share"] == 1.0).all()
    with pytest.raises(ValueError, match="label 9"):
        partition_summary(parts, LABELS, 9)


def test_format_partition_summary():
    parts = partition(LABELS, QuantitySkew(1.0), 20, seed=0)
    df = partition_summary(parts, LABELS, NUM_CLASSES)
    text = format_partition_summary(df, max_rows=5)
    s = df["samples"]
    assert "20 nodes, 5000 samples, 10 classes" in text
    assert f"min {s.min()}, median {s.median():g}, max {s.max()}" in text
    assert "15 more nodes" in text
    assert len(text.splitlines()) == 3 + 1 + 5 + 1  # three summary lines, header, five rows, tail
