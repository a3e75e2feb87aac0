"""`dr-lb status`: the running instance as data, and as an `ipvsadm -Ln --stats` table."""
from __future__ import annotations

from lb import abi
from lb.director.config import Config, syn_table_size, udp_table_size
from lb.director.layout import Layout, real_key


NO_RATE = {"cps": 0, "inpps": 0, "inbps": 0}


def collect(config: Config, layout: Layout, dataplane, interface: str, xdp_mode: str,
            conns, conns_age_s: float = 0.0, rates: dict | None = None,
            health: dict | None = None) -> dict:
    """The status document (the `--json` output): counters read from the live maps,
    connection counts and rates from lb/director/monitor.py, and each real server's
    health from lb/director/health.py: {"state": "up" | "down" | "unchecked",
    "last": the last result in words, "since": the Unix time the state began}."""
    rates = rates or {}
    health = health or {}
    counters = dataplane.counters()
    services = []

    def server(r) -> dict:
        rst = dataplane.real_stats(r.real_id)
        active, inactive = conns.per_real.get(r.real_id, (0, 0))
        return {
            "address": r.server.address, "port": r.server.port,
            "weight": r.server.effective_weight, "mac": r.mac,
            "drained": r.server.drained,
            "schedulable": bool(r.flags & abi.REAL_F_SCHEDULABLE),
            "upper": r.server.upper, "lower": r.server.lower,
            "active_conns": active, "inactive_conns": inactive,
            "conns": rst.conns, "in_packets": rst.packets, "in_bytes": rst.bytes,
            "rate": rates.get(("real", r.real_id), NO_RATE),
        }

    for s in layout.services:
        st = dataplane.service_stats(s.svc_id)
        svc = s.service
        reals = []
        for r in s.reals:
            doc = server(r)
            if health:
                doc["health"] = health.get(real_key(svc, r.server.address),
                                           {"state": "unchecked", "last": "", "since": 0})
            reals.append(doc)
        sorry = None
        if s.sorry:
            sorry = server(s.sorry)
            del sorry["drained"]
            sorry["in_use"] = sorry.pop("schedulable")   # taking new connections now
        services.append({
            "vip": svc.vip, "port": svc.port, "protocol": svc.protocol,
            "scheduler": svc.scheduler, "scheduler_flags": list(svc.scheduler_flags),
            "ops": svc.ops, "sloppy": svc.sloppy, "persistent": svc.persistent,
            "persistent_netmask": svc.persistent_netmask,
            "counters": {"conns": st.conns, "in_packets": st.packets, "in_bytes": st.bytes},
            "rate": rates.get(("svc", s.svc_id), NO_RATE),
            "real_servers": reals,
            "sorry_server": sorry,
        })
    inserts = counters["conn_table_insert"]
    half_open = getattr(conns, "half_open", 0)
    syn_inserts, promoted = counters["syn_table_insert"], counters["conn_promoted"]
    return {
        "interface": interface,
        "xdp_mode": xdp_mode,
        "timeouts": {"tcp": config.timeouts.tcp, "tcpfin": config.timeouts.tcpfin,
                     "udp": config.timeouts.udp},
        "services": services,
        "counters": counters,
        "conn_table": {
            "size": config.director.conn_table_size,
            "entries": conns.entries,
            "counted_s_ago": round(conns_age_s, 3),
            "inserts": inserts,
            # Nothing deletes entries but the LRU, so every missing insert was evicted
            # (entries kept from before a restart were not inserted by this program).
            "evicted": max(0, getattr(conns, "inserts", inserts) + getattr(conns, "kept", 0)
                           - conns.entries),
        },
        # Half-open TCP connections (SYN seen, not yet the client's ACK), kept apart so
        # that a SYN flood evicts only these: what the flood pushed out shows as evicted.
        "syn_table": {
            "size": syn_table_size(config.director.conn_table_size),
            "entries": half_open,
            "inserts": syn_inserts,
            "established": promoted,
            "evicted": max(0, syn_inserts - promoted - half_open),
        },
        # UDP flows, apart from TCP so that a UDP flood evicts only UDP flows.
        "udp_table": {
            "size": udp_table_size(config.director.conn_table_size),
            "entries": getattr(conns, "udp", 0),
            "inserts": counters["udp_table_insert"],
            "evicted": max(0, counters["udp_table_insert"] - getattr(conns, "udp", 0)),
        },
    }


# The columns of the status table after the address and the scheduler/forwarding method.
NUMBER_COLUMNS = ("Weight", "ActiveConn", "InActConn", "Conns", "InPkts", "InBytes")


