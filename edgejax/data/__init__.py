"""Datasets (no downloads) and partitioners that split them over nodes."""
from edgejax.data.datasets import (DATASETS, Dataset, default_data_dir, from_arrays, load_dataset, load_digits,
                                   load_fsdd, load_mnist, load_mnist1d, load_npz, load_synthetic, read_idx)
from edgejax.data.text import LEAF_VOCAB, load_shakespeare
from edgejax.data.federated import FederatedData, NodeData, TestData, federate, pad_nodes, pad_test
from edgejax.data.partition import (IID, PARTITIONERS, Dirichlet, Natural, QuantitySkew, Shards,
                                    format_partition_summary, parse_partition, partition, partition_summary)

__all__ = ["DATASETS", "LEAF_VOCAB", "load_shakespeare", "Dataset", "Dirichlet", "FederatedData", "NodeData", "TestData", "federate", "pad_nodes", "pad_test", "IID", "Natural", "PARTITIONERS", "QuantitySkew", "Shards",
           "default_data_dir", "format_partition_summary", "from_arrays", "load_dataset", "load_digits", "load_fsdd",
           "load_mnist", "load_mnist1d", "load_npz", "load_synthetic", "parse_partition", "partition", "partition_summary",
           "read_idx"]
