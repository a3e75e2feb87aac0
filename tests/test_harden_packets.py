"""Issue 11 in the packet layer: the defences of the data plane, frame by frame through
bpf_prog_test_run_opts, maps filled by the real control-plane code."""
from __future__ import annotations

import ctypes as ct
import os
import struct
import time

import pytest

from lb import abi, libbpf
from lb.director import config as config_mod, layout as layout_mod
from tests.conftest import Programmed, needs_root
from tests.packet_cases import CONFIG, DIRECTOR_MAC, RS1, RS_MACS, conn_hash, tcp

pytestmark = needs_root

SMALL_TABLE = 1024   # conn_table_size: the smallest allowed, so a flood is quick to send


@pytest.fixture(scope="module")
def small_dp():
    """The program with the smallest tables (its own compile, once for the module)."""
    from lb.director.dataplane import Dataplane
    dp = Dataplane(conn_table_size=SMALL_TABLE)
    yield dp
    dp.close()


@pytest.fixture
def small(small_dp):
    small_dp.clear_state()
    return Programmed(small_dp, config_mod.parse(CONFIG, source="test.toml"), dict(RS_MACS),
                      DIRECTOR_MAC)


def frame_of(template: bytes, saddr: int, sport: int, flags: int | None = None) -> bytes:
    """`template` from another client address and port (and TCP flags)."""
    f = bytearray(template)
    f[26:30] = struct.pack("!I", saddr)
    f[34:36] = struct.pack("!H", sport)
    if flags is not None:
        f[47] = flags
    return bytes(f)


def tables_holding(lb, sport: int, src: str = "10.0.0.10") -> list[str]:
    out = []
    table = lb.dp.map("conn_table")
    key = table.Key()
    key.saddr, key.daddr = abi.ip_be32(src), abi.ip_be32("10.0.0.21")
    key.sport, key.dport, key.proto = abi.port_be16(sport), abi.port_be16(80), 6
    if table.get(key) is not None:
        out.append("conn_table")
    keys, _ = lb.dp.half_open()
    if ((keys["saddr"] == key.saddr) & (keys["sport"] == key.sport)).any():
        out.append("syn_table")
    return out


# ---- half-open connections live apart ------------------------------------------------------

def test_a_syn_waits_in_syn_table_and_its_ack_moves_it_to_conn_table(small):
    before = small.dp.counters()
    r = small.dp.test_run(tcp("S", sport=50000))
    assert r.verdict == "XDP_TX" and abi.mac_str(r.data[:6]) == RS1
    assert tables_holding(small, 50000) == ["syn_table"], \
        "a half-open connection must not take a conn_table slot"
    again = small.dp.test_run(tcp("S", sport=50000))
    assert abi.mac_str(again.data[:6]) == RS1, "a repeated SYN must go to the same server"
    assert tables_holding(small, 50000) == ["syn_table"]
    r = small.dp.test_run(tcp("A", sport=50000))
    assert r.verdict == "XDP_TX" and abi.mac_str(r.data[:6]) == RS1
    assert tables_holding(small, 50000) == ["conn_table"], "the ACK must establish it"
    moved = {k: v - before[k] for k, v in small.dp.counters().items() if v != before[k]}
    assert moved == {"tx_service": 3, "syn_table_insert": 1, "conn_promoted": 1,
                     "conn_table_insert": 1}, moved


def test_a_reset_half_open_connection_stays_out_of_conn_table(small):
    small.dp.test_run(tcp("S", sport=50001))
    assert small.dp.test_run(tcp("R", sport=50001)).verdict == "XDP_TX"
    assert tables_holding(small, 50001) == ["syn_table"]


def test_spoofed_syns_sent_twice_evict_no_established_connection(small):
    """Twenty times the table of spoofed SYNs, each twice (the LRU's second chance):
    every established connection, busy or idle, keeps its real server."""
    syn, ack = tcp("S"), tcp("A")
    held = {}
    for i in range(200):                      # established before the flood
        saddr, sport = 0x0A000000 + 10, 20000 + i
        first = small.dp.test_run(frame_of(syn, saddr, sport))
        small.dp.test_run(frame_of(ack, saddr, sport))
        held[sport] = first.data[:6]
    flood = 20 * small.dp.conn_table_slots
    for i in range(0, flood, 256):
        burst = [frame_of(syn, 0x0B000000 + i + j, 1024 + (i + j) % 60000)
                 for j in range(256)]
        for _ in range(2):
            for f in burst:
                small.dp.test_run(f)
        if i % 4096 == 0:                     # the busy half talks during the flood
            for sport in list(held)[100:]:
                small.dp.test_run(frame_of(ack, 0x0A000000 + 10, sport))
    moved = {}
    for sport, mac in held.items():
        r = small.dp.test_run(frame_of(ack, 0x0A000000 + 10, sport))
        if r.verdict != "XDP_TX" or r.data[:6] != mac:
            moved[sport] = r.verdict
    assert not moved, f"{len(moved)} of {len(held)} established connections lost: {moved}"
    c = small.dp.counters()
    assert c["syn_table_insert"] >= flood and c["conn_promoted"] == len(held)


