"""Frames to feed the XDP program, built with scapy from symbolic addresses: the packet
tests' cases (tests/packet_cases.py) and the benchmarks use these same builders."""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from lb import abi

CLIENT_MAC = "02:00:00:00:00:0a"
DIRECTOR_MAC = "02:00:00:00:00:0b"
BROADCAST = "ff:ff:ff:ff:ff:ff"
RS_MACS = {"10.0.0.12": "02:00:00:00:00:12", "10.0.0.13": "02:00:00:00:00:13",
           "10.0.0.14": "02:00:00:00:00:14"}
RS1, RS2, RS3 = RS_MACS.values()
CLIENT_IP = "10.0.0.10"
OTHER_NET_CLIENT_IP = "10.0.1.10"
VIP = "10.0.0.21"
OTHER_IP = "10.0.0.99"


def ether(src_mac: str = CLIENT_MAC, dst_mac: str = DIRECTOR_MAC) -> Ether:
    return Ether(src=src_mac, dst=dst_mac)


def tcp(flags: str, sport: int = 40000, dport: int = 80, src: str = CLIENT_IP,
        payload: bytes = b"", dst: str = VIP, src_mac: str = CLIENT_MAC,
        dst_mac: str = DIRECTOR_MAC) -> bytes:
    return bytes(ether(src_mac, dst_mac) / IP(src=src, dst=dst)
                 / TCP(sport=sport, dport=dport, flags=flags, seq=1000) / payload)


def udp(sport: int = 40000, dport: int = 53, src: str = CLIENT_IP, payload: bytes = b"query",
        dst: str = VIP, src_mac: str = CLIENT_MAC, dst_mac: str = DIRECTOR_MAC) -> bytes:
    return bytes(ether(src_mac, dst_mac) / IP(src=src, dst=dst)
                 / UDP(sport=sport, dport=dport) / payload)


def ip(dst: str = VIP, src: str = CLIENT_IP, **fields) -> Ether:
    """An IPv4 frame to be completed with `/`: ip(proto=47) / b"gre"."""
    return ether() / IP(src=src, dst=dst, **fields)


def arp(op: int = 1, psrc: str = CLIENT_IP, pdst: str = VIP, dst_mac: str = BROADCAST) -> bytes:
    """who-has pdst (op 1), or an is-at (op 2), from the client."""
    return bytes(Ether(src=CLIENT_MAC, dst=dst_mac)
                 / ARP(op=op, hwsrc=CLIENT_MAC, psrc=psrc, pdst=pdst))


def arp_reply_from_director(request: bytes) -> bytes:
    """The director's answer to the client's who-has VIP: VIP is-at the director's MAC."""
    reply = bytes(Ether(src=DIRECTOR_MAC, dst=CLIENT_MAC)
                  / ARP(op=2, hwsrc=DIRECTOR_MAC, psrc=VIP, hwdst=CLIENT_MAC, pdst=CLIENT_IP))
    return reply.ljust(len(request), b"\x00")[:len(request)]


def ping(dst: str = VIP, **icmp) -> bytes:
    return bytes(ip(dst) / ICMP(**{"type": 8, **icmp}))


PING_PAYLOAD = b"ping-payload"


def echo_request() -> bytes:
    return bytes(ip(ttl=61, id=7) / ICMP(type=8, id=0x1234, seq=1) / PING_PAYLOAD)


def echo_reply() -> bytes:
    """What the director answers to echo_request(): addresses swapped, valid checksums."""
    return bytes(Ether(src=DIRECTOR_MAC, dst=CLIENT_MAC)
                 / IP(src=VIP, dst=CLIENT_IP, ttl=abi.CONST["ICMP_ECHO_REPLY_TTL"], id=7)
                 / ICMP(type=0, id=0x1234, seq=1) / PING_PAYLOAD)


def forwarded(packet: bytes, rs_mac: str, director_mac: str = DIRECTOR_MAC) -> bytes:
    """What DR makes of a packet: new MACs, not one other byte changed."""
    return abi.mac_bytes(rs_mac) + abi.mac_bytes(director_mac) + packet[12:]


def patched(frame: bytes, offset: int, value: int) -> bytes:
    out = bytearray(frame)
    out[offset] = value
    return bytes(out)


# ---- states other than "programmed with CONFIG" -------------------------------------------
