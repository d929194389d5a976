"""LEAF's Shakespeare next-character task from a plain play text (e.g. tinyshakespeare).

LEAF (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings"; TalwalkarLab/leaf,
``data/shakespeare``) builds one user per speaking role of each play from the Gutenberg complete
works, turns each role's lines into 80-character windows labelled with the character that follows,
and splits every role's samples into train and test.  :func:`load_shakespeare` does the same from a
text in the tinyshakespeare layout::

    First Citizen:
    Before we proceed any further, hear me speak.

    All:
    Speak, speak.

Rules (stated, since tinyshakespeare is not LEAF's source file):

- **Turns.** The text is split into blocks at blank lines.  A block whose first line is a speaker
  header (``NAME:`` alone on the line: letters, spaces and ``' , . & -``) is one turn of ``NAME``;
  its other lines are the speech.  Blocks without such a header (a speech that continues after a
  blank line) are appended to the previous turn; a header with no speech adds nothing.
- **Roles.** tinyshakespeare concatenates plays without titles, so plays cannot be told apart
  reliably; a role is therefore a speaker **name**, upper-cased as LEAF does (``All`` and ``ALL``
  are one role), across the whole file (``GLOUCESTER`` of several histories is one role).  LEAF's
  roles are ``PLAY_NAME`` pairs.  As in LEAF's preprocessing, roles with at most 2 lines are dropped.
- **Samples**, ``windows="lines"`` (LEAF's ``data/shakespeare/preprocess/shake_utils.py``): every
  speech line, with runs of two or more spaces collapsed to one and its newline kept, is prefixed
  with 80 spaces; each of its characters (the newline included) is the label of the 80 characters
  before it, so a line of ``L`` characters gives ``L`` samples and no window crosses a line.
  ``windows="joined"`` (the variant of several re-implementations): the role's lines joined with
  spaces, runs of spaces collapsed, and every 80-character window of that text labelled with the
  next character.  ``stride`` 1 keeps every sample, as LEAF; a larger ``stride`` every ``stride``-th.
- **Vocabulary** (LEAF's ``models/utils/language_utils.py``, 80 symbols)::

      "\\n !\\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"

  a character is its index in that string.  Characters outside it (tinyshakespeare has one ``$``)
  become a space (LEAF's ``str.find`` would give -1).
- **Split** (LEAF's ``utils/split_data.py``, ``--by_sample``): roles with fewer than
  ``max(2, min_samples)`` samples are dropped (LEAF's ``-k`` is ``min_samples``; it also drops
  roles with fewer than 2); of a role's ``n`` samples ``max(1, int(train_fraction * n))`` (1 when
  ``n == 2``) train and the rest test.  ``split="random"`` (LEAF) draws the train samples at random
  (seeded), so test windows overlap train windows' text; ``split="contiguous"`` keeps the first
  train samples and starts the test samples past the last train window's 81 characters (its label
  included), so no character is in both splits (fewer test samples; a role left without any is
  dropped).  LEAF's Shakespeare runs use ``train_fraction=0.8``.

Features are the 80 character indices as float32 ``[n, 80]`` (the ``Dataset`` convention); the
zoo's ``char_lstm`` embeds them.  ``groups_train`` / ``groups_test`` hold the role id (roles in
sorted name order; ``return_roles=True`` returns the names), so ``Natural()`` gives one node per
role and each node's local test split is its role's own test samples.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edgejax.data.datasets import Dataset, default_data_dir

LEAF_VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SEQ_LENGTH = 80
SPLITS = ("random", "contiguous")
WINDOWS = ("lines", "joined")
MIN_LINES = 3
_TINYSHAKESPEARE = "tinyshakespeare.txt"
_HEADER = re.compile(r"^([A-Za-z][A-Za-z' ,.&\-]*):$")
_LOOKUP = np.full(256, LEAF_VOCAB.index(" "), np.int32)
_LOOKUP[[ord(c) for c in LEAF_VOCAB]] = np.arange(len(LEAF_VOCAB), dtype=np.int32)


def encode(text: str) -> np.ndarray:
    """Indices of ``text``'s characters in ``LEAF_VOCAB`` (int32; characters outside it: a space)."""
    codes = np.frombuffer(text.encode("latin-1", errors="replace"), np.uint8)
    return _LOOKUP[codes]


def decode(indices) -> str:
    """The characters of ``LEAF_VOCAB`` indices."""
    return "".join(LEAF_VOCAB[int(i)] for i in np.asarray(indices).reshape(-1))


def parse_roles(text: str) -> dict[str, str]:
    """Each speaker's speech (its turns' lines joined by newlines, turns in order), per the rules in
    the module docstring."""
    lines_by_role: dict[str, list[str]] = {}
    current = None
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        lines = [line.rstrip() for line in block.strip("\n").split("\n") if line.strip()]
        if not lines:
            continue
        header = _HEADER.match(lines[0].strip())
        if header:
            current, lines = header.group(1).upper(), lines[1:]
        if current is None:
            continue
        if lines:
            lines_by_role.setdefault(current, []).extend(lines)
    return {role: "\n".join(lines) for role, lines in lines_by_role.items()}


def role_text(speech: str) -> str:
    """The ``joined`` clean-up: newlines to spaces, runs of spaces to one."""
    return re.sub(r" {2,}", " ", speech.replace("\n", " "))


def role_lines(speech: str) -> list[str]:
    """LEAF's line clean-up: each line with runs of two or more spaces collapsed and its newline kept."""
    return [re.sub(r" {2,}", " ", line) + "\n" for line in speech.split("\n")]


