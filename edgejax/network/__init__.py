"""Communication topologies for decentralized training: graphs, mixing weights, gossip operators.

- :mod:`~edgejax.network.graphs`: host-side boolean adjacency matrices (``adj[i, j]``: i sends
  to j), from rings and tori to exponential graphs (Ying et al. 2021), random regular and
  Erdos-Renyi graphs, with connectivity checks.
- :mod:`~edgejax.network.weights`: host-side float64 mixing matrices (Metropolis-Hastings,
  Xiao & Boyd 2004, as used by D-PSGD, Lian et al. 2017; uniform; column-stochastic push-sum
  weights, Assran et al. 2019 SGP; one-peer exponential), validators and the spectral gap.
- :mod:`~edgejax.network.mixing`: JAX operators (:class:`Dense` matrix or :class:`Sparse`
  neighbour lists, same numbers), :func:`mix`, link failures and dropouts drawn inside ``jit``,
  and randomized pairwise gossip (Boyd et al. 2006).
- :mod:`~edgejax.network.spec`: :class:`Topology`, the static description of a decentralized
  run's graph (family, weights, representation) that the gossip algorithms take; its arrays
  live in ``SimState.network`` (:class:`NetworkState`).
"""
from edgejax.network.graphs import complete, components, erdos_renyi, exponential, from_adjacency, from_edges, \
    in_degrees, is_connected, is_symmetric, num_edges, one_peer_exponential, out_degrees, random_regular, ring, \
    star, torus
from edgejax.network.mixing import Dense, NeighbourTable, Sparse, choose_representation, draw_live_edges, \
    live_metropolis_hastings, mix, mixing_operator, neighbour_table, one_peer_exponential_operator, \
    pairwise_average, random_matching, to_dense, to_sparse
from edgejax.network.weights import check_column_stochastic, check_connected, check_doubly_stochastic, \
    check_nonnegative, check_row_stochastic, check_square, check_symmetric, column_stochastic, lazy, \
    metropolis_hastings, one_peer_exponential_weights, second_eigenvalue_modulus, spectral_gap, uniform_weights
from edgejax.network.spec import GRAPHS, WEIGHTS, NetworkState, Topology  # last: spec builds on the modules above

__all__ = [
    # graphs
    "complete", "components", "erdos_renyi", "exponential", "from_adjacency", "from_edges", "in_degrees",
    "is_connected", "is_symmetric", "num_edges", "one_peer_exponential", "out_degrees", "random_regular", "ring",
    "star", "torus",
    # weights
    "check_column_stochastic", "check_connected", "check_doubly_stochastic", "check_nonnegative",
    "check_row_stochastic", "check_square", "check_symmetric", "column_stochastic", "lazy", "metropolis_hastings",
    "one_peer_exponential_weights", "second_eigenvalue_modulus", "spectral_gap", "uniform_weights",
    # mixing
    "Dense", "NeighbourTable", "Sparse", "choose_representation", "draw_live_edges", "live_metropolis_hastings",
    "mix", "mixing_operator", "neighbour_table", "one_peer_exponential_operator", "pairwise_average",
    "random_matching", "to_dense", "to_sparse",
    # the config
    "GRAPHS", "WEIGHTS", "NetworkState", "Topology",
]
