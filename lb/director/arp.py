"""ARP on the director's segment: gratuitous announcements and who-has probes.

`python -m lb.director.arp IFACE ADDRESS [WAIT_S]` prints, as JSON, every MAC that
answers who-has ADDRESS. Two answers for a VIP mean a real server answers ARP for it
(seeds 001, 004).
"""
from __future__ import annotations

import ipaddress
import json
import sys

from lb import frames
from lb.director.netif import Interface, interface


def source_for(iface: Interface, target: str) -> str:
    """The interface address to ask from: one in the target's subnet if there is one."""
    t = ipaddress.IPv4Address(target)
    for n in iface.networks:
        if t in n.network:
            return str(n.ip)
    return str(iface.networks[0].ip) if iface.networks else "0.0.0.0"


def announce(interface_name: str, mac: str, addresses: list[str]) -> None:
    """Gratuitous ARP for each address, so that neighbours update their caches."""
    frames.send(interface_name, frames.ETH_P_ARP,
                [frames.arp_request(mac, address, address) for address in addresses])


def who_has(interface_name: str, targets: list[str], wait_s: float = 0.5,
            rounds: int = 2) -> dict[str, list[str]]:
    """Send ARP who-has for every target out of `interface`; every MAC that answered,
    per target, in order. Targets without an answer are asked again, up to `rounds`
    times; the ones with answers are still listened to until the end."""
    iface = interface(interface_name)
    if iface is None:
        raise ValueError(f"no interface {interface_name}")
    answers: dict[str, list[str]] = {t: [] for t in targets}

    def pending() -> list[bytes]:
        return [frames.arp_request(iface.mac, source_for(iface, t), t)
                for t in targets if not answers[t]]

    def receive(frame: bytes, _send) -> None:
        reply = frames.parse_arp_reply(frame)
        if reply and reply[0] in answers and reply[1] not in answers[reply[0]]:
            answers[reply[0]].append(reply[1])

    frames.exchange(interface_name, frames.ETH_P_ARP, pending, receive, wait_s, rounds)
    return answers


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m lb.director.arp IFACE ADDRESS [WAIT_S]")
    found = who_has(sys.argv[1], [sys.argv[2]],
                    wait_s=float(sys.argv[3]) if len(sys.argv) > 3 else 1.0, rounds=1)
    print(json.dumps(found[sys.argv[2]]))
