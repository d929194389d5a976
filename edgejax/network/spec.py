"""``Topology``: the static description of a decentralized run's communication graph.

It turns a graph family and a weight rule into the mixing operator of each round:

* a fixed graph: one ``Dense`` or ``Sparse`` operator built on the host at ``init``;
* ``one_peer_exponential``: the time-varying graph of round t (Ying et al. 2021), built
  inside the jitted round from ``t``;
* ``schedule``: any user sequence of graphs, round t using graph ``t mod T`` (operators
  stacked on the host, indexed inside the round); each graph may be disconnected (one-peer
  graphs, matchings) as long as the union over the period is connected;
* link failures (``SystemModel(link_failures=True)``: the system model draws which links
  are up each round, ``RoundPlan.live_links``): Metropolis-Hastings weights rebuilt every
  round on the live graph (absent nodes neither send nor receive), so every round's matrix
  stays symmetric and doubly stochastic.

The topology's arrays live in ``SimState.network`` (a ``NetworkState``), not in any
node's or the server's state.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from typing import NamedTuple

from edgejax import network as tp
from edgejax.core.validation import check_choice
from edgejax.network.circulant import CIRCULANT_GRAPHS, circulant_edges, circulant_operator

GRAPHS = ("ring", "torus", "exponential", "one_peer_exponential", "random_regular", "erdos_renyi", "star",
          "complete", "adjacency", "schedule")
WEIGHTS = ("metropolis", "uniform", "lazy_metropolis", "column")
# from this many nodes on, rings, tori and exponential graphs are built as neighbour lists
# (edgejax.network.circulant): the dense N x N construction is what limits N
CIRCULANT_MIN_NODES = 2048


class NetworkState(NamedTuple):
    """The communication graph's arrays in ``SimState.network``: the fixed ``mixing`` operator,
    the ``table`` of neighbours whose links may fail, or the stacked ``schedule`` of operators
    (``()`` where unused)."""

    mixing: tp.Dense | tp.Sparse | tuple = ()
    table: tp.NeighbourTable | tuple = ()
    schedule: tp.Dense | tp.Sparse | tuple = ()


def _near_square(n: int) -> tuple[int, int]:
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
    """A communication graph and its mixing weights (static configuration).

    Attributes:
      graph: one of ``GRAPHS``; ``adjacency`` uses the user's ``adjacency`` matrix,
        ``schedule`` the user's ``schedule`` of adjacency matrices (round t: ``t mod T``).
      weights: ``metropolis`` (w_ij = 1/(1+max(deg_i, deg_j)), doubly stochastic on
        undirected graphs), ``uniform`` (1/(deg_i+1) incl. self, row-stochastic),
        ``lazy_metropolis`` ((I + W_MH)/2), ``column`` (column-stochastic, for push-sum
        on directed graphs).  ``one_peer_exponential`` always uses its 1/2-1/2 weights.
      degree: degree of ``random_regular``; p: edge probability of ``erdos_renyi``.
      directed: the directed static exponential graph (Ying et al.) when True.
      adjacency: a user's ``[N, N]`` boolean adjacency (``adj[i, j]``: i sends to j).
      schedule: a sequence of such adjacency matrices whose union is connected, for ``schedule``.
      representation: ``auto``, ``dense`` or ``sparse`` (same numbers, see
        ``edgejax.network.choose_representation``).
      seed: seed of random graphs.

    ``one_peer_exponential`` (Ying et al. 2021): in round t node i receives from
    ``(i - 2^(t mod tau)) mod N`` (and sends to ``i + 2^(t mod tau)``), each weighing 1/2,
    with ``tau = ceil(log2 N)``.
    """

    graph: str = "ring"
    weights: str = "metropolis"
    degree: int = 4
    p: float = 0.2
    directed: bool = False
    adjacency: np.ndarray | None = None
    schedule: tuple | None = None
    representation: str = "auto"
    seed: int = 0

    def __post_init__(self):
        check_choice("graph", self.graph, GRAPHS)
        check_choice("weights", self.weights, WEIGHTS)
        if (self.graph == "adjacency") != (self.adjacency is not None):
            raise ValueError("pass adjacency= exactly when graph='adjacency'")
        if (self.graph == "schedule") != (self.schedule is not None and len(self.schedule) > 0):
            raise ValueError("pass a non-empty schedule= of adjacency matrices exactly when graph='schedule'")

    def check_link_failures(self) -> None:
        """``ValueError`` unless links can fail on this topology (Metropolis weights, a fixed graph)."""
        if self.weights != "metropolis" or self.time_varying:
            raise ValueError("link failures rebuild Metropolis-Hastings weights on a fixed graph; they need "
                             f"weights='metropolis' and a fixed graph (got weights={self.weights!r}, "
                             f"graph={self.graph!r})")

    @property
    def time_varying(self) -> bool:
        return self.graph in ("one_peer_exponential", "schedule")

    def adjacency_matrix(self, n: int, adjacency=None, connected: bool = True) -> np.ndarray:
        """The fixed graph's boolean adjacency for ``n`` nodes (host); ``adjacency`` overrides
        the user's matrix (one graph of a schedule, checked for connectivity only when
        ``connected``)."""
        builders = {
            "ring": lambda: tp.ring(n),
            "torus": lambda: tp.torus(*_near_square(n)),
            "exponential": lambda: tp.exponential(n, directed=self.directed),
            "random_regular": lambda: tp.random_regular(n, self.degree, seed=self.seed),
            "erdos_renyi": lambda: tp.erdos_renyi(n, self.p, seed=self.seed),
            "star": lambda: tp.star(n),
            "complete": lambda: tp.complete(n),
            "adjacency": lambda: tp.from_adjacency(self.adjacency if adjacency is None else adjacency),
            "schedule": lambda: tp.from_adjacency(adjacency),
        }
        if self.graph not in builders or (self.graph == "schedule" and adjacency is None):
            raise ValueError(f"{self.graph!r} is time-varying and has no fixed adjacency")
        adj = builders[self.graph]()
        if adj.shape[0] != n:
            raise ValueError(f"the adjacency has {adj.shape[0]} nodes but the simulation has N={n}")
        if connected:
            tp.check_connected(adj)
        return adj

    def _as_lists(self, n: int) -> bool:
        """Build the graph as neighbour lists (``edgejax.network.circulant``), not N x N."""
        return n >= CIRCULANT_MIN_NODES and self.graph in CIRCULANT_GRAPHS

    def _circulant_shape(self, n: int) -> dict:
        return {"rows": _near_square(n)[0] if self.graph == "torus" else 1,
                "directed": self.graph == "exponential" and self.directed}

    def max_out_degree(self, n: int, adjacency=None) -> int:
        """The largest number of nodes one node sends to (``adjacency``: one graph of a schedule)."""
        if adjacency is None and self._as_lists(n):
            return int(np.bincount(circulant_edges(n, self.graph, **self._circulant_shape(n))[0], minlength=n).max())
        return int(tp.out_degrees(self.adjacency_matrix(n, adjacency, connected=False)).max())

    def matrix(self, n: int, adjacency=None, connected: bool = True) -> np.ndarray:
        """The fixed graph's mixing matrix (host, float64)."""
        adj = self.adjacency_matrix(n, adjacency, connected)
        if self.weights == "column":
            return tp.column_stochastic(adj)
        if self.weights == "uniform":
            return tp.uniform_weights(adj)
        w = tp.metropolis_hastings(adj)
        return tp.lazy(w, 0.5) if self.weights == "lazy_metropolis" else w

    def init_state(self, n: int, link_failures: bool = False, neighbours: bool = False) -> NetworkState:
        """What the jitted round needs, as arrays: the fixed operator, the neighbour table (whose
        links may fail, or from which asynchronous gossip picks partners: ``neighbours``), or
        the schedule's operators."""
        check = "column" if self.weights == "column" else "row"
        if self.graph == "schedule":
            graphs = [self.adjacency_matrix(n, adj, connected=False) for adj in self.schedule]
            tp.check_connected(np.logical_or.reduce(graphs), name="the union of the schedule's graphs")
            return NetworkState(schedule=self._stacked([self.matrix(n, adj, False) for adj in graphs], check))
        if neighbours:
            if self.time_varying:
                raise ValueError(f"asynchronous gossip needs a fixed graph; got graph={self.graph!r}")
            return NetworkState(table=tp.neighbour_table(self.adjacency_matrix(n)))
        if self.time_varying:
            return NetworkState()
        if link_failures:
            self.check_link_failures()
            return NetworkState(table=tp.neighbour_table(self.adjacency_matrix(n)))
        if self._as_lists(n) and self.representation != "dense":
            return NetworkState(mixing=circulant_operator(n, self.graph, self.weights, **self._circulant_shape(n)))
        return NetworkState(mixing=tp.mixing_operator(self.matrix(n), self.representation, check=check))

    def _stacked(self, matrices, check: str):
        """The schedule's operators stacked on a leading axis (sparse ones padded to one K)."""
        ops = [tp.mixing_operator(w, self.representation, check=check) for w in matrices]
        if isinstance(ops[0], tp.Sparse) or any(isinstance(op, tp.Sparse) for op in ops):
            k = max(int(((w != 0) & ~np.eye(len(w), dtype=bool)).sum(axis=1).max()) for w in matrices)
            ops = [tp.to_sparse(w, max_degree=k) for w in matrices]
        return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *ops)

    def operator(self, network: NetworkState, n: int, round_: jax.Array, plan):
        """This round's mixing operator (inside ``jit``); with failing links, Metropolis-Hastings
        weights on the plan's live links among the present nodes."""
        if self.graph == "schedule":
            return jax.tree_util.tree_map(lambda a: a[round_ % a.shape[0]], network.schedule)
        if self.time_varying:
            return tp.one_peer_exponential_operator(n, round_)
        if isinstance(network.table, tp.NeighbourTable):
            return tp.live_metropolis_hastings(*network.table, plan.live_links, plan.active)
        return network.mixing


def messages_sent(operator) -> jax.Array:
    """Number of node-to-node messages one mixing step sends: off-diagonal non-zeros of W."""
    if isinstance(operator, tp.Dense):
        w = operator.matrix
        return jnp.sum(w != 0) - jnp.sum(jnp.diag(w) != 0)
    return jnp.sum(operator.weights[:, 1:] != 0)
