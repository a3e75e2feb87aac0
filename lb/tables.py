"""What the maps should hold for a config: ids, WRR slices and flags, in plain Python.

Kept free of bcc so that it is tested without a kernel; lb/dataplane.py writes it out.
"""
from __future__ import annotations

from dataclasses import dataclass

from lb import abi
from lb.config import Config, RealServer, Service
from lb.scheduler import wrr_length, wrr_sequence


@dataclass(frozen=True)
class RealEntry:
    real_id: int
    service: Service
    server: RealServer
    mac: str | None

    @property
    def flags(self) -> int:
        if self.mac is None:
            return 0
        flags = abi.REAL_F_MAC_KNOWN
        if self.server.weight > 0:
            flags |= abi.REAL_F_SCHEDULABLE
        return flags


@dataclass(frozen=True)
class ServiceEntry:
    svc_id: int
    service: Service
    seq_offset: int
    sequence: tuple[int, ...]   # real_ids, one WRR cycle over schedulable servers
    reals: tuple[RealEntry, ...]


@dataclass(frozen=True)
class Tables:
    services: tuple[ServiceEntry, ...]
    vips: tuple[str, ...]

    @property
    def reals(self) -> list[RealEntry]:
        return [r for s in self.services for r in s.reals]


class Ids:
    """Map indexes that stay put across reloads, so that live connections (which hold a
    real_id) keep their real server when the config changes around them.

    Ids are not reused while the process runs: a connection to a removed real server
    goes on to that server until it expires, as IPVS does with a deleted destination.
    """

    def __init__(self) -> None:
        self.services: dict[tuple, int] = {}
        self.reals: dict[tuple, int] = {}

    def service(self, svc: Service) -> int:
        return self.services.setdefault((svc.vip, svc.port, svc.protocol), len(self.services))

    def real(self, svc: Service, rs: RealServer) -> int:
        return self.reals.setdefault((svc.vip, svc.port, svc.protocol, rs.address),
                                     len(self.reals))

    def room_for(self, config: Config) -> str | None:
        """Why `config` cannot be loaded without a restart, or None."""
        new_svcs = {(s.vip, s.port, s.protocol) for s in config.services} - set(self.services)
        new_reals = {(s.vip, s.port, s.protocol, rs.address) for s in config.services
                     for rs in s.real_servers} - set(self.reals)
        if len(self.services) + len(new_svcs) > abi.CONST["MAX_SERVICES"] or \
                len(self.reals) + len(new_reals) > abi.CONST["MAX_REALS"]:
            return ("this instance has used up its service or real-server slots; "
                    "restart dr-lb to load this config")
        return None


def build(config: Config, macs: dict[str, str | None], ids: Ids | None = None) -> Tables:
    """Lay out `config`; `macs` maps real-server addresses to MACs (None: unknown).

    A service's slice of wrr_seq is sized for all its weighted servers, so that the
    offsets do not move when a MAC comes or goes; only the used length changes.
    """
    ids = ids or Ids()
    services = []
    offset = 0
    for svc in config.services:
        reals = tuple(RealEntry(ids.real(svc, rs), svc, rs, rs.mac or macs.get(rs.address))
                      for rs in svc.real_servers)
        weights = svc.scheduling_weights()
        usable = [w if r.mac else 0 for w, r in zip(weights, reals)]
        sequence = tuple(reals[i].real_id for i in wrr_sequence(usable))
        services.append(ServiceEntry(ids.service(svc), svc, offset, sequence, reals))
        offset += wrr_length(weights)
    return Tables(services=tuple(services), vips=tuple(config.vips))
