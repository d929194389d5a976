"""Host-resident node data (edgejax.data.host): the cohort streamed each round gives the
same run as the same nodes' data on the device."""
from __future__ import annotations

import numpy as np
import pytest

import edgejax as ej
from edgejax.data.federated import FederatedData, pad_nodes, pad_test
from edgejax.data.host import HostSamples, host_federate


def _problem(seed=0, nodes=12, dim=5, classes=3):
    rng = np.random.default_rng(seed)
    pool_x = rng.integers(0, 256, size=(60, dim)).astype(np.uint8)
    pool_y = rng.integers(0, classes, size=60).astype(np.int32)
    # nodes share pool rows (more clients than samples), sizes 2..7
    parts = [rng.choice(60, size=2 + i % 6, replace=False) for i in range(nodes)]
    test_x, test_y = rng.integers(0, 256, size=(20, dim)).astype(np.uint8), rng.integers(0, classes, 20).astype(np.int32)
    return pool_x, pool_y, parts, test_x, test_y


def _device_twin(pool_x, pool_y, parts, test_x, test_y, scale):
    x = pool_x.astype(np.float32) * np.float32(scale)
    train = pad_nodes(x, pool_y, parts)
    return FederatedData(train=train, local_test=pad_nodes(x, pool_y, [p[:1] for p in parts]),
                         test=pad_test(test_x.astype(np.float32) * np.float32(scale), test_y), num_classes=3,
                         name="twin")


@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold", "fedbuff"])
def test_streamed_cohorts_equal_device_resident_data(algorithm):
    problem = _problem()
    host = host_federate(*problem, num_classes=3, scale=1 / 255)
    device = _device_twin(*problem, scale=1 / 255)
    model, local = ej.models.logistic_regression((5,), 3), ej.LocalTraining(batch_size=2, steps=3)
    runs = [ej.Simulation(model, data, ej.get_algorithm(algorithm), local, clients_per_round=5).run(6, eval_every=3)
            for data in (host, device)]
    for key in runs[0].rounds:
        np.testing.assert_array_equal(runs[0].rounds[key], runs[1].rounds[key], err_msg=key)
    np.testing.assert_array_equal(runs[0].evals["test_accuracy"], runs[1].evals["test_accuracy"])
    assert "node_accuracy_mean" not in runs[0].evals and "node_accuracy_mean" in runs[1].evals


def test_gather_pads_with_zeros_and_converts_the_pool():
    source = HostSamples(np.array([[10], [20], [30]], np.uint8), np.array([0, 1, 2]), np.array([[2, 0], [1, 1]]),
                         np.array([2, 1]), scale=0.5)
    x, y, count = source.gather(np.array([1, 0]))
    np.testing.assert_array_equal(x[..., 0], [[10.0, 0.0], [15.0, 5.0]])
    np.testing.assert_array_equal(y, [[1, 0], [2, 0]])
    np.testing.assert_array_equal(count, [1, 2])
    assert x.dtype == np.float32


def test_bad_host_data_is_rejected_before_compute():
    with pytest.raises(ValueError, match="node 1 indexes pool row 9"):
        HostSamples(np.zeros((3, 2)), np.zeros(3), np.array([[0, 1], [9, 0]]), np.array([2, 1]))
    with pytest.raises(ValueError, match="counts must be in"):
        HostSamples(np.zeros((3, 2)), np.zeros(3), np.array([[0, 1]]), np.array([3]))
    host = host_federate(*_problem(), num_classes=3, scale=1 / 255)
    with pytest.raises(ValueError, match="needs the node data on the device"):
        ej.Simulation(ej.models.logistic_regression((5,), 3), host, ej.DPSGD(ej.Topology("ring")),
                      ej.LocalTraining(batch_size=2, steps=1))


def test_class_subsets_read_the_labels_of_host_resident_nodes():
    from edgejax.algorithms.class_subsets import data_classes

    problem = _problem()
    host = host_federate(*problem, num_classes=3, scale=1 / 255)
    assert data_classes(host) == data_classes(_device_twin(*problem, scale=1 / 255))
