"""`dr-lb realserver check`: find every real-server pitfall from the seeds, with the fix.

Each finding has a severity, a short code, what is wrong, why it breaks LVS-DR and the
exact command that fixes it. The texts live in TEMPLATES, once: this module formats them
in Python and lb/rs_script.py turns the very same templates into the POSIX shell
script's `check`, so the two cannot drift apart (tests/test_doctor.py runs both on the
same broken namespaces and compares what they say, see doctor_both in
tests/test_realserver_common.py).

Findings come in the order their fixes can be applied top-down: the ARP sysctls before
anything that puts a VIP on lo (a VIP on lo while arp_ignore is 0 is announced).

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
IFA_F_SECONDARY = 0x01     # linux/if_addr.h
TCP_LISTEN = 10            # the TCP state, for sock_diag

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


# Why a "VIP" found on a real interface is probably this host's own address (the real
# IP typed by mistake); the shell script uses the same texts.
REASON_ONLY = "this host's only address outside lo"
REASON_DEFAULT_SOURCE = "the source address of this host's default route"

_PERSIST_NOTE = ("sysctl -w lasts until the next reboot: `dr-lb realserver up --persist` "
                 "(or a file in /etc/sysctl.d) makes it permanent.")

# The real-server checks, in the order check() reports them (ARP before the VIPs, so that
# copying the fixes top-down never puts a VIP on lo while this host still answers ARP for
# it). Order here is also the order of the shell functions.
TEMPLATES: dict[str, Template] = {
    "arp-ignore": Template(
        "error", "{dev}: effective arp_ignore is {value} (all={allval}, {dev}={devval})",
        "The kernel uses max(all, {dev}) (seed 004). Only 1 or 2 make {dev} answer "
        "ARP just for its own addresses: 0 and 3-7 also answer for a VIP on lo, so "
        "clients send the director's traffic here (seed 001); 8 answers nothing, not "
        "even for the real address. " + _PERSIST_NOTE,
        "sysctl -w {settings}"),
    "arp-announce": Template(
        "error", "{dev}: effective arp_announce is {value} (all={allval}, {dev}={devval})",
        "The kernel uses max(all, {dev}) (seed 004). Only 2 makes the ARP requests this "
        "host sends on {dev} carry {dev}'s own address; otherwise they can carry the "
        "VIP, and neighbours then send the VIP's traffic to this host (above 2 acts "
        "like 0). " + _PERSIST_NOTE,
        "sysctl -w {settings}"),
    "arp-ok": Template("ok", "{dev}: effective arp_ignore={ignore}, arp_announce={announce}"),
    "lo-down": Template(
        "error", "lo is down",
        "While lo is down the kernel has no local route for the VIPs on it, so packets "
        "the director sends here for a VIP are dropped.",
        "ip link set lo up"),
    "vip-missing": Template(
        "error", "{vip} is not configured on this host",
        "In DR the director rewrites only the destination MAC: packets arrive still "
        "addressed to {vip}, and a host without that address drops them. Fix the ARP "
        "sysctls first (the fixes above, if any): a VIP on lo while arp_ignore is 0 is "
        "announced to the whole segment. `dr-lb realserver up {vip}` (or the generated "
        "script's `up`) does both in that order, and with --persist they survive a "
        "reboot, which ip addr add does not.",
        "ip addr add {vip}/32 dev lo"),
    "vip-prefix": Template(
        "error", "{vip} is on lo as /{prefix}, not /32",
        "On lo an address with a prefix makes its whole subnet local: {vip}/{prefix} "
        "adds a 'local' route for the subnet through lo, so this host takes its "
        "neighbours' addresses for its own and its replies to them loop back into lo "
        "(older kernels also stop answering ARP for its own real address). Other hosts "
        "can no longer reach it (seed 000: NETMASK=255.255.255.0 on lo:0).",
        "{promote}ip addr del {vip}/{prefix} dev lo{readd}"),
    "vip-own-address": Template(
        "error", "{vip} is on {dev} (/{prefix}) and is {reason}",
        "A VIP is the address clients connect to, which the director owns; {vip} looks "
        "like this real server's own address given as the VIP by mistake. Removing it "
        "from {dev} would cut this host off the network, so no command is suggested "
        "for that.",
        "check the VIP: give the address the director serves, not {vip}"),
    "vip-not-lo": Template(
        "error", "{vip} is on {dev} (/{prefix}), not on lo",
        "arp_ignore=1 hides the VIP only when it is on lo: with {vip} on {dev} this "
        "host answers ARP for it, and clients send their traffic here instead of to "
        "the director.",
        "{promote}ip addr del {vip}/{prefix} dev {dev}{readd}"),
    "vip-ok": Template("ok", "{vip}/32 is on lo"),
    "port-closed": Template(
        "error", "nothing listens on TCP port {port} for {vip}",
        "DR delivers the client's packets to {vip}:{port} unchanged, so the service "
        "must listen on {vip} or on a wildcard address (0.0.0.0, or [::] without "
        "IPV6_V6ONLY).",
        "start the service on 0.0.0.0:{port} (or {vip}:{port})"),
    "port-wrong-address": Template(
        "error", "TCP port {port} listens only on {addrs}, not on {vip}",
        "DR delivers the client's packets to {vip}:{port} unchanged; a server bound to "
        "the real address never sees them.",
        "bind the service to 0.0.0.0:{port} (or {vip}:{port}) and restart it"),
    "port-v6-only": Template(
        "error", "TCP port {port} listens only on [::] with IPV6_V6ONLY, not for {vip}",
        "An IPv6 socket with IPV6_V6ONLY (nginx `listen [::]:{port}`, or "
        "net.ipv6.bindv6only=1) accepts no IPv4 connection, and DR delivers the "
        "client's packets to the IPv4 address {vip}:{port}.",
        "also listen on 0.0.0.0:{port} (nginx: add `listen {port};`), or turn "
        "IPV6_V6ONLY off (nginx: `listen [::]:{port} ipv6only=off;`), and restart it"),
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


@dataclass(frozen=True)
class Address:
    dev: str
    addr: str
    prefix: int
    secondary: bool   # IFA_F_SECONDARY: in the subnet of a primary address on dev


def addresses() -> list[Address]:
    """Every IPv4 address, in interface order (and the kernel's order on each)."""
    from pyroute2 import IPRoute
    out = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in sorted(ipr.get_addr(family=socket.AF_INET), key=lambda a: a["index"]):
            addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            flags = a.get_attr("IFA_FLAGS") or a["flags"]
            out.append(Address(names.get(a["index"], str(a["index"])), addr, a["prefixlen"],
                               bool(flags & IFA_F_SECONDARY)))
    return out



def _same_subnet(a: str, b: str, prefix: int) -> bool:
    net = ipaddress.IPv4Network(f"{a}/{prefix}", strict=False)
    return ipaddress.IPv4Address(b) in net


def promote_prefix(entry: Address, addrs: list[Address]) -> str:
    """What must come before `ip addr del` of `entry` so that it removes only `entry`.

    Deleting a primary address also deletes the secondaries of its subnet (same prefix)
    unless promote_secondaries is on (all or the interface): if the VIP was added first,
    the real address is such a secondary and the host falls off the network."""
    if entry.secondary:
        return ""
    if not any(a.dev == entry.dev and a.secondary and a.prefix == entry.prefix
               and a.addr != entry.addr and _same_subnet(entry.addr, a.addr, entry.prefix)
               for a in addrs):
        return ""
    if read_sysctl("all", "promote_secondaries") or read_sysctl(entry.dev,
                                                                "promote_secondaries"):
        return ""
    return f"sysctl -w {sysctl_name(entry.dev, 'promote_secondaries')}=1 && "


def _default_route() -> tuple[str, str | None, str | None] | None:
    """(gateway, interface, source) of the main table's preferred default route:
    "0.0.0.0" for a route without a gateway, None where the route does not say."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        routes = ipr.get_default_routes(family=socket.AF_INET, table=254)
        if not routes:
            return None
        best = min(routes, key=lambda r: r.get_attr("RTA_PRIORITY") or 0)
        oif = best.get_attr("RTA_OIF")
        dev = None
        if oif is not None:
            links = ipr.get_links(oif)
            dev = links[0].get_attr("IFLA_IFNAME") if links else None
    return best.get_attr("RTA_GATEWAY") or "0.0.0.0", dev, best.get_attr("RTA_PREFSRC")


def _default_gateway() -> str | None:
    route = _default_route()
    return route[0] if route else None


def default_source(addrs: list[Address]) -> str | None:
    """The source address of the default route: its `src`, or as the kernel picks it
    (inet_select_addr): the first primary address on its interface whose subnet holds
    the gateway, else the first primary address there."""
    route = _default_route()
    if route is None:
        return None
    gateway, dev, src = route
    if src:
        return src
    primaries = [a for a in addrs if a.dev == dev and not a.secondary]
    for a in primaries:
        if gateway != "0.0.0.0" and _same_subnet(a.addr, gateway, a.prefix):
            return a.addr
    return primaries[0].addr if primaries else None


def own_address_reason(vip: str, addrs: list[Address]) -> str | None:
    """Why `vip`, found on a real interface, looks like this host's own address (the
    real IP given as the VIP by mistake), or None."""
    outside_lo = {a.addr for a in addrs if a.dev != "lo"}
    if outside_lo == {vip}:
        return REASON_ONLY
    if default_source(addrs) == vip:
        return REASON_DEFAULT_SOURCE
    return None


def _lo_is_up() -> bool:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")
        return bool(idx) and bool(ipr.get_links(idx[0])[0]["flags"] & 1)


@dataclass(frozen=True)
class Listener:
    addr: str          # as the kernel has it: "0.0.0.0", "::", "::ffff:198.18.0.21", ...
    v6only: bool       # an IPv6 socket with IPV6_V6ONLY: it accepts no IPv4


def tcp_listeners(port: int) -> list[Listener]:
    """The TCP sockets listening on `port` (sock_diag, which knows IPV6_V6ONLY; as `ss`
    does, /proc/net/tcp{,6} without it if sock_diag is not there)."""
    try:
        return _diag_listeners(port)
    except Exception:   # no inet_diag: the kernel module, or pyroute2's support for it
        return _proc_listeners(port)


def _diag_listeners(port: int) -> list[Listener]:
    from pyroute2 import DiagSocket
    out = []
    with DiagSocket() as ds:
        ds.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in ds.get_sock_stats(family=family, states=1 << TCP_LISTEN):
                if m["idiag_sport"] == port:
                    v6only = family == socket.AF_INET6 and bool(
                        m.get_attr("INET_DIAG_SKV6ONLY"))
                    out.append(Listener(str(m["idiag_src"]), v6only))
    return out


def _proc_listeners(port: int) -> list[Listener]:
    out = []
    for name, family in (("/proc/net/tcp", socket.AF_INET),
                         ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":
                continue
            addr, _, hport = fields[1].partition(":")
            if int(hport, 16) != port:
                continue
            raw = bytes.fromhex(addr)
            # printed as 32-bit words in host byte order
            raw = b"".join(struct.pack("=I", struct.unpack(">I", raw[i:i + 4])[0])
                           for i in range(0, len(raw), 4))
            out.append(Listener(socket.inet_ntop(family, raw), False))
    return out


# ---- the checks ----------------------------------------------------------------------

def check_vips(vips: list[str]) -> list[Finding]:
    out = []
    addrs = addresses()
    if any(a.dev == "lo" and a.addr in vips for a in addrs) and not _lo_is_up():
        out.append(finding("lo-down"))
    for vip in vips:
        here = [a for a in addrs if a.addr == vip]
        if not here:
            out.append(finding("vip-missing", vip=vip))
            continue
        # Only the first fix that removes a copy puts the /32 on lo, when it is not there:
        # copied top-down, a second `ip addr add` would fail (File exists).
        readd = "" if any(a.dev == "lo" and a.prefix == 32 for a in here) else \
            f" && ip addr add {vip}/32 dev lo"
        for a in here:
            if a.dev == "lo" and a.prefix == 32:
                out.append(finding("vip-ok", vip=vip))
                continue
            reason = None if a.dev == "lo" else own_address_reason(vip, addrs)
            if reason:
                out.append(finding("vip-own-address", vip=vip, dev=a.dev, prefix=a.prefix,
                                   reason=reason))
                continue
            values = dict(vip=vip, prefix=a.prefix, promote=promote_prefix(a, addrs),
                          readd=readd)
            out.append(finding("vip-prefix", **values) if a.dev == "lo" else
                       finding("vip-not-lo", dev=a.dev, **values))
            readd = ""
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
    v4 = sorted({entry.addr for entry in listening if ":" not in entry.addr})
    v6only_any = any(entry.addr == "::" and entry.v6only for entry in listening)
    for vip in vips:
        accepted = {"0.0.0.0", vip}
        if any(entry.addr in accepted or (not entry.v6only and entry.addr in
                                          ("::", "::ffff:" + vip))
               for entry in listening):
            out.append(finding("port-ok", vip=vip, port=port))
        elif v4:
            out.append(finding("port-wrong-address", vip=vip, port=port, addrs=" ".join(v4)))
        elif v6only_any:
            out.append(finding("port-v6-only", vip=vip, port=port))
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
    out = check_arp() + check_vips(vips)
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
                                   subsequent_indent=indent + "     ",
                                   break_on_hyphens=False, break_long_words=False)
        if f.fix:
            lines.append(f"{indent}fix: {f.fix}")
    lines.append(summary(findings))
    return "\n".join(lines)


def format_json(findings: list[Finding]) -> str:
    return json.dumps({"findings": [f.to_dict() for f in findings],
                       "errors": count(findings, "error"),
                       "warnings": count(findings, "warning")}, indent=2)
