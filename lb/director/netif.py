"""The director's interface through pyroute2: addresses, XDP state, neighbours, ARP."""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from lb.director import config as config_mod
from lb.director.config import Config

# pyroute2 names IFLA_XDP_ATTACHED values as ip-link does; dr-lb uses its config words.
XDP_ATTACHED = {"xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload",
                "xdpmulti": "multi", 1: "native", 2: "generic", 3: "offload", 4: "multi"}
# Neighbour states whose lladdr is usable (include/uapi/linux/neighbour.h).
NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE, NUD_FAILED, \
    NUD_NOARP, NUD_PERMANENT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
ARPHRD_ETHER = 1   # include/uapi/linux/if_arp.h: the link types of IFLA ifi_type
NUD_VALID = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP | NUD_PERMANENT


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    mac: str
    networks: tuple[ipaddress.IPv4Interface, ...]
    xdp_mode: str | None
    xdp_prog_id: int
    kind: str | None = None    # "veth", "bridge"...; None for a physical NIC
    link_type: int = ARPHRD_ETHER

    @property
    def ethernet(self) -> bool:
        """An Ethernet link with a real MAC: what LVS-DR can rewrite and send to."""
        return (self.link_type == ARPHRD_ETHER and bool(self.mac)
                and self.mac != "00:00:00:00:00:00" and not int(self.mac[:2], 16) & 1)

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(str(n.ip) for n in self.networks)


def netns_id() -> int:
    """Identifies this process's network namespace (the same under every `ip netns exec`)."""
    return os.stat("/proc/thread-self/ns/net").st_ino   # thread-self: pushns() is per thread


def _network(addr_msg) -> ipaddress.IPv4Interface:
    """An address message as address/prefix (IFA_LOCAL: a peer address is not ours)."""
    local = addr_msg.get_attr("IFA_LOCAL") or addr_msg.get_attr("IFA_ADDRESS")
    return ipaddress.IPv4Interface(f"{local}/{addr_msg['prefixlen']}")


def interface(name: str) -> Interface | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        networks = tuple(_network(a) for a in ipr.get_addr(index=found[0],
                                                            family=socket.AF_INET))
    xdp = link.get_attr("IFLA_XDP")
    mode = XDP_ATTACHED.get(xdp.get_attr("IFLA_XDP_ATTACHED")) if xdp else None
    prog_id = (xdp.get_attr("IFLA_XDP_PROG_ID") or 0) if xdp else 0
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    return Interface(name=name, index=found[0], mac=link.get_attr("IFLA_ADDRESS"),
                     networks=networks, xdp_mode=mode, xdp_prog_id=prog_id, kind=kind,
                     link_type=link["ifi_type"])


