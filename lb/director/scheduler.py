"""Scheduling as IPVS computes it: the one place the WRR cycle, the sh buckets and the mh
lookup table are built, and where IPVS's hash functions live in Python.

The data plane only walks what is built here: the WRR cycle (an index shared by all
CPUs), or the sh/mh table indexed by a hash of the client's address (and port) that
bpf/hashing.h computes exactly as the functions below do. So the order, the gcd step,
weight 0 and the tables are decided in Python and tested without a kernel. The
least-connection schedulers (lc, wlc, sed, nq) need live connection counts, so they run
in the data plane (bpf/dr_lb.c pick_least()); nothing is built for them here.

Real servers are in config order, which stands for IPVS's list of destinations (the order
`ipvsadm -Sn` prints them).
"""
from __future__ import annotations

from functools import lru_cache, reduce
from math import gcd
from typing import Sequence

from lb import abi

M32 = 0xFFFF_FFFF
M64 = 0xFFFF_FFFF_FFFF_FFFF

SH_TAB_BITS = abi.CONST["SH_TAB_BITS"]
SH_TABLE_SIZE = abi.CONST["SH_TABLE_SIZE"]
MH_TABLE_SIZE = abi.CONST["MH_TABLE_SIZE"]
MH_TAB_BITS = abi.CONST["MH_TAB_BITS"]
MH_HASH1 = (abi.CONST["MH_HASH1_KEY"], abi.CONST["MH_HASH1_KEY"])
MH_HASH2 = (abi.CONST["MH_HASH2_KEY"], abi.CONST["MH_HASH2_KEY"])
GOLDEN_RATIO_32 = 0x61C88647   # include/linux/hash.h


# ---- wrr / rr ---------------------------------------------------------------------------

def wrr_sequence(weights: Sequence[int]) -> list[int]:
    """One full cycle of IPVS wrr as indices into `weights`.

    IPVS starts with the current weight at the maximum and lowers it by the gcd after
    each pass over the servers, picking every server whose weight is at least the
    current weight. Weights 2,1,1 give [0, 0, 1, 2]; weight 0 never appears.
    """
    live = [w for w in weights if w > 0]
    if not live:
        return []
    step = reduce(gcd, live)
    sequence = []
    current = max(live)
    while current > 0:
        sequence.extend(i for i, w in enumerate(weights) if w >= current)
        current -= step
    return sequence


