"""`dr-lb status`: the running instance as data, and as an `ipvsadm -Ln --stats` table."""
from __future__ import annotations

from lb import abi
from lb.config import Config
from lb.tables import Tables


def collect(config: Config, tables: Tables, dataplane, interface: str, xdp_mode: str) -> dict:
    """The status document (the `--json` output) read from the live maps."""
    conn_counts = dataplane.conn_counts(config)
    counters = dataplane.counters()
    services = []
    for s in tables.services:
        st = dataplane.service_stats(s.svc_id)
        reals = []
        for r in s.reals:
            rst = dataplane.real_stats(r.real_id)
            active, inactive = conn_counts.get(r.real_id, (0, 0))
            reals.append({
                "address": r.server.address, "port": r.server.port,
                "weight": r.server.weight, "mac": r.mac,
                "schedulable": bool(r.flags & abi.REAL_F_SCHEDULABLE),
                "active_conns": active, "inactive_conns": inactive,
                "conns": rst.conns, "in_packets": rst.packets, "in_bytes": rst.bytes,
            })
        svc = s.service
        services.append({
            "vip": svc.vip, "port": svc.port, "protocol": svc.protocol,
            "scheduler": svc.scheduler, "persistent": svc.persistent,
            "persistent_netmask": svc.persistent_netmask,
            "counters": {"conns": st.conns, "in_packets": st.packets, "in_bytes": st.bytes},
            "real_servers": reals,
        })
    inserts = counters["conn_table_insert"]
    return {
        "interface": interface,
        "xdp_mode": xdp_mode,
        "timeouts": {"tcp": config.timeouts.tcp, "tcpfin": config.timeouts.tcpfin,
                     "udp": config.timeouts.udp},
        "services": services,
        "counters": counters,
        "conn_table": {
            "size": config.director.conn_table_size,
            "inserts": inserts,
            # Every insert into a full LRU table pushes out the least recently used entry.
            "evicted": max(0, inserts - config.director.conn_table_size),
        },
    }


def format_table(data: dict) -> str:
    t = data["timeouts"]
    lines = [
        f"dr-lb on {data['interface']} (xdp {data['xdp_mode']}), "
        f"timeouts tcp {t['tcp']} tcpfin {t['tcpfin']} udp {t['udp']}",
        f"{'Prot LocalAddress:Port':<28}{'Scheduler Flags':<22}",
        f"  -> {'RemoteAddress:Port':<22}{'Forward':<8}{'Weight':>7}{'ActiveConn':>11}"
        f"{'InActConn':>10}{'Conns':>9}{'InPkts':>10}{'InBytes':>12}  MAC",
    ]
    for s in data["services"]:
        flags = (f"persistent {s['persistent']} mask {s['persistent_netmask']}"
                 if s["persistent"] else "")
        c = s["counters"]
        lines.append(f"{s['protocol'].upper():<5}{s['vip'] + ':' + str(s['port']):<23}"
                     f"{s['scheduler']:<10}{flags:<12}{'':>8}{c['conns']:>9}"
                     f"{c['in_packets']:>10}{c['in_bytes']:>12}")
        for r in s["real_servers"]:
            mac = r["mac"] or "unresolved"
            lines.append(f"  -> {r['address'] + ':' + str(r['port']):<22}{'Route':<8}"
                         f"{r['weight']:>7}{r['active_conns']:>11}{r['inactive_conns']:>10}"
                         f"{r['conns']:>9}{r['in_packets']:>10}{r['in_bytes']:>12}  {mac}")
    nonzero = {k: v for k, v in data["counters"].items() if v}
    if nonzero:
        lines.append("Packets by outcome: " + ", ".join(f"{k} {v}" for k, v in nonzero.items()))
    ct = data["conn_table"]
    lines.append(f"Connection table: {ct['size']} slots, {ct['inserts']} inserts, "
                 f"{ct['evicted']} evicted")
    return "\n".join(lines)
