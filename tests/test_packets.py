"""Layer 2: crafted packets through the real program (bpf_prog_test_run_opts), maps filled
by the real control-plane code. Each test checks the verdict and the exact bytes out; the
stateless cases (one frame, one verdict, one counter) are a table in tests/packet_cases.py."""
from __future__ import annotations

import ctypes as ct
import re
import socket
import struct

import pytest

from lb import abi, libbpf
from tests import packet_cases
from tests.conftest import needs_root
from tests.packet_cases import (CLIENT_IP, CONFIG, DIRECTOR_MAC, OTHER_NET_CLIENT_IP, RS1,
                                RS2, RS3, RS_MACS, VIP, forwarded, tcp, udp)

pytestmark = needs_root


@pytest.fixture
def lb(program):
    return program(CONFIG, dict(RS_MACS), DIRECTOR_MAC)


def run(lb, packet: bytes):
    return lb.dp.test_run(packet)


def assert_sent_to(lb, packet: bytes, rs_mac: str, why: str = "") -> None:
    r = run(lb, packet)
    assert r.verdict == "XDP_TX", f"{why}: expected XDP_TX to {rs_mac}, got {r.verdict}"
    assert r.data == forwarded(packet, rs_mac), (
        f"{why}: expected the frame for {rs_mac} with only the MACs changed; "
        f"got dst {abi.mac_str(r.data[:6])}")


def assert_passed_untouched(lb, packet: bytes, counter: str) -> None:
    before = lb.dp.counters()[counter]
    r = run(lb, packet)
    assert r.verdict == "XDP_PASS", f"expected XDP_PASS (counted as {counter}), got {r.verdict}"
    assert r.data == packet, "a passed packet must leave the program unchanged"
    assert lb.dp.counters()[counter] == before + 1, f"counter {counter} did not move"


def conn_state(lb, sport: int, dport: int = 80, proto: int = 6) -> str | None:
    """The connection's state, from whichever table holds it (half-open ones wait in
    syn_table until the client's ACK)."""
    found = find_conn(lb, sport, dport, proto)
    return abi.CONN_STATES[found[1].state] if found else None


def key_in(table, sport: int, dport: int, proto: int, src: str):
    """The table's conn_key of the client's connection to the VIP."""
    key = table.Key()
    key.saddr = abi.ip_be32(src)
    key.daddr = abi.ip_be32(VIP)
    key.sport = abi.port_be16(sport)
    key.dport = abi.port_be16(dport)
    key.proto = proto
    return key


def find_conn(lb, sport: int, dport: int = 80, proto: int = 6, src: str = CLIENT_IP):
    """(table name, value) of the connection, or None."""
    for name in ("conn_table", "syn_table", "udp_table"):
        if name == "syn_table":
            key = key_in(lb.dp.map("conn_table"), sport, dport, proto, src)
            slot = lb.dp.half_open_slot(key)
            if slot:
                table = lb.dp.map("syn_table")
                return name, table[table.Key(slot[0])].way[slot[1]].value
            if key in lb.dp.map("syn_spill"):
                return "syn_spill", lb.dp.map("syn_spill")[key]
            continue
        table = lb.dp.map(name)
        key = key_in(table, sport, dport, proto, src)
        try:
            return name, table[key]
        except KeyError:
            continue
    return None


# ---- ABI: one definition, two readers ------------------------------------------------

@pytest.mark.parametrize("map_name,side,struct", [
    ("services", "Key", "svc_key"), ("services", "Leaf", "svc_info"),
    ("vips", "Leaf", "vip_info"), ("reals", "Leaf", "real_info"),
    ("conn_table", "Key", "conn_key"), ("conn_table", "Leaf", "conn_value"),
    ("persist_table", "Key", "persist_key"), ("persist_table", "Leaf", "persist_value"),
    ("settings", "Leaf", "settings"), ("real_stats", "Leaf", "stats"),
    ("real_conns", "Leaf", "real_conns"), ("syn_table", "Leaf", "syn_set"),
    ("flow_cache", "Leaf", "flow_set"),
])
def test_abi_layout_matches_compiled_program(dataplane, map_name, side, struct):
    """cffi's reading of dr_lb_abi.h and the compiled program's BTF must agree."""
    ctype = getattr(dataplane.map(map_name), side)
    if issubclass(ctype, ct.Array):   # per-CPU maps: one value per CPU
        ctype = ctype._type_
    cffi_type = abi.ffi.typeof(f"struct {struct}")
    assert ct.sizeof(ctype) == abi.ffi.sizeof(cffi_type), f"struct {struct}: sizes differ"
    for name, field in cffi_type.fields:
        assert getattr(ctype, name).offset == field.offset, (
            f"struct {struct}.{name}: offset {field.offset} in cffi, "
            f"{getattr(ctype, name).offset} in the program")


