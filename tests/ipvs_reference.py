"""IPVS's schedulers transcribed from the kernel (net/netfilter/ipvs/ip_vs_{sh,mh,lc,wlc,
sed,nq}.c, lib/siphash.c, ip_vs_conn.c), written to follow the C line by line rather than
to be quick. The tests hold dr-lb's tables (lb/director/scheduler.py) and the XDP
program's choices against these. Addresses and ports are in host order, as the kernel
has them after ntohl()/ntohs().
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd

M32, M64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
HEAD = -1     # &svc->destinations


# ---- lib/siphash.c, BITS_PER_LONG == 64: hsiphash is SipHash-1-3 -------------------------

def rol64(word: int, shift: int) -> int:
    return ((word << shift) | (word >> (64 - shift))) & M64


def hsiphash(data: bytes, key: tuple[int, int]) -> int:
    """__hsiphash_unaligned() of any length (HPREAMBLE, 8-byte blocks, HPOSTAMBLE)."""
    v = [0x736F6D6570736575 ^ key[0], 0x646F72616E646F6D ^ key[1],
         0x6C7967656E657261 ^ key[0], 0x7465646279746573 ^ key[1]]

    def sipround():     # SIPHASH_PERMUTATION(v0, v1, v2, v3)
        v[0] = (v[0] + v[1]) & M64
        v[1] = rol64(v[1], 13) ^ v[0]
        v[0] = rol64(v[0], 32)
        v[2] = (v[2] + v[3]) & M64
        v[3] = rol64(v[3], 16) ^ v[2]
        v[0] = (v[0] + v[3]) & M64
        v[3] = rol64(v[3], 21) ^ v[0]
        v[2] = (v[2] + v[1]) & M64
        v[1] = rol64(v[1], 17) ^ v[2]
        v[2] = rol64(v[2], 32)

    b = (len(data) << 56) & M64
    end = len(data) - len(data) % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v[3] ^= m
        sipround()
        v[0] ^= m
    b |= int.from_bytes(data[end:], "little")
    v[3] ^= b
    sipround()
    v[0] ^= b
    v[2] ^= 0xFF
    sipround()
    sipround()
    sipround()
    return (v[0] ^ v[1] ^ v[2] ^ v[3]) & M32


# lib/siphash_kunit.c, BITS_PER_LONG == 64: hsiphash of the bytes 0..i-1 under this key.
HSIPHASH_TEST_KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)
HSIPHASH_TEST_VECTORS = [
    0x050fc4dc, 0x7d57ca93, 0x4dc7d44d, 0xe7ddf7fb, 0x88d38328, 0x49533b67, 0xc59f22a7,
    0x9bb11140, 0x8d299a8e, 0x6c063de4, 0x92ff097f, 0xf94dc352, 0x57b4d9a2, 0x1229ffa7,
    0xc0f95d34, 0x2a519956, 0x7d908b66, 0x63dbd80c, 0xb473e63e, 0x8d297d1c, 0xa6cce040,
    0x2b45f844, 0xa320872e, 0xdae6c123, 0x67349c8c, 0x705b0979, 0xca9913a5, 0x4ade3b35,
    0xef6cd00d, 0x4ab1e1f4, 0x43c5e663, 0x8c21d1bc, 0x16a7b60d, 0x7a8ff9bf, 0x1f2a753e,
    0xbf186b91, 0xada26206, 0xa3c33057, 0xae3a36a1, 0x7b108392, 0x99e41531, 0x3f1ad944,
    0xc8138825, 0xc28949a6, 0xfaf8876b, 0x9f042196, 0x68b1d623, 0x8b5114fd, 0xdf074c46,
    0x12cc86b3, 0x0a52098f, 0x9d292f9a, 0xa2f41f12, 0x43a71ed0, 0x73f0bce6, 0x70a7e980,
    0x243c6d75, 0xfdb71513, 0xa67d8a08, 0xb7e8f148, 0xf7a644ee, 0x0f1837f2, 0x4b6694e0,
    0xb7bbb3a8,
]


def hash_32(val: int, bits: int) -> int:
    return ((val * 0x61C88647) & M32) >> (32 - bits)


@dataclass
class Dest:
    """The parts of struct ip_vs_dest the schedulers read."""
    addr: int = 0
    port: int = 0
    weight: int = 1
    last_weight: int | None = None     # None: as weight
    overloaded: bool = False
    activeconns: int = 0
    inactconns: int = 0

    def lw(self) -> int:
        return self.weight if self.last_weight is None else self.last_weight


def unavailable(d: Dest) -> bool:
    """is_unavailable() of ip_vs_sh.c / ip_vs_mh.c."""
    return d.weight <= 0 or d.overloaded


# ---- ip_vs_sh.c -------------------------------------------------------------------------

class IpvsSh:
    TAB_BITS, TAB_SIZE = 8, 256

    def __init__(self, dests: list[Dest]):
        self.dests = dests
        self.buckets: list[int | None] = [None] * self.TAB_SIZE
        p, empty, d_count = HEAD, not dests, 0       # p: index into dests, HEAD = the list
        for i in range(self.TAB_SIZE):
            if empty:
                self.buckets[i] = None
            else:
                if p == HEAD:
                    p = 0
                self.buckets[i] = p
                d_count += 1
                if d_count >= dests[p].weight:
                    p = p + 1 if p + 1 < len(dests) else HEAD
                    d_count = 0

    def hashkey(self, addr: int, port: int, offset: int) -> int:
        return (offset + hash_32((port + addr) & M32, self.TAB_BITS)) & (self.TAB_SIZE - 1)

    def schedule(self, addr: int, port: int = 0, fallback: bool = False) -> int | None:
        ihash = self.hashkey(addr, port, 0)
        dest = self.buckets[ihash]
        if dest is None:
            return None
        if not unavailable(self.dests[dest]):
            return dest
        if not fallback:
            return None
        for offset in range(self.TAB_SIZE):
            roffset = (offset + ihash) % self.TAB_SIZE
            dest = self.buckets[self.hashkey(addr, port, roffset)]
            if dest is None:
                break
            if not unavailable(self.dests[dest]):
                return dest
        return None


# ---- ip_vs_mh.c -------------------------------------------------------------------------

class IpvsMh:
    HASH1 = (2654435761, 2654435761)
    HASH2 = (2654446892, 2654446892)

    def __init__(self, dests: list[Dest], size: int, tab_bits: int):
        self.dests, self.size = dests, size
        self.lookup: list[int | None] = [None] * size
        # ip_vs_mh_gcd_weight, ip_vs_mh_shift_weight
        g = 0
        for d in dests:
            if d.lw() > 0:
                g = gcd(d.lw(), g) if g > 0 else d.lw()
        rshift = 0
        if g >= 1:
            mw = max((d.lw() for d in dests), default=0) // g
            rshift = max(0, mw.bit_length() - tab_bits)
        if g < 1:
            return                                     # ip_vs_mh_reset: all NULL
        # ip_vs_mh_permutate
        setup = []
        for d in dests:
            offset = self.hashkey(d.addr, d.port, self.HASH1, 0) % size
            skip = self.hashkey(d.addr, d.port, self.HASH2, 0) % (size - 1) + 1
            lw = d.lw()
            setup.append({"offset": offset, "skip": skip, "perm": offset,
                          "turns": ((lw // g) >> rshift) or (1 if lw != 0 else 0)})
        # ip_vs_mh_populate
        table = [False] * size
        p, n, dt_count = HEAD, 0, 0
        while n < size:
            if p == HEAD:
                p = 0
            ds = 0
            while p != HEAD:
                s = setup[ds]
                if s["turns"] < 1:
                    p = p + 1 if p + 1 < len(dests) else HEAD
                    ds += 1
                    continue
                c = s["perm"]
                while table[c]:
                    s["perm"] += s["skip"]
                    if s["perm"] >= size:
                        s["perm"] -= size
                    c = s["perm"]
                table[c] = True
                self.lookup[c] = p
                n += 1
                if n == size:
                    return
                dt_count += 1
                if dt_count >= s["turns"]:
                    dt_count = 0
                    p = p + 1 if p + 1 < len(dests) else HEAD
                    ds += 1

    @staticmethod
    def hashkey(addr: int, port: int, key: tuple[int, int], offset: int) -> int:
        v = (offset + port + addr) & M32
        return hsiphash(v.to_bytes(4, "little"), key)

    def schedule(self, addr: int, port: int = 0, fallback: bool = False) -> int | None:
        ihash = self.hashkey(addr, port, self.HASH1, 0) % self.size
        dest = self.lookup[ihash]
        if dest is None:
            return None
        if not unavailable(self.dests[dest]):
            return dest
        if not fallback:
            return None
        for offset in range(self.size):
            roffset = (offset + ihash) % self.size
            dest = self.lookup[self.hashkey(addr, port, self.HASH1, roffset) % self.size]
            if dest is None:
                break
            if not unavailable(self.dests[dest]):
                return dest
        return None

    def fallback_tries(self, addr: int, port: int = 0) -> int | None:
        """How many rehashes mh-fallback needed (None: none found)."""
        ihash = self.hashkey(addr, port, self.HASH1, 0) % self.size
        for offset in range(self.size):
            roffset = (offset + ihash) % self.size
            dest = self.lookup[self.hashkey(addr, port, self.HASH1, roffset) % self.size]
            if dest is not None and not unavailable(self.dests[dest]):
                return offset + 1
        return None


# ---- ip_vs_lc.c, ip_vs_wlc.c, ip_vs_sed.c, ip_vs_nq.c --------------------------------------

def conn_overhead(d: Dest) -> int:
    """ip_vs_dest_conn_overhead()."""
    return (d.activeconns << 8) + d.inactconns


def lc(dests: list[Dest]) -> int | None:
    least, loh = None, 0
    for i, d in enumerate(dests):
        if d.overloaded or d.weight == 0:
            continue
        doh = conn_overhead(d)
        if least is None or doh < loh:
            least, loh = i, doh
    return least


def _weighted(dests: list[Dest], overhead) -> int | None:
    """The two stages of ip_vs_wlc_schedule() / ip_vs_sed_schedule()."""
    for first, d in enumerate(dests):
        if not d.overloaded and d.weight > 0:
            least, loh = first, overhead(d)
            break
    else:
        return None
    for i in range(first + 1, len(dests)):
        d = dests[i]
        if d.overloaded:
            continue
        doh = overhead(d)
        if loh * d.weight > doh * dests[least].weight:
            least, loh = i, doh
    return least


def wlc(dests: list[Dest]) -> int | None:
    return _weighted(dests, conn_overhead)


def sed(dests: list[Dest]) -> int | None:
    return _weighted(dests, lambda d: d.activeconns + 1)


def nq(dests: list[Dest]) -> int | None:
    least, loh = None, 0
    for i, d in enumerate(dests):
        if d.overloaded or not d.weight:
            continue
        doh = d.activeconns + 1
        if d.activeconns == 0:
            return i
        if least is None or loh * d.weight > doh * dests[least].weight:
            least, loh = i, doh
    return least


LEAST = {"lc": lc, "wlc": wlc, "sed": sed, "nq": nq}


# ---- ip_vs_conn.c: the overload flag of connection thresholds -----------------------------

@dataclass
class Thresholds:
    """ip_vs_bind_dest() sets OVERLOAD when a new connection brings active + inactive to
    u_threshold; ip_vs_unbind_dest() clears it when they fall below l_threshold, or below
    3/4 of u_threshold when l_threshold is 0."""
    upper: int
    lower: int = 0
    overloaded: bool = False
    total: int = 0

    def bind(self) -> None:
        self.total += 1
        if self.upper and self.total >= self.upper:
            self.overloaded = True

    def unbind(self) -> None:
        self.total -= 1
        if self.lower:
            if self.total < self.lower:
                self.overloaded = False
        elif self.upper:
            if self.total * 4 < self.upper * 3:
                self.overloaded = False
        else:
            self.overloaded = False
