"""Ethernet frames built and read by hand, and the one raw-socket send/receive loop.

The director sends few frames of its own (gratuitous ARP, who-has probes, the DR-path
SYN and UDP probes); these helpers build them, parse the answers, and run the exchange.
"""
from __future__ import annotations

import random
import socket
import struct
import time
from typing import Callable

from lb.abi import mac_bytes, mac_str

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4          # sll_pkttype of a frame this host sent
BROADCAST = "ff:ff:ff:ff:ff:ff"
TCP_SYN, TCP_RST, TCP_ACK = 0x02, 0x04, 0x10
ICMP_DEST_UNREACH, ICMP_PORT_UNREACH = 3, 3


def arp_request(src_mac: str, src_ip: str, target: str, dst_mac: str = BROADCAST) -> bytes:
    """who-has `target` tell `src_ip`; with src_ip == target, a gratuitous announcement."""
    sha = mac_bytes(src_mac)
    frame = (mac_bytes(dst_mac) + sha + struct.pack("!H", ETH_P_ARP)
             + struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1)
             + sha + socket.inet_aton(src_ip) + b"\x00" * 6 + socket.inet_aton(target))
    return frame.ljust(60, b"\x00")


def parse_arp_reply(frame: bytes) -> tuple[str, str] | None:
    """(sender IP, sender MAC) of an ARP reply, else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    if (htype, ptype, hlen, plen, op) != (1, ETH_P_IP, 6, 4, 2):
        return None
    return socket.inet_ntoa(frame[28:32]), mac_str(frame[22:28])


def parse_arp_sender(frame: bytes) -> tuple[str, str] | None:
    """(sender IP, sender MAC) of any Ethernet/IPv4 ARP request or reply whose sender
    MAC is a host's (not group, not zero) and agrees with the frame's source; else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    sha = frame[22:28]
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4) or op not in (1, 2):
        return None
    if sha[0] & 1 or sha == b"\x00" * 6 or sha != frame[6:12]:
        return None
    return socket.inet_ntoa(frame[28:32]), mac_str(sha)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, protocol: int,
                l4: bytes, csum_at: int, ttl: int) -> bytes:
    """An Ethernet/IPv4 frame (DF, no options) around the TCP or UDP header and payload
    `l4`, whose checksum (over the pseudo-header) goes at offset `csum_at` of `l4`."""
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    pseudo = src + dst + struct.pack("!BBH", 0, protocol, len(l4))
    l4 = l4[:csum_at] + struct.pack("!H", checksum(pseudo + l4)) + l4[csum_at + 2:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), random.randint(0, 0xFFFF),
                     0x4000, ttl, protocol, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ETH_P_IP) + ip + l4


def tcp_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int,
              seq: int, flags: int, ack: int = 0, ttl: int = 64) -> bytes:
    options = struct.pack("!BBH", 2, 4, 1460) if flags & TCP_SYN else b""
    offset = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags,
                      64240 if flags & TCP_SYN else 0, 0, 0) + options
    return _ipv4_frame(src_mac, dst_mac, src_ip, dst_ip, socket.IPPROTO_TCP, tcp, 16, ttl)


def udp_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int,
              payload: bytes = b"", ttl: int = 64) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    frame = _ipv4_frame(src_mac, dst_mac, src_ip, dst_ip, socket.IPPROTO_UDP, udp, 6, ttl)
    if frame[40:42] == b"\x00\x00":    # a computed 0 is sent as 0xffff (RFC 768)
        frame = frame[:40] + b"\xff\xff" + frame[42:]
    return frame


def parse_tcp(frame: bytes):
    """(src ip, dst ip, sport, dport, seq, ack, flags) of a TCP/IPv4 frame, else None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != socket.IPPROTO_TCP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    t = 14 + ihl
    if len(frame) < t + 14:
        return None
    sport, dport, seq, ack = struct.unpack("!HHII", frame[t:t + 12])
    return (socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34]), sport, dport,
            seq, ack, frame[t + 13])


def parse_udp(frame: bytes):
    """(src ip, dst ip, sport, dport) of an unfragmented UDP/IPv4 frame, else None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != socket.IPPROTO_UDP \
            or struct.unpack("!H", frame[20:22])[0] & 0x1FFF:
        return None
    t = 14 + (frame[14] & 0x0F) * 4
    if len(frame) < t + 8:
        return None
    sport, dport = struct.unpack("!HH", frame[t:t + 4])
    return socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34]), sport, dport


def parse_icmp_error(frame: bytes):
    """(type, code, quoted frame) of an ICMP/IPv4 error frame: the quoted IP header and
    what follows of it, behind a made-up Ethernet header, so that parse_udp and parse_tcp
    read it; else None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != socket.IPPROTO_ICMP:
        return None
    t = 14 + (frame[14] & 0x0F) * 4
    if len(frame) < t + 8 + 20:
        return None
    return frame[t], frame[t + 1], frame[:14] + frame[t + 8:]


def send(interface: str, ethertype: int, frames: list[bytes]) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype)) as s:
        s.bind((interface, 0))
        for frame in frames:
            s.send(frame)


def exchange(interface: str, ethertype: int, pending: Callable[[], list[bytes]],
             receive: Callable[[bytes, Callable[[bytes], None]], None],
             wait_s: float, rounds: int, done: Callable[[], bool] = lambda: False,
             setup: Callable[[socket.socket], None] = lambda s: None) -> None:
    """Send what `pending()` returns out of `interface`, then pass every frame that
    arrives (not our own) to `receive(frame, send)` for `wait_s`; up to `rounds` rounds,
    each asking `pending()` again, until it has nothing left to send or `done()`.
    `setup(sock)` runs before the socket is bound (a socket filter, say)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype)) as s:
        setup(s)
        s.bind((interface, 0))
        for _ in range(rounds):
            frames = pending()
            if not frames:
                break
            for frame in frames:
                s.send(frame)
            deadline = time.monotonic() + wait_s
            while (left := deadline - time.monotonic()) > 0 and not done():
                s.settimeout(left)
                try:
                    frame, addr = s.recvfrom(4096)
                except socket.timeout:
                    break
                if addr[2] != PACKET_OUTGOING:
                    receive(frame, s.send)
