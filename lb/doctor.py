"""`dr-lb realserver check`: find every real-server pitfall from the seeds, with the fix.

Each finding has a severity, a short code, what is wrong, why it breaks LVS-DR and the
exact command that fixes it. The texts live in TEMPLATES, once: this module formats them
in Python and lb/rs_script.py turns the very same templates into the POSIX shell
script's `check`, so the two cannot drift apart (tests/test_doctor_script.py runs both
on the same broken namespaces and compares what they say).

The rules come from the seeds:
- 000: a VIP on lo with a prefix other than /32 makes the whole subnet local to the host
  (a `local <subnet> dev lo` route): it stops answering ARP for its own real address.
- 001/004: arp_ignore=1 and arp_announce=2; for a real interface the kernel uses
  max(conf/all, conf/<interface>) for both; lo is not covered by all/default and its own
  values do not matter.
- 002 (DR summary, point 5): the real server's default route goes to the router, not to
  the director.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import struct
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

SEVERITIES = ("error", "warning", "info", "ok")
PROC_CONF = Path("/proc/sys/net/ipv4/conf")

# Effective values (max of all and the interface) that hide a VIP on lo and still answer
# for the real address. arp_ignore 3 only hides scope-host addresses, 4-7 are reserved
# (the kernel replies as with 0) and 8 answers nothing, not even for the real address.
ARP_IGNORE_GOOD = (1, 2)
ARP_IGNORE_TARGET = 1
# arp_announce: only 2 always picks the interface's own address; above 2 acts like 0.
ARP_ANNOUNCE_GOOD = (2,)
ARP_ANNOUNCE_TARGET = 2
ARP_TARGETS = {"arp_ignore": (ARP_IGNORE_GOOD, ARP_IGNORE_TARGET),
               "arp_announce": (ARP_ANNOUNCE_GOOD, ARP_ANNOUNCE_TARGET)}


@dataclass(frozen=True)
class Finding:
    severity: str      # error, warning, info or ok
    code: str          # a stable name for the check, e.g. "vip-prefix"
    what: str
    why: str = ""
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Template:
    """A finding's texts with {placeholders}; the shell script uses the same names as
    shell variables, so placeholders must be plain identifiers."""
    severity: str
    what: str
    why: str = ""
    fix: str = ""

    def make(self, code: str, **values) -> Finding:
        return Finding(self.severity, code, self.what.format(**values),
                       self.why.format(**values), self.fix.format(**values))


# The real-server checks. Order here is also the order of the shell functions.
TEMPLATES: dict[str, Template] = {
    "lo-down": Template(
        "error", "lo is down",
        "While lo is down the kernel has no local route for the VIPs on it, so packets "
        "the director sends here for a VIP are dropped.",
        "ip link set lo up"),
    "vip-missing": Template(
        "error", "{vip} is not configured on this host",
        "In DR the director rewrites only the destination MAC: packets arrive still "
        "addressed to {vip}, and a host without that address drops them.",
        "ip addr add {vip}/32 dev lo"),
    "vip-prefix": Template(
        "error", "{vip} is on lo as /{prefix}, not /32",
        "On lo an address with a prefix makes its whole subnet local: {vip}/{prefix} "
        "adds a 'local' route for the subnet through lo, so this host takes its "
        "neighbours' addresses for its own and its replies to them loop back into lo "
        "(older kernels also stop answering ARP for its own real address). Other hosts "
        "can no longer reach it (seed 000: NETMASK=255.255.255.0 on lo:0).",
        "ip addr del {vip}/{prefix} dev lo && ip addr add {vip}/32 dev lo"),
    "vip-not-lo": Template(
        "error", "{vip} is on {dev} (/{prefix}), not on lo",
        "arp_ignore=1 hides the VIP only when it is on lo: with {vip} on {dev} this "
        "host answers ARP for it, and clients send their traffic here instead of to "
        "the director.",
        "ip addr del {vip}/{prefix} dev {dev}{readd}"),
    "vip-ok": Template("ok", "{vip}/32 is on lo"),
    "arp-ignore": Template(
        "error", "{dev}: effective arp_ignore is {value} (all={allval}, {dev}={devval})",
        "The kernel uses max(all, {dev}) (seed 004). Only 1 or 2 make {dev} answer "
        "ARP just for its own addresses: 0 and 3-7 also answer for a VIP on lo, so "
        "clients send the director's traffic here (seed 001); 8 answers nothing, not "
        "even for the real address.",
        "sysctl -w {settings}"),
    "arp-announce": Template(
        "error", "{dev}: effective arp_announce is {value} (all={allval}, {dev}={devval})",
        "The kernel uses max(all, {dev}) (seed 004). Only 2 makes the ARP requests this "
        "host sends on {dev} carry {dev}'s own address; otherwise they can carry the "
        "VIP, and neighbours then send the VIP's traffic to this host (above 2 acts "
        "like 0).",
        "sysctl -w {settings}"),
    "arp-ok": Template("ok", "{dev}: effective arp_ignore={ignore}, arp_announce={announce}"),
    "port-closed": Template(
        "error", "nothing listens on TCP port {port} for {vip}",
        "DR delivers the client's packets to {vip}:{port} unchanged, so the service "
        "must listen on {vip} or on a wildcard address (0.0.0.0 or [::]).",
        "start the service on 0.0.0.0:{port} (or {vip}:{port})"),
    "port-wrong-address": Template(
        "error", "TCP port {port} listens only on {addrs}, not on {vip}",
        "DR delivers the client's packets to {vip}:{port} unchanged; a server bound to "
        "the real address never sees them.",
        "bind the service to 0.0.0.0:{port} (or {vip}:{port}) and restart it"),
    "port-ok": Template("ok", "TCP port {port} listens for {vip}"),
    "no-default-route": Template(
        "warning", "there is no default route",
        "In DR this host answers clients directly (seed 002, DR point 5): replies to "
        "clients outside its own subnets need a default route to the router.",
        "ip route add default via ROUTER_ADDRESS"),
    "gateway-director": Template(
        "error", "the default route goes through the director {director}",
        "In DR replies go from the real server straight to the client through the "
        "router, never back through the director (seed 002, DR point 5); the director "
        "only balances the inbound half and does not route the replies.",
        "ip route replace default via ROUTER_ADDRESS"),
    "gateway-ok": Template("ok", "the default route goes through {gateway}, not the director"),
}


def finding(code: str, **values) -> Finding:
    return TEMPLATES[code].make(code, **values)


# ---- reading this host ---------------------------------------------------------------

def read_sysctl(dev: str, key: str) -> int | None:
    try:
        return int((PROC_CONF / dev / key).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def sysctl_name(dev: str, key: str) -> str:
    """The sysctl(8) name: dots in an interface name are written as slashes."""
    return f"net.ipv4.conf.{dev.replace('.', '/')}.{key}"


def arp_interfaces() -> list[str]:
    """The interfaces ARP can answer on: all but lo (and the all/default templates)."""
    try:
        names = os.listdir(PROC_CONF)
    except OSError:
        return []
    return sorted(n for n in names if n not in ("all", "default", "lo"))


def arp_fix(key: str, allval: int, devval: int, dev: str) -> list[tuple[str, int]]:
    """The (scope, value) writes that make max(all, dev) good: `all` to the target unless
    it is already good, and `dev` too if its own value is bad and above the target."""
    good, target = ARP_TARGETS[key]
    writes = []
    if allval not in good:
        writes.append(("all", target))
    if devval not in good and devval > target:
        writes.append((dev, target))
    return writes


def _addresses() -> list[tuple[str, str, int]]:
    """(interface, address, prefix) for every IPv4 address, in interface order."""
    from pyroute2 import IPRoute
    out = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in sorted(ipr.get_addr(family=socket.AF_INET), key=lambda a: a["index"]):
            addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            out.append((names.get(a["index"], str(a["index"])), addr, a["prefixlen"]))
    return out


def _lo_is_up() -> bool:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")
        return bool(idx) and bool(ipr.get_links(idx[0])[0]["flags"] & 1)


def _hex_to_ipv4(h: str) -> str:
    """/proc/net/tcp prints an address as the u32 in host byte order."""
    return socket.inet_ntoa(struct.pack("=I", int(h, 16)))


def _ipv4_to_hex(addr: str) -> str:
    return "%08X" % struct.unpack("=I", socket.inet_aton(addr))[0]


def tcp_listeners(port: int) -> list[str]:
    """The local addresses (as /proc/net/tcp{,6} print them, in hex) listening on port."""
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":
                continue
            addr, _, hport = fields[1].partition(":")
            if int(hport, 16) == port:
                out.append(addr)
    return out


def _default_gateway() -> str | None:
    """The gateway of the main table's preferred default route ("0.0.0.0" for a route
    without one), or None without a default route."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        routes = ipr.get_default_routes(family=socket.AF_INET, table=254)
    if not routes:
        return None
    best = min(routes, key=lambda r: r.get_attr("RTA_PRIORITY") or 0)
    return best.get_attr("RTA_GATEWAY") or "0.0.0.0"


