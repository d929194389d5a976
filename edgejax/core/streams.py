"""Named random streams: every fixed integer the package folds into a key, in one table.

A *stream* gives one use of randomness its own key: a fixed integer folded into a *parent
key*, ``stream_key(parent, name) == jax.random.fold_in(parent, STREAMS[name])``.  Two uses
folded into the same parent key need different integers, so all of them are listed here
(``STREAMS``), grouped by parent key (``PARENT_KEYS``), rather than chosen in each module.
A key folded with a *data-dependent* value (a round, a tick, a node index, a job number) is
not a stream; those ``fold_in`` calls stay where they are.

The parent keys (``PARENT_KEYS``):

``"round"``, the round key: ``fold_in(state.rng, t)`` for round ``t`` (``SimState.rng`` is
  the run key).  Asynchronous training uses the same fold with the global tick, so tick
  ``t``'s key is the round key of ``t``.  The synchronous plan also splits it,
  ``split(round key, 4)``: availability, selection, stragglers, partial epochs
  (``SystemModel.plan``; see ``SPLIT_POSITIONS``).
``"run"``, the run key ``SimState.rng`` itself (the round key folds the round number into it).
``"event_tick"``, the event clock's tick key: ``fold_in(EventState.key, t)`` for global
  tick ``t`` (``edgejax.system.events``; the same ``EventState.key`` folded with a node
  index and a job number draws a job's duration jitter).
``"system"``, the system key: the fourth key of ``split(init key, 4)`` in
  ``Simulation.init``; ``Availability.init`` draws the initial Markov state from it directly.
``"node_round"``, a node's round key: ``fold_in(nodes.rng[i], t)`` for round ``t``
  (``edgejax.core.state.round_keys``, a cohort's ``keys``); local training draws its
  minibatch shuffles from it directly, FedRep splits it in two (head and body phases).
``"node"``, a node's key: ``nodes.rng[i]`` itself; round ``t`` folds in ``t`` and an
  asynchronous node's job ``j`` folds in ``j``.

Numbers kept as they were (every existing draw is bit-identical to before this table):

* The integer 1 is three streams under three parents (``link_failures`` on the round key,
  ``event_clock`` on the system key, ``width_draw`` on a node's round key) and 2 is two
  (``choco_compression`` on the round key, ``uplink_compression`` on a node's round key):
  different parent keys, so they do not meet.
* With ``jax_threefry_partitionable`` (the default since JAX 0.5, so in every JAX this
  package supports), ``split(key, n)[i] == fold_in(key, i)``: a key split into ``n`` pieces
  uses the numbers ``0..n-1`` as well (``SPLIT_POSITIONS``).  The round key's
  ``link_failures`` (1), ``choco_compression`` (2) and ``pairwise_matching`` (3) are thus
  the same keys as the synchronous plan's selection, stragglers and partial-epochs keys, and
  a node round key's ``width_draw`` (1) is FedRep's body-phase key (FedRep takes no sub-model
  scheme, so those two never meet).  ``KNOWN_SPLIT_OVERLAPS`` lists exactly these; a new
  stream must not add to them.
* ``finetune`` (``0x4654`` = 18004) is folded into a node's key, which also receives the
  round number (and, asynchronously, the job number): round 18004's node round keys (and job
  18004's key) are the fine-tuning keys.  Small numbers under that parent always meet some
  round; a new stream there should take a large number.

Registering a new stream: pick a name that says what it draws, choose its parent key, and
add ``name: number`` to ``STREAMS`` and the name to ``PARENT_KEYS[parent]``; the number must
differ from every other number under that parent and from its ``SPLIT_POSITIONS``
(``tests/test_streams.py`` checks both).  A number may be derived from the name, e.g.
``zlib.crc32(name.encode())`` (it fits ``fold_in``'s 32 bits and will not meet small
indices).  Never change an existing number: every result drawn with it would change.
"""
from __future__ import annotations

import jax

STREAMS: dict[str, int] = {
    # the round key
    "link_failures": 1,              # SystemModel.plan: which links of the graph are up this round
    "choco_compression": 2,          # CHOCO-SGD: each node's compression key (split over the nodes)
    "pairwise_matching": 3,          # PairwiseGossip: the round's random matching
    "tick_availability": 4,          # event clock: who is online at tick t (sync rounds: split position 0)
    "gossip_partner": 6,             # AD-PSGD: the neighbour each arrival of tick t averages with
    "public_subset": 0x46454D44,     # FedMD: the round's public samples ("FEMD")
    "aggregator": 0x41474752,        # a synchronous server step's aggregator key ("AGGR";
                                     # edgejax.algorithms.aggregation)
    # the run key
    "flush_aggregator": 0x41474752,  # FedBuff: the flush to version v folds v into this stream
    # the event clock's tick key
    "idle_pick": 7,                  # bounded concurrency: which idle node takes a freed slot
    # the system key
    "event_clock": 1,                # Simulation.init: the event clock's start (asynchronous training)
    # a node's round key
    "width_draw": 1,                 # WidthScaled ordered dropout (FjORD): the width a node trains
    "uplink_compression": 2,         # CompressedUplink: the node's compression key
    "ditto_personal": 0x44_54,       # Ditto: the personal model's minibatches ("DT")
    # a node's key
    "finetune": 0x46_54,             # FineTuned: fine-tuning minibatches ("FT")
}

PARENT_KEYS: dict[str, tuple[str, ...]] = {
    "round": ("link_failures", "choco_compression", "pairwise_matching", "tick_availability", "gossip_partner",
              "public_subset", "aggregator"),
    "run": ("flush_aggregator",),
    "event_tick": ("idle_pick",),
    "system": ("event_clock",),
    "node_round": ("width_draw", "uplink_compression", "ditto_personal"),
    "node": ("finetune",),
}

# numbers a parent key's split pieces use (split(key, n)[i] == fold_in(key, i)), with their use
SPLIT_POSITIONS: dict[str, dict[int, str]] = {
    "round": {0: "availability (SystemModel.plan)", 1: "selection (SystemModel.plan)",
              2: "stragglers (SystemModel.plan)", 3: "partial epochs (SystemModel.plan)"},
    "node_round": {0: "FedRep's head phase", 1: "FedRep's body phase"},
}

# streams whose number is also a split position under the same parent (kept: see the docstring)
KNOWN_SPLIT_OVERLAPS: frozenset[str] = frozenset(
    {"link_failures", "choco_compression", "pairwise_matching", "width_draw"})


class UnknownStreamError(KeyError):
    """A stream name ``STREAMS`` does not list (its message names the known ones)."""

    def __str__(self) -> str:
        return str(self.args[0])


def stream_key(key: jax.Array, name: str) -> jax.Array:
    """``key``'s stream ``name``: ``jax.random.fold_in(key, STREAMS[name])``."""
    try:
        number = STREAMS[name]
    except (KeyError, TypeError):
        raise UnknownStreamError(f"unknown random stream {name!r}; the streams are {sorted(STREAMS)} "
                                 f"(a new one is registered in edgejax.core.streams.STREAMS)") from None
    return jax.random.fold_in(key, number)
