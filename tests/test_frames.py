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


def test_udp_frame_sends_a_computed_zero_checksum_as_ffff():
    """RFC 768: 0 means "no checksum", so a sum that comes out 0 goes as 0xffff. The
    payload word that makes it 0 is the checksum of the same frame with a zero word."""
    zero = frames.udp_frame(DIRECTOR, RS, ME, VIP, 61000, 53, b"\0\0")
    frame = zero if zero[40:42] == b"\xff\xff" else \
        frames.udp_frame(DIRECTOR, RS, ME, VIP, 61000, 53, zero[40:42])
    assert frame[40:42] == b"\xff\xff"
    assert checksums_ok(frame, UDP)


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


def test_udp_answer_counts_only_the_probed_macs_answer_about_that_datagram():
    """lb/director/probe.py's judge of the UDP probe's answers, fed forged frames."""
    from lb.director.probe import ANSWERED, CLOSED, WRONG_SOURCE, Probe, udp_answer
    rip = "198.18.0.31"
    p = Probe(rip, RS, VIP, 53)
    by_port = {61000: p}
    sent = Ether(frames.udp_frame(DIRECTOR, RS, ME, VIP, 61000, 53, ttl=1))

    def reply(src=VIP, mac=RS, sport=53, dport=61000) -> bytes:
        return bytes(Ether(src=mac, dst=DIRECTOR) / IP(src=src, dst=ME) /
                     UDP(sport=sport, dport=dport) / b"x")

    def unreachable(quote=sent, mac=RS, code=3) -> bytes:
        return bytes(Ether(src=mac, dst=DIRECTOR) / IP(src=VIP, dst=ME) /
                     ICMP(type=3, code=code) / bytes(quote[IP])[:28])

    assert udp_answer(reply(), by_port) == (p, (ANSWERED, VIP))
    assert udp_answer(reply(src=rip), by_port) == (p, (WRONG_SOURCE, rip))
    assert udp_answer(unreachable(), by_port) == (p, (CLOSED, None))
    other_mac = "02:00:00:00:00:32"
    for frame in (reply(mac=other_mac),                 # another host's answer
                  reply(sport=54),                      # from another service port
                  reply(dport=61001),                   # to a port we do not hold
                  reply(sport=61000, dport=53),         # the ports swapped
                  unreachable(mac=other_mac),
                  unreachable(code=1),                  # host unreachable: not "closed"
                  unreachable(quote=Ether(frames.udp_frame(DIRECTOR, RS, ME, "198.18.0.99",
                                                           61000, 53))),   # not to the VIP
                  unreachable(quote=Ether(frames.udp_frame(DIRECTOR, RS, ME, VIP,
                                                           61000, 54))),   # another port
                  bytes(sent)):                         # our own datagram, seen again
        assert udp_answer(frame, by_port) is None, Ether(frame).summary()
