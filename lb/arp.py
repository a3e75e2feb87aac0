"""ARP frames on the wire: gratuitous announcements, who-has probes and their answers.

`python -m lb.arp IFACE ADDRESS [WAIT_S]` prints, as JSON, every MAC that answers who-has
ADDRESS. Two answers for a VIP mean a real server answers ARP for it (seeds 001, 004).
"""
from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys
import time

from lb.abi import mac_bytes, mac_str
from lb.netif import Interface, interface

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
BROADCAST = "ff:ff:ff:ff:ff:ff"


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


def source_for(iface: Interface, target: str) -> str:
    """The interface address to ask from: one in the target's subnet if there is one."""
    t = ipaddress.IPv4Address(target)
    for n in iface.networks:
        if t in n.network:
            return str(n.ip)
    return str(iface.networks[0].ip) if iface.networks else "0.0.0.0"



def announce(interface_name: str, mac: str, addresses: list[str]) -> None:
    """Gratuitous ARP for each address, so that neighbours update their caches."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((interface_name, 0))
        for address in addresses:
            s.send(arp_request(mac, address, address))


def who_has(interface_name: str, targets: list[str], wait_s: float = 0.5,
            rounds: int = 2) -> dict[str, list[str]]:
    """Send ARP who-has for every target out of `interface`; every MAC that answered,
    per target, in order. Targets without an answer are asked again, up to `rounds`
    times; the ones with answers are still listened to until the end."""
    iface = interface(interface_name)
    if iface is None:
        raise ValueError(f"no interface {interface_name}")
    answers: dict[str, list[str]] = {t: [] for t in targets}
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((interface_name, 0))
        for _ in range(rounds):
            pending = [t for t in targets if not answers[t]]
            if not pending:
                break
            for t in pending:
                s.send(arp_request(iface.mac, source_for(iface, t), t))
            deadline = time.monotonic() + wait_s
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    frame, addr = s.recvfrom(2048)
                except socket.timeout:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                reply = parse_arp_reply(frame)
                if reply and reply[0] in answers and reply[1] not in answers[reply[0]]:
                    answers[reply[0]].append(reply[1])
    return answers


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m lb.arp IFACE ADDRESS [WAIT_S]")
    found = who_has(sys.argv[1], [sys.argv[2]],
                    wait_s=float(sys.argv[3]) if len(sys.argv) > 3 else 1.0, rounds=1)
    print(json.dumps(found[sys.argv[2]]))