def test_the_established_path_is_one_lookup(small):
    """An established connection's packet never looks at syn_table: it is forwarded even
    while syn_table holds the same key with another server (which cannot happen, but
    shows which table was read)."""
    small.dp.test_run(tcp("S", sport=50002))
    small.dp.test_run(tcp("A", sport=50002))
    syn_table, conn_table = small.dp.map("syn_table"), small.dp.map("conn_table")
    (key, value), = conn_table.items()
    decoy = syn_table.Leaf()     # in every set: wherever the program would look
    for way in decoy.way:
        ct.memmove(ct.addressof(way.key), ct.addressof(key), ct.sizeof(key))
        way.value.real_id = value.real_id + 1
        way.value.state = abi.STATE["SYN_RECV"]
        way.value.last_seen_ns = value.last_seen_ns
    n = small.dp.syn_table_sets
    syn_table.items_update_batch((syn_table.Key * n)(*range(n)), (syn_table.Leaf * n)(*[decoy] * n))
    r = small.dp.test_run(tcp("A", sport=50002))
    assert abi.mac_str(r.data[:6]) == RS1


def test_the_table_memory_check_says_what_the_kernel_says(small_dp):
    """`check` and `up` estimate the tables' kernel memory (config.table_memory_bytes);
    the kernel's own figure for the maps (fdinfo memlock) is within 10 % of it. Before
    Linux 6.4 (map_mem_usage) fdinfo's memlock is only (key + value) x max_entries,
    without a hash map's buckets and per-element header: no figure to check against
    (Debian 12's 6.1 said 331,776 bytes where the maps take about twice that)."""
    if tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2]) < (6, 4):
        pytest.skip(f"fdinfo memlock is only an estimate before Linux 6.4 "
                    f"(this is {os.uname().release})")
    def memlock(name: str) -> int:
        fd = small_dp.map(name).map_fd
        for line in open(f"/proc/self/fdinfo/{fd}"):
            if line.startswith("memlock:"):
                return int(line.split()[1])
        raise AssertionError("no memlock in fdinfo")
    kernel = memlock("conn_table") + memlock("syn_table") + memlock("syn_spill") + \
        memlock("udp_table") + memlock("flow_cache")
    estimate = config_mod.table_memory_bytes(SMALL_TABLE)
    print(f"conn_table + syn_table + syn_spill + udp_table + flow_cache for conn_table_size {SMALL_TABLE}: kernel {kernel} bytes, "
          f"estimate {estimate}")
    assert abs(kernel - estimate) <= 0.1 * kernel, (kernel, estimate)


# ---- ICMP errors about connections go to their real server (path-MTU discovery) ------------

def test_fragmentation_needed_goes_to_the_connections_real_server(small):
    from bench.frames import forwarded, icmp_error, reply
    small.dp.test_run(tcp("S", sport=50010))
    small.dp.test_run(tcp("A", sport=50010))
    error = icmp_error(reply(sport=50010))
    before = small.dp.counters()
    r = small.dp.test_run(error)
    assert r.verdict == "XDP_TX" and r.data == forwarded(error, RS1), \
        "the router's error must reach the real server that sent the big reply, unchanged"
    moved = {k: v - before[k] for k, v in small.dp.counters().items() if v != before[k]}
    assert moved == {"tx_icmp_error": 1}, moved
    # A half-open connection's SYN-ACK may be the packet that was too big, too.
    small.dp.test_run(tcp("S", sport=50011))
    assert small.dp.test_run(icmp_error(reply(sport=50011, flags="SA"))).verdict == "XDP_TX"


@pytest.mark.parametrize("case", ["no-connection", "other-client", "short-quote",
                                  "udp-no-flow", "time-exceeded-no-connection",
                                  "quoted-icmp", "quoted-ip-options", "expired-connection"])
def test_an_icmp_error_quoting_no_known_connection_is_passed_and_counted(small, case):
    from scapy.layers.inet import ICMP, IP, IPOption_NOP

    from bench.frames import CLIENT_IP, VIP, icmp_error, reply
    from tests.test_packets import age_conn
    small.dp.test_run(tcp("S", sport=50020))
    small.dp.test_run(tcp("A", sport=50020))
    if case == "expired-connection":   # idle past the ESTABLISHED timeout (900 s)
        small.dp.test_run(tcp("S", sport=50023))
        small.dp.test_run(tcp("A", sport=50023))
        age_conn(small, 1000, 50023)
    frame = {
        "no-connection": icmp_error(reply(sport=50021)),
        "other-client": icmp_error(reply(sport=50020, client="10.0.0.77")),
        "short-quote": icmp_error(reply(sport=50020), quote=22),
        "udp-no-flow": icmp_error(reply(sport=50020, dport=53, proto="udp")),
        "time-exceeded-no-connection": icmp_error(reply(sport=50022), type=11, code=0),
        # About a ping reply or a packet with IP options: no connection can be meant.
        "quoted-icmp": icmp_error(bytes(IP(src=VIP, dst=CLIENT_IP) / ICMP(type=0, id=7))),
        "quoted-ip-options": icmp_error(
            bytes(IP(src=VIP, dst=CLIENT_IP, proto=6, options=[IPOption_NOP()] * 4)
                  / reply(sport=50020)[20:]), quote=32),
        "expired-connection": icmp_error(reply(sport=50023)),
    }[case]
    before = small.dp.counters()
    r = small.dp.test_run(frame)
    assert r.verdict == "XDP_PASS" and r.data == frame
    moved = {k: v - before[k] for k, v in small.dp.counters().items() if v != before[k]}
    assert moved == {"pass_icmp_error_no_conn": 1}, moved


