"""`dr-lb check --live CONFIG`, on the director: look at the running network.

- every real server is on the interface's subnets and answers ARP (its MAC resolves);
- no host other than the director answers ARP for a VIP: who-has VIP is sent and every
  reply is listed; a real server's MAC there means its arp_ignore is wrong (seeds 001,
  004);
- the director answers ARP for the VIP when dr-lb is up (the attached XDP program is
  run on a who-has VIP through bpf_prog_test_run, since the director cannot see its own
  reply on the wire), and when it is not, nobody does: clients get "no route to host"
  (seed 003);
- ICMP redirects are off on the director (seed 003);
- each real server accepts a TCP connection to the VIP through the DR path: a SYN with
  the real server's MAC and the VIP as destination, sent from the director. A SYN-ACK
  proves the VIP on lo and the port end to end; an RST says nothing listens; silence
  says the VIP is not on the real server (or a firewall drops it). The director resets
  the half-open connection at once. The probe is lb/director/probe.py's, which the
  health checks of `dr-lb up` use too;
- each real server of a UDP service gets an empty datagram to VIP:port the same way: an
  answer from the VIP is right, one from another address is a server bound to a
  wildcard address (clients drop its replies), an ICMP port unreachable says nothing is
  bound for the VIP there, silence proves little (lb/director/probe.py, udp_probe).

`live_findings(cfg)` returns lb.findings.Finding objects; `dr-lb check --live` prints them.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from lb import findings, libbpf
from lb.abi import mac_bytes
from lb.director.arp import source_for, who_has
from lb.director.config import Config
from lb.director.netif import Interface, interface
from lb.director.probe import Probe, syn_probe, udp_probe
from lb.findings import Finding, Template
from lb.frames import arp_request, parse_arp_reply

TEMPLATES: dict[str, Template] = {
    "interface-missing": Template(
        "error", "interface {iface} does not exist in this network namespace",
        "dr-lb attaches to the interface named in [director].",
        "set [director] interface to one of: {names}"),
    "rs-off-segment": Template(
        "error", "real server {rip} is not in {iface}'s subnets ({subnets})",
        "DR rewrites only the destination MAC, so every real server must be on the "
        "director's L2 segment (seed 002, DR summary).",
        "give {rip} an address on {iface}'s segment, or remove it from {config}"),
    "rs-no-mac": Template(
        "error", "real server {rip} does not answer ARP on {iface}",
        "The director needs its MAC to forward to it. It is down, on another segment, or "
        "misconfigured: a VIP on its lo with a prefix other than /32 makes its whole "
        "subnet local, and older kernels then stop answering ARP for the real address "
        "(seed 000).",
        "on {rip}: dr-lb realserver check {vips}"),
    "rs-mac-mismatch": Template(
        "error", "real server {rip} answers ARP with {seen}, but {config} says mac = {mac}",
        "The director sends that real server's packets to the configured MAC, which "
        "nobody here has.",
        "set mac = \"{seen}\" for {rip} in {config}, or leave mac out"),
    "rs-ok": Template("ok", "real server {rip} is at {seen} on {iface}"),
    "dataplane-down": Template(
        "error", "dr-lb is not running on {iface}: no XDP program is attached",
        "Nothing balances the VIPs and nothing answers ARP for them.",
        "dr-lb up {config}"),
    "vip-arp-other": Template(
        "error", "{mac}{who} answers ARP for VIP {vip}",
        "Only the director may answer ARP for a VIP. Clients that cache this answer "
        "send their traffic to that host and bypass the balancer; a real server that "
        "answers has arp_ignore below 1 (seeds 001, 004).",
        "{fix}"),
    "vip-arp-nobody": Template(
        "error", "nobody answers ARP for VIP {vip}",
        "Clients cannot resolve the VIP: they fail with 'no route to host' (seed 003). "
        "dr-lb answers ARP for its VIPs while it runs.",
        "dr-lb up {config}"),
    "vip-arp-xdp-silent": Template(
        "error", "the XDP program on {iface} (id {prog_id}, named {prog_name}) does not "
                 "answer ARP for {vip}",
        "The program attached there is not dr-lb with this configuration (or a leftover), "
        "so clients cannot resolve the VIP (seed 003).",
        "dr-lb up --replace {config}"),
    "vip-arp-director": Template(
        "ok", "the director answers ARP for VIP {vip} with {mac} (XDP program id {prog_id} "
              "on {iface})"),
    "icmp-redirects": Template(
        "warning", "ICMP redirects are on for {iface} (send_redirects: all={allval}, "
                   "{iface}={devval}; forwarding={forwarding})",
        "When the director routes a packet for the VIP back out of the interface it came "
        "in on (dr-lb stopped, or a port it does not balance), the kernel tells the "
        "client to send to the VIP directly; nobody else answers ARP for it, so the "
        "client fails with 'no route to host' (seed 003).",
        "sysctl -w {settings}"),
    "icmp-redirects-ok": Template("ok", "ICMP redirects are off for {iface}"),
    "probe-ok": Template(
        "ok", "{rip} accepts {vip}:{port}/tcp through the DR path (SYN-ACK)"),
    "probe-refused": Template(
        "error", "{rip} refuses {vip}:{port}/tcp (RST)",
        "The VIP reaches it, but nothing listens on port {port} for the VIP (a server "
        "bound to the real address only does not count).",
        "on {rip}: dr-lb realserver check {vip} --port {port}"),
    "probe-silent": Template(
        "error", "{rip} does not answer a SYN to {vip}:{port}/tcp",
        "A host drops packets for an address it does not have, so the VIP is probably "
        "missing from its lo. A VIP on lo with a prefix other than /32 makes the "
        "subnet local and its replies loop back into lo (seed 000); a firewall can also "
        "drop them.",
        "on {rip}: dr-lb realserver up {vip}"),
    "probe-udp-answered": Template(
        "ok", "{rip} answers {vip}:{port}/udp from the VIP through the DR path"),
    "probe-udp-wrong-source": Template(
        "error", "{rip} answers {vip}:{port}/udp from {source}, not from {vip}",
        "A UDP server's reply leaves from the address its socket is bound to; bound to a "
        "wildcard address, from the address of the route to the client. Clients sent "
        "their datagrams to {vip} and drop the replies.",
        "on {rip}: dr-lb realserver check {vip} --udp-port {port}"),
    "probe-udp-closed": Template(
        "error", "{rip} has nothing bound to {vip}:{port}/udp (ICMP port unreachable)",
        "The VIP reaches it (its port unreachable quotes the probe), but no socket is "
        "bound there for the VIP (or a firewall there rejects the port: iptables' REJECT "
        "answers the same): the clients' datagrams are dropped.",
        "on {rip}: dr-lb realserver check {vip} --udp-port {port}"),
    "probe-udp-silent": Template(
        "info", "{rip} did not answer an empty datagram to {vip}:{port}/udp",
        "UDP has no handshake: a server that ignores an empty datagram looks the same "
        "from here as a missing VIP or a firewall (and a real server sends only a few "
        "port unreachables a second: with many UDP services, a closed one may look "
        "silent). A TCP service's probe above, or the doctor on the real server, tells "
        "them apart.",
        "on {rip}: dr-lb realserver check {vip} --udp-port {port}"),
}


def finding(code: str, **values) -> Finding:
    return TEMPLATES[code].make(code, **values)


# ---- the interface -----------------------------------------------------------------------

def _link_names() -> list[str]:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        return sorted(link.get_attr("IFLA_IFNAME") for link in ipr.get_links())


# ---- the director's own ARP answer, through the attached program ---------------------------

def xdp_arp_answer(iface: Interface, vip: str) -> str | None:
    """Run the XDP program attached to iface on a who-has VIP (bpf_prog_test_run, no
    packet leaves); the MAC it answers with, or None if it does not answer."""
    fd = libbpf.prog_fd_by_id(iface.xdp_prog_id)
    try:
        asker_mac = "02:00:00:00:00:01"
        run = libbpf.test_run(fd, arp_request(asker_mac, source_for(iface, vip), vip))
    finally:
        os.close(fd)
    if run.action != libbpf.XDP_TX:
        return None
    reply = parse_arp_reply(run.data)
    if not reply or reply[0] != vip or run.data[0:6] != mac_bytes(asker_mac):
        return None
    return reply[1]


# ---- the checks --------------------------------------------------------------------------

def _sysctl(dev: str, key: str) -> int:
    try:
        return int(Path(f"/proc/sys/net/ipv4/conf/{dev}/{key}").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _sysctl_name(dev: str, key: str) -> str:
    """The sysctl(8) name: dots in an interface name are written as slashes."""
    return f"net.ipv4.conf.{dev.replace('.', '/')}.{key}"


def check_redirects(iface: Interface) -> Finding:
    allval, devval = _sysctl("all", "send_redirects"), _sysctl(iface.name, "send_redirects")
    if not (allval or devval):   # the kernel ORs all and the interface
        return finding("icmp-redirects-ok", iface=iface.name)
    forwarding = _sysctl(iface.name, "forwarding")
    settings = " ".join(f"{_sysctl_name(dev, 'send_redirects')}=0"
                        for dev, v in (("all", allval), (iface.name, devval)) if v)
    f = finding("icmp-redirects", iface=iface.name, allval=allval, devval=devval,
                forwarding=forwarding, settings=settings)
    if forwarding:   # redirects are only ever sent while forwarding
        f = Finding("error", f.code, f.what, f.why, f.fix)
    return f


def live_findings(cfg: Config, config_path: str = "CONFIG") -> list[Finding]:
    """Every live check for the director of `cfg`, run in this network namespace."""
    name = cfg.director.interface
    iface = interface(name)
    if iface is None:
        return [finding("interface-missing", iface=name, names=", ".join(_link_names()))]
    out: list[Finding] = []
    vips = list(cfg.vips)
    reals: dict[str, str | None] = {}
    for svc in cfg.services:
        for rs in svc.real_servers:
            if rs.address not in reals or rs.mac:
                reals[rs.address] = rs.mac
    subnets = ", ".join(str(n.network) for n in iface.networks) or "none"
    on_segment = [rip for rip in reals
                  if any(ipaddress.IPv4Address(rip) in n.network for n in iface.networks)]

    answers = who_has(name, on_segment + [v for v in vips if v not in on_segment])
    macs: dict[str, str] = {}
    for rip in reals:
        if rip not in on_segment:
            out.append(finding("rs-off-segment", rip=rip, iface=name, subnets=subnets,
                               config=config_path))
            continue
        seen = answers.get(rip, [])
        if not seen:
            out.append(finding("rs-no-mac", rip=rip, iface=name, vips=" ".join(vips)))
            continue
        want = reals[rip]
        if want and want not in seen:
            out.append(finding("rs-mac-mismatch", rip=rip, seen=seen[0], mac=want,
                               config=config_path))
            continue
        macs[rip] = want or seen[0]
        out.append(finding("rs-ok", rip=rip, seen=macs[rip], iface=name))

    by_mac = {mac: rip for rip, mac in macs.items()}
    if not iface.xdp_prog_id:
        out.append(finding("dataplane-down", iface=name, config=config_path))
    for vip in vips:
        others = [m for m in answers.get(vip, []) if m != iface.mac]
        for mac in others:
            rip = by_mac.get(mac)
            who = f" (real server {rip})" if rip else ""
            fix = (f"on {rip}: dr-lb realserver up {vip}   (sets arp_ignore=1, "
                   "arp_announce=2)" if rip else
                   f"find the host with MAC {mac} and remove {vip} from it, or set its "
                   "arp_ignore=1 and arp_announce=2 if it is a real server")
            out.append(finding("vip-arp-other", mac=mac, who=who, vip=vip, fix=fix))
        if iface.xdp_prog_id:
            mac = xdp_arp_answer(iface, vip)
            if mac:
                out.append(finding("vip-arp-director", vip=vip, mac=mac,
                                   prog_id=iface.xdp_prog_id, iface=name))
            else:
                out.append(finding("vip-arp-xdp-silent", vip=vip, iface=name,
                                   prog_id=iface.xdp_prog_id, config=config_path,
                                   prog_name=libbpf.prog_name(iface.xdp_prog_id)))
        elif not others:
            out.append(finding("vip-arp-nobody", vip=vip, config=config_path))

    out.append(check_redirects(iface))

    probes = [Probe(rs.address, macs[rs.address], svc.vip, svc.port)
              for svc in cfg.services if svc.protocol == "tcp"
              for rs in svc.real_servers if rs.address in macs]
    results = syn_probe(iface, probes) if probes else {}
    code = {"open": "probe-ok", "refused": "probe-refused", "silent": "probe-silent"}
    for p in probes:
        out.append(finding(code[results[p]], rip=p.rip, vip=p.vip, port=p.port))
    probes = [Probe(rs.address, macs[rs.address], svc.vip, svc.port)
              for svc in cfg.services if svc.protocol == "udp"
              for rs in svc.real_servers if rs.address in macs]
    answers = udp_probe(iface, probes) if probes else {}
    for p in probes:
        status, source = answers[p]
        out.append(finding(f"probe-udp-{status}", rip=p.rip, vip=p.vip, port=p.port,
                           source=source))
    return out


def report(cfg: Config, config_path: str = "CONFIG", as_json: bool = False) -> int:
    """Run the live checks, print the table (or JSON); the exit status: 1 on an error."""
    found = live_findings(cfg, config_path=config_path)
    print(findings.format_json(found) if as_json else findings.format_table(found),
          flush=True)
    return 1 if findings.has_errors(found) else 0

