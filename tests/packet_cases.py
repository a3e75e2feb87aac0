"""The frames the packet tests and the benchmarks feed to the XDP program, and the table
of stateless cases: one frame in, one verdict, the exact bytes out (or the frame left as
it came) and the one exit counter it bumps.

Frames are built with scapy from symbolic addresses; the builders take the addresses
and MACs as parameters, so bench/ builds its flows with the same code.
tests/test_packets.py runs CASES, one test each.
"""
from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass
from typing import Callable

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from bench.frames import (BROADCAST, CLIENT_IP, CLIENT_MAC, DIRECTOR_MAC, OTHER_IP,
                          OTHER_NET_CLIENT_IP, PING_PAYLOAD, RS1, RS2, RS3, RS_MACS, VIP, arp,
                          arp_reply_from_director, echo_reply, echo_request, ether, forwarded,
                          ip, patched, ping, tcp, udp)
from lb import abi

CONFIG = f"""
[director]
interface = "eth0"
[timeouts]
tcp = 900
tcpfin = 120
udp = 1

[[service]]
vip = "{VIP}"
port = 80
[[service.real_server]]
address = "10.0.0.12"
weight = 2
[[service.real_server]]
address = "10.0.0.13"
[[service.real_server]]
address = "10.0.0.14"

[[service]]
vip = "{VIP}"
port = 53
protocol = "udp"
[[service.real_server]]
address = "10.0.0.12"
weight = 2
[[service.real_server]]
address = "10.0.0.13"
[[service.real_server]]
address = "10.0.0.14"

[[service]]
vip = "{VIP}"
port = 443
persistent = 300
persistent_netmask = "255.255.255.0"
[[service.real_server]]
address = "10.0.0.12"
[[service.real_server]]
address = "10.0.0.13"
[[service.real_server]]
address = "10.0.0.14"
"""
CONFIG_NO_ICMP_ECHO = CONFIG.replace('interface = "eth0"',
                                     'interface = "eth0"\nicmp_echo = false')


# ---- builders ---------------------------------------------------------------------------

def fresh(lb) -> None:
    """The maps as the program finds them before the control plane's first write:
    settings all zero (an array entry always exists), no service, no VIP, no bit in the
    VIP pre-filter."""
    zero_settings(lb)
    lb.dp.map("services").clear()
    lb.dp.map("vips").clear()
    lb.dp.map("vip_filter").clear()


def arp_from(eth_src: str, sender_hw: str) -> bytes:
    """A broadcast who-has VIP with this Ethernet source and ARP sender MAC."""
    return bytes(Ether(src=eth_src, dst=BROADCAST)
                 / ARP(op=1, hwsrc=sender_hw, psrc=CLIENT_IP, pdst=VIP))


def zero_settings(lb) -> None:
    """Settings unwritten while the other maps are programmed: the program must not
    send a frame (it has no source MAC) nor decide on the VIPs it would otherwise see."""
    settings = lb.dp.map("settings")
    settings[ct.c_uint32(0)] = settings.Leaf()


# ---- the table ------------------------------------------------------------------------------


M64 = (1 << 64) - 1


def conn_hash(saddr: int, daddr: int, sport: int, dport: int, proto: int, seed: int) -> int:
    """bpf/dr_lb.c conn_hash (network-order fields as the program reads them), to aim keys
    at one set of syn_table: a test's oracle, which test_harden_packets checks against
    where the program put them."""
    z = ((daddr << 32) | saddr) ^ seed
    z ^= ((((dport << 16) | sport) << 8 | proto) * 0x9e3779b97f4a7c15) & M64
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


# A flow_cache way's bits (bpf/dr_lb_consts.h): real_id, stamp, valid, alternate, check.
FLOW_REAL_BITS = abi.CONST["FLOW_REAL_BITS"]
FLOW_STAMP_BITS = abi.CONST["FLOW_STAMP_BITS"]
FLOW_VALID_SHIFT = FLOW_REAL_BITS + FLOW_STAMP_BITS
FLOW_ALT = 1 << (FLOW_VALID_SHIFT + 1)
FLOW_CHECK_SHIFT = FLOW_VALID_SHIFT + 2
FLOW_CHECK_BITS = 64 - FLOW_CHECK_SHIFT
# The home way: the top log2(ways) check bits; the alternate set: the log2 bits below them.
FLOW_HOME_FROM = FLOW_CHECK_BITS - (abi.CONST["FLOW_CACHE_WAYS"] - 1).bit_length()
FLOW_HASH_MULT = 0x9e3779b97f4a7c15         # bpf/dr_lb.c flow_hash


