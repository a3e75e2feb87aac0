"""lb/frames.py's hand-built frames and parsers, read and written by scapy."""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import Ether

from lb import frames

DIRECTOR, RS = "02:00:00:00:00:11", "02:00:00:00:00:31"
ME, VIP = "198.18.0.11", "198.18.0.21"


def checksums_ok(frame: bytes, layer) -> bool:
    """The IP and L4 checksums of `frame` are the ones scapy computes for it."""
    got = Ether(frame)
    again = got.copy()
    del again[IP].chksum
    del again[layer].chksum
    again = Ether(bytes(again))
    return (got[IP].chksum, got[layer].chksum) == (again[IP].chksum, again[layer].chksum)


def test_udp_frame():
    for payload in (b"", b"hello"):
        frame = frames.udp_frame(DIRECTOR, RS, ME, VIP, 61000, 53, payload, ttl=1)
        p = Ether(frame)
        assert (p.src, p.dst, p[IP].src, p[IP].dst, p[IP].ttl, p[IP].flags) == \
            (DIRECTOR, RS, ME, VIP, 1, "DF")
        assert (p[UDP].sport, p[UDP].dport, p[UDP].len, bytes(p[UDP].payload)) == \
            (61000, 53, 8 + len(payload), payload)
        assert checksums_ok(frame, UDP)
        assert frames.parse_udp(frame) == (ME, VIP, 61000, 53)


def test_tcp_frame_still_checks_out():
    frame = frames.tcp_frame(DIRECTOR, RS, ME, VIP, 61000, 80, 7, frames.TCP_SYN, ttl=1)
    assert checksums_ok(frame, TCP)
    assert frames.parse_tcp(frame) == (ME, VIP, 61000, 80, 7, 0, frames.TCP_SYN)


def test_parse_udp_refuses_what_is_not_a_whole_udp_header():
    frame = bytes(Ether() / IP(src=VIP, dst=ME) / UDP(sport=53, dport=61000))
    assert frames.parse_udp(frame) == (VIP, ME, 53, 61000)
    assert frames.parse_udp(frame[:40]) is None                       # cut short
    assert frames.parse_udp(bytes(Ether() / IP(src=VIP, dst=ME, frag=10) /
                                  UDP(sport=53, dport=61000))) is None  # a fragment
    assert frames.parse_udp(bytes(Ether() / IP() / TCP())) is None


def test_parse_icmp_error_gives_the_quoted_datagram():
    sent = Ether(frames.udp_frame(DIRECTOR, RS, ME, VIP, 61000, 53, ttl=1))
    error = Ether(src=RS, dst=DIRECTOR) / IP(src=VIP, dst=ME) / \
        ICMP(type=3, code=3) / bytes(sent[IP])[:28]
    kind, code, quoted = frames.parse_icmp_error(bytes(error))
    assert (kind, code) == (frames.ICMP_DEST_UNREACH, frames.ICMP_PORT_UNREACH)
    assert frames.parse_udp(quoted) == (ME, VIP, 61000, 53)
    assert frames.parse_icmp_error(bytes(error)[:60]) is None          # quote cut short
    assert frames.parse_icmp_error(bytes(sent)) is None
    echo = Ether() / IP(src=VIP, dst=ME) / ICMP(type=8) / IPerror() / UDPerror()
    assert frames.parse_icmp_error(bytes(echo))[:2] == (8, 0)        # the caller checks
