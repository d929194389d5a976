"""Past one device: the node axis over a device mesh (``nodes``) and across hosts; pipeline
(model) partitioning and hybrid data x pipeline parallelism.

``nodes`` and ``multihost`` import nothing of edgejax (the round loop uses them); the
pipeline modules build on the round loop's execution strategies, so their names are
imported on first use (PEP 562) to keep the package importable from ``edgejax.core``.
"""
import importlib

from edgejax.parallel.multihost import global_node_array, initialize, is_main_process
from edgejax.parallel.nodes import NODES, NodeAxis, map_nodes_sharded, node_mesh

_LAZY = {"Pipelined": "hybrid", "REPLICAS": "hybrid", "STAGES": "pipeline", "pipeline_value_and_grad": "pipeline",
         "stage_value_and_grad": "pipeline", "StagePlan": "stages", "layer_train_flops": "stages",
         "plan_stages": "stages"}

__all__ = ["NODES", "NodeAxis", "global_node_array", "initialize", "is_main_process", "map_nodes_sharded",
           "node_mesh", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"edgejax.parallel.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edgejax.parallel' has no attribute {name!r}")
