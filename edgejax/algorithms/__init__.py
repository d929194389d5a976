"""Training algorithms: small frozen dataclasses of options with pure ``init``/``round`` methods.

Server-based: ``FedAvg`` (+ FedAvgM, FedAdagrad, FedAdam, FedYogi through its server optimizer;
FedProx and FedNova as options), ``SCAFFOLD``.
Decentralized: ``DPSGD``, ``PushSum`` (SGP), ``CHOCO`` (compressed gossip), ``PairwiseGossip``,
each over a ``Topology``.
"""
from edgejax.algorithms.decentralized import CHOCO, DPSGD, PairwiseGossip, PushSum, consensus_distance
from edgejax.algorithms.fedavg import PRESETS, FedAvg
from edgejax.algorithms.scaffold import SCAFFOLD
from edgejax.algorithms.registry import ALGORITHMS, DECENTRALIZED, get_algorithm, parse_compressor
from edgejax.algorithms.server_optimizers import SERVER_OPTIMIZERS, make_server_optimizer, scale_by_adaptive_server
from edgejax.algorithms.topology_spec import GRAPHS, Topology

__all__ = ["ALGORITHMS", "CHOCO", "DECENTRALIZED", "DPSGD", "FedAvg", "GRAPHS", "PRESETS", "PairwiseGossip", "PushSum", "SCAFFOLD",
           "SERVER_OPTIMIZERS", "Topology", "consensus_distance", "get_algorithm", "make_server_optimizer",
           "parse_compressor", "scale_by_adaptive_server"]
