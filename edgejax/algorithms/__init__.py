"""Training algorithms: small frozen dataclasses of options with pure methods, one protocol.

The protocol every algorithm follows is ``edgejax.algorithms.base``; server-based rounds
are composed from ``edgejax.algorithms.server``.
Server-based: ``FedAvg`` (+ FedAvgM, FedAdagrad, FedAdam, FedYogi through its server optimizer;
FedProx and FedNova as options), ``FedDF`` (FedAvg + server-side ensemble distillation), ``SCAFFOLD``, ``FedDyn``, ``CompressedFedAvg`` (quantized, top-k or
low-rank uplink, optional error feedback).
Asynchronous (a round is a tick of the event clock): ``FedAsync``, ``FedBuff``, ``AsyncSGD``,
``DCASGD``, ``ExactDCASGD``; decentralized ``ADPSGD``.
Heterogeneous models per device: ``SubmodelFedAvg`` over ``WidthScaled`` (HeteroFL, FjORD,
FedRolex) or ``ClassSubsets`` (Chen & Qin 2020) sub-models; ``FedMD`` (federated distillation:
nodes keep their own models and exchange logits on a public set, optionally over sub-models).
Split learning (the model cut at a layer, the lower layers on the devices): ``SplitFed``
(SFLV1, SFLV2), ``SplitLearning`` (vanilla, sequential); ``SplitModel``, ``activation_rows``.
Personalized (each node's own model, judged on its own data): ``FineTuned`` (FedAvg + local
fine-tuning), ``Ditto``, ``FedRep``, ``APFL``; ``personalized_report`` (mean, worst 10%, spread).
Lightweight training: ``PrunedFedAvg`` (gradual magnitude pruning of the global model, unstructured
or whole neurons), ``QuantizedFedAvg`` (int-b models and updates on the links).
Aggregators (how a server combines updates; ``FedAvg(aggregator=...)``, ``FedBuff(aggregator=...)``):
``Mean`` (the default), ``CoordinateMedian``, ``TrimmedMean``; over whole updates ``Krum``, ``MultiKrum``,
``GeometricMedian`` (RFA), ``CenteredClipping``, ``NormBounded``.
Decentralized: ``DPSGD``, ``PushSum`` (SGP), ``CHOCO`` (compressed gossip), ``PairwiseGossip``,
``DIGing`` (gradient tracking), each over a ``Topology``.
"""
from edgejax.algorithms.aggregation import Aggregator, Mean
from edgejax.algorithms.apfl import APFL
from edgejax.algorithms.async_gossip import ADPSGD
from edgejax.algorithms.asynchronous import DCASGD, AsyncSGD, FedAsync, FedBuff, staleness_weight
from edgejax.algorithms.byzantine_aggregators import (CenteredClipping, GeometricMedian, Krum, MultiKrum,
                                                     NormBounded)
from edgejax.algorithms.base import (Algorithm, AsynchronousAlgorithm, DescribedByFields, EvaluatesServerModel, Payload,
                                    Traits, describe_algorithm)
from edgejax.algorithms.decentralized import CHOCO, DPSGD, PairwiseGossip, PushSum, consensus_distance
from edgejax.algorithms.delay_compensation import ExactDCASGD
from edgejax.algorithms.distillation import FedMD
from edgejax.algorithms.ditto import Ditto
from edgejax.algorithms.fedavg import PRESETS, FedAvg
from edgejax.algorithms.class_subsets import ClassSubsets
from edgejax.algorithms.compressed_uplink import CompressedFedAvg, LowRank
from edgejax.algorithms.feddf import FedDF
from edgejax.algorithms.feddyn import FedDyn
from edgejax.algorithms.fedrep import FedRep
from edgejax.algorithms.finetune import FineTuned
from edgejax.algorithms.gradient_tracking import DIGing
from edgejax.algorithms.heterogeneous import SubmodelFedAvg
from edgejax.algorithms.pruning import PrunedFedAvg
from edgejax.algorithms.quantized import QuantizedFedAvg
from edgejax.algorithms.scaffold import SCAFFOLD
from edgejax.algorithms.split_learning import SplitFed, SplitLearning, SplitModel, activation_rows
from edgejax.algorithms.personalized import personalized_report
from edgejax.algorithms.attacks import ATTACKS, Attacked, flip_labels
from edgejax.algorithms.local_privacy import LocalDP, local_epsilon
from edgejax.algorithms.privacy import GaussianDP, noise_for_epsilon
from edgejax.algorithms.robust_aggregators import CoordinateMedian, TrimmedMean
from edgejax.algorithms.registry import (ALGORITHMS, ASYNCHRONOUS, DECENTRALIZED, LIGHTWEIGHT, PERSONALIZED, SPLIT,
                                         get_algorithm, parse_compressor)
from edgejax.algorithms.server import linear, proximal
from edgejax.algorithms.server_optimizers import SERVER_OPTIMIZERS, make_server_optimizer, scale_by_adaptive_server
from edgejax.network.spec import GRAPHS, NetworkState, Topology
from edgejax.algorithms.widths import HETEROFL_LEVELS, WidthScaled, tier_rates

__all__ = ["ALGORITHMS", "Algorithm", "CHOCO", "ClassSubsets", "CompressedFedAvg", "DECENTRALIZED", "DPSGD",
           "FedAvg", "FedDyn", "FedMD", "GRAPHS", "HETEROFL_LEVELS", "LowRank", "NetworkState", "PRESETS",
           "PairwiseGossip",
           "Payload", "PushSum", "SCAFFOLD", "SERVER_OPTIMIZERS", "SubmodelFedAvg", "Topology", "Traits",
           "WidthScaled", "consensus_distance", "DescribedByFields", "EvaluatesServerModel", "describe_algorithm", "get_algorithm", "linear",
           "make_server_optimizer", "parse_compressor", "proximal", "scale_by_adaptive_server", "tier_rates",
           "ADPSGD", "ASYNCHRONOUS", "AsyncSGD", "DCASGD", "FedAsync", "FedBuff", "staleness_weight",
           "APFL", "Ditto", "FedRep", "FineTuned", "PERSONALIZED", "personalized_report",
           "Aggregator", "AsynchronousAlgorithm", "CoordinateMedian", "DIGing", "ExactDCASGD", "FedDF", "Mean",
           "TrimmedMean", "GaussianDP", "noise_for_epsilon", "LocalDP", "local_epsilon", "ATTACKS", "Attacked", "flip_labels", "CenteredClipping", "GeometricMedian", "Krum", "MultiKrum", "NormBounded",
           "SPLIT", "SplitFed", "SplitLearning", "SplitModel", "activation_rows",
           "LIGHTWEIGHT", "PrunedFedAvg", "QuantizedFedAvg"]
