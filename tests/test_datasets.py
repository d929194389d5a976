"""Tests for edgejax.data.datasets: the Dataset container, generators and file loaders."""

from __future__ import annotations

import gzip
import random
import socket
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from edgejax.data import datasets as ds
from edgejax.data.datasets import (
    DATASETS,
    Dataset,
    default_data_dir,
    from_arrays,
    load_dataset,
    load_digits,
    load_fsdd,
    load_mnist,
    load_mnist1d,
    load_npz,
    load_synthetic,
    read_idx,
)

MNIST_T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _tiny(**overrides) -> dict:
    fields = dict(
        name="tiny",
        x_train=np.zeros((4, 3), np.float32),
        y_train=np.array([0, 1, 2, 1], np.int32),
        x_test=np.zeros((2, 3), np.float32),
        y_test=np.array([0, 2], np.int32),
        num_classes=3,
    )
    fields.update(overrides)
    return fields


# ------------------------------------------------------------------ Dataset


def test_dataset_properties():
    d = Dataset(**_tiny(groups_train=np.array([0, 0, 1, 1], np.int32)))
    assert (d.feature_shape, d.num_train, d.num_test) == ((3,), 4, 2)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (dict(y_train=np.array([0, 1, 7, 1], np.int32)), "7"),
        (dict(y_test=np.array([-1, 0], np.int32)), "-1"),
        (dict(x_train=np.zeros((4, 3), np.float64)), "float64"),
        (dict(y_train=np.array([0, 1, 2, 1], np.int64)), "int64"),
        (dict(y_train=np.array([0, 1, 2], np.int32)), "(3,)"),
        (dict(x_test=np.zeros((2, 4), np.float32)), "(4,)"),
        (dict(groups_train=np.array([0, 1], np.int32)), "groups_train"),
        (dict(num_classes=0), "num_classes"),
        (dict(x_train=np.zeros((0, 3), np.float32), y_train=np.zeros(0, np.int32)), "empty"),
    ],
)
def test_dataset_rejects_bad_fields(overrides, needle):
    with pytest.raises(ValueError) as err:
        Dataset(**_tiny(**overrides))
    assert needle in str(err.value)


# ------------------------------------------------------------------ Synthetic