def format_table(data: dict) -> str:
    """The status document as an `ipvsadm -Ln --stats`-like table.

    Column widths follow the widest cell, and the open-ended text (persistence flags on a
    service line, the MAC on a real-server line) comes last, so that long values such as
    `persistent 3600 mask 255.255.255.0` never push the counters out of line.
    """
    t = data["timeouts"]
    rows: list[tuple[str, str, tuple[str, ...], str]] = [
        ("Prot LocalAddress:Port", "Scheduler", ("",) * len(NUMBER_COLUMNS), "Flags"),
        ("  -> RemoteAddress:Port", "Forward", NUMBER_COLUMNS, "MAC"),
    ]
    for s in data["services"]:
        flags = service_flags(s)
        c = s["counters"]
        rows.append((f"{s['protocol'].upper():<4} {s['vip']}:{s['port']}", s["scheduler"],
                     ("", "", "", str(c["conns"]), str(c["in_packets"]), str(c["in_bytes"])),
                     flags))
        for r in s["real_servers"]:
            rows.append((f"  -> {r['address']}:{r['port']}", "Route",
                         tuple(str(r[k]) for k in ("weight", "active_conns", "inactive_conns",
                                                   "conns", "in_packets", "in_bytes")),
                         (r["mac"] or "unresolved") + _thresholds_text(r)
                         + _health_text(r.get("health"))))
        sorry = s.get("sorry_server")
        if sorry:
            rows.append((f"  -> {sorry['address']}:{sorry['port']}", "Route",
                         tuple(str(sorry[k]) for k in ("weight", "active_conns",
                                                       "inactive_conns", "conns",
                                                       "in_packets", "in_bytes")),
                         (sorry["mac"] or "unresolved") + "  sorry server"
                         + (", in use" if sorry["in_use"] else "")))
    address_w = max(len(row[0]) for row in rows)
    method_w = max(len(row[1]) for row in rows)
    number_w = [max(len(row[2][i]) for row in rows) for i in range(len(NUMBER_COLUMNS))]

    lines = [f"dr-lb on {data['interface']} (xdp {data['xdp_mode']}), "
             f"timeouts tcp {t['tcp']} tcpfin {t['tcpfin']} udp {t['udp']}"]
    link = data.get("link") or {}
    if link.get("state") == "gone":
        lines.append(f"INTERFACE {data['interface']} IS GONE (deleted {link['gone_for_s']} s "
                     "ago): nothing is balanced; dr-lb attaches again when it comes back")
    for address, method, numbers, tail in rows:
        cells = " ".join(n.rjust(w) for n, w in zip(numbers, number_w))
        lines.append(f"{address:<{address_w}}  {method:<{method_w}} {cells}  {tail}".rstrip())
    nonzero = {k: v for k, v in data["counters"].items() if v}
    if nonzero:
        lines.append("Packets by outcome: " + ", ".join(f"{k} {v}" for k, v in nonzero.items()))
    ct = data["conn_table"]
    lines.append(f"Connection table: {ct['size']} slots, {ct.get('entries', 0)} entries, "
                 f"{ct['inserts']} inserts, {ct['evicted']} evicted")
    st = data.get("syn_table")
    if st and st["inserts"]:
        lines.append(f"Half-open table: {st['size']} slots, {st['entries']} entries, "
                     f"{st['inserts']} SYNs, {st['established']} established, "
                     f"{st['evicted']} evicted")
    ut = data.get("udp_table")
    if ut and ut["inserts"]:
        lines.append(f"UDP flow table: {ut['size']} slots, {ut['entries']} entries, "
                     f"{ut['inserts']} inserts, {ut['evicted']} evicted")
    return "\n".join(lines)


def service_flags(s: dict) -> str:
    """What ipvsadm -Ln prints after the scheduler: its flags in brackets, persistence,
    and ops (and sloppy, dr-lb's: IPVS's is a sysctl):
    `(mh-fallback,mh-port) persistent 60 mask 255.255.255.0 ops`."""
    words = []
    if s.get("scheduler_flags"):
        words.append(f"({','.join(s['scheduler_flags'])})")
    if s["persistent"]:
        words.append(f"persistent {s['persistent']} mask {s['persistent_netmask']}")
    if s.get("ops"):
        words.append("ops")
    if s.get("sloppy"):
        words.append("sloppy")
    return " ".join(words)


def _thresholds_text(r: dict) -> str:
    """Connection thresholds, as ipvsadm -Ln --thresholds shows them (0: none)."""
    if not r.get("upper"):
        return ""
    return f"  upper {r['upper']} lower {r['lower'] or 'auto (3/4)'}"


def _health_text(health: dict | None) -> str:
    """After the MAC: a checked server's state and, when down, why (nothing for a server
    that is not checked, or not yet)."""
    if not health or health["state"] == "unchecked":
        return ""
    if health["state"] == "down":
        return f"  DOWN: {health['last']}"
    return f"  {health['state']}"


def format_rate(data: dict) -> str:
    """As `ipvsadm -Ln --rate`: connections, packets and bytes per second over the last
    two seconds. In DR the replies bypass the director, so there are no Out columns."""
    rows = [("Prot LocalAddress:Port", "CPS", "InPPS", "InBPS"),
            ("  -> RemoteAddress:Port", "", "", "")]
    for s in data["services"]:
        rows.append((f"{s['protocol'].upper():<4} {s['vip']}:{s['port']}",
                     *(str(s["rate"][k]) for k in ("cps", "inpps", "inbps"))))
        rows += [(f"  -> {r['address']}:{r['port']}",
                  *(str(r["rate"][k]) for k in ("cps", "inpps", "inbps")))
                 for r in s["real_servers"]]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(f"{row[0]:<{widths[0]}}  " + " ".join(c.rjust(w) for c, w in
                                                          zip(row[1:], widths[1:]))
                     for row in rows).rstrip()


def format_timeout(data: dict) -> str:
    """As `ipvsadm -L --timeout`."""
    t = data["timeouts"]
    return f"Timeout (tcp tcpfin udp): {t['tcp']} {t['tcpfin']} {t['udp']}"


def format_conns(data: dict) -> str:
    """As `ipvsadm -Lnc`: one connection a line, then how many more there were."""
    lines = ["pro expire state       source                virtual               destination"]
    for c in data["connections"]:
        m, s = divmod(c["expire_s"], 60)
        lines.append(f"{c['protocol'].upper():<3} {m:02d}:{s:02d}  {c['state']:<11} "
                     f"{c['source']:<21} {c['virtual']:<21} {c['destination']}")
    if data["more"]:
        lines.append(f"... and {data['more']} more (raise --limit to see them)")
    return "\n".join(lines)
