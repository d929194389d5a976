"""Algorithms by name, for the CLI and configuration files."""
from __future__ import annotations

import functools

from edgejax import compression
from edgejax.algorithms.aggregation import Mean
from edgejax.algorithms.byzantine_aggregators import CenteredClipping, GeometricMedian, Krum, MultiKrum, NormBounded
from edgejax.algorithms.local_privacy import LocalDP
from edgejax.algorithms.privacy import GaussianDP
from edgejax.algorithms.robust_aggregators import CoordinateMedian, TrimmedMean
from edgejax.algorithms.async_gossip import ADPSGD
from edgejax.algorithms.asynchronous import DCASGD, AsyncSGD, FedAsync, FedBuff
from edgejax.algorithms.apfl import APFL
from edgejax.algorithms.compressed_uplink import CompressedFedAvg
from edgejax.algorithms.ditto import Ditto
from edgejax.algorithms.decentralized import CHOCO, DPSGD, PairwiseGossip, PushSum
from edgejax.algorithms.delay_compensation import ExactDCASGD
from edgejax.algorithms.distillation import FedMD
from edgejax.algorithms.fedavg import PRESETS, FedAvg
from edgejax.algorithms.feddf import FedDF
from edgejax.algorithms.feddyn import FedDyn
from edgejax.algorithms.fedrep import FedRep
from edgejax.algorithms.gradient_tracking import DIGing
from edgejax.algorithms.finetune import FineTuned
from edgejax.algorithms.heterogeneous import SubmodelFedAvg
from edgejax.algorithms.pruning import PrunedFedAvg
from edgejax.algorithms.quantized import QuantizedFedAvg
from edgejax.algorithms.scaffold import SCAFFOLD
from edgejax.algorithms.split_learning import SplitFed, SplitLearning

DECENTRALIZED = {"dpsgd": DPSGD, "pushsum": PushSum, "choco": CHOCO, "pairwise": PairwiseGossip, "adpsgd": ADPSGD,
                 "diging": DIGing}
SERVER_BASED = {"scaffold": SCAFFOLD, "feddyn": FedDyn}
ASYNCHRONOUS = {"fedasync": FedAsync, "fedbuff": FedBuff, "async_sgd": AsyncSGD, "dcasgd": DCASGD,
                "dcasgd_exact": ExactDCASGD}
ALGORITHMS = (*PRESETS, *SERVER_BASED, *ASYNCHRONOUS, *DECENTRALIZED)
# built from Python objects (a sub-model scheme over a model, a compressor, a public set), so not among the
# CLI's ALGORITHMS
PYTHON_ONLY = {"submodels": SubmodelFedAvg, "compressed_fedavg": CompressedFedAvg, "fedmd": FedMD, "feddf": FedDF}
# personalized FL (each node's own model judged on its own data): Python API only for now (FedRep and APFL are
# built over a model; the CLI's option checks do not know these algorithms)
PERSONALIZED = {"finetune": FineTuned, "ditto": Ditto, "fedrep": FedRep, "apfl": APFL}
# split learning over a cut model (built over a model and the rows each node sends): Python API only
SPLIT = {"splitfed_v1": functools.partial(SplitFed, variant="v1"),
         "splitfed_v2": functools.partial(SplitFed, variant="v2"), "split_learning": SplitLearning}
# lightweight training (pruned or quantized models): Python API only for now (pruning is built over a model)
LIGHTWEIGHT = {"pruned_fedavg": PrunedFedAvg, "quantized_fedavg": QuantizedFedAvg}
COMPRESSORS = {"none": compression.Identity, "topk": compression.TopK, "randomk": compression.RandomK,
               "qsgd": compression.QSGD, "sign": compression.Sign}


