"""Neighbour-list construction of rings, tori and exponential graphs equals the dense path."""
from __future__ import annotations

import numpy as np
import pytest

from edgejax import network as tp
from edgejax.network.spec import Topology, _near_square
from edgejax.network.circulant import circulant_operator


@pytest.mark.parametrize("n", [2, 3, 12, 97, 120])
@pytest.mark.parametrize("graph,directed,weights", [
    ("ring", False, "metropolis"), ("ring", False, "lazy_metropolis"), ("torus", False, "metropolis"),
    ("torus", False, "uniform"), ("exponential", False, "metropolis"), ("exponential", True, "uniform"),
    ("exponential", True, "column"), ("ring", False, "column")])
def test_circulant_operator_equals_the_dense_construction(n, graph, directed, weights):
    topology = Topology(graph, weights=weights, directed=directed, representation="sparse")
    dense_path = tp.mixing_operator(topology.matrix(n), "sparse", check="column" if weights == "column" else "row")
    rows = _near_square(n)[0] if graph == "torus" else 1
    lists = circulant_operator(n, graph, weights, rows=rows, directed=directed and graph == "exponential")
    np.testing.assert_array_equal(np.asarray(lists.neighbours), np.asarray(dense_path.neighbours))
    np.testing.assert_allclose(np.asarray(lists.weights), np.asarray(dense_path.weights), rtol=0, atol=4e-16)


def test_large_graphs_take_the_neighbour_list_path_without_an_n_squared_matrix():
    state = Topology("torus").init_state(200_003)   # prime: a 1 x N torus, i.e. a ring
    assert state.mixing.neighbours.shape == (200_003, 3)
    np.testing.assert_allclose(np.asarray(state.mixing.weights).sum(axis=1), 1.0, atol=1e-6)


def test_metropolis_weights_on_a_directed_graph_are_rejected():
    with pytest.raises(ValueError, match="undirected"):
        circulant_operator(16, "exponential", "metropolis", directed=True)


@pytest.mark.parametrize("graph,directed", [("ring", False), ("torus", False), ("exponential", True),
                                            ("exponential", False)])
def test_max_out_degree_from_lists_equals_the_adjacency(graph, directed):
    topology, n = Topology(graph, directed=directed, weights="uniform"), 2050
    assert topology.max_out_degree(n) == int(tp.out_degrees(topology.adjacency_matrix(n)).max())
