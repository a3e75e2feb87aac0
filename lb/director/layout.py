"""The one road from the config to the maps: what every map should hold, in plain Python.

`build()` takes the config, the real servers' MACs, the director's MAC and the real
servers' health, and returns the complete contents of every map the control plane
writes: settings (with the timeouts), services, VIPs, real servers with their flags
(removed ones and sorry servers included), the WRR cycles with their placement in
wrr_seq, and each service's real-server list and sh buckets or mh table in
sched_table. Field names are those of the C structs
in bpf/dr_lb_abi.h, and values are ready for the map (network byte order), so that
lb/director/dataplane.py only copies them. No bcc, no root: tested as plain Python.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Mapping

from lb import abi
from lb.director import scheduler
from lb.director.config import Config, RealServer, Service, limit_problems
from lb.director.scheduler import wrr_sequence

DOWN = "down"   # the health state (lb/director/health.py) that takes a server out


def real_key(svc: Service, address: str) -> tuple[str, int, str, str]:
    """A real server of a service, as health states (and Ids) name it."""
    return (svc.vip, svc.port, svc.protocol, address)


@dataclass(frozen=True)
class RealEntry:
    real_id: int
    server: RealServer
    mac: str | None
    healthy: bool = True     # False: failing its health check
    service: tuple[str, int, str] = ("0.0.0.0", 0, "tcp")   # (VIP, port, protocol)
    svc_id: int = 0          # its service's: the service's stats are its servers' sum

    @property
    def flags(self) -> int:
        flags = abi.REAL_F_MAC_KNOWN if self.mac else 0
        if not self.healthy and self.server.health.on_failure == "reschedule":
            flags |= abi.REAL_F_RESCHEDULE
        if self.mac and self.healthy and self.server.effective_weight > 0:
            flags |= abi.REAL_F_SCHEDULABLE
        return flags


@dataclass(frozen=True)
class ServiceEntry:
    svc_id: int
    service: Service
    seq_offset: int              # within the half of wrr_seq in use
    sequence: tuple[int, ...]    # real_ids, one WRR cycle over schedulable servers
    reals: tuple[RealEntry, ...]
    sched_offset: int = 0        # within the half of sched_table in use
    table: tuple[int, ...] = ()  # real_ids: the sh buckets or the mh lookup table
    orders: tuple[tuple[int, ...], ...] = ()   # sh-fallback: each bucket's order
    # The sorry server: weight 1 while it is the whole cycle (no real server can take a
    # new connection), else 0, so that no persistence template keeps clients on it.
    sorry: RealEntry | None = None

    @property
    def real_ids(self) -> tuple[int, ...]:
        return tuple(r.real_id for r in self.reals)

    @property
    def table_offset(self) -> int:
        """Where the table starts in the service's slice: after its list, twice."""
        return self.sched_offset + 2 * len(self.reals)

    @property
    def sorry_in_use(self) -> bool:
        return self.sorry is not None and self.sorry.server.weight > 0

    @property
    def sched(self) -> str:
        """The scheduler the data plane runs: the service's, except that rr is wrr over
        weights of 1 and that the sorry server, while in use, is a one-slot wrr cycle."""
        svc = self.service
        return "wrr" if svc.round_robin or self.sorry_in_use else svc.scheduler

    @property
    def svc_flags(self) -> int:
        svc, f = self.service, abi.SVC_F
        return ((f["sched_fallback"] if svc.fallback else 0)
                | (f["sched_port"] if svc.hash_port else 0)
                | (f["ops"] if svc.ops else 0)
                | (f["thresholds"] if svc.thresholds and not self.sorry_in_use else 0)
                | (f["sloppy"] if svc.sloppy else 0))


def _lowest_free(used) -> int:
    """The smallest id not in `used` (ids kept across restarts may have holes, see
    lb/director/kept.py)."""
    taken = set(used)
    return len(taken) if max(taken, default=-1) < len(taken) else \
        next(i for i in range(len(taken) + 1) if i not in taken)


