"""edgejax: a vectorized JAX simulation kernel for collaborative training across edge devices.

All N nodes are one array axis; a round for every node is one jit-compiled program.
"""
from edgejax import algorithms, data, models
from edgejax import compression, topology
from edgejax.algorithms import CHOCO, DPSGD, FedAvg, PairwiseGossip, PushSum, SCAFFOLD, Topology, get_algorithm
from edgejax.core.local import LocalTraining
from edgejax.core.nodedata import FederatedData, NodeData, TestData, federate
from edgejax.core.results import Results
from edgejax.core.simulation import DivergenceError, Simulation
from edgejax.core.state import NodeState, RoundPlan, ServerState, SimState

__version__ = "0.1.0"

__all__ = ["CHOCO", "DPSGD", "DivergenceError", "FedAvg", "PairwiseGossip", "PushSum", "SCAFFOLD", "Topology", "compression",
           "topology", "FederatedData", "LocalTraining", "NodeData", "NodeState", "Results",
           "RoundPlan", "ServerState", "SimState", "Simulation", "TestData", "algorithms", "data", "federate",
           "get_algorithm", "models"]