def flow_key_bits(log2: int) -> int:
    return FLOW_CHECK_BITS + log2


def flow_tag(vip: int, port: int, proto: int, log2: int) -> int:
    """bpf/dr_lb.c flow_key's tag of a service (network-order fields): its top
    flow_key_bits(log2) - 48 bits."""
    bits = flow_key_bits(log2) - 48
    product = ((vip ^ (port << 16 | proto)) * abi.CONST["FLOW_TAG_MULT"]) & 0xFFFFFFFF
    return product >> (32 - bits) if bits else 0


def flow_key(saddr: int, sport: int, vip: int, port: int, proto: int, log2: int) -> int:
    """bpf/dr_lb.c flow_key: a connection's key in flow_cache (network-order fields)."""
    return sport | saddr << 16 | flow_tag(vip, port, proto, log2) << 48


def flow_hash(key: int, seed: int, log2: int) -> int:
    """bpf/dr_lb.c flow_hash, a bijection of flow_key_bits(log2)-bit keys: the set is its
    top log2 bits, a way keeps the rest (flow_want)."""
    return ((key ^ seed) * FLOW_HASH_MULT) & ((1 << flow_key_bits(log2)) - 1)


def flow_want(h: int, alt: bool = False) -> int:
    """bpf/dr_lb.c flow_want: a way of the key whose hash is `h`, above real_id and stamp,
    in its home set (or with `alt`, in its alternate set)."""
    return (h & ((1 << FLOW_CHECK_BITS) - 1)) << FLOW_CHECK_SHIFT | 1 << FLOW_VALID_SHIFT | \
        (FLOW_ALT if alt else 0)


def flow_home(h: int) -> int:
    """bpf/dr_lb.c flow_home: the key's home set."""
    return h >> FLOW_CHECK_BITS


def flow_home_way(h: int) -> int:
    """bpf/dr_lb.c flow_home_way: the key's home way in a set (the top 3 check bits)."""
    return (h >> FLOW_HOME_FROM) & (abi.CONST["FLOW_CACHE_WAYS"] - 1)


def flow_alt(h: int, log2: int) -> int:
    """bpf/dr_lb.c flow_alt: the key's alternate set, from its home set and check bits."""
    return flow_home(h) ^ ((h >> (FLOW_HOME_FROM - log2)) | 1) & ((1 << log2) - 1)


def way_holds(way: int, want: int) -> bool:
    return (way ^ want) >> FLOW_VALID_SHIFT == 0


def way_real(way: int) -> int:
    return way & ((1 << FLOW_REAL_BITS) - 1)


def way_stamp(way: int) -> int:
    return (way >> FLOW_REAL_BITS) & ((1 << FLOW_STAMP_BITS) - 1)


def way_with(way: int, real_id: int | None = None, stamp: int | None = None) -> int:
    """`way` with another real_id or stamp."""
    if real_id is not None:
        way = way & ~((1 << FLOW_REAL_BITS) - 1) | real_id
    if stamp is not None:
        mask = ((1 << FLOW_STAMP_BITS) - 1) << FLOW_REAL_BITS
        way = way & ~mask | stamp << FLOW_REAL_BITS
    return way


@dataclass(frozen=True)
class Case:
    name: str
    frame: bytes
    verdict: str                         # XDP_TX, XDP_PASS or XDP_DROP
    counter: str                         # the one tx_/pass_/drop_ counter it bumps by one
    out: bytes | None = None             # exact bytes out of XDP_TX; a pass leaves the frame
    why: str = ""
    config: str = CONFIG
    macs: tuple[tuple[str, str | None], ...] = tuple(RS_MACS.items())
    setup: Callable | None = None        # run on the programmed maps before the frame


def passed(name: str, frame: bytes, counter: str, **kw) -> Case:
    return Case(name, frame, "XDP_PASS", counter, **kw)


