"""flow_cache's hash (bpf/dr_lb.c flow_hash, mirrored by tests/packet_cases.py, which the
packet tests check against the program's own placement): a bijection of the key's bits, so
that a way's 38 check bits and its set (home, or alternate with the way's FLOW_ALT bit)
give the key back and a match is exact."""
from __future__ import annotations

import random

import pytest

from tests.packet_cases import (FLOW_CHECK_BITS, FLOW_HASH_MULT, flow_alt, flow_hash, flow_home,
                                 flow_key, flow_key_bits)


def unhash(h: int, seed: int, log2: int) -> int:
    """flow_hash's inverse: the odd multiply undone, then the seed."""
    n = flow_key_bits(log2)
    return ((h * pow(FLOW_HASH_MULT, -1, 1 << n)) ^ seed) & ((1 << n) - 1)


@pytest.mark.parametrize("log2", [10, 14, 17])
def test_a_ways_check_and_its_set_give_the_key_back(log2):
    rng = random.Random(log2)
    seed = rng.getrandbits(64)
    for _ in range(2000):
        key = flow_key(rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(32),
                       rng.getrandbits(16), rng.choice((6, 17)), log2)
        h = flow_hash(key, seed, log2)
        assert h >> flow_key_bits(log2) == 0
        set_, check = h >> FLOW_CHECK_BITS, h & ((1 << FLOW_CHECK_BITS) - 1)
        assert set_ < 1 << log2
        assert unhash(set_ << FLOW_CHECK_BITS | check, seed, log2) == key


def test_the_key_holds_the_client_whole_with_the_smallest_cache():
    """With 2^10 sets (the fewest flow_cache_shape gives) the key is the client's address and
    port alone, 48 bits: no bit of them is dropped to make room."""
    assert flow_key_bits(10) == 48
    assert flow_key(0xFFFFFFFF, 0xFFFF, 1, 2, 6, 10) == (1 << 48) - 1


@pytest.mark.parametrize("log2", [10, 14, 17])
def test_a_way_in_its_alternate_set_gives_the_key_back(log2):
    """A key whose home set is full goes to its alternate set, never the home set itself;
    from that set and the way's check bits the home set, and so the key, come back (the
    alternate of the alternate is home)."""
    rng = random.Random(log2 + 1)
    seed = rng.getrandbits(64)
    for _ in range(2000):
        key = flow_key(rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(32),
                       rng.getrandbits(16), 6, log2)
        h = flow_hash(key, seed, log2)
        check, alt = h & ((1 << FLOW_CHECK_BITS) - 1), flow_alt(h, log2)
        assert alt != flow_home(h) and alt < 1 << log2
        back = alt << FLOW_CHECK_BITS | check      # what the way in the alternate set says
        assert flow_alt(back, log2) == flow_home(h)
        assert unhash(flow_alt(back, log2) << FLOW_CHECK_BITS | check, seed, log2) == key
