"""Layer 1: the scheduling tables against IPVS: the WRR order, IPVS's hash functions, the
sh buckets and the mh (Maglev) table, each held against a transcription of the kernel's
code (tests/ipvs_reference.py for sh/mh)."""
from __future__ import annotations

import collections
import ipaddress
import random
from functools import reduce
from math import gcd

import pytest

from lb.director import scheduler
from lb.director.scheduler import wrr_length, wrr_sequence
from tests import ipvs_reference as ref


@pytest.mark.parametrize("weights, expected", [
    pytest.param([2, 1, 1], [0, 0, 1, 2], id="seed-2-1-1"),
    pytest.param([4, 3, 2], [0, 0, 1, 0, 1, 2, 0, 1, 2], id="ipvs-4-3-2"),
    pytest.param([4, 2], [0, 0, 1], id="gcd-2"),
    pytest.param([6, 3, 3], [0, 0, 1, 2], id="gcd-3-like-2-1-1"),
    pytest.param([1, 1, 1], [0, 1, 2], id="equal"),
    pytest.param([5], [0], id="one-server"),
    pytest.param([2, 0, 1], [0, 0, 2], id="weight-0-left-out"),
    pytest.param([0, 3], [1], id="only-one-live"),
    pytest.param([1, 2], [1, 0, 1], id="heaviest-second"),
    pytest.param([0, 0, 0], [], id="all-zero"),
    pytest.param([], [], id="no-server"),
])
def test_wrr_sequence(weights, expected):
    assert wrr_sequence(weights) == expected, f"wrong IPVS wrr order for weights {weights}"