def _truncated() -> list[Case]:
    """Every frame cut at every length from the Ethernet header up to one byte short of
    its last header: never sent, never changed, always counted as malformed."""
    full = {"tcp-syn": (tcp("S"), 14 + 20 + 20), "udp": (udp(), 14 + 20 + 8),
            "arp": (arp(), 14 + 28), "icmp": (ping(), 14 + 20 + 8)}
    return [passed(f"truncated-{name}-{length}B", frame[:length], "pass_malformed")
            for name, (frame, headers_end) in full.items()
            for length in range(14, headers_end)]


def _cases() -> list[Case]:
    who_has_vip = arp()
    request = echo_request()
    syn, first_udp = tcp("S"), udp()
    no_macs = tuple((address, None) for address in RS_MACS)
    return [
        # ARP companion
        Case("arp-who-has-vip", who_has_vip, "XDP_TX", "tx_arp_reply",
             out=arp_reply_from_director(who_has_vip),
             why="the reply must say VIP is-at the director's MAC, addressed to the asker"),
        passed("arp-who-has-other-address", arp(pdst=OTHER_IP), "pass_arp_other"),
        passed("arp-reply-for-vip", arp(op=2, dst_mac=DIRECTOR_MAC), "pass_arp_other"),
        passed("arp-gratuitous-for-vip", arp(psrc=VIP), "pass_arp_other"),
        # only what is sent to the director's MAC is answered (a flooding switch shows us
        # the rest); an ARP request to the director's own MAC is a unicast refresh
        Case("arp-who-has-vip-unicast-to-director", arp(dst_mac=DIRECTOR_MAC), "XDP_TX",
             "tx_arp_reply", out=arp_reply_from_director(arp(dst_mac=DIRECTOR_MAC))),
        passed("arp-who-has-vip-unicast-to-another-host", arp(dst_mac=RS1),
               "pass_not_our_mac"),
        passed("arp-who-has-vip-from-broadcast-source",
               arp_from(BROADCAST, CLIENT_MAC), "pass_arp_bad_source"),
        passed("arp-who-has-vip-from-multicast-source",
               arp_from("01:00:5e:00:00:01", CLIENT_MAC), "pass_arp_bad_source"),
        passed("arp-who-has-vip-from-zero-source",
               arp_from("00:00:00:00:00:00", CLIENT_MAC), "pass_arp_bad_source"),
        passed("arp-who-has-vip-broadcast-sender-hw", arp_from(CLIENT_MAC, BROADCAST),
               "pass_arp_bad_source"),
        passed("arp-who-has-vip-multicast-sender-hw",
               arp_from(CLIENT_MAC, "33:33:00:00:00:01"), "pass_arp_bad_source"),
        *(passed(f"{name}-to-{to}", frame(dst_mac), "pass_not_our_mac")
          for name, frame in (("tcp-syn-vip-80", lambda m: tcp("S", dst_mac=m)),
                              ("udp-vip-53", lambda m: udp(dst_mac=m)),
                              ("ping-vip", lambda m: bytes(Ether(src=CLIENT_MAC, dst=m)
                                                          / IP(src=CLIENT_IP, dst=VIP)
                                                          / ICMP(type=8))))
          for to, dst_mac in (("another-host", "02:00:00:00:00:99"), ("broadcast", BROADCAST),
                              ("multicast", "01:00:5e:00:00:01"), ("real-server", RS1))),
        passed("tcp-syn-forwarded-by-another-director",
               tcp("S", src_mac="02:00:00:00:00:0c", dst_mac=RS2), "pass_not_our_mac"),
        # ping
        Case("ping-vip", request, "XDP_TX", "tx_icmp_echo_reply", out=echo_reply(),
             why="echo reply must have swapped addresses and valid checksums"),
        passed("ping-vip-icmp-echo-off", ping(), "pass_icmp_other", config=CONFIG_NO_ICMP_ECHO),
        passed("icmp-timestamp-to-vip", ping(type=13), "pass_icmp_other"),
        passed("ping-vip-code-1", ping(code=1), "pass_icmp_other"),
        passed("ping-not-vip", ping(OTHER_IP), "pass_not_vip"),
        # new flows, first slot of the WRR cycle
        Case("tcp-syn-vip-80", syn, "XDP_TX", "tx_service", out=forwarded(syn, RS1),
             why="first SYN, WRR position 0: the frame for rs1 with only the MACs changed"),
        Case("udp-vip-53", first_udp, "XDP_TX", "tx_service", out=forwarded(first_udp, RS1),
             why="first datagram, WRR position 0"),
        Case("tcp-syn-no-usable-server", syn, "XDP_DROP", "drop_no_real_server", macs=no_macs),
        # TCP that is not a new connection, with no connection: the kernel's business
        *(passed(f"tcp-{flags}-without-connection", tcp(flags, sport=41000), "pass_tcp_no_conn")
          for flags in ("A", "PA", "FA", "R", "SA")),
        # everything else is passed, each with its own counter
        passed("ipv6", bytes(ether() / IPv6(dst="fe80::1") / UDP()), "pass_not_ipv4"),
        passed("vlan-tagged", bytes(ether() / Dot1Q(vlan=5) / IP(src=CLIENT_IP, dst=VIP)
                                    / TCP(dport=80, flags="S")), "pass_not_ipv4"),
        passed("tcp-not-vip", bytes(ip(OTHER_IP) / TCP(flags="S")), "pass_not_vip"),
        passed("udp-not-vip", udp(dst=OTHER_IP), "pass_not_vip"),
        passed("tcp-vip-other-port", tcp("S", dport=22), "pass_vip_other_port"),
        passed("udp-vip-other-port", udp(dport=54), "pass_vip_other_port"),
        passed("gre-to-vip", bytes(ip(proto=47) / b"gre"), "pass_vip_other_port"),
        passed("gre-not-vip", bytes(ip(OTHER_IP, proto=47) / b"gre"), "pass_not_vip"),
        passed("ip-options", bytes(ip(options=b"\x01\x01\x01\x00") / TCP(dport=80, flags="S")),
               "pass_ip_options"),
        passed("fragment-more-fragments", bytes(ip(flags="MF") / TCP(dport=80, flags="S")),
               "pass_fragment"),
        passed("fragment-offset", bytes(ip(frag=100) / (b"x" * 20)), "pass_fragment"),
        # malformed
        passed("ip-header-length-4", patched(syn, 14, 0x44), "pass_malformed"),
        passed("tcp-data-offset-4", patched(syn, 14 + 20 + 12, 0x40), "pass_malformed"),
        *_truncated(),
        # not programmed yet: pass, whatever the maps would say
        *(passed(f"fresh-{name}", frame, "pass_not_programmed", setup=fresh)
          for name, frame in (("arp-who-has-vip", who_has_vip), ("tcp-syn-vip-80", syn),
                              ("tcp-A-vip-80", tcp("A")), ("udp-vip-53", first_udp),
                              ("ping-vip", request), ("gre-to-vip", bytes(ip(proto=47) / b"gre")),
                              ("tcp-syn-not-vip", tcp("S", dst=OTHER_IP)))),
        *(passed(f"settings-zero-{name}", frame, "pass_not_programmed", setup=zero_settings)
          for name, frame in (("arp-who-has-vip", who_has_vip), ("tcp-syn-vip-80", syn),
                              ("udp-vip-53", first_udp), ("ping-vip", request),
                              ("gre-to-vip", bytes(ip(proto=47) / b"gre")))),
        # ... but what is decided before the maps are read keeps its own reason
        passed("fresh-arp-reply-for-vip", arp(op=2, dst_mac=DIRECTOR_MAC), "pass_arp_other",
               setup=fresh),
        passed("fresh-ipv6", bytes(ether() / IPv6(dst="fe80::1") / UDP()), "pass_not_ipv4",
               setup=fresh),
        passed("fresh-fragment", bytes(ip(flags="MF") / TCP(dport=80, flags="S")),
               "pass_fragment", setup=fresh),
        # The TCP/UDP header is read after the VIP pre-filter, which on a fresh director
        # knows no VIP: not programmed (programmed, to a VIP: malformed, above).
        passed("fresh-truncated-tcp-syn", syn[:40], "pass_not_programmed", setup=fresh),
    ]


CASES = _cases()