@dataclass
class Ids:
    """Map indexes that stay put across reloads, so that live connections (which hold a
    real_id) keep their real server when the config changes around them.

    Ids are not reused while the process runs: a connection to a removed real server
    goes on to that server until it expires, as IPVS does with a deleted destination.
    """
    services: dict[tuple, int] = field(default_factory=dict)
    reals: dict[tuple, int] = field(default_factory=dict)
    servers: dict[int, RealServer] = field(default_factory=dict)   # real_id -> last config

    def service(self, svc: Service) -> int:
        key = (svc.vip, svc.port, svc.protocol)
        if key not in self.services:
            self.services[key] = _lowest_free(self.services.values())
        return self.services[key]

    def real(self, svc: Service, rs: RealServer) -> int:
        key = (svc.vip, svc.port, svc.protocol, rs.address)
        if key not in self.reals:
            self.reals[key] = _lowest_free(self.reals.values())
        real_id = self.reals[key]
        self.servers[real_id] = rs
        return real_id

    def service_of(self, real_id: int) -> tuple[str, int, str]:
        """The (VIP, port, protocol) of the service `real_id` is a server of."""
        return next(key[:3] for key, i in self.reals.items() if i == real_id)

    def room_for(self, config: Config) -> str | None:
        """Why `config` cannot be loaded without a restart, or None."""
        new_svcs = {(s.vip, s.port, s.protocol) for s in config.services} - set(self.services)
        new_reals = {real_key(s, a) for s in config.services
                     for a in [rs.address for rs in s.real_servers]
                     + ([s.sorry_server] if s.sorry_server else [])} - set(self.reals)
        if limit_problems(len(self.services) + len(new_svcs),
                          len(self.reals) + len(new_reals), 0):
            return ("this instance has used up its service or real-server slots; "
                    "restart dr-lb to load this config")
        return None