# ---- the checks ----------------------------------------------------------------------

def check_vips(vips: list[str]) -> list[Finding]:
    out = []
    addrs = _addresses()
    if any(dev == "lo" and addr in vips for dev, addr, _ in addrs) and not _lo_is_up():
        out.append(finding("lo-down"))
    for vip in vips:
        here = [(dev, prefix) for dev, addr, prefix in addrs if addr == vip]
        if not here:
            out.append(finding("vip-missing", vip=vip))
            continue
        on_lo = any(dev == "lo" for dev, _ in here)
        for dev, prefix in here:
            if dev == "lo":
                out.append(finding("vip-ok", vip=vip) if prefix == 32 else
                           finding("vip-prefix", vip=vip, prefix=prefix))
            else:
                readd = "" if on_lo else f" && ip addr add {vip}/32 dev lo"
                out.append(finding("vip-not-lo", vip=vip, dev=dev, prefix=prefix,
                                   readd=readd))
    return out


def check_arp() -> list[Finding]:
    out = []
    all_ignore = read_sysctl("all", "arp_ignore") or 0
    all_announce = read_sysctl("all", "arp_announce") or 0
    for dev in arp_interfaces():
        dev_ignore = read_sysctl(dev, "arp_ignore") or 0
        dev_announce = read_sysctl(dev, "arp_announce") or 0
        ignore = max(all_ignore, dev_ignore)
        announce = max(all_announce, dev_announce)
        bad = False
        for key, value, allval, devval in (("arp_ignore", ignore, all_ignore, dev_ignore),
                                           ("arp_announce", announce, all_announce,
                                            dev_announce)):
            if value in ARP_TARGETS[key][0]:
                continue
            bad = True
            settings = " ".join(f"{sysctl_name(scope, key)}={v}"
                                for scope, v in arp_fix(key, allval, devval, dev))
            out.append(finding(key.replace("_", "-"), dev=dev, value=value, allval=allval,
                               devval=devval, settings=settings))
        if not bad:
            out.append(finding("arp-ok", dev=dev, ignore=ignore, announce=announce))
    return out


