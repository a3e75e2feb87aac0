"""Real-server preparation for LVS-DR: the VIP on lo as a /32, and the ARP sysctls.

Seed 000: a VIP on lo with a /24 adds a route through lo and the host stops answering
ARP for its own address, so it is always /32. Seed 001/004: arp_ignore=1 and
arp_announce=2 for all, default and lo.
"""
from __future__ import annotations

from pathlib import Path

from pyroute2 import IPRoute

ARP_SYSCTLS = {"arp_ignore": "1", "arp_announce": "2"}
SYSCTL_SCOPES = ("all", "default", "lo")
PROC_CONF = Path("/proc/sys/net/ipv4/conf")


def _vips_on_lo(ipr: IPRoute, lo: int) -> dict[str, int]:
    return {a.get_attr("IFA_ADDRESS"): a["prefixlen"]
            for a in ipr.get_addr(index=lo, family=2)}


def up(vips: list[str]) -> list[str]:
    """Prepare this host for the VIPs; returns what was done, one line each."""
    done = []
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        present = _vips_on_lo(ipr, lo)
        labels = {a.get_attr("IFA_LABEL") for a in ipr.get_addr(index=lo, family=2)}
        n = 0
        for vip in vips:
            if present.get(vip) == 32:
                continue
            while f"lo:{n}" in labels:
                n += 1
            ipr.addr("add", index=lo, address=vip, prefixlen=32, label=f"lo:{n}")
            labels.add(f"lo:{n}")
            done.append(f"added {vip}/32 on lo as lo:{n}")
    for scope in SYSCTL_SCOPES:
        for key, value in ARP_SYSCTLS.items():
            path = PROC_CONF / scope / key
            if path.read_text().strip() != value:
                path.write_text(value)
                done.append(f"set net.ipv4.conf.{scope}.{key} = {value}")
    return done


def down(vips: list[str]) -> list[str]:
    done = []
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        present = _vips_on_lo(ipr, lo)
        for vip in vips:
            if vip in present:
                ipr.addr("del", index=lo, address=vip, prefixlen=present[vip])
                done.append(f"removed {vip}/{present[vip]} from lo")
    return done