def _device_counts(d: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return np.bincount(d.groups_train), np.bincount(d.groups_test, minlength=d.groups_train.max() + 1)


def test_synthetic_devices_sizes_and_split():
    d = load_synthetic(1.0, 1.0, seed=3)
    assert d.feature_shape == (60,) and d.num_classes == 10
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    n_train, n_test = _device_counts(d)
    n = n_train + n_test
    assert len(n) == 30
    assert n.min() >= 50
    np.testing.assert_array_equal(n_train, (0.9 * n).astype(int))
    assert d.y_train.max() < 10 and d.y_train.min() >= 0


def test_synthetic_feature_covariance_is_power_law():
    """Within a device, x - v_k ~ N(0, Sigma) with Sigma_jj = (j + 1)^-1.2."""
    d = load_synthetic(1.0, 1.0, num_devices=100, seed=0)
    x = np.concatenate([d.x_train, d.x_test]).astype(np.float64)
    g = np.concatenate([d.groups_train, d.groups_test])
    centred = x - np.stack([x[g == k].mean(axis=0) for k in range(100)])[g]
    var = (centred**2).sum(axis=0) / (len(x) - 100)
    sigma = np.arange(1, 61) ** -1.2
    assert len(x) > 5000
    np.testing.assert_allclose(var / sigma, 1.0, atol=0.1)
    off_diag = np.corrcoef(centred[:, :2].T)[0, 1]
    assert abs(off_diag) < 0.05


def test_synthetic_deterministic_and_beta_matters():
    a, b = load_synthetic(0.5, 0.5, seed=7), load_synthetic(0.5, 0.5, seed=7)
    for field in ("x_train", "y_train", "x_test", "y_test", "groups_train"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    other_seed = load_synthetic(0.5, 0.5, seed=8)
    assert not np.array_equal(a.y_train[:50], other_seed.y_train[:50])
    other_beta = load_synthetic(0.5, 2.0, seed=7)
    assert np.mean(a.y_train == other_beta.y_train) < 0.9
    assert not np.allclose(a.x_train, other_beta.x_train)


def test_synthetic_labels_do_not_depend_on_alpha():
    """u_k shifts every logit by u_k (sum_j x_j + 1), so argmax (the label) ignores alpha."""
    a, b = load_synthetic(0.5, 0.5, seed=7), load_synthetic(3.0, 0.5, seed=7)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert np.mean(a.y_train == b.y_train) > 0.999


def _label_skew(d: Dataset) -> float:
    """Mean total-variation distance between each device's label histogram and the global one."""
    glob = np.bincount(d.y_train, minlength=d.num_classes) / d.num_train
    tv = []
    for k in np.unique(d.groups_train):
        h = np.bincount(d.y_train[d.groups_train == k], minlength=d.num_classes)
        tv.append(0.5 * np.abs(h / h.sum() - glob).sum())
    return float(np.mean(tv))


def test_synthetic_iid_is_homogeneous():
    iid = load_dataset("synthetic_iid", seed=1)
    het = load_dataset("synthetic", alpha=1.0, beta=1.0, seed=1)
    assert iid.name == "synthetic_iid" and len(np.unique(iid.groups_train)) == 30
    assert iid.feature_shape == (60,)
    assert _label_skew(iid) < 0.5 * _label_skew(het)
    # every IID device draws x ~ N(0, Sigma): device means near 0; non-IID means v_k spread out
    dev_means = np.stack([iid.x_train[iid.groups_train == k].mean(0) for k in range(30)])
    het_means = np.stack([het.x_train[het.groups_train == k].mean(0) for k in range(30)])
    assert np.abs(dev_means).mean() < 0.2 < np.abs(het_means).mean()


def test_synthetic_rejects_bad_args():
    with pytest.raises(ValueError, match="alpha=1"):
        load_synthetic(1.0, 0.0, iid=True)
    with pytest.raises(ValueError, match="beta=-1"):
        load_synthetic(0.0, -1.0)
    with pytest.raises(ValueError, match="train_fraction=0"):
        load_synthetic(0.0, 0.0, train_fraction=0.0)


# ------------------------------------------------------------------ digits, mnist1d


def test_digits():
    d = load_digits(test_fraction=0.2, seed=0)
    assert d.x_train.shape[1:] == (8, 8, 1) and d.x_train.dtype == np.float32
    assert d.num_train + d.num_test == 1797
    assert abs(d.num_test - 0.2 * 1797) <= 10
    x = np.concatenate([d.x_train, d.x_test])
    assert x.min() == 0.0 and x.max() == 1.0
    assert d.num_classes == 10 and set(np.unique(d.y_test)) == set(range(10))
    # stratified: every class is ~20% test
    n_test = np.bincount(d.y_test, minlength=10)
    np.testing.assert_allclose(n_test / (n_test + np.bincount(d.y_train, minlength=10)), 0.2, atol=0.01)
    again = load_digits(test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(d.x_test, again.x_test)
    assert not np.array_equal(d.y_test, load_digits(test_fraction=0.2, seed=1).y_test)


def test_mnist1d_generates_offline_and_keeps_global_rng(monkeypatch, tmp_path):
    pytest.importorskip("mnist1d", reason="mnist1d is not installed (pip install 'edgejax[datasets]')")
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(tmp_path)
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()

    d = load_mnist1d(num_samples=500, seed=5)

    assert d.x_train.shape == (400, 40, 1) and d.x_test.shape == (100, 40, 1)
    assert d.x_train.dtype == np.float32 and d.num_classes == 10
    assert set(np.unique(d.y_train)) == set(range(10))
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    assert random.getstate() == py_state
    assert list(tmp_path.iterdir()) == []  # no cached pickle written
    np.testing.assert_array_equal(d.x_train, load_mnist1d(num_samples=500, seed=5).x_train)


def test_mnist1d_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ImportError, match="pip install mnist1d"):
        load_mnist1d()


# ------------------------------------------------------------------ IDX, MNIST


def _idx_bytes(a: np.ndarray, type_byte: int) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_byte, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    ints = np.array([[1, -2, 70000], [3, 4, -5]], np.int32)
    for a, type_byte, fname in ((images, 0x08, "img"), (ints, 0x0C, "int")):
        raw = _idx_bytes(a, type_byte)
        path = tmp_path / (fname + (".gz" if compress else ""))
        path.write_bytes(gzip.compress(raw) if compress else raw)
        out = read_idx(path)
        assert out.shape == a.shape and out.dtype == a.dtype
        np.testing.assert_array_equal(out, a)
        out[0] = 0  # writable


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="01020801"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(_idx_bytes(np.zeros((3, 2), np.uint8), 0x08)[:-1])
    with pytest.raises(ValueError, match="size mismatch"):
        read_idx(short)


def _mnist_paths():
    root = default_data_dir()
    images, labels = root / ds._MNIST_IMAGES, root / ds._MNIST_LABELS
    if not (images.is_file() and labels.is_file()):
        pytest.skip(f"MNIST t10k files not found at {root} (set EDGEJAX_DATA to their folder)")
    return images, labels


def test_mnist_t10k():
    images_path, labels_path = _mnist_paths()
    d = load_mnist()
    assert (d.num_train, d.num_test) == (8000, 2000)
    assert d.feature_shape == (28, 28, 1) and d.x_train.dtype == np.float32
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    counts = np.bincount(np.concatenate([d.y_train, d.y_test]), minlength=10)
    assert counts.tolist() == MNIST_T10K_COUNTS
    labels, images = read_idx(labels_path), read_idx(images_path)
    np.testing.assert_array_equal(d.y_test, labels[-2000:])
    np.testing.assert_array_equal(d.y_train, labels[:8000])
    np.testing.assert_allclose(d.x_test[..., 0], images[-2000:] / 255.0, atol=1e-7)
    shuffled = load_mnist(seed=0)  # an int seed shuffles before the cut
    assert not np.array_equal(shuffled.y_test, d.y_test)
    counts = np.bincount(np.concatenate([shuffled.y_train, shuffled.y_test]), minlength=10)
    assert counts.tolist() == MNIST_T10K_COUNTS


def test_mnist_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope-images.gz"
    with pytest.raises(FileNotFoundError, match="nope-images.gz") as err:
        load_mnist(missing, tmp_path / "nope-labels.gz")
    assert "EDGEJAX_DATA" in str(err.value)


def test_fsdd_speakers_are_natural_nodes_and_the_official_split_is_kept():
    path = default_data_dir() / ds._FSDD
    if not path.is_file():
        pytest.skip(f"FSDD file not found at {path} (set EDGEJAX_DATA to its folder)")
    d = load_fsdd()
    assert (d.num_train, d.num_test) == (2700, 300) and d.feature_shape == (61, 32) and d.num_classes == 10
    assert d.x_train.dtype == np.float32 and np.all(np.isfinite(d.x_train))
    x_all = np.concatenate([d.x_train, d.x_test])
    assert abs(float(x_all.mean())) < 1e-4 and float(x_all.std()) == pytest.approx(1.0, rel=1e-4)
    # 6 speakers x 10 digits x 50 takes; takes 0-4 of every speaker and digit are the test set
    for groups, y, per_cell in ((d.groups_train, d.y_train, 45), (d.groups_test, d.y_test, 5)):
        cells = np.zeros((6, 10), int)
        np.add.at(cells, (groups, y), 1)
        assert np.all(cells == per_cell)
    import edgejax as ej
    data, _ = ej.federate(d, None, ej.data.Natural(), seed=0)
    assert data.num_nodes == 6 and np.asarray(data.train.count).tolist() == [450] * 6
    assert np.asarray(data.local_test.count).tolist() == [50] * 6          # each speaker's test takes
    with pytest.raises(ValueError, match="bands=200 must be at most frame // 2 = 128"):
        load_fsdd(bands=200)


def test_fsdd_reads_any_archive_with_its_keys(tmp_path):
    rate, rng = 1024, np.random.default_rng(0)
    lengths = np.array([700, 1500, 900, 1200])
    np.savez(tmp_path / "f.npz", audio=rng.integers(-3000, 3000, lengths.sum()).astype(np.int16),
             offsets=np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths=lengths,
             labels=np.array([3, 1, 3, 1], np.int8), speakers=np.array(["zoe", "al", "al", "zoe"]),
             index=np.array([0, 7, 9, 2], np.int16), sample_rate=np.int64(rate))
    d = load_fsdd(tmp_path / "f.npz", frame=128, hop=64, bands=8, test_takes=1)
    assert d.feature_shape == ((rate - 128) // 64 + 1, 8)
    np.testing.assert_array_equal(d.y_train, [1, 3, 1])
    np.testing.assert_array_equal(d.groups_train, [0, 0, 1])      # "al" < "zoe"
    np.testing.assert_array_equal(d.groups_test, [1])
    np.savez(tmp_path / "g.npz", audio=np.zeros(3, np.int16))
    with pytest.raises(ValueError, match=r"lacks the keys \['index', 'labels'"):
        load_fsdd(tmp_path / "g.npz")
    with pytest.raises(FileNotFoundError, match="EDGEJAX_DATA"):
        load_fsdd(tmp_path / "none.npz")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEJAX_DATA", str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"
    monkeypatch.delenv("EDGEJAX_DATA")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert default_data_dir().resolve() == (tmp_path / "shared" / "data").resolve()
    (tmp_path / "repo" / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "repo" / "sub")  # no ../shared/data here: fall back to the package location
    assert default_data_dir() == Path(ds.__file__).resolve().parents[3] / "shared" / "data"


# ------------------------------------------------------------------ npz, arrays


def test_npz_round_trip_split_keys(tmp_path):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.normal(size=(20, 5)), y_train=rng.integers(0, 3, 20),
        x_test=rng.normal(size=(6, 5)), y_test=rng.integers(0, 3, 6),
        groups_train=np.repeat(np.arange(4), 5),
    )
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    d = load_npz(path, num_classes=3)
    assert d.name == "mine" and d.num_classes == 3
    np.testing.assert_allclose(d.x_train, arrays["x_train"].astype(np.float32))
    np.testing.assert_array_equal(d.y_test, arrays["y_test"])
    np.testing.assert_array_equal(d.groups_train, arrays["groups_train"])
    assert d.groups_test is None


def test_npz_round_trip_x_y(tmp_path):
    x = np.arange(100, dtype=np.float64).reshape(50, 2)
    y = np.arange(50) % 5
    path = tmp_path / "xy.npz"
    np.savez(path, x=x, y=y, groups=np.arange(50) // 10)
    d = load_dataset("npz", path=path, test_fraction=0.2, seed=0)
    assert (d.num_train, d.num_test, d.num_classes) == (40, 10, 5)
    # rows stay paired with their labels and groups after the split
    for xs, ys, gs in ((d.x_train, d.y_train, d.groups_train), (d.x_test, d.y_test, d.groups_test)):
        rows = (xs[:, 0] / 2).astype(int)
        np.testing.assert_array_equal(ys, y[rows])
        np.testing.assert_array_equal(gs, rows // 10)
    assert sorted(np.concatenate([d.x_train[:, 0], d.x_test[:, 0]])) == sorted(x[:, 0])


def test_npz_rejects_object_arrays_and_missing_keys(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([[1.0], [2.0]]), y=np.array([0, "a"], dtype=object))
    with pytest.raises(ValueError, match="'y'.*allow_pickle=False"):
        load_npz(path)
    np.savez(path, features=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(ValueError, match="features"):
        load_npz(path)
    d = load_npz(path, x_key="features", y_key="labels", test_fraction=0.0)
    np.testing.assert_array_equal(d.y_train, [0, 0, 0])


def test_from_arrays_checks_labels():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="0.5"):
        from_arrays(x, np.array([0, 0.5, 1, 1]))
    with pytest.raises(ValueError, match="label -1"):
        from_arrays(x, np.array([0, -1, 1, 1]), test_fraction=0.0, num_classes=2)
    with pytest.raises(ValueError, match="len\\(y\\) = 3"):
        from_arrays(x, np.array([0, 1, 1]))
    d = from_arrays(x, np.array([0.0, 1.0, 2.0, 1.0]), x_test=x[:1], y_test=[2])
    assert d.num_classes == 3 and d.y_train.dtype == np.int32


# ------------------------------------------------------------------ registry


def test_registry():
    assert DATASETS == ("synthetic", "synthetic_iid", "digits", "mnist1d", "mnist", "npz")
    assert load_dataset("synthetic", alpha=0.5, beta=0.5, num_devices=3).name == "synthetic(0.5,0.5)"
    assert load_dataset("digits").num_classes == 10
    with pytest.raises(ValueError, match="'cifar99'.*synthetic, synthetic_iid, digits"):
        load_dataset("cifar99")
    with pytest.raises(ValueError, match="path="):
        load_dataset("npz")