def test_wrr_sequence_gives_each_server_its_share():
    weights = [5, 0, 3, 2, 7]
    seq = wrr_sequence(weights)
    g = reduce(gcd, [w for w in weights if w])
    assert [seq.count(i) for i in range(len(weights))] == [w // g for w in weights]


# --- the kernel's loop, transcribed from net/netfilter/ipvs/ip_vs_wrr.c ------------------

HEAD = -1   # &svc->destinations: the list head, before the first server


class IpvsWrr:
    """ip_vs_wrr_init_svc + ip_vs_wrr_schedule on a fixed list of destinations.

    `mark` is kept as in the kernel: cl (the last chosen dest, or the head), cw (current
    weight), mw (max weight less gcd - 1) and di (the gcd, the step). No dest is overloaded.
    """

    def __init__(self, weights: list[int]):
        self.weights = list(weights)
        positive = [w for w in weights if w > 0]
        self.di = reduce(gcd, positive) if positive else 1   # ip_vs_wrr_gcd_weight
        self.mw = max(weights, default=0) - (self.di - 1)     # ip_vs_wrr_max_weight - (di - 1)
        self.cw = self.mw
        self.cl = HEAD

    def schedule(self) -> int | None:
        if self.mw == 0:
            return None                                        # err_noavail
        dest = last = self.cl
        stop = None
        last_pass = restarted = False
        while True:
            # list_for_each_entry_continue_rcu: the dests after `dest`, up to the head
            for i in range(dest + 1, len(self.weights)):
                if self.weights[i] >= self.cw:
                    self.cl = i                                # found
                    return i
                if i == stop:
                    return None                                # err_over
            dest = HEAD
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last == HEAD:
                    return None                                # err_over
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != HEAD:
                stop = last


def kernel_picks(weights: list[int], n: int) -> list[int | None]:
    wrr = IpvsWrr(weights)
    return [wrr.schedule() for _ in range(n)]


def test_the_kernel_model_itself_gives_the_known_orders():
    # Guards the reference: if it were wrong, the property test would prove nothing.
    assert kernel_picks([2, 1, 1], 8) == [0, 0, 1, 2] * 2
    assert kernel_picks([4, 3, 2], 9) == [0, 0, 1, 0, 1, 2, 0, 1, 2]
    assert kernel_picks([0, 0], 3) == [None] * 3


def random_weights(rng: random.Random) -> list[int]:
    n = rng.randint(1, 8)
    shape = rng.choice(["small", "wide", "common-factor", "with-zeros", "equal"])
    if shape == "small":
        return [rng.randint(1, 5) for _ in range(n)]
    if shape == "wide":
        return [rng.randint(1, 60) for _ in range(n)]
    if shape == "common-factor":
        k = rng.choice([2, 3, 4, 10, 100])
        return [k * rng.randint(1, 6) for _ in range(n)]
    if shape == "with-zeros":
        return [rng.choice([0, 0, 1, 2, 3, 8]) for _ in range(n)]
    return [rng.randint(1, 9)] * n


def test_wrr_sequence_matches_the_kernel_on_random_weights():
    rng = random.Random(20240521)
    for _ in range(1000):
        weights = random_weights(rng)
        seq = wrr_sequence(weights)
        if not seq:
            assert all(w == 0 for w in weights), f"empty sequence for {weights}"
            assert kernel_picks(weights, 3) == [None] * 3
            continue
        # Three cycles: the kernel starts each cycle afresh, as the data plane's index does.
        picks = kernel_picks(weights, 3 * len(seq))
        assert picks == seq * 3, (f"weights {weights}: dr-lb's cycle {seq} differs from "
                                  f"the kernel's picks {picks[:len(seq)]}")


def test_wrr_length_is_the_length_of_the_sequence():
    rng = random.Random(7)
    for weights in [[], [0], [2, 1, 1], [4, 3, 2], [4, 2], [65535, 1]] + \
            [random_weights(rng) for _ in range(200)]:
        assert wrr_length(weights) == len(wrr_sequence(weights)), f"weights {weights}"


# --- IPVS's hash functions ---------------------------------------------------------------

def test_reference_hsiphash_gives_the_kernels_test_vectors():
    """Guards the reference: lib/siphash_kunit.c's 64-bit hsiphash vectors."""
    for length, expected in enumerate(ref.HSIPHASH_TEST_VECTORS):
        got = ref.hsiphash(bytes(range(length)), ref.HSIPHASH_TEST_KEY)
        assert got == expected, f"hsiphash of {length} bytes: {got:#x}, kernel {expected:#x}"


def test_hsiphash_u32_is_the_kernels_hsiphash_of_4_bytes():
    rng = random.Random(3)
    values = [0, 1, 0x03020100, 0xFFFFFFFF] + [rng.getrandbits(32) for _ in range(2000)]
    for key in (ref.HSIPHASH_TEST_KEY, scheduler.MH_HASH1, scheduler.MH_HASH2):
        for v in values:
            assert scheduler.hsiphash_u32(v, key) == ref.hsiphash(v.to_bytes(4, "little"), key)
    assert scheduler.hsiphash_u32(0x03020100, ref.HSIPHASH_TEST_KEY) == \
        ref.HSIPHASH_TEST_VECTORS[4]


def test_hash_keys_are_ipvs_generate_hash_secret():
    assert scheduler.MH_HASH1 == ref.IpvsMh.HASH1 and scheduler.MH_HASH2 == ref.IpvsMh.HASH2


def random_address(rng: random.Random) -> int:
    return rng.getrandbits(32)


# --- sh: ip_vs_sh_reassign and ip_vs_sh_hashkey ---------------------------------------------

def test_sh_buckets_known_layouts():
    assert scheduler.sh_buckets([2, 1, 1])[:8] == [0, 0, 1, 2, 0, 0, 1, 2]
    assert scheduler.sh_buckets([0, 3])[:4] == [0, 1, 1, 1], "weight 0 keeps one bucket"
    assert scheduler.sh_buckets([300, 1]) == [0] * 256, "a weight over 256 takes them all"
    assert scheduler.sh_buckets([]) == []


def test_sh_buckets_match_the_kernel_on_random_weights():
    rng = random.Random(11)
    for _ in range(1000):
        weights = random_weights(rng) if rng.random() < 0.8 else \
            [rng.randint(0, 300) for _ in range(rng.randint(1, 40))]
        kernel = ref.IpvsSh([ref.Dest(weight=w) for w in weights]).buckets
        assert scheduler.sh_buckets(weights) == kernel, f"weights {weights}"


def test_sh_hashkey_matches_the_kernel():
    rng = random.Random(12)
    sh = ref.IpvsSh([ref.Dest()])
    for _ in range(5000):
        addr, port, offset = random_address(rng), rng.getrandbits(16), rng.randrange(256)
        assert scheduler.sh_hashkey(addr, port, offset) == sh.hashkey(addr, port, offset)


def test_sh_spreads_clients_by_weight():
    buckets = scheduler.sh_buckets([3, 1])
    assert collections.Counter(buckets) == {0: 192, 1: 64}
    rng = random.Random(13)
    hits = collections.Counter(buckets[scheduler.sh_hashkey(random_address(rng))]
                               for _ in range(40000))
    assert 0.72 < hits[0] / 40000 < 0.78, f"3:1 weights gave {dict(hits)}"


# --- mh: ip_vs_mh_permutate + ip_vs_mh_populate ----------------------------------------------

def mh_servers(rng: random.Random, weights: list[int]) -> list[tuple[int, int, int]]:
    port = rng.choice([80, 443, 53, 8080])
    base = int(ipaddress.IPv4Address("10.0.0.0")) + rng.randrange(1 << 16) * 256
    return [(base + i + 1, port, w) for i, w in enumerate(weights)]


def kernel_mh(servers, size: int) -> list[int | None]:
    dests = [ref.Dest(addr=a, port=p, weight=w) for a, p, w in servers]
    return ref.IpvsMh(dests, size, scheduler.MH_TAB_BITS).lookup


@pytest.mark.parametrize("size", [251, 509, 4093])
def test_mh_table_matches_the_kernel_on_random_weights(size):
    rng = random.Random(size)
    for _ in range(150):
        weights = random_weights(rng) if rng.random() < 0.8 else \
            [rng.choice([0, 1, 5, 1000, 40000, 65535]) for _ in range(rng.randint(1, 12))]
        servers = mh_servers(rng, weights)
        mine = scheduler.mh_table(servers, size)
        kernel = kernel_mh(servers, size)
        if all(w == 0 for w in weights):
            assert mine == [] and kernel == [None] * size
            continue
        assert mine == kernel, f"weights {weights}: the tables differ"


def test_mh_table_of_full_size_matches_the_kernel():
    rng = random.Random(65537)
    for weights in ([2, 1, 1], [1] * 10, [5, 0, 3, 2, 7], [65535, 1, 300]):
        servers = mh_servers(rng, weights)
        assert scheduler.mh_table(servers) == kernel_mh(servers, scheduler.MH_TABLE_SIZE), \
            f"weights {weights}"


def test_mh_turns_shift_large_weights_as_ipvs():
    assert scheduler.mh_turns([2, 1, 1]) == [2, 1, 1]
    assert scheduler.mh_turns([4, 2, 0]) == [2, 1, 0]
    # weight/gcd 65535 has 16 bits, MH_TAB_BITS 8: shifted right by 8, and at least 1.
    assert scheduler.mh_turns([65535, 1]) == [255, 1]


def test_mh_shares_follow_the_weights():
    servers = mh_servers(random.Random(1), [4, 2, 1, 1])
    counts = collections.Counter(scheduler.mh_table(servers))
    shares = [counts[i] / scheduler.MH_TABLE_SIZE for i in range(4)]
    assert all(abs(s - w / 8) < 0.01 for s, w in zip(shares, [4, 2, 1, 1])), \
        f"weights 4:2:1:1 got table shares {shares}"


def moved_share(before: list[int], after: list[int], ids_before, ids_after) -> float:
    """Share of the table whose real server changes (entries compared by server)."""
    return sum(ids_before[a] != ids_after[b] for a, b in zip(before, after)) / len(before)


@pytest.mark.parametrize("n", [5, 10, 20])
def test_mh_removing_one_of_n_servers_moves_about_1_over_n(n, record_property):
    """Consistent hashing: taking one server out moves its own clients (1/n) and almost no
    others. Measured on the whole table and on 100,000 random client addresses."""
    rng = random.Random(n)
    servers = mh_servers(rng, [1] * n)
    full = scheduler.mh_table(servers)
    worst_extra = 0.0
    for gone in range(n):
        rest = servers[:gone] + servers[gone + 1:]
        fewer = scheduler.mh_table(rest)
        moved = moved_share(full, fewer, servers, rest)
        extra = moved - 1 / n
        worst_extra = max(worst_extra, extra)
        assert moved < 1 / n + 0.02, \
            f"removing 1 of {n} moved {moved:.1%} of the table (ideal {1 / n:.1%})"
    sample = [random_address(rng) for _ in range(100_000)]
    rest = servers[1:]
    fewer = scheduler.mh_table(rest)
    size = scheduler.MH_TABLE_SIZE

    def owner(table, srv, a):
        return srv[table[scheduler.mh_hashkey(a, 0, scheduler.MH_HASH1) % size]]
    flows_moved = sum(owner(full, servers, a) != owner(fewer, rest, a)
                      for a in sample) / len(sample)
    record_property("mh_moved", f"n={n}: flows moved {flows_moved:.2%} (ideal {1 / n:.2%}), "
                                f"worst table-wide excess {worst_extra:.2%}")
    print(f"mh, removing 1 of {n}: {flows_moved:.2%} of 100,000 flows moved "
          f"(ideal {1 / n:.2%}); worst excess over 1/n across servers {worst_extra:.2%}")
    assert abs(flows_moved - 1 / n) < 0.02
