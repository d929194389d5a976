"""Read run folders (``edgejax run``: ``metrics.csv`` + ``run.json``) and sweep folders
(``edgejax sweep``: ``evals.csv`` + ``sweep.json``) into one tidy evaluation table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from edgejax.sweep.results import EVALS_CSV, SWEEP_JSON

IGNORED = ("seed", "point", "strategy")


def flatten(config: dict, prefix: str = "") -> dict:
    """Nested dicts as dotted keys (``algorithm.name``); lists become strings."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value) if isinstance(value, (list, tuple)) else value
    return flat


def _run_folder(folder: Path) -> tuple[pd.DataFrame, list[dict]]:
    info = json.loads((folder / "run.json").read_text())
    config = info["config"]
    rows = pd.read_csv(folder / "metrics.csv")
    sent = rows.get("bytes_up", 0.0) + rows.get("bytes_down", 0.0)
    rows["bytes"] = np.cumsum(np.nan_to_num(np.asarray(sent, dtype=float)))
    if "participants" in rows:
        rows["updates"] = np.cumsum(np.nan_to_num(rows["participants"].to_numpy(dtype=float)))
    if "sim_time_s" in rows:
        rows["sim_time_s"] = rows["sim_time_s"].fillna(0.0)
    evals = rows[rows["test_accuracy"].notna()].reset_index(drop=True)
    evals.insert(0, "seed", config.get("seed", 0))
    settings = {k: v for k, v in config.items() if k not in ("hparams", "seed")}
    return evals.assign(run=0), [flatten({**settings, **config.get("hparams", {})})]


def _sweep_folder(folder: Path) -> tuple[pd.DataFrame, list[dict]]:
    info = json.loads((folder / SWEEP_JSON).read_text())
    evals = pd.read_csv(folder / EVALS_CSV)
    keys = list(zip(evals["point"], evals["seed"]))
    order = {run: i for i, run in enumerate(dict.fromkeys(keys))}
    evals["run"] = [order[k] for k in keys]
    settings = {**flatten(info["config"]), **info.get("options", {})}
    return evals, [{**settings, **info["hparams"][p]} for p, _ in order]


def load(folders) -> pd.DataFrame:
    """One row per run and evaluation round, from run and sweep folders.

    ``label`` names each run's configuration by the settings that differ between the
    runs (seeds aside), e.g. ``algorithm=fedadam, client_lr=0.1`` (see ``run_labels``); ``seed`` and
    ``round`` identify the rest.
    """
    frames, settings = [], []
    for folder in map(Path, folders):
        if (folder / SWEEP_JSON).is_file():
            frame, runs = _sweep_folder(folder)
        elif (folder / "run.json").is_file():
            frame, runs = _run_folder(folder)
        else:
            raise FileNotFoundError(f"{folder} holds neither run.json (edgejax run) nor {SWEEP_JSON} (edgejax sweep)")
        frames.append(frame.assign(run=frame["run"] + len(settings)))
        settings.extend(runs)
    labels = run_labels(settings)
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "label", [labels[r] for r in out["run"]])
    return out


def run_labels(settings: list[dict]) -> list[str]:
    """A label per run: the settings whose values differ between runs, as ``key=value``.

    Names come first (``algorithm.name`` shown as ``algorithm``), then hyper-parameters and
    sweep options (``topology``, as the sweep's folders are named), then nested settings
    shown by their last part (``algorithm.topology.graph`` as ``graph``, unless two shown
    settings end alike); a setting that the ones before it already determine (FedAdam's
    ``server_b1`` once ``algorithm`` is shown) is left out.
    """
    keys = [k for k in dict.fromkeys(k for s in settings for k in s) if k not in IGNORED]
    keys.sort(key=lambda k: (not k.endswith(".name"), "." in k))
    shown, groups = [], len({()})
    for key in keys:
        finer = len({tuple(repr(s.get(k)) for k in (*shown, key)) for s in settings})
        if finer > groups:
            shown, groups = [*shown, key], finer
    if not shown:
        return [str(s.get("algorithm.name", "run")) for s in settings]
    names = _display_names(shown)
    return [", ".join(f"{names[k]}={_short(s.get(k))}" for k in shown) for s in settings]


def _display_names(keys: list[str]) -> dict[str, str]:
    """Each dotted key by its last part (``.name`` dropped), the full key where two would read alike."""
    last = {k: k.removesuffix(".name").rsplit(".", 1)[-1] for k in keys}
    counts = {name: list(last.values()).count(name) for name in last.values()}
    return {k: name if counts[name] == 1 else k.removesuffix(".name") for k, name in last.items()}


def _short(value) -> str:
    """A setting's value: floats as their shortest repr, float32 ones (hyper-parameters) as float32's."""
    if not isinstance(value, float):
        return str(value)
    if value.is_integer():
        return str(int(value))
    single = np.float32(value)
    return str(single) if float(single) == value else repr(value)