def get_algorithm(name: str, **options):
    """An algorithm by name: the FedAvg family (``fedavg``, ``fedavgm``, ``fedadagrad``,
    ``fedadam``, ``fedyogi``, ``fedprox``, ``fednova``), ``scaffold``, ``feddyn``, an asynchronous one (``fedasync``, ``fedbuff``,
    ``async_sgd``, ``dcasgd``, ``dcasgd_exact``), a decentralized
    one (``dpsgd``, ``pushsum``, ``choco``, ``pairwise``, ``adpsgd``: asynchronous, ``diging``: gradient tracking), ``submodels``
    (``SubmodelFedAvg``: give ``scheme=WidthScaled(...)`` or ``ClassSubsets(...)``) or ``compressed_fedavg``
    (``CompressedFedAvg``: give ``compressor=...``) or ``fedmd`` (``FedMD``: give ``model=...``,
    ``public_x=...``) or ``feddf`` (``FedDF``: FedAvg + server-side ensemble distillation; give
    ``public_x=...``); a personalized one: ``finetune`` (``FineTuned``: FedAvg then local fine-tuning; give
    ``base=FedAvg(...)``, ``finetune_steps=k``), ``ditto`` (``Ditto``), ``fedrep`` (``FedRep``: give ``model=...``,
    ``head=(...)``) or ``apfl`` (``APFL``: give ``model=...``); split learning: ``splitfed_v1``, ``splitfed_v2``
    (``SplitFed`` with that ``variant``) or ``split_learning`` (``SplitLearning``), each given ``model=...``,
    ``cut=...``, ``rows=activation_rows(local, data.node_counts())``; a lightweight one: ``pruned_fedavg``
    (``PrunedFedAvg``: give ``model=...``, ``final_sparsity=s``) or ``quantized_fedavg`` (``QuantizedFedAvg``:
    int-``bits`` downlink and uplink); ``options`` are the dataclass's fields
    (e.g. ``weighting``, ``topology``)."""
    if name in PRESETS:
        return FedAvg(**{**PRESETS[name], **options})
    if name in SERVER_BASED:
        return SERVER_BASED[name](**options)
    if name in ASYNCHRONOUS:
        return ASYNCHRONOUS[name](**options)
    if name in DECENTRALIZED:
        return DECENTRALIZED[name](**options)
    if name in PYTHON_ONLY:
        return PYTHON_ONLY[name](**options)
    if name in PERSONALIZED:
        return PERSONALIZED[name](**options)
    if name in SPLIT:
        return SPLIT[name](**options)
    if name in LIGHTWEIGHT:
        return LIGHTWEIGHT[name](**options)
    choices = (*ALGORITHMS, *PYTHON_ONLY, *PERSONALIZED, *SPLIT, *LIGHTWEIGHT)
    raise ValueError(f"unknown algorithm {name!r}; choose from {choices}")


AGGREGATOR_SPELLINGS = ("'mean', 'median', 'trimmed_mean:<trim>', 'krum:<f>', 'multikrum:<f>:<m>', 'geomedian', "
                        "'cclip', 'normbound', 'dp', 'dp:<delta>', 'ldp', 'ldp:<delta>'")


def parse_aggregator(spec: str):
    """``mean``, ``median`` (``CoordinateMedian``), ``trimmed_mean:<trim>`` (``TrimmedMean``),
    ``krum:<f>`` (``Krum(byzantine=f)``), ``multikrum:<f>:<m>`` (``MultiKrum(byzantine=f, select=m)``),
    ``geomedian`` (``GeometricMedian()``), ``cclip`` (``CenteredClipping()``: its radius is the traced
    ``cclip_tau``), ``normbound`` (``NormBounded()``: its bound is the traced ``norm_bound``) and ``dp`` /
    ``dp:<delta>`` (``GaussianDP``: DP-FedAvg, traced ``dp_clip`` and ``dp_noise_multiplier``), ``ldp`` /
    ``ldp:<delta>`` (``LocalDP``: every node's update clipped and noised on the device, traced ``ldp_clip``
    and ``ldp_noise_multiplier``)."""
    kind, _, arg = spec.strip().lower().partition(":")
    args = arg.split(":") if arg else []
    simple = {"mean": Mean, "median": CoordinateMedian, "geomedian": GeometricMedian, "cclip": CenteredClipping,
              "normbound": NormBounded}
    try:
        if kind in simple and not args:
            return simple[kind]()
        if kind == "dp" and len(args) <= 1:
            return GaussianDP(delta=float(args[0])) if args else GaussianDP()
        if kind == "ldp" and len(args) <= 1:
            return LocalDP(delta=float(args[0])) if args else LocalDP()
        if kind == "trimmed_mean" and len(args) == 1:
            return TrimmedMean(float(args[0]))
        if kind == "krum" and len(args) == 1:
            return Krum(byzantine=_count(args[0]))
        if kind == "multikrum" and len(args) == 2:
            return MultiKrum(byzantine=_count(args[0]), select=_count(args[1]))
    except ValueError as err:
        raise ValueError(f"bad aggregator {spec!r}: {err}") from err
    raise ValueError(f"bad aggregator {spec!r}; accepted: {AGGREGATOR_SPELLINGS}")


def _count(text: str) -> int:
    """A whole number written in an aggregator spec (``ValueError`` naming it otherwise)."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def parse_compressor(spec: str) -> compression.Compressor:
    """``none``, ``topk:<fraction>``, ``randomk:<fraction>``, ``qsgd:<levels>``, ``sign``."""
    kind, _, arg = spec.strip().lower().partition(":")
    accepted = "'none', 'topk:<fraction>', 'randomk:<fraction>', 'qsgd:<levels>', 'sign'"
    try:
        if kind in ("none", "sign") and not arg:
            return COMPRESSORS[kind]()
        if kind in ("topk", "randomk") and arg:
            return COMPRESSORS[kind](fraction=float(arg))
        if kind == "qsgd" and arg:
            return compression.QSGD(levels=int(arg))
    except ValueError as err:
        raise ValueError(f"bad compressor {spec!r}: {err}") from err
    raise ValueError(f"bad compressor {spec!r}; accepted: {accepted}")
