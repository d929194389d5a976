"""Checks of resolved ``edgejax run`` options before any compute: each TOML value's type,
flags that do not apply to the chosen algorithm / dataset / model, and values the
argument parser cannot check (MLP widths); the help formatter of ``sweep``, ``table``, ``plot``."""
from __future__ import annotations

import argparse

# option -> accepted Python types where the default does not tell (None, or an int that a
# float may replace); every other option takes the type of its default (a float also an int)
_TYPES = {"data_path": (str,), "tiers": (str,), "buffer_size": (int,), "local_steps": (int,), "local_epochs": (int,),
          "server_lr": (float, int),
          "alpha": (float, int), "beta": (float, int), "lr": (float, int), "local_test_fraction": (float, int),
          "hidden": (str, int, list), "group_size": (str, int), "out": (str,), "checkpoint_every": (int,),
          "hparam": (list,), "coordinator": (str,), "num_processes": (int,), "process_id": (int,),
          **{name: (float, int) for name in ("dp_clip", "dp_noise_multiplier", "dp_delta", "dp_epsilon", "dp_quantile",
                                             "byzantine_fraction", "attack_strength")}}

# option -> (does it apply to these options?, when it applies)
_APPLIES = {
    "alpha": (lambda o: o["dataset"] == "synthetic", "--dataset synthetic"),
    "beta": (lambda o: o["dataset"] == "synthetic", "--dataset synthetic"),
    "data_path": (lambda o: o["dataset"] in ("npz", "mnist"), "--dataset npz or mnist"),
    "hidden": (lambda o: o["model"] == "mlp", "--model mlp"),
    "nodes": (lambda o: not str(o["partition"]).startswith("natural"), "partitions other than natural"),
    "topology": (lambda o: _decentralized(o), "decentralized algorithms (dpsgd, pushsum, choco, pairwise, adpsgd)"),
    "link_failures": (lambda o: _decentralized(o) and o["algorithm"] != "adpsgd",
                      "synchronous decentralized algorithms (dpsgd, pushsum, choco, pairwise)"),
    "gossip_order": (lambda o: o["algorithm"] == "dpsgd", "--algorithm dpsgd"),
    "compressor": (lambda o: o["algorithm"] == "choco", "--algorithm choco"),
    "clients_per_round": (lambda o: not _decentralized(o), "server-based algorithms (every node trains every "
                          "round in decentralized ones)"),
    "weighting": (lambda o: not _decentralized(o) and o["algorithm"] not in _asynchronous(),
                  "synchronous server-based algorithms"),
    "server_lr": (lambda o: not _decentralized(o), "server-based algorithms"),
    "join_timeout": (lambda o: o["coordinator"] is not None, "multi-host runs (--coordinator)"),
    "tiers": (lambda o: o["profiles"] == "tiered", "--profiles tiered"),
    "buffer_size": (lambda o: o["algorithm"] == "fedbuff", "--algorithm fedbuff"),
    "aggregator": (lambda o: _aggregates(o), "synchronous server-based algorithms and fedbuff"),
    **{name: (lambda o: _dp(o), "--aggregator dp (synchronous server-based algorithms and fedbuff)")
       for name in ("dp_clip", "dp_noise_multiplier", "dp_delta", "dp_quantile")},
    "attack": (lambda o: _aggregates(o), "synchronous server-based algorithms and fedbuff"),
    **{name: (lambda o: o["attack"] != "none", "--attack") for name in ("byzantine_fraction", "attack_strength")},
    "dp_epsilon": (lambda o: _dp(o) and o["algorithm"] not in _asynchronous() and o["attack"] == "none",
                   "--aggregator dp with a synchronous server-based algorithm and no --attack (the rounds that "
                   "account an epsilon)"),
}


def _aggregates(o: dict) -> bool:
    """The algorithm combines updates on a server (the synchronous server algorithms and fedbuff)."""
    return not _decentralized(o) and o["algorithm"] not in set(_asynchronous()) - {"fedbuff"}


def _dp(o: dict) -> bool:
    """DP-FedAvg's aggregator on an algorithm that aggregates."""
    return str(o["aggregator"]).split(":")[0] == "dp" and _aggregates(o)


def _asynchronous():
    from edgejax.algorithms import ASYNCHRONOUS

    return ASYNCHRONOUS


def _decentralized(o: dict) -> bool:
    from edgejax.algorithms import DECENTRALIZED

    return o["algorithm"] in DECENTRALIZED


def check_types(values: dict, defaults: dict, source: str) -> None:
    """``ValueError`` naming the first option in ``values`` whose type is wrong (TOML files are untyped)."""
    for name, value in values.items():
        accepted = _accepted(name, defaults[name])
        if value is None or (isinstance(value, bool) and bool not in accepted) or not isinstance(value, accepted):
            names = " or ".join(t.__name__ for t in accepted)
            raise ValueError(f"option {name} in {source} must be {names}; got {value!r} ({type(value).__name__})")
        if name == "hparam" and not all(isinstance(v, str) for v in value):
            raise ValueError(f"option hparam in {source} must be a list of 'NAME=VALUE' strings; got {value!r}")


def _accepted(name: str, default) -> tuple[type, ...]:
    if name in _TYPES:
        return _TYPES[name]
    return (float, int) if isinstance(default, float) else (type(default),)


def check_applicable(options: dict, given: set) -> None:
    """``ValueError`` naming an option that was given but does nothing with the other options."""
    if options["topology"] == "schedule":
        raise ValueError("--topology schedule needs a sequence of graphs; build Topology('schedule', ...) "
                         "in Python instead")
    if "keep_checkpoints" in given and options["checkpoint_every"] is None:
        raise ValueError(f"--keep-checkpoints {options['keep_checkpoints']} does nothing without --checkpoint-every "
                         "(no checkpoints are saved); give --checkpoint-every K or drop it")
    for name in sorted(given & set(_APPLIES)):
        applies, where = _APPLIES[name]
        if not applies(options):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} does not apply here (algorithm {options['algorithm']}, dataset "
                             f"{options['dataset']}, model {options['model']}); it only applies to {where}")


def parse_hidden(value) -> tuple[int, ...]:
    """MLP hidden widths from ``"128,64"``, ``128`` or ``[128, 64]``; each a positive integer."""
    parts = value if isinstance(value, list) else str(value).split(",")
    try:
        widths = tuple(int(str(h).strip()) for h in parts if str(h).strip())
    except ValueError:
        raise ValueError(f"--hidden must be comma-separated positive integers; got {value!r}") from None
    if any(w < 1 for w in widths):
        raise ValueError(f"--hidden widths must be positive integers; got {value!r}")
    return widths



class ShowDefaults(argparse.RawDescriptionHelpFormatter):
    """``--help`` with each option's default, except flags, ``None`` defaults and help that
    already says its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.nargs == 0 or action.default is None or "default" in text or not action.option_strings:
            return text
        default = action.default
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown})"