def check_port(vips: list[str], port: int) -> list[Finding]:
    out = []
    listening = tcp_listeners(port)
    for vip in vips:
        vhex = _ipv4_to_hex(vip)
        accepted = {"00000000", vhex, "0" * 32, "0000000000000000FFFF0000" + vhex}
        if accepted & set(listening):
            out.append(finding("port-ok", vip=vip, port=port))
            continue
        v4 = sorted({_hex_to_ipv4(h) for h in listening if len(h) == 8})
        if v4:
            out.append(finding("port-wrong-address", vip=vip, port=port, addrs=" ".join(v4)))
        else:
            out.append(finding("port-closed", vip=vip, port=port))
    return out


def check_gateway(director: str) -> list[Finding]:
    gateway = _default_gateway()
    if gateway is None:
        return [finding("no-default-route")]
    if gateway == director:
        return [finding("gateway-director", director=director)]
    return [finding("gateway-ok", gateway=gateway)]


def check(vips: list[str], port: int | None = None,
          director: str | None = None) -> list[Finding]:
    """Every check for this host as a real server of `vips`, in a fixed order."""
    vips = [str(ipaddress.IPv4Address(v)) for v in vips]
    out = check_vips(vips) + check_arp()
    if port is not None:
        out += check_port(vips, port)
    if director is not None:
        out += check_gateway(str(ipaddress.IPv4Address(director)))
    return out


# ---- output --------------------------------------------------------------------------

def count(findings: list[Finding], severity: str) -> int:
    return sum(1 for f in findings if f.severity == severity)


def has_errors(findings: list[Finding]) -> bool:
    return count(findings, "error") > 0


def summary(findings: list[Finding]) -> str:
    return (f"{count(findings, 'error')} error(s), {count(findings, 'warning')} "
            f"warning(s), {count(findings, 'ok')} check(s) passed")


def format_table(findings: list[Finding], width: int | None = None) -> str:
    """A table: SEVERITY, CHECK and WHAT in columns, WHY and FIX under each row.

    The fix is never wrapped, so that it can be copied as it is."""
    if width is None:
        width = max(60, min(shutil.get_terminal_size((120, 24)).columns, 140))
    code_w = max([18] + [len(f.code) for f in findings])
    indent = " " * (8 + 1 + code_w + 1)
    lines = [f"{'SEVERITY':<8} {'CHECK':<{code_w}} WHAT"]
    for f in findings:
        lines.append(f"{f.severity:<8} {f.code:<{code_w}} {f.what}")
        if f.why:
            lines += textwrap.wrap(f.why, width=width, initial_indent=indent + "why: ",
                                   subsequent_indent=indent + "     ")
        if f.fix:
            lines.append(f"{indent}fix: {f.fix}")
    lines.append(summary(findings))
    return "\n".join(lines)


def format_json(findings: list[Finding]) -> str:
    return json.dumps({"findings": [f.to_dict() for f in findings],
                       "errors": count(findings, "error"),
                       "warnings": count(findings, "warning")}, indent=2)