PARSING_ALONE = r"""
#include "parsing.h"

static __always_inline int parse_all(void *data, void *data_end)
{
	struct hdr_cursor c = { .pos = data, .end = data_end };
	struct ethhdr *eth = parse_ethhdr(&c);
	struct arp_ipv4 *arp = parse_arp(&c);
	struct iphdr *iph = parse_iphdr(&c);
	struct tcphdr *th = parse_tcphdr(&c);
	struct udphdr *uh = parse_udphdr(&c);
	struct icmphdr *icmp = parse_icmphdr(&c);

	if (!eth || !arp || !iph || !th || !uh || !icmp)
		return 0;
	return eth->h_proto == bpf_htons(0x0800) && bpf_ntohs(iph->tot_len) > 20 &&
	       !is_fragment(iph) && arp->hlen == ETH_ALEN;
}

int parsing_alone(void *ctx)
{
	return parse_all(ctx, ctx + 64);
}
"""


def test_parsing_header_is_self_contained():
    """bpf/parsing.h includes or defines all it uses: a file including only it compiles."""
    from bcc import BPF
    BPF(text=PARSING_ALONE.encode(), cflags=[f"-I{abi.BPF_DIR}", "-Werror"]).cleanup()


# ---- stateless cases: one frame, one verdict, one counter (tests/packet_cases.py) ---------

EXIT_PREFIXES = ("tx_", "pass_", "drop_")


@pytest.mark.parametrize("case", packet_cases.CASES, ids=[c.name for c in packet_cases.CASES])
def test_stateless_case(program, case):
    """From fresh maps, the frame gets its verdict, its exact bytes out (a passed frame
    leaves unchanged) and exactly one exit counter, its reason, moves, by one."""
    lb = program(case.config, dict(case.macs), DIRECTOR_MAC)
    if case.setup:
        case.setup(lb)
    before = lb.dp.counters()
    r = run(lb, case.frame)
    moved = {k: v - before[k] for k, v in lb.dp.counters().items() if v != before[k]}
    assert r.verdict == case.verdict, (
        f"expected {case.verdict} (counted as {case.counter}), got {r.verdict}; "
        f"counters moved: {moved}")
    exits = {k: v for k, v in moved.items() if k.startswith(EXIT_PREFIXES)}
    assert exits == {case.counter: 1}, \
        f"expected exactly {case.counter} +1 among the exit counters, got {exits}"
    if case.verdict == "XDP_PASS":
        assert r.data == case.frame, "a passed packet must leave the program unchanged"
    elif case.out is not None:
        assert r.data == case.out, case.why or "unexpected bytes out"
    inserts = [moved.get(f"{t}_insert", 0) for t in ("conn_table", "syn_table", "udp_table")]
    if case.counter == "tx_service":
        assert sum(inserts) == 1, "a new connection is one new key, in one table"
    else:
        assert not any(inserts) \
            and not list(lb.dp.map("conn_table").keys()) \
            and not len(lb.dp.half_open()[0]) \
            and not list(lb.dp.map("udp_table").keys()), \
            "no connection may be created by a frame that is not sent to a real server"


def test_case_names_are_unique():
    names = [c.name for c in packet_cases.CASES]
    assert len(names) == len(set(names))


# ---- TCP -----------------------------------------------------------------------------------

def test_syn_is_scheduled_and_forwarded_with_only_macs_changed(lb):
    assert_sent_to(lb, tcp("S"), RS1, "first SYN, WRR position 0")
    assert conn_state(lb, 40000) == "syn_recv"