@dataclass(frozen=True)
class Layout:
    """Everything the control plane writes, and where."""
    services: tuple[ServiceEntry, ...]
    removed_reals: tuple[RealEntry, ...]   # dropped from the config; connections go on
    half: int                              # the half of wrr_seq the services point at
    interface_mac: str
    icmp_echo: bool
    timeouts_s: dict[int, int]             # enum conn_state -> idle timeout
    answer_arp: bool = True                # False: VRRP backup, the MASTER answers

    @property
    def reals(self) -> list[RealEntry]:
        """Every entry of a configured server: real servers, then sorry servers."""
        return [r for s in self.services for r in s.reals] + \
            [s.sorry for s in self.services if s.sorry]

    @property
    def usable_vips(self) -> list[str]:
        """VIPs with a real server (not a sorry server) that can take new connections:
        what [announce] announces."""
        usable = {s.service.vip for s in self.services
                  if any(r.flags & abi.REAL_F_SCHEDULABLE for r in s.reals)}
        return sorted(usable, key=ipaddress.IPv4Address)

    @property
    def vips(self) -> dict[str, int]:
        """VIP -> the number of services on it."""
        out: dict[str, int] = {}
        for s in self.services:
            out[s.service.vip] = out.get(s.service.vip, 0) + 1
        return out

    # ---- the maps' rows: (key, value), with the C structs' field names ---------------
    def settings_row(self) -> dict:
        return {"mac": abi.mac_bytes(self.interface_mac),
                "flags": (abi.SETTINGS_F_ICMP_ECHO if self.icmp_echo else 0)
                | (0 if self.answer_arp else abi.SETTINGS_F_ARP_BACKUP),
                "timeout_ns": [self.timeouts_s.get(state, 0) * 1_000_000_000
                               for state in range(abi.CONN_STATE_SLOTS)],
                "flow_sync_ns": self.flow_sync_ns}

    @property
    def flow_sync_ns(self) -> int:
        """How long a CPU may follow a connection from its flow_cache before it reads
        (and refreshes) the table's entry again: a quarter of the shortest timeout or
        persistence timeout (an entry so refreshed never expires while in use, and its
        template neither), at most FLOW_SYNC_MAX_NS."""
        shortest = [t for t in self.timeouts_s.values() if t > 0] + \
            [s.service.persistent for s in self.services if s.service.persistent]
        return min([abi.CONST["FLOW_SYNC_MAX_NS"]] +
                   [t * 1_000_000_000 // 4 for t in shortest])

    def real_rows(self) -> list[tuple[int, dict]]:
        # A removed real server keeps MAC_KNOWN (its connections go on, as IPVS lets
        # them) but is never SCHEDULABLE, so no persistence template sends it new ones.
        rows = [(r, r.flags) for r in self.reals] + \
            [(r, abi.REAL_F_MAC_KNOWN if r.mac else 0) for r in self.removed_reals]
        return [(r.real_id, {"mac": abi.mac_bytes(r.mac) if r.mac else bytes(6),
                             "flags": flags, "svc": svc_key_row(*r.service),
                             "addr": abi.ip_be32(r.server.address),
                             "weight": r.server.effective_weight, "upper": r.server.upper,
                             "lower": r.server.effective_lower if r.server.upper else 0})
                for r, flags in rows]

    def wrr_rows(self) -> list[tuple[int, int]]:
        base = self.half * abi.SEQ_HALF
        return [(base + s.seq_offset + i, real_id)
                for s in self.services for i, real_id in enumerate(s.sequence)]

    def sched_rows(self) -> list[tuple[int, int]]:
        """sched_table: each service's real_ids twice over, then its sh buckets and
        sh-fallback orders, or its mh table."""
        base = self.half * abi.SCHED_HALF
        rows = []
        for s in self.services:
            slots = list(s.real_ids) * 2 + list(s.table) + [i for o in s.orders for i in o]
            rows += [(base + s.sched_offset + i, real_id) for i, real_id in enumerate(slots)]
        return rows

    def service_rows(self) -> list[tuple[dict, dict]]:
        base = self.half * abi.SEQ_HALF
        sched_base = self.half * abi.SCHED_HALF
        return [(svc_key_row(s.service.vip, s.service.port, s.service.protocol),
                 {"id": s.svc_id, "seq_offset": base + s.seq_offset,
                  "seq_len": len(s.sequence), "persist_timeout_s": s.service.persistent,
                  "persist_mask": abi.ip_be32(s.service.persistent_netmask),
                  "sched": abi.SCHED[s.sched],
                  "flags": s.svc_flags,
                  "reals_offset": sched_base + s.sched_offset, "n_reals": len(s.reals),
                  "table_offset": sched_base + s.table_offset, "table_len": len(s.table),
                  "order_len": len(s.orders[0]) if s.orders else 0})
                for s in self.services]

    def vip_rows(self) -> list[tuple[int, dict]]:
        return [(abi.ip_be32(vip), {"services": n}) for vip, n in self.vips.items()]

    def vip_filter_words(self) -> dict[int, int]:
        """word -> bits of the VIP pre-filter for these VIPs (bpf/dr_lb.c maybe_vip)."""
        words: dict[int, int] = {}
        for vip in self.vips:
            h = vip_hash(vip)
            words[h // 64] = words.get(h // 64, 0) | 1 << (h % 64)
        return words


def svc_key_row(vip: str, port: int, protocol: str) -> dict:
    """A struct svc_key: a service's VIP, port and protocol as the program reads them."""
    return {"vip": abi.ip_be32(vip), "port": abi.port_be16(port), "proto": abi.IPPROTO[protocol]}


def vip_hash(address: str) -> int:
    """The VIP pre-filter's bit for an address, as bpf/dr_lb.c's maybe_vip() finds it."""
    product = (abi.ip_be32(address) * abi.CONST["VIP_FILTER_MULT"]) & 0xFFFFFFFF
    return product >> (32 - abi.CONST["VIP_FILTER_LOG2"])


def build(config: Config, macs: dict[str, str | None], interface_mac: str,
          ids: Ids | None = None, previous: Layout | None = None,
          health: Mapping[tuple, str] | None = None, answer_arp: bool = True) -> Layout:
    """Lay out `config`; `macs` maps real-server addresses to MACs (None: unknown), and
    `health` maps real_key()s to health states: a server whose state is "down" leaves
    every scheduler's choice: the WRR cycle like a weight-0 one, the sh/mh tables, and
    lc/wlc/sed/nq (not schedulable) (missing: not checked, or not yet).

    A service's slice of wrr_seq is sized for all its weighted servers, so that the
    offsets do not move when a MAC comes or goes; only the used length changes. The
    cycles go to the half of wrr_seq that `previous` did not use.
    """
    ids = ids or Ids()
    health = health or {}
    services = []
    offset = sched_offset = 0
    for svc in config.services:
        key, svc_id = (svc.vip, svc.port, svc.protocol), ids.service(svc)
        reals = tuple(RealEntry(ids.real(svc, rs), rs, rs.mac or macs.get(rs.address),
                                health.get(real_key(svc, rs.address)) != DOWN, key, svc_id)
                      for rs in svc.real_servers)
        sequence: tuple[int, ...] = ()
        if svc.round_robin:
            weights = svc.scheduling_weights()
            usable = [w if r.mac and r.healthy else 0 for w, r in zip(weights, reals)]
            sequence = tuple(reals[i].real_id for i in wrr_sequence(usable))
        table, orders = _hash_table(svc, reals)
        sorry = None
        if svc.sorry_server:
            # Whatever the scheduler, while no real server can take a new connection the
            # service hands over to the sorry server as a one-slot WRR cycle.
            mac = macs.get(svc.sorry_server)
            in_use = mac is not None and \
                not any(r.flags & abi.REAL_F_SCHEDULABLE for r in reals)
            server = RealServer(svc.sorry_server, svc.port, weight=1 if in_use else 0)
            sorry = RealEntry(ids.real(svc, server), server, mac, service=key, svc_id=svc_id)
            sequence = (sorry.real_id,) if in_use else sequence
        services.append(ServiceEntry(svc_id, svc, offset, sequence, reals,
                                     sched_offset, table, orders, sorry))
        offset += svc.seq_slots()
        sched_offset += svc.sched_slots()
    in_use = {r.real_id for s in services for r in s.reals} | \
        {s.sorry.real_id for s in services if s.sorry}
    removed = tuple(_removed(ids, real_id, rs, rs.mac or macs.get(rs.address))
                    for real_id, rs in sorted(ids.servers.items()) if real_id not in in_use)
    t = config.timeouts
    return Layout(
        services=tuple(services), removed_reals=removed,
        half=0 if previous is None else 1 - previous.half,
        interface_mac=interface_mac, icmp_echo=config.director.icmp_echo,
        answer_arp=answer_arp,
        timeouts_s={abi.STATE["SYN_RECV"]: abi.CONST["SYN_RECV_TIMEOUT_S"],
                    abi.STATE["ESTABLISHED"]: t.tcp, abi.STATE["FIN_WAIT"]: t.tcpfin,
                    abi.STATE["CLOSE"]: abi.CONST["CLOSE_TIMEOUT_S"],
                    abi.STATE["UDP"]: t.udp})


def _removed(ids: Ids, real_id: int, rs: RealServer, mac: str | None) -> RealEntry:
    """The entry of a real server dropped from the config, whose connections go on. Its
    service's id may be forgotten already (kept.compact, when only a persistence template
    still names the server): then no connection of it is left to count under one."""
    key = ids.service_of(real_id)
    return RealEntry(real_id, rs, mac, service=key, svc_id=ids.services.get(key, 0))


def _hash_table(svc: Service, reals: tuple[RealEntry, ...]
                ) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """The sh buckets (and sh-fallback orders) or the mh table of `svc`, as real_ids.

    Both are built from the config alone, never from which MACs are known, so that the
    flows of the other servers stay where they are while one is unreachable, and two
    directors with the same config agree: an unreachable (or drained, or overloaded)
    server keeps its entries and the data plane treats it as unavailable, as IPVS does
    with a dest whose weight is 0.
    - sh uses the weights as they are (drained: 0), as ip_vs_sh_reassign() reads
      dest->weight: a weight-0 server keeps one bucket.
    - mh uses the configured weight even when drained, as ip_vs_mh reads last_weight
      (the weight before it was set to 0); a server whose configured weight is 0 has no
      entry. (IPVS would remember a weight changed to 0 at run time; dr-lb has the
      config only: use drain for that.)
    A server failing its health check is left out of the table, as keepalived removes
    it from IPVS: its clients go to the others (mh moves only those), with or without
    fallback, and come back when it does.
    """
    reals = tuple(r for r in reals if r.healthy)
    ids = [r.real_id for r in reals]
    if svc.scheduler == "sh":
        buckets = scheduler.sh_buckets([r.server.effective_weight for r in reals])
        orders = scheduler.sh_fallback_orders(buckets) if svc.fallback and buckets else []
        return (tuple(ids[i] for i in buckets),
                tuple(tuple(ids[i] for i in order) for order in orders))
    if svc.scheduler == "mh":
        table = scheduler.mh_table([(int(ipaddress.IPv4Address(r.server.address)),
                                     r.server.port, r.server.weight) for r in reals])
        return tuple(ids[i] for i in table), ()
    return (), ()
