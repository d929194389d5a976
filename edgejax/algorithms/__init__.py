"""Training algorithms: small frozen dataclasses of options with pure ``init``/``round`` methods."""
from edgejax.algorithms.fedavg import PRESETS, FedAvg, fedavg, get_algorithm
from edgejax.algorithms.server_optimizers import SERVER_OPTIMIZERS, make_server_optimizer, scale_by_adaptive_server

ALGORITHMS = tuple(PRESETS)

__all__ = ["ALGORITHMS", "FedAvg", "SERVER_OPTIMIZERS", "fedavg", "get_algorithm", "make_server_optimizer",
           "scale_by_adaptive_server"]