def test_tcp_states_follow_client_flags(lb):
    assert_sent_to(lb, tcp("S"), RS1, "SYN")
    assert conn_state(lb, 40000) == "syn_recv"
    assert_sent_to(lb, tcp("A"), RS1, "ACK of the handshake")
    assert conn_state(lb, 40000) == "established"
    assert_sent_to(lb, tcp("PA", payload=b"GET / HTTP/1.0\r\n\r\n"), RS1, "data")
    assert conn_state(lb, 40000) == "established"
    assert_sent_to(lb, tcp("FA"), RS1, "FIN")
    assert conn_state(lb, 40000) == "fin_wait"
    assert_sent_to(lb, tcp("A"), RS1, "last ACK")
    assert conn_state(lb, 40000) == "fin_wait", "an ACK after FIN stays in FIN_WAIT"


def test_rst_closes_the_connection(lb):
    assert_sent_to(lb, tcp("S", sport=40001), RS1)
    assert_sent_to(lb, tcp("A", sport=40001), RS1)
    assert_sent_to(lb, tcp("R", sport=40001), RS1, "the RST still reaches the server")
    assert conn_state(lb, 40001) == "close"


def test_wrr_2_1_1_in_ipvs_order(lb):
    got = []
    for i in range(12):
        r = run(lb, tcp("S", sport=42000 + i))
        assert r.verdict == "XDP_TX"
        got.append(abi.mac_str(r.data[:6]))
    assert got == [RS1, RS1, RS2, RS3] * 3, "weights 2:1:1 must go rs1, rs1, rs2, rs3"
    real_conns = [lb.dp.real_stats(r.real_id).conns for r in lb.layout.services[0].reals]
    assert real_conns == [6, 3, 3]
    assert lb.dp.service_stats(0).conns == 12


def test_syn_on_closed_connection_is_rescheduled(lb):
    assert_sent_to(lb, tcp("S", sport=43000), RS1)
    assert_sent_to(lb, tcp("R", sport=43000), RS1)
    assert_sent_to(lb, tcp("S", sport=43000), RS1, "port reuse: WRR position 1")
    assert_sent_to(lb, tcp("S", sport=43001), RS2, "the reuse consumed a WRR slot")


