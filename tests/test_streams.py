"""The named random streams (edgejax.core.streams): one table, fixed numbers, no clashes."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from edgejax.core import streams
from edgejax.core.streams import KNOWN_SPLIT_OVERLAPS, PARENT_KEYS, SPLIT_POSITIONS, STREAMS, stream_key

# the integers each module folded in before the table existed: every result depends on them (the
# aggregators' streams came with the aggregator seam, with these numbers)
BEFORE_THE_TABLE = {
    "link_failures": 1, "choco_compression": 2, "pairwise_matching": 3, "tick_availability": 4, "gossip_partner": 6,
    "public_subset": 0x46454D44, "aggregator": 0x41474752, "flush_aggregator": 0x41474752, "idle_pick": 7, "event_clock": 1, "width_draw": 1,
    "uplink_compression": 2, "ditto_personal": 0x4454, "finetune": 0x4654,
}


@pytest.mark.parametrize("name, number", [("tick_availability", 4), ("choco_compression", 2),
                                          ("public_subset", 0x46454D44), ("finetune", 0x4654)])
def test_a_stream_is_the_fold_it_replaced(name, number):
    for seed in (0, 7):
        key = jax.random.PRNGKey(seed)
        np.testing.assert_array_equal(stream_key(key, name), jax.random.fold_in(key, number))
    # and not some other stream's fold
    assert not np.array_equal(stream_key(key, name), jax.random.fold_in(key, number + 1))


def test_no_stream_was_renumbered():
    assert STREAMS == BEFORE_THE_TABLE


def test_an_unknown_stream_is_named_with_the_known_ones():
    with pytest.raises(KeyError) as raised:
        stream_key(jax.random.PRNGKey(0), "availabilty")
    message = str(raised.value)
    assert "unknown random stream 'availabilty'" in message
    assert all(repr(name) in message for name in STREAMS), message
    with pytest.raises(KeyError, match="unknown random stream"):
        stream_key(jax.random.PRNGKey(0), ["finetune"])   # not a name at all


def test_every_stream_has_one_parent_key():
    listed = [name for names in PARENT_KEYS.values() for name in names]
    assert sorted(listed) == sorted(STREAMS), "each stream must be listed under exactly one parent key"
    assert set(SPLIT_POSITIONS) <= set(PARENT_KEYS)


@pytest.mark.parametrize("parent", sorted(PARENT_KEYS))
def test_streams_under_one_parent_key_have_distinct_numbers(parent):
    numbers = [STREAMS[name] for name in PARENT_KEYS[parent]]
    assert len(set(numbers)) == len(numbers), {name: STREAMS[name] for name in PARENT_KEYS[parent]}
    assert all(0 <= n < 2 ** 32 for n in numbers)   # fold_in takes 32 bits


def test_split_pieces_are_folds_so_the_split_positions_are_taken():
    key = jax.random.PRNGKey(3)
    pieces = jax.random.split(key, 4)
    for i in range(4):
        np.testing.assert_array_equal(pieces[i], jax.random.fold_in(key, i))


def test_only_the_known_streams_share_a_split_position():
    overlaps = {name for parent, names in PARENT_KEYS.items() for name in names
                if STREAMS[name] in SPLIT_POSITIONS.get(parent, {})}
    assert overlaps == KNOWN_SPLIT_OVERLAPS, "a new stream must not take a number a split of its parent uses"


def test_the_module_names_every_parent_key_it_groups():
    doc = streams.__doc__
    for parent in PARENT_KEYS:
        assert f'``"{parent}"``' in doc, parent
