"""Readers by path for datasets in their distributed formats: CIFAR-10/100 binary batches, LEAF JSON.

Nothing is downloaded and nothing is unpickled: the CIFAR readers read the *binary* version
(``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz``, unpacked), LEAF's files are JSON.

CIFAR-10 (``cifar-10-batches-bin/``): ``data_batch_1.bin`` .. ``data_batch_5.bin`` (train) and
``test_batch.bin``; each record is 1 label byte (0-9) and 3,072 pixel bytes, the 1,024 red values
of the 32 x 32 image row by row, then green, then blue.  CIFAR-100 (``cifar-100-binary/``):
``train.bin`` and ``test.bin``; each record is a coarse label byte (0-19), a fine label byte
(0-99), then the same 3,072 pixel bytes.  Images become float32 ``[32, 32, 3]`` in [0, 1].

LEAF JSON (Caldas et al. 2018; TalwalkarLab/leaf): each file holds ``users`` (ids),
``num_samples`` and ``user_data`` (``{user: {"x": [...], "y": [...]}}``), optionally
``hierarchies``; a split may be several files in one folder (FEMNIST writes 50 writers a file).
:func:`load_leaf` keeps the natural split: every user (a FEMNIST writer, a Shakespeare role, a
CelebA celebrity) is one group id, so ``Natural()`` gives one node per user.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgejax.data.datasets import Dataset, default_data_dir
from edgejax.data.text import LEAF_VOCAB, encode

_CIFAR_PIXELS = 3072
CIFAR100_LABELS = ("fine", "coarse")
# feature shapes and class counts of LEAF's tasks with numeric features (FEMNIST: 62 classes, 28 x 28 images)
LEAF_TASKS = {"femnist": ((28, 28, 1), 62), "shakespeare": ((80,), len(LEAF_VOCAB))}


def _read_records(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels [n, label_bytes] uint8, images [n, 32, 32, 3] float32)`` of one CIFAR binary file."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file not found: {path}")
    raw = np.fromfile(path, np.uint8)
    record = label_bytes + _CIFAR_PIXELS
    if raw.size == 0 or raw.size % record:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte CIFAR records "
                         f"({label_bytes} label byte(s) + {_CIFAR_PIXELS} pixel bytes)")
    raw = raw.reshape(-1, record)
    images = raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return raw[:, :label_bytes], (images / 255.0).astype(np.float32)


def _folder(path, default: str) -> Path:
    folder = Path(path) if path is not None else default_data_dir() / default
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR folder not found: {folder}. Pass path= (the unpacked binary version's folder) "
                                f"or set EDGEJAX_DATA to a folder holding {default}/.")
    return folder


def load_cifar10(path: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009) from its binary batches in the folder ``path`` (default
    ``cifar-10-batches-bin`` in :func:`default_data_dir`): the five ``data_batch_*.bin`` files
    (in name order) train, ``test_batch.bin`` tests.  Labels must be 0-9."""
    folder = _folder(path, "cifar-10-batches-bin")
    train_files = sorted(folder.glob("data_batch_*.bin"))
    if not train_files:
        raise FileNotFoundError(f"{folder}: no data_batch_*.bin files (the CIFAR-10 binary version)")
    parts = [_read_records(f, 1) for f in train_files]
    y_test, x_test = _read_records(folder / "test_batch.bin", 1)
    y = np.concatenate([p[0][:, 0] for p in parts]).astype(np.int32)
    for name, labels in (("train", y), ("test", y_test[:, 0])):
        if labels.max(initial=0) > 9:
            raise ValueError(f"{folder}: CIFAR-10 {name} label {int(labels.max())} is outside 0-9 (a CIFAR-100 file?)")
    return Dataset("cifar10", np.concatenate([p[1] for p in parts]), y, x_test, y_test[:, 0].astype(np.int32),
                   num_classes=10)


def load_cifar100(path: str | os.PathLike | None = None, *, label: str = "fine") -> Dataset:
    """CIFAR-100 from ``train.bin`` and ``test.bin`` in the folder ``path`` (default
    ``cifar-100-binary`` in :func:`default_data_dir`); ``label="fine"`` (100 classes) or
    ``"coarse"`` (the 20 superclasses)."""
    if label not in CIFAR100_LABELS:
        raise ValueError(f"load_cifar100: label must be one of {CIFAR100_LABELS}, got {label!r}")
    folder = _folder(path, "cifar-100-binary")
    column, classes = (1, 100) if label == "fine" else (0, 20)
    (yl, x), (yl_test, x_test) = _read_records(folder / "train.bin", 2), _read_records(folder / "test.bin", 2)
    y, y_test = yl[:, column].astype(np.int32), yl_test[:, column].astype(np.int32)
    for name, labels in (("train", y), ("test", y_test)):
        if labels.max(initial=0) >= classes:
            raise ValueError(f"{folder}: CIFAR-100 {label} {name} label {int(labels.max())} is outside 0-{classes - 1}")
    return Dataset(f"cifar100_{label}" if label == "coarse" else "cifar100", x, y, x_test, y_test,
                   num_classes=classes)


# --------------------------------------------------------------------------------------
# LEAF JSON
# --------------------------------------------------------------------------------------


