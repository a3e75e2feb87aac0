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


def build(config: Config, macs: dict[str, str | None]) -> Tables:
    """Lay out `config`; `macs` maps real-server addresses to MACs (None: unknown).

    A service's slice of wrr_seq is sized for all its weighted servers, so that the
    offsets do not move when a MAC comes or goes; only the used length changes.
    """
    services = []
    real_id = 0
    offset = 0
    for svc_id, svc in enumerate(config.services):
        reals = []
        for rs in svc.real_servers:
            reals.append(RealEntry(real_id, svc, rs, rs.mac or macs.get(rs.address)))
            real_id += 1
        weights = svc.scheduling_weights()
        usable = [w if r.mac else 0 for w, r in zip(weights, reals)]
        sequence = tuple(reals[i].real_id for i in wrr_sequence(usable))
        services.append(ServiceEntry(svc_id, svc, offset, sequence, tuple(reals)))
        offset += wrr_length(weights)
    return Tables(services=tuple(services), vips=tuple(config.vips))
