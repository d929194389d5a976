"""Datasets (no downloads) and partitioners that split them over nodes."""
from edgejax.data.datasets import (DATASETS, Dataset, default_data_dir, from_arrays, load_dataset, load_digits,
                                   load_fsdd, load_mnist, load_mnist1d, load_npz, load_synthetic, read_idx)
from edgejax.data.readers import load_cifar10, load_cifar100, load_leaf, read_leaf_json
from edgejax.data.text import LEAF_VOCAB, load_shakespeare
from edgejax.data.federated import FederatedData, NodeData, TestData, federate, pad_nodes, pad_test
from edgejax.data.partition import (IID, PARTITIONERS, Dirichlet, Natural, QuantitySkew, Shards,
                                    format_partition_summary, parse_partition, partition, partition_summary)

__all__ = ["DATASETS", "LEAF_VOCAB", "load_cifar10", "load_cifar100", "load_leaf", "load_shakespeare", "read_leaf_json", "Dataset", "Dirichlet", "FederatedData", "NodeData", "TestData", "federate", "pad_nodes", "pad_test", "IID", "Natural", "PARTITIONERS", "QuantitySkew", "Shards",
           "default_data_dir", "format_partition_summary", "from_arrays", "load_dataset", "load_digits", "load_fsdd",
           "load_mnist", "load_mnist1d", "load_npz", "load_synthetic", "parse_partition", "partition", "partition_summary",
           "read_idx"]