def config_problems(cfg: Config) -> list[str]:
    """The checks that need this machine: the interface exists and is Ethernet, no VIP
    is one of its addresses nor its subnets' network or broadcast address, no real server
    is the director itself."""
    iface = interface(cfg.director.interface)
    if iface is None:
        with IPRoute() as ipr:
            names = sorted(l.get_attr("IFLA_IFNAME") for l in ipr.get_links())
        return [f"{cfg.source}: [director]: interface = \"{cfg.director.interface}\" does not "
                f"exist in this network namespace; use one of: {', '.join(names)}"]
    if not iface.ethernet:
        return [f"{cfg.source}: [director]: interface = \"{iface.name}\" has no Ethernet "
                f"address ({iface.mac or 'none'}; a loopback, tun or WireGuard device?); "
                "LVS-DR rewrites MAC addresses, so give the Ethernet interface on the real "
                "servers' segment"]
    own = own_addresses()
    problems = []
    need, available = table_memory(cfg), mem_available()
    if available is not None and need > available:
        fits = cfg.director.conn_table_size
        while fits > 1024 and config_mod.table_memory_bytes(fits) > available // 2:
            fits //= 2
        problems.append(
            f"{cfg.source}: [director]: conn_table_size = {cfg.director.conn_table_size} "
            f"needs about {config_mod.mib(need)} of kernel memory for the connection tables, "
            f"and this machine has {config_mod.mib(available)} available; give a smaller "
            f"conn_table_size (for example {fits}, about "
            f"{config_mod.mib(config_mod.table_memory_bytes(fits))})")
    for svc in cfg.services:
        vip = ipaddress.IPv4Address(svc.vip)
        edge = next((n for n in iface.networks if n.network.prefixlen < 31
                     and vip in (n.network.network_address, n.network.broadcast_address)),
                    None)
        if svc.vip in iface.addresses:
            problems.append(
                f"{cfg.source}: service {svc.name}: the VIP is the director's own address on "
                f"{iface.name}; give the VIP its own address (dr-lb answers ARP for it, "
                "the director needs no VIP on any interface)")
        elif edge is not None:
            which = "network" if vip == edge.network.network_address else "broadcast"
            problems.append(
                f"{cfg.source}: service {svc.name}: the VIP is the {which} address of "
                f"{edge.network}, a subnet of {iface.name}; hosts there never send to it as "
                "one host; give the VIP a host address of the subnet")
        elif svc.vip in own:
            name, prefix = own[svc.vip]
            problems.append(
                f"{cfg.source}: service {svc.name}: the VIP is configured on this director "
                f"({name}); remove it with `ip addr del {svc.vip}/{prefix} dev {name}`: "
                "dr-lb answers ARP for it, and a local VIP makes the kernel reset the "
                "connections dr-lb passes to it")
        for rs in svc.real_servers:
            where = f"{cfg.source}: service {svc.name}, real server {rs.address}:{rs.port}"
            if rs.address in own:
                problems.append(
                    f"{where}: this is the director's own address (on {own[rs.address][0]}); "
                    "a director cannot be its own real server in LVS-DR; give a real "
                    "server's address")
            elif rs.mac and rs.mac == iface.mac.lower():
                problems.append(
                    f"{where}: mac = \"{rs.mac}\" is the MAC of the director's {iface.name}; "
                    "give the real server's MAC, or leave mac out to use the neighbour table")
    return problems


def table_memory(cfg: Config) -> int:
    return config_mod.table_memory_bytes(cfg.director.conn_table_size)


def mem_available() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def own_addresses() -> dict[str, tuple[str, int]]:
    """Every IPv4 address in this network namespace -> (its interface, its prefix)."""
    with IPRoute() as ipr:
        names = {l["index"]: l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}
        return {str(_network(a).ip): (names.get(a["index"], "?"), a["prefixlen"])
                for a in ipr.get_addr(family=socket.AF_INET)}


def neighbours(ifindex: int) -> dict[str, tuple[int, str | None]]:
    """address -> (NUD state, MAC or None) from the kernel's neighbour table."""
    out = {}
    with IPRoute() as ipr:
        for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=ifindex):
            out[n.get_attr("NDA_DST")] = (n["state"], n.get_attr("NDA_LLADDR"))
    return out


def set_neighbour(ifindex: int, address: str, mac: str) -> None:
    """Replace the kernel's entry: what the director heard from the host itself."""
    with IPRoute() as ipr:
        ipr.neigh("replace", dst=address, lladdr=mac, ifindex=ifindex, state=NUD_REACHABLE)


def usable_mac(entry: tuple[int, str | None] | None) -> str | None:
    if entry and entry[0] & NUD_VALID and entry[1] and entry[1] != "00:00:00:00:00:00":
        return entry[1]
    return None


def probe(addresses: list[str], interface_name: str) -> None:
    """Make the kernel resolve these neighbours: a ping makes it send ARP who-has."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface_name.encode())
        sock.setblocking(False)
        # ICMP echo request, id 0x4c42 ("LB"), seq 0, with its checksum.
        packet = struct.pack("!BBHHH", 8, 0, ~(0x0800 + 0x4C42) & 0xFFFF, 0x4C42, 0)
        for addr in addresses:
            try:
                sock.sendto(packet, (addr, 0))
            except OSError:
                pass   # unreachable now; the next refresh tries again
    finally:
        sock.close()