def read_leaf_json(path: str | os.PathLike) -> dict[str, dict]:
    """``{user: {"x": [...], "y": [...]}}`` of a LEAF JSON file or of every ``*.json`` in a folder
    (name order; a user in several files has its samples concatenated).  ``num_samples`` is checked
    against each user's data."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"LEAF data not found: {path} (a .json file or a folder of them)")
    users: dict[str, dict] = {}
    for f in files:
        with open(f, encoding="utf-8") as fh:
            blob = json.load(fh)
        missing = [k for k in ("users", "user_data") if k not in blob]
        if missing:
            raise ValueError(f"{f}: not a LEAF file, it lacks {missing} (expected 'users', 'num_samples', 'user_data')")
        counts = blob.get("num_samples", [None] * len(blob["users"]))
        for u, n in zip(blob["users"], counts):
            d = blob["user_data"].get(u)
            if d is None or len(d.get("x", ())) != len(d.get("y", ())):
                raise ValueError(f"{f}: user {u!r} has no user_data entry with x and y of equal length")
            if n is not None and n != len(d["y"]):
                raise ValueError(f"{f}: user {u!r} has num_samples {n} but {len(d['y'])} samples")
            entry = users.setdefault(str(u), {"x": [], "y": []})
            entry["x"].extend(d["x"])
            entry["y"].extend(d["y"])
    return users


def _features(xs: list, where: str) -> np.ndarray:
    if xs and isinstance(xs[0], str):                     # LEAF Shakespeare: 80-character strings
        return np.stack([encode(s) for s in xs]).astype(np.float32)
    try:
        return np.asarray(xs, dtype=np.float32)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: features must be numbers (or strings for LEAF's Shakespeare); "
                         f"got {type(xs[0]).__name__} ({err}); e.g. Sent140's raw tweets need a tokenizer") from None


def _labels(ys: list, where: str) -> np.ndarray:
    if ys and isinstance(ys[0], str):
        return np.concatenate([encode(s) for s in ys]).astype(np.int32)
    y = np.asarray(ys)
    if y.ndim != 1 or (y.dtype.kind == "f" and np.any(y != np.round(y))) or y.dtype.kind not in "iuf":
        raise ValueError(f"{where}: labels must be integers, got {y.dtype} of shape {y.shape}")
    return y.astype(np.int32)


def load_leaf(train_path: str | os.PathLike, test_path: str | os.PathLike | None = None, *,
              task: str | None = None, feature_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
              train_fraction: float = 0.9, seed: int = 0, name: str | None = None) -> Dataset:
    """A LEAF task from its JSON files, one group id per user (users in sorted id order).

    Args:
      train_path, test_path: a JSON file or a folder of them (LEAF's ``data/train`` and ``data/test``).
        Without ``test_path`` every user's samples are split as LEAF's ``split_data.py --by_sample``
        does: users with fewer than 2 samples are dropped, ``max(1, int(train_fraction * n))`` samples
        (1 when ``n == 2``) train, chosen at random (seeded), the rest test.
      task: ``femnist`` (``[28, 28, 1]``, 62 classes), ``shakespeare`` (80-character strings encoded
        with LEAF's vocabulary, 80 classes) or ``None``; read from the path's name when it holds one.
      feature_shape: each sample's shape (default: the task's, else the flat length).
      num_classes: default: the task's, else the largest label + 1.

    Test users absent from the train split are dropped (their group would have no node).
    """
    if task is None:
        task = next((t for t in LEAF_TASKS if t in str(train_path).lower()), None)
    if task is not None and task not in LEAF_TASKS:
        raise ValueError(f"load_leaf: unknown task {task!r}; known: {sorted(LEAF_TASKS)} (or None)")
    shape, classes = LEAF_TASKS.get(task, (None, None))
    feature_shape = tuple(feature_shape) if feature_shape is not None else shape
    num_classes = num_classes if num_classes is not None else classes
    train_users = read_leaf_json(train_path)
    if test_path is not None:
        test_users = read_leaf_json(test_path)
    else:
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"load_leaf: train_fraction must be in (0, 1), got {train_fraction}")
        rng = np.random.default_rng(seed)
        split_train, test_users = {}, {}
        for u in sorted(train_users):
            d = train_users[u]
            n = len(d["y"])
            if n < 2:
                continue
            n_train = 1 if n == 2 else max(1, int(train_fraction * n))
            chosen = np.zeros(n, bool)
            chosen[rng.choice(n, n_train, replace=False)] = True
            split_train[u] = {k: [v for v, c in zip(d[k], chosen) if c] for k in ("x", "y")}
            test_users[u] = {k: [v for v, c in zip(d[k], chosen) if not c] for k in ("x", "y")}
        train_users = split_train
    ids = sorted(u for u in train_users if train_users[u]["y"])
    if not ids:
        raise ValueError(f"{train_path}: no user has training samples")
    gid = {u: i for i, u in enumerate(ids)}

    def stack(users, which):
        xs, ys, gs = [], [], []
        for u in ids:
            d = users.get(u)
            if not d or not d["y"]:
                continue
            where = f"{which} user {u!r}"
            x, y = _features(d["x"], where), _labels(d["y"], where)
            xs.append(x.reshape(len(y), *(feature_shape or (-1,))))
            ys.append(y)
            gs.append(np.full(len(y), gid[u], np.int32))
        if not xs:
            return None
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)

    x, y, g = stack(train_users, "train")
    test = stack(test_users, "test")
    if test is None:
        test = (np.zeros((0, *x.shape[1:]), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32))
    if num_classes is None:
        num_classes = int(max(y.max(), test[1].max(initial=0))) + 1
    return Dataset(name or (task or Path(train_path).stem), x, y, test[0], test[1], num_classes=int(num_classes),
                   groups_train=g, groups_test=test[2])
