"""Runtime changes written into the config file in place: `weight`, `drain`, `undrain`.

The file is edited with tomlkit, which keeps its comments and layout, and the result is
validated by the same code as `dr-lb check` before anything is written or applied.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from lb.director import config as config_mod
from lb.errors import UserError


@dataclass(frozen=True)
class ServiceSpec:
    """VIP:PORT[/PROTO] as the operator writes it; without a protocol it means every
    service on that VIP and port."""
    vip: str
    port: int
    protocol: str | None = None

    def matches(self, vip: str, port: int, protocol: str) -> bool:
        return (vip, port) == (self.vip, self.port) and self.protocol in (None, protocol)

    def __str__(self) -> str:
        return f"{self.vip}:{self.port}" + (f"/{self.protocol}" if self.protocol else "")


def _services(doc) -> list:
    services = doc.get("service", [])
    return list(services) if isinstance(services, list) else []


def _targets(doc, rip: str, service: ServiceSpec | None) -> list:
    """The [[service.real_server]] tables for `rip`, in the services `service` names (all
    services without it); UserError naming what is unknown."""
    services = [s for s in _services(doc)
                if service is None or service.matches(s.get("vip"), s.get("port"),
                                                       s.get("protocol", "tcp"))]
    if not services:
        known = ", ".join(f"{s.get('vip')}:{s.get('port')}/{s.get('protocol', 'tcp')}"
                          for s in _services(doc))
        raise UserError(f"no service {service} in the config (it has {known or 'none'})",
                        exit_code=2)
    found = [rs for s in services for rs in s.get("real_server", [])
             if rs.get("address") == rip]
    if not found:
        where = f"service {service}" if service else "any service"
        raise UserError(f"{rip} is not a real server of {where} in the config", exit_code=2)
    return found


def set_weight(text: str, service: ServiceSpec, rip: str, weight: int) -> str:
    doc = tomlkit.parse(text)
    for rs in _targets(doc, rip, service):
        rs["weight"] = weight
    return tomlkit.dumps(doc)


def set_drained(text: str, rip: str, service: ServiceSpec | None, drained: bool) -> str:
    doc = tomlkit.parse(text)
    for rs in _targets(doc, rip, service):
        if drained:
            rs["drained"] = True
        elif "drained" in rs:
            del rs["drained"]
    return tomlkit.dumps(doc)


def validated(text: str, source: str) -> config_mod.Config:
    """The config `text` gives, checked as `dr-lb check` checks it (ConfigError)."""
    return config_mod.parse(text, source=source)


def write_in_place(path: str | Path, text: str) -> None:
    """Replace the file atomically, keeping its mode, so a reader never sees half of it."""
    path = Path(path)
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
