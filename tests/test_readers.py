"""Readers by path on small files written here in the real formats: CIFAR binary batches, LEAF JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgejax as ej
from edgejax.data import text


def _cifar_records(rng, n, label_bytes, classes):
    labels = np.stack([rng.integers(0, c, n) for c in classes], axis=1).astype(np.uint8)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    planes = images.transpose(0, 3, 1, 2).reshape(n, 3072)        # R plane row by row, then G, then B
    return np.concatenate([labels[:, :label_bytes], planes], axis=1).tobytes(), labels, images


def test_cifar10_binary_batches(tmp_path):
    rng = np.random.default_rng(0)
    labels, images = [], []
    for i in (2, 1):                                                # name order, not creation order
        raw, y, x = _cifar_records(rng, 3, 1, [10])
        (tmp_path / f"data_batch_{i}.bin").write_bytes(raw)
        labels.insert(0, y[:, 0]), images.insert(0, x)
    raw, y_test, x_test = _cifar_records(rng, 2, 1, [10])
    (tmp_path / "test_batch.bin").write_bytes(raw)
    data = ej.data.load_cifar10(tmp_path)
    assert data.feature_shape == (32, 32, 3) and data.num_classes == 10 and data.x_train.dtype == np.float32
    np.testing.assert_array_equal(data.y_train, np.concatenate(labels))
    np.testing.assert_array_equal(np.round(data.x_train * 255).astype(np.uint8), np.concatenate(images))
    np.testing.assert_array_equal(np.round(data.x_test * 255).astype(np.uint8), x_test)
    assert data.x_train[0, 0, 0, 0] * 255 == pytest.approx(images[0][0, 0, 0, 0])   # red of the top-left pixel
    (tmp_path / "test_batch.bin").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="whole number of 3073-byte"):
        ej.data.load_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="CIFAR folder not found"):
        ej.data.load_cifar10(tmp_path / "absent")


@pytest.mark.parametrize("label, column, classes", [("fine", 1, 100), ("coarse", 0, 20)])
def test_cifar100_binary(tmp_path, label, column, classes):
    rng = np.random.default_rng(1)
    raw, y, x = _cifar_records(rng, 4, 2, [20, 100])
    (tmp_path / "train.bin").write_bytes(raw)
    raw_test, y_test, _ = _cifar_records(rng, 2, 2, [20, 100])
    (tmp_path / "test.bin").write_bytes(raw_test)
    data = ej.data.load_cifar100(tmp_path, label=label)
    assert data.num_classes == classes
    np.testing.assert_array_equal(data.y_train, y[:, column])
    np.testing.assert_array_equal(data.y_test, y_test[:, column])
    np.testing.assert_array_equal(np.round(data.x_train * 255).astype(np.uint8), x)


def _leaf_file(path, users):
    blob = {"users": list(users), "num_samples": [len(d["y"]) for d in users.values()], "user_data": users}
    path.write_text(json.dumps(blob))


def test_leaf_femnist_json_keeps_writers_as_groups(tmp_path):
    rng = np.random.default_rng(2)

    def writer(n):
        return {"x": rng.random((n, 784)).round(3).tolist(), "y": rng.integers(0, 62, n).tolist()}

    writers = {"f0001_14": writer(5), "f0002_33": writer(3), "f0003_02": writer(4)}
    (tmp_path / "femnist" / "train").mkdir(parents=True)
    (tmp_path / "femnist" / "test").mkdir()
    _leaf_file(tmp_path / "femnist" / "train" / "all_data_0.json", {k: writers[k] for k in ("f0002_33", "f0001_14")})
    _leaf_file(tmp_path / "femnist" / "train" / "all_data_1.json", {"f0003_02": writers["f0003_02"]})
    tests = {"f0001_14": writer(2), "f0003_02": writer(1), "f9999_00": writer(1)}    # f9999 never trains: dropped
    _leaf_file(tmp_path / "femnist" / "test" / "all_data_0.json", tests)
    data = ej.data.load_leaf(tmp_path / "femnist" / "train", tmp_path / "femnist" / "test")
    assert data.name == "femnist" and data.num_classes == 62 and data.feature_shape == (28, 28, 1)
    np.testing.assert_array_equal(np.bincount(data.groups_train), [5, 3, 4])          # writers in sorted id order
    np.testing.assert_array_equal(np.bincount(data.groups_test, minlength=3), [2, 0, 1])
    np.testing.assert_allclose(data.x_train[data.groups_train == 1].reshape(3, 784), writers["f0002_33"]["x"], rtol=1e-6)
    np.testing.assert_array_equal(data.y_test, tests["f0001_14"]["y"] + tests["f0003_02"]["y"])
    fed, _ = ej.federate(data, None, ej.data.Natural())
    assert fed.num_nodes == 3
    np.testing.assert_array_equal(np.asarray(fed.local_test.count), [2, 0, 1])


def test_leaf_json_split_by_sample_and_shakespeare_strings(tmp_path):
    users = {"A": {"x": ["a" * 80, "b" * 80, "c" * 80, "d" * 80, "e" * 80], "y": ["x", "y", "z", "a", "b"]},
             "B": {"x": ["Q" * 80, "R" * 80], "y": ["!", "?"]},
             "C": {"x": ["K" * 80], "y": ["k"]}}                                       # < 2 samples: dropped
    _leaf_file(tmp_path / "shakespeare_all.json", users)
    data = ej.data.load_leaf(tmp_path / "shakespeare_all.json", train_fraction=0.8, seed=0)
    assert data.num_classes == 80 and data.feature_shape == (80,)
    np.testing.assert_array_equal(np.bincount(data.groups_train), [4, 1])              # max(1, int(0.8 n)); n = 2 -> 1
    np.testing.assert_array_equal(np.bincount(data.groups_test), [1, 1])
    pairs = {text.decode(x[:1]) + text.LEAF_VOCAB[y] for x, y in zip(data.x_train.astype(int), data.y_train)}
    assert pairs <= {"ax", "by", "cz", "da", "eb", "Q!", "R?"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"users": ["u"], "num_samples": [3], "user_data": {"u": {"x": [[1.0]], "y": [0]}}}))
    with pytest.raises(ValueError, match="num_samples 3 but 1"):
        ej.data.load_leaf(bad)
