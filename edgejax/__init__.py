"""edgejax: a vectorized JAX simulation kernel for collaborative training across edge devices.

All N nodes are one array axis; a round for every node is one jit-compiled program.
"""
from edgejax import algorithms, data, models
from edgejax import compression, network, parallel, system
from edgejax.algorithms import (ADPSGD, CHOCO, DIGing, DPSGD, Aggregator, Algorithm, AsyncSGD, Attacked, CenteredClipping,
                                CoordinateMedian, DCASGD, ExactDCASGD, FedAsync, FedAvg, FedBuff, FedDF, FedDyn,
                                GaussianDP, GeometricMedian, Krum, LocalDP, Mean, MultiKrum, NormBounded, PairwiseGossip, PrunedFedAvg, PushSum,
                                QuantizedFedAvg, SCAFFOLD, SplitFed, SplitLearning, Topology, TrimmedMean, get_algorithm)
from edgejax.core.callbacks import Chunk, StopAt, TensorBoard
from edgejax.core.compile_cache import enable_compilation_cache
from edgejax.core.execution import Needs, RoundContext
from edgejax.core.local import LocalTerm, LocalTraining
from edgejax.data.federated import FederatedData, NodeData, TestData, federate
from edgejax.core.results import Results
from edgejax.core.runner import DivergenceError, RunFailed, RunInterrupted
from edgejax.core.simulation import Simulation
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState
from edgejax.system import Availability, SystemModel

__version__ = "0.1.0"


def __getattr__(name: str):
    """``edgejax.sweep`` (sweeps, tables, plots) is imported on first use."""
    if name == "sweep":
        import importlib

        return importlib.import_module("edgejax.sweep")
    raise AttributeError(f"module 'edgejax' has no attribute {name!r}")


__all__ = ["Chunk", "StopAt", "TensorBoard", "ADPSGD", "DIGing", "ExactDCASGD", "FedDF", "Aggregator", "Algorithm", "Availability", "CoordinateMedian", "Mean", "TrimmedMean", "GaussianDP", "LocalDP", "Attacked", "Krum", "MultiKrum", "GeometricMedian", "CenteredClipping", "NormBounded", "PrunedFedAvg", "QuantizedFedAvg", "CHOCO", "DPSGD", "AsyncSGD", "DCASGD", "DivergenceError", "FedAsync", "FedAvg", "FedBuff", "FedDyn", "LocalTerm", "Needs", "RoundContext", "FederatedData", "LocalTraining",
           "NodeData", "NodeState", "PairwiseGossip", "PushSum", "Results", "RoundPlan", "RunFailed", "RunInterrupted", "SCAFFOLD",
           "ServerState", "SimState", "Simulation", "SplitFed", "SplitLearning", "SystemModel", "TestData", "Topology",
           "algorithms", "compression", "data", "enable_compilation_cache", "federate", "get_algorithm", "models",
           "network", "sweep", "system"]