def _windows(speech: str, windows: str, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x [n, 80], y [n])`` character indices of one role's samples (see the module docstring)."""
    if windows == "joined":
        codes = encode(role_text(speech))
        starts = np.arange(0, max(len(codes) - SEQ_LENGTH, 0))
    else:
        lines = role_lines(speech)
        codes = encode("".join(" " * SEQ_LENGTH + line for line in lines))
        lengths = np.array([len(line) for line in lines])
        # sample j of line k starts at that line's padding: offset_k + j, j < len(line_k)
        offsets = np.concatenate([[0], np.cumsum(lengths + SEQ_LENGTH)[:-1]])
        firsts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        starts = np.repeat(offsets - firsts, lengths) + np.arange(lengths.sum())
    starts = starts[::stride]
    return codes[starts[:, None] + np.arange(SEQ_LENGTH)], codes[starts + SEQ_LENGTH]


def _split(n: int, train_fraction: float, split: str, stride: int, rng: np.random.Generator):
    n_train = 1 if n == 2 else max(1, int(train_fraction * n))
    if split == "random":
        train = np.zeros(n, bool)
        train[rng.choice(n, n_train, replace=False)] = True
        return np.flatnonzero(train), np.flatnonzero(~train)
    # window k covers characters k*stride .. k*stride + 80 (its label): the first test window starts past the
    # last train window's label
    return np.arange(n_train), np.arange(min(n_train + SEQ_LENGTH // stride, n), n)


def load_shakespeare(path: str | os.PathLike | None = None, *, train_fraction: float = 0.8, min_samples: int = 0,
                     split: str = "random", windows: str = "lines", stride: int = 1, max_roles: int | None = None,
                     seed: int = 0, return_roles: bool = False):
    """LEAF's Shakespeare task (next character after an 80-character window, one node per role)
    from a plain text in the tinyshakespeare layout; see the module docstring for every rule.

    Args:
      path: the text file (default ``tinyshakespeare.txt`` in :func:`default_data_dir`).
      train_fraction: each role's share of train samples (LEAF's ``--frac``; 0.8 in LEAF's runs).
      min_samples: roles with fewer samples are dropped (LEAF's ``-k``; roles below 2 always are).
      split: ``random`` (LEAF) or ``contiguous`` (no test window shares text with a train window;
        a role left without test samples is dropped).
      windows: ``lines`` (LEAF: windows within each line, left-padded with spaces) or ``joined``.
      stride: keep every ``stride``-th window (1 = LEAF; larger values make a smaller set).
      max_roles: keep only this many roles, those with the most samples (``None``: all).
      seed: the random split's seed.
      return_roles: also return the kept role names in id order (group id ``g`` is ``roles[g]``).

    Returns a ``Dataset`` named ``shakespeare`` with 80 classes, ``x`` float32 ``[n, 80]`` of
    character indices and the role id as ``groups_train`` / ``groups_test`` (or ``(dataset, roles)``).

    Size: on tinyshakespeare (``windows="lines"``, ``stride=1``) this is 820,624 train and 205,284 test
    samples over 251 roles (263 MB of train features); ``federate`` pads every node to the largest
    role (30,091 train samples), about 2.4 GB on the device.  ``stride=8`` gives 102,574 train
    samples (0.3 GB padded); ``max_roles`` / ``min_samples`` bound it further.
    """
    path = Path(path) if path is not None else default_data_dir() / _TINYSHAKESPEARE
    if not path.is_file():
        raise FileNotFoundError(f"Shakespeare text not found: {path}. Pass path=, or set EDGEJAX_DATA to a folder "
                                f"holding {_TINYSHAKESPEARE}.")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"load_shakespeare: train_fraction must be in (0, 1), got {train_fraction}")
    if split not in SPLITS:
        raise ValueError(f"load_shakespeare: split must be one of {SPLITS}, got {split!r}")
    if windows not in WINDOWS:
        raise ValueError(f"load_shakespeare: windows must be one of {WINDOWS}, got {windows!r}")
    for field, value, low in (("stride", stride, 1), ("min_samples", min_samples, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"load_shakespeare: {field} must be an integer >= {low}, got {value!r}")
    if max_roles is not None and (isinstance(max_roles, bool) or not isinstance(max_roles, int) or max_roles < 1):
        raise ValueError(f"load_shakespeare: max_roles must be None or an integer >= 1, got {max_roles!r}")
    roles = parse_roles(path.read_text(encoding="utf-8", errors="replace"))
    if not roles:
        raise ValueError(f"{path}: no speaker turns found (expected 'NAME:' header lines followed by speech)")
    samples = []
    for name in sorted(roles):
        if roles[name].count("\n") + 1 < MIN_LINES:
            continue
        x, y = _windows(roles[name], windows, stride)
        if len(y) >= max(2, min_samples):
            samples.append((name, x, y))
    if max_roles is not None:
        samples = sorted(sorted(samples, key=lambda r: -len(r[2]))[:max_roles], key=lambda r: r[0])
    rng = np.random.default_rng(seed)
    kept = []
    for name, x, y in samples:
        train, test = _split(len(y), train_fraction, split, stride, rng)
        if len(test):
            kept.append((name, x[train], y[train], x[test], y[test]))
    if not kept:
        raise ValueError(f"{path}: no role has {MIN_LINES} lines, at least {max(2, min_samples)} samples and a test "
                         "sample")

    def cat(i, dtype):
        return np.concatenate([role[i] for role in kept]).astype(dtype)

    def ids(i):
        return np.concatenate([np.full(len(role[i]), g, np.int32) for g, role in enumerate(kept)])

    dataset = Dataset("shakespeare", cat(1, np.float32), cat(2, np.int32), cat(3, np.float32), cat(4, np.int32),
                      num_classes=len(LEAF_VOCAB), groups_train=ids(2), groups_test=ids(4))
    return (dataset, [role[0] for role in kept]) if return_roles else dataset
