"""Labelled classification datasets as host NumPy arrays, and their loaders.

Every loader returns a :class:`Dataset` with a train and a test split. Feature layouts:
images are float32 ``[H, W, C]`` scaled to [0, 1], sequences float32 ``[T, C]``, flat
vectors ``[d]``. Labels are int32 in ``[0, num_classes)``. Loaders are deterministic
given their ``seed`` and never touch the network: files are read from a path (see
:func:`default_data_dir`), everything else is generated locally.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import random
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

_MNIST_IMAGES = "mnist-t10k-images-idx3-ubyte.gz"
_MNIST_LABELS = "mnist-t10k-labels-idx1-ubyte.gz"
_FSDD = "fsdd-spoken-digits.npz"

# IDX type byte -> big-endian NumPy dtype (LeCun's MNIST page, "THE IDX FILE FORMAT").
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled classification dataset with a train and a test split (host NumPy arrays).

    ``groups_train`` / ``groups_test`` hold an optional natural id per sample (device,
    speaker, user) as int32, used by the ``Natural`` partitioner. The test split may be
    empty but must share the train split's feature shape.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    groups_train: np.ndarray | None = None
    groups_test: np.ndarray | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise ValueError(f"Dataset {self.name!r}: num_classes must be an int, got {self.num_classes!r}")
        if self.num_classes < 1:
            raise ValueError(f"Dataset {self.name!r}: num_classes must be >= 1, got {self.num_classes}")
        for split in ("train", "test"):
            self._check_split(split)
        if self.num_train < 1:
            raise ValueError(f"Dataset {self.name!r}: the train split is empty")
        if self.x_test.shape[1:] != self.feature_shape:
            raise ValueError(
                f"Dataset {self.name!r}: x_test feature shape {self.x_test.shape[1:]} differs from "
                f"x_train feature shape {self.feature_shape}"
            )

    def _check_split(self, split: str) -> None:
        x, y, g = (getattr(self, f"{k}_{split}") for k in ("x", "y", "groups"))
        _check_array(self.name, f"x_{split}", x, np.float32)
        if x.ndim < 2:
            raise ValueError(f"Dataset {self.name!r}: x_{split} must be [n, *features], got shape {x.shape}")
        _check_array(self.name, f"y_{split}", y, np.int32, length=len(x))
        if y.size:
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"Dataset {self.name!r}: y_{split} has label {bad} outside [0, {self.num_classes})"
                )
        if g is not None:
            _check_array(self.name, f"groups_{split}", g, np.int32, length=len(x))

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one sample's features, e.g. ``(28, 28, 1)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


def _check_array(name: str, field: str, a: object, dtype: type, length: int | None = None) -> None:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"Dataset {name!r}: {field} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"Dataset {name!r}: {field} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if length is not None and a.shape != (length,):
        raise ValueError(f"Dataset {name!r}: {field} must have shape ({length},), got {a.shape}")


# --------------------------------------------------------------------------------------
# FedProx Synthetic(alpha, beta)
# --------------------------------------------------------------------------------------


def load_synthetic(
    alpha: float,
    beta: float,
    *,
    iid: bool = False,
    num_devices: int = 30,
    num_features: int = 60,
    num_classes: int = 10,
    train_fraction: float = 0.9,
    seed: int = 0,
) -> Dataset:
    """Synthetic(alpha, beta) of Li et al. 2020, "Federated Optimization in Heterogeneous Networks".

    Follows the authors' generators (litian96/FedProx, ``data/synthetic_*/generate_synthetic.py``
    and ``data/synthetic_iid/generate_iid.py``). For device k, with d features and C classes::

        n_k = int(lognormal(4, 2)) + 50
        u_k ~ N(0, alpha^2),  B_k ~ N(0, beta^2)
        v_k ~ N(B_k, 1)^d,    W_k ~ N(u_k, 1)^{d x C},  b_k ~ N(u_k, 1)^C
        x ~ N(v_k, Sigma),    Sigma = diag((j + 1)^-1.2), j = 0..d-1
        y = argmax softmax(x W_k + b_k)

    Where the paper and the code could be read differently, this follows the code:

    - ``alpha`` and ``beta`` are standard deviations (``np.random.normal(0, alpha)``),
      not variances as the paper's ``N(0, alpha)`` might suggest.
    - ``iid=True`` is ``generate_iid.py``: one shared ``W ~ N(0, 1)``, ``b ~ N(0, 1)``
      and ``x ~ N(0, Sigma)`` on every device; ``alpha`` and ``beta`` are not used
      (the authors call it with 0, 0), so nonzero values raise a ValueError.
    - Each device keeps its first ``int(train_fraction * n_k)`` samples for training and
      the rest for test (the code shuffles first; the samples are i.i.d., so that changes
      nothing in distribution). ``groups_train`` / ``groups_test`` hold the device id.

    A property of this generator (paper and code alike) worth knowing: ``u_k`` is one
    scalar added to every entry of ``W_k`` and ``b_k``, so it shifts all C logits by the
    same ``u_k (sum_j x_j + 1)`` and never changes the argmax. The labels therefore do not
    depend on ``alpha`` at all; devices differ through ``beta`` (the feature means ``v_k``)
    and the unit-variance draws of ``W_k`` and ``b_k``, whatever ``alpha`` is. With a fixed
    seed, changing ``alpha`` alone returns the same features and (floating-point ties
    aside) the same labels.

    Draws come from ``np.random.default_rng(seed)`` in the code's order (sizes, u, B, all
    v, then W, b, x device by device), not from NumPy's global state, so the numbers
    differ from the authors' files but the distribution is the same. ``x ~ N(v, Sigma)``
    is drawn as ``v + sqrt(diag Sigma) * z``, which equals ``multivariate_normal`` in
    distribution for a diagonal Sigma.
    """
    if iid and (alpha != 0 or beta != 0):
        raise ValueError(
            f"load_synthetic: the IID variant uses no alpha/beta, got alpha={alpha}, beta={beta}; "
            "pass alpha=0, beta=0 (or use load_dataset('synthetic_iid'))"
        )
    for field, value in (("alpha", alpha), ("beta", beta)):
        if value < 0:
            raise ValueError(
                f"load_synthetic: {field} is a standard deviation and must be >= 0, got {field}={value}"
            )
    sizes_given = {"num_devices": num_devices, "num_features": num_features, "num_classes": num_classes}
    for field, value in sizes_given.items():
        if value < 1:
            raise ValueError(f"load_synthetic: {field} must be >= 1, got {field}={value}")
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(
            f"load_synthetic: train_fraction must be in (0, 1], got train_fraction={train_fraction}"
        )

    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4, 2, num_devices).astype(np.int64) + 50
    sigma_sqrt = np.power(np.arange(1, num_features + 1, dtype=np.float64), -0.6)  # sqrt(Sigma_jj)
    if iid:
        means_x = np.zeros((num_devices, num_features))
        shared = rng.normal(0, 1, (num_features, num_classes)), rng.normal(0, 1, num_classes)

        def device_model(k: int) -> tuple[np.ndarray, np.ndarray]:
            return shared
    else:
        means_w = rng.normal(0, alpha, num_devices)
        b_prior = rng.normal(0, beta, num_devices)
        means_x = np.stack([rng.normal(b_prior[k], 1, num_features) for k in range(num_devices)])

        def device_model(k: int) -> tuple[np.ndarray, np.ndarray]:
            w = rng.normal(means_w[k], 1, (num_features, num_classes))
            return w, rng.normal(means_w[k], 1, num_classes)

    xs, ys = [], []
    for k in range(num_devices):
        w, b = device_model(k)
        x = means_x[k] + sigma_sqrt * rng.standard_normal((sizes[k], num_features))
        xs.append(x)
        # argmax of softmax == argmax of the logits (and no exp to overflow, unlike the code's softmax)
        ys.append(np.argmax(x @ w + b, axis=1))

    name = "synthetic_iid" if iid else f"synthetic({alpha:g},{beta:g})"
    return _split_per_device(name, xs, ys, num_classes, train_fraction)


def _split_per_device(
    name: str, xs: list[np.ndarray], ys: list[np.ndarray], num_classes: int, train_fraction: float
) -> Dataset:
    """First ``int(train_fraction * n_k)`` samples of each device train, the rest test."""
    cuts = [int(train_fraction * len(y)) for y in ys]
    ids = [np.full(len(y), k, np.int32) for k, y in enumerate(ys)]

    def take(arrays: list[np.ndarray], train: bool, dtype: type) -> np.ndarray:
        parts = [a[:c] if train else a[c:] for a, c in zip(arrays, cuts)]
        return np.concatenate(parts).astype(dtype)

    return Dataset(
        name=name,
        x_train=take(xs, True, np.float32),
        y_train=take(ys, True, np.int32),
        x_test=take(xs, False, np.float32),
        y_test=take(ys, False, np.int32),
        num_classes=num_classes,
        groups_train=take(ids, True, np.int32),
        groups_test=take(ids, False, np.int32),
    )


# --------------------------------------------------------------------------------------
# Generated / bundled datasets
# --------------------------------------------------------------------------------------


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images; UCI optdigits test set).

    Ships inside scikit-learn's wheel, so no download. Images are ``[8, 8, 1]`` scaled
    from 0..16 to [0, 1]; the split is stratified by class (each class contributes
    ``round(test_fraction * n_class)`` test samples) and seeded.
    """
    images, target = _sklearn_digits()
    x = (images / 16.0).astype(np.float32)[..., None]
    y = target.astype(np.int32)
    train, test = _split_indices(y, test_fraction, np.random.default_rng(seed), stratify=True)
    return Dataset("digits", x[train], y[train], x[test], y[test], num_classes=10)


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images [1797, 8, 8], target)`` of ``sklearn.datasets.load_digits``, read from the file
    scikit-learn ships without importing scikit-learn (its import takes about a second):
    the same ``np.loadtxt`` of ``sklearn/datasets/data/digits.csv.gz``."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        return bunch.images, bunch.target
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def load_mnist1d(*, num_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D (Greydanus & Kobak 2024, "Scaling Down Deep Learning with MNIST-1D").

    Generated locally with ``mnist1d.data.make_dataset`` (never its download path), using
    the library's default arguments with ``num_samples`` and ``seed`` overridden, and its
    own 80/20 train/test split. ``x`` is ``[40, 1]`` float32 (a sequence, standardised by
    the library). ``make_dataset`` seeds NumPy's and Python's global RNGs; their states are
    restored afterwards so nothing leaks into the caller's randomness.
    """
    try:
        import mnist1d.data as mnist1d_data
    except ImportError as err:
        raise ImportError(
            "load_mnist1d needs the mnist1d package: pip install mnist1d "
            f"(or pip install 'edgejax[datasets]'); import failed with: {err}"
        ) from err

    args = mnist1d_data.get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = mnist1d_data.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return Dataset(
        name="mnist1d",
        x_train=np.asarray(data["x"], np.float32)[..., None],
        y_train=np.asarray(data["y"], np.int32),
        x_test=np.asarray(data["x_test"], np.float32)[..., None],
        y_test=np.asarray(data["y_test"], np.int32),
        num_classes=10,
    )


# --------------------------------------------------------------------------------------
# Files: IDX (MNIST format), .npz, user arrays
# --------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """Folder holding offline data files (it may not exist).

    ``$EDGEJAX_DATA`` if set; else ``../shared/data`` from the current working directory
    if that folder exists; else ``<repo root>/../shared/data`` located from this file.
    """
    env = os.environ.get("EDGEJAX_DATA")
    if env:
        return Path(env)
    from_cwd = Path.cwd().parent / "shared" / "data"
    if from_cwd.is_dir():
        return from_cwd
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    Header: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a byte with the number of dimensions, then each
    dimension as a big-endian uint32; the data follows big-endian. Gzip is detected by
    its magic bytes ``1f 8b``. Returns a writable native-endian array with the header's shape.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise ValueError(f"{path}: damaged or truncated gzip file ({err})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"{path}: not an IDX file, bad magic number {raw[:4].hex() or '(empty)'}; expected "
            f"00 00 <type in {sorted(hex(t) for t in _IDX_DTYPES)}> <ndim >= 1>"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{path}: truncated IDX header, {ndim} dimensions need {header} bytes, file holds {len(raw)}"
        )
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX size mismatch, header says shape {shape} of {dtype.newbyteorder('=')} "
            f"({expected} bytes with the header) but the file holds {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_mnist(
    images_path: str | os.PathLike | None = None,
    labels_path: str | os.PathLike | None = None,
    *,
    test_size: int = 2000,
    seed: int | None = None,
) -> Dataset:
    """MNIST digits (LeCun, Cortes & Burges) from IDX files.

    Defaults to the 10,000 t10k files in :func:`default_data_dir`. Images become
    ``[28, 28, 1]`` float32 in [0, 1]. With ``seed=None`` the last ``test_size`` samples are
    the test split and the rest train (no shuffling: with t10k, the first 8,000 train and
    the last 2,000 test). An int ``seed`` shuffles the samples before that cut. Pass the
    full 60k training files by path to train on all of MNIST.
    """
    data_dir = default_data_dir()
    images_path = Path(images_path) if images_path is not None else data_dir / _MNIST_IMAGES
    labels_path = Path(labels_path) if labels_path is not None else data_dir / _MNIST_LABELS
    for p in (images_path, labels_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"MNIST file not found: {p}. Pass images_path=/labels_path=, or set EDGEJAX_DATA "
                f"to a folder holding {_MNIST_IMAGES} and {_MNIST_LABELS}."
            )
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST: expected images [n, H, W] and labels [n], got {images.shape} and {labels.shape}"
        )
    if not 0 <= test_size < len(labels):
        raise ValueError(f"load_mnist: test_size must be in [0, {len(labels)}), got test_size={test_size}")
    order = np.arange(len(labels)) if seed is None else np.random.default_rng(seed).permutation(len(labels))
    x = (images[order] / 255.0).astype(np.float32)[..., None]
    y = labels[order].astype(np.int32)
    cut = len(y) - test_size
    return Dataset("mnist", x[:cut], y[:cut], x[cut:], y[cut:], num_classes=10)


def load_fsdd(
    path: str | os.PathLike | None = None,
    *,
    frame: int = 256,
    hop: int = 128,
    bands: int = 32,
    test_takes: int = 5,
) -> Dataset:
    """The Free Spoken Digit Dataset (Jakobovski et al.; 3,000 8 kHz recordings of the digits
    0-9, 6 speakers x 10 digits x 50 takes) as log band energies, the speaker as group id.

    Reads the ``.npz`` at ``path`` (default ``fsdd-spoken-digits.npz`` in
    :func:`default_data_dir`) with keys ``audio`` (every recording's int16 samples,
    concatenated), ``offsets``, ``lengths``, ``labels``, ``speakers`` (names), ``index`` (take
    number) and ``sample_rate``.  Features, per recording: its first second (``sample_rate``
    samples, zero-padded), Hann frames of ``frame`` samples every ``hop`` samples, the power
    spectrum's first ``bands * (frame // 2 // bands)`` bins averaged in ``bands`` equal bands,
    ``log(1 + 1000 p)``, standardised by the mean and standard deviation over the whole set:
    ``[T, bands]`` float32 with ``T = (sample_rate - frame) // hop + 1`` (61 x 32 by default).
    The split is the dataset's official one: takes ``0 .. test_takes - 1`` of every speaker and
    digit are the test set (300 recordings), the rest train (2,700).  ``groups_train`` /
    ``groups_test`` hold the speaker (ids in sorted name order), so ``Natural()`` partitioning
    gives one node per speaker.
    """
    path = Path(path) if path is not None else default_data_dir() / _FSDD
    if not path.is_file():
        raise FileNotFoundError(f"FSDD file not found: {path}. Pass path=, or set EDGEJAX_DATA to a folder "
                                f"holding {_FSDD}.")
    for field, value, low in (("frame", frame, 2), ("hop", hop, 1), ("bands", bands, 1), ("test_takes", test_takes, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"load_fsdd: {field} must be an integer >= {low}, got {field}={value!r}")
    if bands > frame // 2:
        raise ValueError(f"load_fsdd: bands={bands} must be at most frame // 2 = {frame // 2} (the spectrum's bins)")
    with np.load(path, allow_pickle=False) as d:
        missing = sorted({"audio", "offsets", "lengths", "labels", "speakers", "index", "sample_rate"} - set(d.files))
        if missing:
            raise ValueError(f"{path}: not an FSDD archive, it lacks the keys {missing}")
        n = int(d["sample_rate"])                                    # one second
        if frame > n:
            raise ValueError(f"load_fsdd: frame={frame} is longer than one second ({n} samples)")
        audio = d["audio"].astype(np.float32) / 32768.0
        offsets, lengths, labels = d["offsets"], d["lengths"], d["labels"]
        speakers, takes = d["speakers"], d["index"]
    clips = np.zeros((len(labels), n), np.float32)
    for i, (offset, length) in enumerate(zip(offsets, lengths)):
        clip = audio[offset:offset + min(length, n)]
        clips[i, :len(clip)] = clip
    starts = np.arange(0, n - frame + 1, hop)
    frames = clips[:, starts[:, None] + np.arange(frame)] * np.hanning(frame).astype(np.float32)
    power = np.abs(np.fft.rfft(frames, axis=-1)[..., :bands * (frame // 2 // bands)]) ** 2
    feats = np.log1p(1e3 * power.reshape(*power.shape[:-1], bands, -1).mean(-1))
    feats = ((feats - feats.mean()) / feats.std()).astype(np.float32)
    test, y = takes < test_takes, labels.astype(np.int32)
    speaker = np.unique(speakers, return_inverse=True)[1].astype(np.int32)
    return Dataset("fsdd", feats[~test], y[~test], feats[test], y[test], num_classes=10,
                   groups_train=speaker[~test], groups_test=speaker[test])


def from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    *,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
    groups: np.ndarray | None = None,
    groups_test: np.ndarray | None = None,
    name: str = "arrays",
    seed: int = 0,
) -> Dataset:
    """Wrap user arrays as a :class:`Dataset`.

    ``x`` is ``[n, *features]`` (cast to float32), ``y`` integer labels (integral floats are
    accepted). Without ``x_test``/``y_test`` a seeded random ``test_fraction`` of the samples
    (``round(test_fraction * n)``) becomes the test split, and ``groups`` is split alongside.
    ``num_classes`` defaults to the largest label + 1.
    """
    x = np.asarray(x, np.float32)
    y = _as_labels(y, "y")
    if x.ndim < 2 or len(x) != len(y):
        raise ValueError(f"{name}: x must be [n, *features] with n = len(y) = {len(y)}, got shape {x.shape}")
    if (x_test is None) != (y_test is None):
        raise ValueError(f"{name}: pass both x_test and y_test, or neither")
    if groups_test is not None and x_test is None:
        raise ValueError(f"{name}: groups_test needs x_test/y_test; without them groups is split with x")
    g = None if groups is None else _as_labels(groups, "groups")
    if g is not None and len(g) != len(y):
        raise ValueError(f"{name}: groups has {len(g)} entries but there are {len(y)} samples")
    if x_test is None:
        train, test = _split_indices(y, test_fraction, np.random.default_rng(seed), stratify=False)
        x, x_test, y, y_test = x[train], x[test], y[train], y[test]
        g, g_test = (None, None) if g is None else (g[train], g[test])
    else:
        x_test = np.asarray(x_test, np.float32)
        y_test = _as_labels(y_test, "y_test")
        g_test = None if groups_test is None else _as_labels(groups_test, "groups_test")
    if num_classes is None:
        num_classes = int(max(y.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset(
        name, x, y, x_test, y_test, num_classes=int(num_classes), groups_train=g, groups_test=g_test
    )


def load_npz(
    path: str | os.PathLike,
    *,
    x_key: str = "x",
    y_key: str = "y",
    groups_key: str = "groups",
    test_fraction: float = 0.2,
    num_classes: int | None = None,
    name: str | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a dataset from a ``.npz`` file (``np.load(allow_pickle=False)``: no object arrays).

    If the file has ``x_train``, ``y_train``, ``x_test`` and ``y_test`` those are the splits
    (with optional ``{groups_key}_train`` / ``{groups_key}_test``); otherwise ``x_key`` and
    ``y_key`` (optional ``groups_key``) are split as in :func:`from_arrays`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz file (the zip archive np.savez writes)")
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        split_keys = ("x_train", "y_train", "x_test", "y_test")

        def get(key: str) -> np.ndarray | None:
            return _npz_array(archive, key, path) if key in keys else None

        if set(split_keys) <= keys:
            x, y, x_test, y_test = (get(k) for k in split_keys)
            groups, groups_test = get(f"{groups_key}_train"), get(f"{groups_key}_test")
        elif {x_key, y_key} <= keys:
            x, y, x_test, y_test = get(x_key), get(y_key), None, None
            groups, groups_test = get(groups_key), None
        else:
            raise ValueError(
                f"{path}: needs keys {list(split_keys)} or {[x_key, y_key]}, found {sorted(keys)}"
            )
    return from_arrays(
        x, y, x_test=x_test, y_test=y_test, test_fraction=test_fraction, num_classes=num_classes,
        groups=groups, groups_test=groups_test, name=name or path.stem, seed=seed,
    )


def _npz_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as err:
        raise ValueError(
            f"{path}: array {key!r} is an object array, which edgejax does not load "
            f"(np.load with allow_pickle=False); save it as a numeric array ({err})"
        ) from err


def _as_labels(y: np.ndarray, field: str) -> np.ndarray:
    """Integer-valued array as int32 (1-D), or a ValueError naming the field."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{field} must be 1-D, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            bad = y[~np.isfinite(y) | (y != np.round(y))][0]
            raise ValueError(f"{field} must hold integers, got value {bad}")
    elif y.dtype.kind not in "iu":
        raise ValueError(f"{field} must hold integers, got dtype {y.dtype}")
    return y.astype(np.int32)


def _split_indices(
    y: np.ndarray, test_fraction: float, rng: np.random.Generator, *, stratify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) index arrays; stratified takes ``round(f * n_class)`` per class."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got test_fraction={test_fraction}")
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(y))]
    test = [rng.permutation(g)[: int(round(test_fraction * len(g)))] for g in groups]
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx).astype(np.int64)
    return train_idx, test_idx


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


def _synthetic(alpha: float = 0.0, beta: float = 0.0, **kwargs) -> Dataset:
    return load_synthetic(alpha, beta, **kwargs)


def _synthetic_iid(**kwargs) -> Dataset:
    return load_synthetic(0.0, 0.0, iid=True, **kwargs)


def _npz(path: str | os.PathLike | None = None, **kwargs) -> Dataset:
    if path is None:
        raise ValueError("load_dataset('npz') needs path=<file.npz>")
    return load_npz(path, **kwargs)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "synthetic": _synthetic,
    "synthetic_iid": _synthetic_iid,
    "digits": load_digits,
    "mnist1d": load_mnist1d,
    "mnist": load_mnist,
    "npz": _npz,
}

DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load_dataset(name: str, **kwargs) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`); ``kwargs`` go to its loader."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return _LOADERS[name](**kwargs)