def test_a_spoofed_udp_flood_evicts_no_tcp_connection(small):
    """UDP flows have their own table: twenty times it of spoofed datagrams, each twice,
    leave every established TCP connection with its server; the UDP flows they push out
    are counted."""
    from bench.frames import udp
    syn, ack, dgram = tcp("S"), tcp("A"), udp(dport=53)
    held = {}
    for i in range(100):
        saddr, sport = 0x0A000000 + 10, 21000 + i
        held[sport] = small.dp.test_run(frame_of(syn, saddr, sport)).data[:6]
        small.dp.test_run(frame_of(ack, saddr, sport))
    flood = 20 * small.dp.udp_table_slots
    for i in range(0, flood, 256):
        burst = [frame_of(dgram, 0x0B000000 + i + j, 1024 + (i + j) % 60000)
                 for j in range(256)]
        for _ in range(2):
            for f in burst:
                assert small.dp.test_run(f).verdict == "XDP_TX"
    moved = {sport: r.verdict for sport, mac in held.items()
             if (r := small.dp.test_run(frame_of(ack, 0x0A000000 + 10, sport))).data[:6] != mac
             or r.verdict != "XDP_TX"}
    assert not moved, f"{len(moved)} of {len(held)} TCP connections lost to a UDP flood"
    c = small.dp.counters()
    assert c["udp_table_insert"] >= flood and c["conn_table_insert"] == len(held)


# ---- syn_table: a set-associative array --------------------------------------------------

def syn_set_of(lb, sport: int, src: str = "10.0.0.10") -> int:
    h = conn_hash(abi.ip_be32(src), abi.ip_be32("10.0.0.21"), abi.port_be16(sport),
                  abi.port_be16(80), 6, lb.dp.hash_seed)
    return (h >> 32) & (lb.dp.syn_table_sets - 1)


def sports_in_one_set(lb, n: int, start: int = 30000) -> list[int]:
    by_set: dict[int, list[int]] = {}
    for sport in range(start, start + 64 * lb.dp.syn_table_sets):
        same = by_set.setdefault(syn_set_of(lb, sport), [])
        same.append(sport)
        if len(same) == n:
            return same
    raise AssertionError("no set got n keys")


def set_holds(lb, sport: int) -> bool:
    table = lb.dp.map("syn_table")
    held = table[table.Key(syn_set_of(lb, sport))]
    return [w.key.sport for w in held.way if w.key.proto].count(abi.port_be16(sport)) == 1


def test_a_full_set_spills_and_loses_nothing(small):
    """Three SYNs aimed at one set of two: the third goes to syn_spill; all three are
    followed, and each ACK moves its connection to conn_table and frees its place. An
    expired entry's way is reused before anything spills."""
    a, b, c, d = sports_in_one_set(small, 4)
    for sport in (a, b, c):
        assert small.dp.test_run(tcp("S", sport=sport)).verdict == "XDP_TX"
    assert set_holds(small, a) and set_holds(small, b), \
        "the hash oracle does not say where the program puts a key"
    assert not set_holds(small, c) and len(small.dp.half_open()[0]) == 3, "c spilled"
    assert tables_holding(small, c) == ["syn_table"]
    for sport in (a, b, c):
        r = small.dp.test_run(tcp("S", sport=sport))      # a repeated SYN: same server
        assert r.verdict == "XDP_TX" and small.dp.counters()["syn_table_insert"] == 3
    for sport in (a, c):
        assert small.dp.test_run(tcp("A", sport=sport)).verdict == "XDP_TX"
        assert tables_holding(small, sport) == ["conn_table"]
    assert len(small.dp.half_open()[0]) == 1, "each ACK freed its entry, spilled or not"
    # b, the one left, expires: d takes its way instead of spilling.
    from tests.test_packets import age_conn
    age_conn(small, 61, b, src="10.0.0.10")
    small.dp.test_run(tcp("S", sport=d))   # the set has one free way: d takes it
    e = next(p for p in range(d + 1, 65536) if syn_set_of(small, p) == syn_set_of(small, d))
    small.dp.test_run(tcp("S", sport=e))   # and the expired b's, not syn_spill
    assert set_holds(small, d) and set_holds(small, e) and not set_holds(small, b)