def wrr_length(weights: Sequence[int]) -> int:
    """len(wrr_sequence(weights)) without building it: each server appears weight/gcd times.

    Lets validation reject weights whose cycle would not fit before spending memory on it.
    """
    live = [w for w in weights if w > 0]
    if not live:
        return 0
    step = reduce(gcd, live)
    return sum(w // step for w in live)


# ---- IPVS's hash functions -----------------------------------------------------------------

def hash_32(value: int, bits: int) -> int:
    """include/linux/hash.h hash_32(): multiply by GOLDEN_RATIO_32, keep the top bits."""
    return ((value * GOLDEN_RATIO_32) & M32) >> (32 - bits)


def _rol64(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & M64


def hsiphash_u32(value: int, key: tuple[int, int]) -> int:
    """The kernel's hsiphash() of the 4 bytes of a u32, as on 64-bit machines (where it is
    SipHash-1-3 with a 64-bit key pair, truncated to 32 bits): what ip_vs_mh_hashkey()
    computes with hsiphash(&v, sizeof(v), key)."""
    k0, k1 = key
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    b = (4 << 56) | (value & M32)

    def sipround():
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & M64; v1 = _rol64(v1, 13); v1 ^= v0; v0 = _rol64(v0, 32)  # noqa: E702
        v2 = (v2 + v3) & M64; v3 = _rol64(v3, 16); v3 ^= v2                       # noqa: E702
        v0 = (v0 + v3) & M64; v3 = _rol64(v3, 21); v3 ^= v0                       # noqa: E702
        v2 = (v2 + v1) & M64; v1 = _rol64(v1, 17); v1 ^= v2; v2 = _rol64(v2, 32)  # noqa: E702

    v3 ^= b
    sipround()
    v0 ^= b
    v2 ^= 0xFF
    sipround()
    sipround()
    sipround()
    return (v0 ^ v1 ^ v2 ^ v3) & M32


def sh_hashkey(addr: int, port: int = 0, offset: int = 0) -> int:
    """ip_vs_sh_hashkey(): addr and port in host order (port 0 without sh-port)."""
    return (offset + hash_32((port + addr) & M32, SH_TAB_BITS)) & (SH_TABLE_SIZE - 1)


def mh_hashkey(addr: int, port: int, key: tuple[int, int], offset: int = 0) -> int:
    """ip_vs_mh_hashkey() before the modulo: addr and port in host order."""
    return hsiphash_u32((offset + port + addr) & M32, key)


# ---- the slots of sched_table ----------------------------------------------------------------

def sched_table_slots(scheduler: str, n_reals: int, fallback: bool = False) -> int:
    """Slots a service takes in (one half of) sched_table: its list of real servers twice
    over (so that a scan from any place never wraps), then the sh buckets and, with
    sh-fallback, each bucket's fallback order, or the mh table."""
    slots = 2 * n_reals
    if scheduler == "sh":
        slots += SH_TABLE_SIZE * (1 + (n_reals if fallback else 0))
    elif scheduler == "mh":
        slots += MH_TABLE_SIZE
    return slots


# ---- sh -----------------------------------------------------------------------------------

def sh_buckets(weights: Sequence[int]) -> list[int]:
    """ip_vs_sh_reassign(): the 256 buckets as indices into `weights` ([] without servers).

    The servers take turns in list order, each filling as many consecutive buckets as its
    weight, and at least one: a weight-0 server keeps a bucket, in which it is
    unavailable (IPVS then drops the client, or with sh-fallback looks further).
    """
    if not weights:
        return []
    buckets, i, count = [], 0, 0
    for _ in range(SH_TABLE_SIZE):
        buckets.append(i)
        count += 1
        if count >= weights[i]:
            i, count = (i + 1) % len(weights), 0
    return buckets


def sh_fallback_orders(buckets: Sequence[int]) -> list[list[int]]:
    """For each bucket, the servers (indices) in the order ip_vs_sh_get_fallback() meets
    them when its scan starts there: buckets start, start + 1, ... round the table, each
    server at its first bucket. IPVS starts the scan of a client whose hash is h at
    bucket 2h % 256 (its offset 0 probe), so the data plane reads order[2h % 256]."""
    n = len(buckets)
    orders = []
    for start in range(n):
        seen: list[int] = []
        for k in range(n):
            server = buckets[(start + k) % n]
            if server not in seen:
                seen.append(server)
        orders.append(seen)
    return orders


# ---- mh -----------------------------------------------------------------------------------

def mh_turns(weights: Sequence[int]) -> list[int]:
    """Entries each server takes per round of the Maglev fill: weight/gcd, shifted right
    so that the largest fits in MH_TAB_BITS bits (ip_vs_mh_gcd_weight,
    ip_vs_mh_shift_weight, ip_vs_mh_permutate)."""
    live = [w for w in weights if w > 0]
    if not live:
        return [0] * len(weights)
    g = reduce(gcd, live)
    rshift = max(0, (max(live) // g).bit_length() - MH_TAB_BITS)
    return [((w // g) >> rshift) or (1 if w else 0) for w in weights]


def mh_table(servers: Sequence[tuple[int, int, int]], size: int = MH_TABLE_SIZE) -> list[int]:
    """ip_vs_mh_populate(): the lookup table as indices into `servers`, each given as
    (address, port, weight) with address and port in host order; [] when no server has
    a weight (IPVS empties the table then).

    Each server's preference list starts at hash1(addr, port) % size and steps by
    hash2(addr, port) % (size - 1) + 1; in each round every server in turn takes its
    next free preferred entry, `turns` times in a row.
    """
    return list(_mh_table(tuple(servers), size))


@lru_cache(maxsize=64)
def _mh_table(servers: tuple[tuple[int, int, int], ...], size: int) -> tuple[int, ...]:
    turns = mh_turns([w for _, _, w in servers])
    if not any(turns):
        return ()
    perm = [mh_hashkey(a, p, MH_HASH1) % size for a, p, _ in servers]
    skip = [mh_hashkey(a, p, MH_HASH2) % (size - 1) + 1 for a, p, _ in servers]
    table = [-1] * size
    placed = 0
    while True:
        for i, t in enumerate(turns):
            for _ in range(t):
                c, s = perm[i], skip[i]
                while table[c] >= 0:
                    c += s
                    if c >= size:
                        c -= size
                perm[i] = c
                table[c] = i
                placed += 1
                if placed == size:
                    return tuple(table)
