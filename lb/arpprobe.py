"""Ask who has an IPv4 address and list every MAC that answers (not just the first).

`python -m lb.arpprobe IFACE ADDRESS [WAIT_S]` prints the MACs as JSON. Two answers for
a VIP mean a real server answers ARP for it (arp_ignore is wrong; seeds 001/004).
"""
from __future__ import annotations

import json
import socket
import struct
import sys
import time

from pyroute2 import IPRoute

ETH_P_ARP = 0x0806


def who_has(interface: str, address: str, wait_s: float = 1.0) -> list[str]:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=interface)[0]
        mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)]
    raw_mac = bytes.fromhex(mac.replace(":", ""))
    sender = socket.inet_aton(addrs[0] if addrs else "0.0.0.0")
    target = socket.inet_aton(address)
    frame = (b"\xff" * 6 + raw_mac + struct.pack("!H", ETH_P_ARP)
             + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
             + raw_mac + sender + b"\x00" * 6 + target).ljust(60, b"\x00")
    answers: list[str] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((interface, 0))
        s.send(frame)
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data = s.recv(128)
            except socket.timeout:
                break
            if len(data) < 42:
                continue
            op, sha, spa = struct.unpack("!H6s4s", data[20:32])
            if op == 2 and spa == target:
                who = ":".join(f"{b:02x}" for b in sha)
                if who not in answers:
                    answers.append(who)
    return answers


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m lb.arpprobe IFACE ADDRESS [WAIT_S]")
    print(json.dumps(who_has(sys.argv[1], sys.argv[2],
                             float(sys.argv[3]) if len(sys.argv) > 3 else 1.0)))
