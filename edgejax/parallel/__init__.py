"""Past one device: the node axis over a device mesh (``nodes``), across hosts."""
from edgejax.parallel.multihost import global_node_array, initialize, is_main_process
from edgejax.parallel.nodes import NODES, NodeAxis, map_nodes_sharded, node_mesh

__all__ = ["NODES", "NodeAxis", "global_node_array", "initialize", "is_main_process", "map_nodes_sharded",
           "node_mesh"]