def test_established_frames_for_other_macs_are_not_forwarded_again(lb):
    """On a flooding segment the director sees its own forwards, another director's,
    and copies addressed to other hosts: sending any of them on would loop."""
    assert_sent_to(lb, tcp("S", sport=43500), RS1)
    assert_sent_to(lb, tcp("A", sport=43500), RS1)
    for dst_mac in (RS1, RS2, "02:00:00:00:00:99", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01"):
        assert_passed_untouched(lb, tcp("A", sport=43500, dst_mac=dst_mac), "pass_not_our_mac")
    assert_sent_to(lb, tcp("A", sport=43500), RS1, "the director's own frames still go on")


def test_counts_packets_and_ip_bytes(lb):
    syn = tcp("S", sport=44000)
    data = tcp("PA", sport=44000, payload=b"x" * 100)
    run(lb, syn)
    run(lb, data)
    stats = lb.dp.real_stats(lb.layout.services[0].reals[0].real_id)
    assert (stats.conns, stats.packets) == (1, 2)
    assert stats.bytes == (len(syn) - 14) + (len(data) - 14), "bytes are IP datagram bytes"


# ---- UDP ---------------------------------------------------------------------------------

def test_udp_sticks_to_server_then_expires(lb):
    assert_sent_to(lb, udp(sport=5000), RS1, "first datagram")
    assert conn_state(lb, 5000, 53, 17) == "udp"
    assert_sent_to(lb, udp(sport=5000), RS1, "same flow, same server")
    assert_sent_to(lb, udp(sport=5001), RS1, "second flow: WRR position 1")
    age_conn(lb, 1.1, 5000, 53, 17)   # udp = 1 in CONFIG
    assert_sent_to(lb, udp(sport=5000), RS2, "after the udp timeout the flow is new")


# ---- persistence -----------------------------------------------------------------------------

def test_persistence_with_24_netmask(lb):
    first = run(lb, tcp("S", sport=45000, dport=443))
    assert first.verdict == "XDP_TX"
    chosen = abi.mac_str(first.data[:6])
    for port in range(45001, 45010):
        src = CLIENT_IP if port % 2 else "10.0.0.77"   # same /24
        r = run(lb, tcp("S", sport=port, dport=443, src=src))
        assert abi.mac_str(r.data[:6]) == chosen, \
            f"client {src} in the same /24 must stay on {chosen}"
    other = run(lb, tcp("S", sport=45000, dport=443, src=OTHER_NET_CLIENT_IP))
    assert abi.mac_str(other.data[:6]) != chosen, "another /24 gets the next WRR server"
    assert lb.dp.counters()["persist_hit"] == 9


# ---- weight 0 and unknown MACs -------------------------------------------------------------

def test_weight_0_takes_no_new_connections_but_keeps_existing(lb):
    assert_sent_to(lb, tcp("S", sport=46000), RS1)
    assert_sent_to(lb, tcp("A", sport=46000), RS1)
    quiesced = CONFIG.replace('address = "10.0.0.12"\nweight = 2',
                              'address = "10.0.0.12"\nweight = 0', 1)
    from lb.director import config as config_mod
    lb.reprogram(config_mod.parse(quiesced), dict(RS_MACS))
    for i in range(8):
        r = run(lb, tcp("S", sport=46100 + i))
        assert abi.mac_str(r.data[:6]) in (RS2, RS3), "a weight-0 server got a new connection"
    assert_sent_to(lb, tcp("A", sport=46000), RS1, "the established connection goes on")


def test_server_without_mac_is_never_chosen(program):
    macs = dict(RS_MACS, **{"10.0.0.12": None})
    lb = program(CONFIG, macs, DIRECTOR_MAC)
    for i in range(8):
        r = run(lb, tcp("S", sport=47000 + i))
        assert r.verdict == "XDP_TX"
        assert abi.mac_str(r.data[:6]) in (RS2, RS3)


# ---- timeouts: an expired entry counts as absent -----------------------------------------

def conn_key(lb, sport: int, dport: int = 80, proto: int = 6, src: str = CLIENT_IP):
    """(table, key) of the connection in conn_table or udp_table."""
    name = "udp_table" if proto == 17 else "conn_table"
    table = lb.dp.map(name)
    return table, key_in(table, sport, dport, proto, src)


def age_conn(lb, seconds: float, sport: int, dport: int = 80, proto: int = 6,
             src: str = CLIENT_IP) -> None:
    """Pretend the connection has been idle for `seconds` (longer than any CPU follows it
    from its flow_cache: the caches are emptied, as time would have voided them), in
    whichever table holds it."""
    table, key = conn_key(lb, sport, dport, proto, src)
    if key not in table and key in lb.dp.map("syn_spill"):
        table = lb.dp.map("syn_spill")
    slot = None if key in table else lb.dp.half_open_slot(key)
    if slot:
        table, key = lb.dp.map("syn_table"), lb.dp.map("syn_table").Key(slot[0])
        half_open = table[key]
        half_open.way[slot[1]].value.last_seen_ns -= int(seconds * 1e9)
        table[key] = half_open
    else:
        value = table[key]
        value.last_seen_ns -= int(seconds * 1e9)
        table[key] = value
    lb.dp.forget_flows()


@pytest.mark.parametrize("flags,state,timeout", [
    ("S", "syn_recv", abi.CONST["SYN_RECV_TIMEOUT_S"]),
    ("A", "established", 900),
    ("F", "fin_wait", 120),
    ("R", "close", abi.CONST["CLOSE_TIMEOUT_S"]),
])
def test_tcp_entry_lives_its_states_timeout(lb, flags, state, timeout):
    sport = 48000 + len(flags) + ord(flags[0])
    assert_sent_to(lb, tcp("S", sport=sport), RS1)
    if flags != "S":
        assert_sent_to(lb, tcp("A", sport=sport), RS1)
        if flags != "A":
            assert_sent_to(lb, tcp(flags, sport=sport), RS1)
    assert conn_state(lb, sport) == state
    age_conn(lb, timeout - 1, sport)
    probe = "S" if state == "syn_recv" else "A"   # a probe that keeps the state as it is
    assert_sent_to(lb, tcp(probe, sport=sport), RS1,
                   f"{state} must live {timeout} s; it was gone after {timeout - 1} s")
    assert conn_state(lb, sport) == state
    age_conn(lb, timeout + 1, sport)
    assert_passed_untouched(lb, tcp("A", sport=sport), "pass_tcp_no_conn")


def test_persistence_template_expires_after_persistent_seconds(lb):
    first = run(lb, tcp("S", sport=49000, dport=443))
    chosen = abi.mac_str(first.data[:6])
    table = lb.dp.map("persist_table")
    (key, value), = table.items()
    value.last_seen_ns -= 301 * 10**9   # persistent = 300
    table[key] = value
    nxt = run(lb, tcp("S", sport=49001, dport=443))
    assert abi.mac_str(nxt.data[:6]) != chosen, "an expired template must not pin the client"


def test_server_that_loses_its_mac_gets_no_packets_and_new_flows_move(lb):
    assert_sent_to(lb, tcp("S", sport=49100), RS1)
    assert_sent_to(lb, tcp("A", sport=49100), RS1)
    assert_sent_to(lb, udp(sport=49101), RS1)
    lb.reprogram(lb.config, dict(RS_MACS, **{"10.0.0.12": None}))
    before = lb.dp.counters()["drop_real_mac_unknown"]
    assert run(lb, tcp("A", sport=49100)).verdict == "XDP_DROP"
    assert lb.dp.counters()["drop_real_mac_unknown"] == before + 1
    r = run(lb, udp(sport=49101))
    assert r.verdict == "XDP_TX" and abi.mac_str(r.data[:6]) in (RS2, RS3), \
        "a UDP flow whose server vanished must be scheduled anew"
    r = run(lb, tcp("S", sport=49100))
    assert abi.mac_str(r.data[:6]) in (RS2, RS3), "a SYN retry must be scheduled anew"


def test_real_server_removed_from_config_gets_no_new_persistent_connections(lb):
    first = run(lb, tcp("S", sport=49200, dport=443))
    pinned = abi.mac_str(first.data[:6])
    pinned_ip = next(ip for ip, mac in RS_MACS.items() if mac == pinned)
    from lb.director import config as config_mod
    text = CONFIG
    persistent_part = text[text.index('port = 443'):]
    trimmed = persistent_part.replace(f'[[service.real_server]]\naddress = "{pinned_ip}"\n', "", 1)
    lb.reprogram(config_mod.parse(text.replace(persistent_part, trimmed)), dict(RS_MACS))
    assert_sent_to(lb, tcp("A", sport=49200, dport=443), pinned,
                   "the existing connection goes on to the removed server")
    for port in range(49201, 49205):
        r = run(lb, tcp("S", sport=port, dport=443))
        assert abi.mac_str(r.data[:6]) != pinned, \
            "the template of a removed real server must not place new connections"


def test_a_service_counts_what_its_dropped_servers_forwarded_until_zeroed(lb):
    """A service's stats are its real servers' together, a server dropped from the config
    included (its connections were the service's traffic, as IPVS counts it); zeroing the
    service zeroes them all, and what was taken is kept for /metrics."""
    from lb.director import config as config_mod
    svc = lb.layout.services[0]
    first = run(lb, tcp("S", sport=49300))
    sent_to = abi.mac_str(first.data[:6])
    gone_ip = next(ip for ip, mac in RS_MACS.items() if mac == sent_to)
    gone = next(r.real_id for r in svc.reals if r.server.address == gone_ip)
    for _ in range(3):
        assert_sent_to(lb, tcp("A", sport=49300), sent_to)
    before = lb.dp.service_stats(svc.svc_id)
    assert before.packets >= 4 and before.conns >= 1
    text = re.sub(rf'\[\[service\.real_server\]\]\naddress = "{gone_ip}"\n(weight = \d+\n)?', "",
                  CONFIG, count=1)
    lb.reprogram(config_mod.parse(text), dict(RS_MACS))
    assert gone not in [r.real_id for r in lb.layout.services[0].reals]
    assert_sent_to(lb, tcp("A", sport=49300), sent_to, "the connection goes on")
    after = lb.dp.service_stats(svc.svc_id)
    assert after.packets == before.packets + 1 and after.conns == before.conns
    lb.dp.zero_stats([svc.svc_id], [r.real_id for r in lb.layout.services[0].reals])
    assert lb.dp.service_stats(svc.svc_id).packets == 0
    assert lb.dp.real_stats(gone).packets == 0, "the dropped server's share was left"
    assert lb.dp.zeroed_stats("svc_stats", svc.svc_id).packets == after.packets


def test_reprogramming_never_mixes_services_wrr_cycles(lb):
    """While the maps change, a service must not read another service's cycle: new
    cycles go to the other half of wrr_seq before the services switch."""
    seq = lb.dp.map("wrr_seq")
    services = lb.dp.map("services")
    before = {bytes(k): (v.seq_offset, v.seq_len) for k, v in services.items()}
    heavier = CONFIG.replace('address = "10.0.0.12"\nweight = 2', 'address = "10.0.0.12"\nweight = 5', 1)
    from lb.director import config as config_mod
    lb.reprogram(config_mod.parse(heavier), dict(RS_MACS))
    after = {bytes(k): (v.seq_offset, v.seq_len) for k, v in services.items()}
    for key, (offset, length) in before.items():
        new_offset, new_length = after[key]
        old_slots = set(range(offset, offset + length))
        assert not old_slots & set(range(new_offset, new_offset + new_length)), \
            "the new cycle overwrote slots the old one was read from"
    first_slots = {v.id: seq[ct.c_uint32(v.seq_offset)].value for v in services.values()}
    assert first_slots == {s.svc_id: s.sequence[0] for s in lb.layout.services}, \
        "each service's new cycle must start where the layout put it"
    assert first_slots[0] == lb.layout.services[0].reals[0].real_id, "weight 5 goes first"


# ---- capacity (last: it fills the table) -------------------------------------------------

SYN_TEMPLATE: bytes = b""


def syn_from(i: int) -> bytes:
    """The SYN of connection number i: a distinct (client address, port) for each i."""
    global SYN_TEMPLATE
    SYN_TEMPLATE = SYN_TEMPLATE or tcp("S")   # scapy is far too slow to build a million
    frame = bytearray(SYN_TEMPLATE)
    frame[26:30] = struct.pack("!I", 0x0A800000 + (i >> 16))
    frame[34:36] = struct.pack("!H", i & 0xFFFF)
    return bytes(frame)


def ack_from(i: int) -> bytes:
    syn = syn_from(i)
    return syn[:47] + b"\x10" + syn[48:]


def test_conn_table_holds_a_million_connections_then_evicts_the_oldest(lb):
    """Presence is read from the map, not from a packet's verdict: filling the table takes
    longer than SYN_RECV's 60 s on a loaded machine, and an expired entry is still
    held (it is the eviction this is about)."""
    size = lb.config.director.conn_table_size
    assert size == 1_000_000, "the default must be at least a million connections"
    slots = lb.dp.conn_table_slots
    table = lb.dp.map("conn_table")

    def held(i: int) -> bool:
        frame = syn_from(i)
        _, key = conn_key(lb, struct.unpack("!H", frame[34:36])[0],
                          src=socket.inet_ntoa(frame[26:30]))
        return key in table

    for i in range(size):   # established: SYN, then the ACK that moves it to conn_table
        assert lb.dp.test_run(syn_from(i)).action == libbpf.XDP_TX, f"connection {i} not sent"
        lb.dp.test_run(ack_from(i))
    counts = lb.dp.conn_counts()
    assert counts.entries == size, f"{size - counts.entries} of {size} connections were lost"
    assert held(0), "the oldest connection must still be there"
    extra = slots - size + 1000
    for i in range(size, size + extra):
        lb.dp.test_run(syn_from(i))
        lb.dp.test_run(ack_from(i))
    counts = lb.dp.conn_counts()
    inserts = lb.dp.counters()["conn_table_insert"]
    assert inserts == size + extra
    assert inserts - counts.entries >= 1000, "a full table must evict, and the count shows it"
    assert held(size + extra - 1), "the newest connection must be kept"
    assert not all(held(i) for i in range(1, 1001)), \
        "some of the least recently used connections should have been evicted"
