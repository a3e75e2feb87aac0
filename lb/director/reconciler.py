"""Keeps the maps in step with the config and the neighbour table (and reloads)."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Callable

from lb import abi
from lb.director import (arp, config as config_mod, edits, health as health_mod,
                         layout as layout_mod, monitor, netif, status)
from lb.director.dataplane import monotonic_coarse_ns
from lb.director.config import Config
from lb.errors import UserError

PROBE_EVERY_S = 5.0


class Reconciler:
    """The desired layout of the maps, rebuilt and written whenever its inputs change."""

    def __init__(self, config: Config, dataplane, interface: netif.Interface, path: str,
                 config_text: str = ""):
        self.config = config
        self.path = path
        self.config_text = config_text    # the running config: the file plus unsaved edits
        self.edit_lock = threading.Lock()
        self.dp = dataplane
        self.interface = interface
        self.macs: dict[str, str | None] = {}
        self.ids = layout_mod.Ids()
        self.layout: layout_mod.Layout | None = None
        self.lock = threading.Lock()
        self.xdp_mode = ""
        self.monitor: monitor.Monitor | None = None
        self.health: health_mod.HealthChecker | None = None
        self._last_probe = 0.0
        # Called with (ids, layout) after every write (lb/director/kept.py records them).
        self.after_program: Callable | None = None

    @property
    def dynamic_addresses(self) -> list[str]:
        """Real servers (and sorry servers) whose MAC comes from the neighbour table."""
        return sorted({rs.address for s in self.config.services for rs in s.real_servers
                       if not rs.mac} | {s.sorry_server for s in self.config.services
                                         if s.sorry_server})

    def mac_of(self, address: str) -> str | None:
        """A real server's MAC as the maps have it: the config's, else the neighbour's."""
        config = self.config    # not under the lock: program() holds it while it writes
        for s in config.services:
            for rs in s.real_servers:
                if rs.address == address and rs.mac:
                    return rs.mac
        return self.macs.get(address)

    def refresh_neighbours(self, probe_missing: bool = True) -> bool:
        """Read the neighbour table; reprogram the maps if a MAC changed."""
        table = netif.neighbours(self.interface.index)
        macs = dict(self.macs)
        missing = []
        for addr in self.dynamic_addresses:
            entry = table.get(addr)
            mac = netif.usable_mac(entry)
            if mac:
                macs[addr] = mac
            elif entry is not None and entry[0] & netif.NUD_FAILED:
                macs[addr] = None        # unreachable: stop sending it new connections
                missing.append(addr)
            else:
                missing.append(addr)     # gone from the table: keep the last MAC, ask again
        now = time.monotonic()
        if missing and probe_missing and now - self._last_probe > PROBE_EVERY_S:
            netif.probe(missing, self.interface.name)
            self._last_probe = now
        if macs == self.macs:
            return False
        self.macs = macs
        self.program()
        return True

    def resolve_initial(self, wait_s: float = 3.5) -> None:
        self.refresh_neighbours()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(
                not self.macs.get(a) for a in self.dynamic_addresses):
            time.sleep(0.1)
            self.refresh_neighbours(probe_missing=False)

    def program(self) -> None:
        with self.lock:
            self.layout = layout_mod.build(self.config, self.macs, self.interface.mac,
                                           self.ids, self.layout,
                                           health=self.health.states() if self.health else {})
            self.dp.write(self.layout)
            if self.after_program:
                self.after_program(self.ids, self.layout)

    def start_health(self, log=print) -> None:
        """Start checking the real servers' health (after the program is attached: it
        hides the DR-path probes' answers from the kernel)."""
        self.health = health_mod.HealthChecker(self.interface, self.mac_of, self.program,
                                               lambda line: log(line, flush=True))
        self.health.update(self.config)
        self.health.start()

    def reload(self) -> dict:
        """Load the changed config file without dropping connections, as `ipvsadm
        -e/-a/-d` would change a live table. A bad config changes nothing."""
        with self.edit_lock:
            try:
                text = Path(self.path).read_text()
            except (OSError, UnicodeDecodeError) as e:
                return {"ok": False, "problems": [f"{self.path}: cannot read: {e}"]}
            new, problems = self._check(text)
            if problems:
                return {"ok": False, "problems": problems}
            return self._apply(new, text, f"reloaded {self.path}")

    def change(self, edit: Callable[[str], str], save: bool, what: str) -> dict:
        """Apply `edit` (config text -> config text) to the running config and, with
        `save`, to the file in place. Changes are serialised, so two at the same moment
        never lose one another; a change that would give a bad config changes nothing."""
        with self.edit_lock:
            try:
                running = edit(self.config_text)
                saved = edit(Path(self.path).read_text()) if save else None
            except UserError as e:
                return {"ok": False, "problems": [str(e)]}
            except (OSError, UnicodeDecodeError) as e:
                return {"ok": False, "problems": [f"{self.path}: cannot read: {e}"]}
            new, problems = self._check(running)
            if saved is not None and not problems:
                problems = self._check(saved)[1]
            if problems:
                return {"ok": False, "problems": problems}
            if saved is not None:
                edits.write_in_place(self.path, saved)
                what += f"; saved in {self.path}"
            return self._apply(new, running, what)

    def _check(self, text: str) -> tuple[Config | None, list[str]]:
        try:
            new = config_mod.parse(text, source=Path(self.path).name)
        except config_mod.ConfigError as e:
            return None, e.problems
        problems = netif.config_problems(new)
        fixed = [k for k in ("interface", "xdp_mode", "conn_table_size")
                 if getattr(new.director, k) != getattr(self.config.director, k)]
        if fixed:
            problems.append(f"{new.source}: [director] {', '.join(fixed)} changed; "
                            "restart dr-lb for that")
        why_not = self.ids.room_for(new)
        if why_not:
            problems.append(f"{new.source}: {why_not}")
        return new, problems

    def _apply(self, new: Config, text: str, what: str) -> dict:
        old = self.config
        with self.lock:
            self.config, self.config_text = new, text
        if self.health:
            self.health.update(new)
        self.program()
        self.refresh_neighbours()
        added = [v for v in new.vips if v not in old.vips]
        if added:
            arp.announce(self.interface.name, self.interface.mac, added)
        return {"ok": True, "message": f"{what}: {len(new.services)} service(s)"
                + (f"; announced {', '.join(added)}" if added else "")}

    def start_monitor(self) -> None:
        def ids():
            with self.lock:
                return ([s.svc_id for s in self.layout.services],
                        [r.real_id for r in self.layout.reals])
        self.monitor = monitor.Monitor(self.dp, ids).start()

    def status(self) -> dict:
        with self.lock:   # a consistent pair; the maps are read without holding up updates
            config, layout = self.config, self.layout
        counts, age = self.monitor.conn_counts()
        return status.collect(config, layout, self.dp, self.interface.name, self.xdp_mode,
                              counts, age, self.monitor.rates(),
                              self.health.report(config) if self.health else None)

    def connections(self, vip: str | None = None, port: int | None = None,
                    real: str | None = None, limit: int = 1000) -> dict:
        """The live connections as `ipvsadm -Lnc` lists them, sorted by virtual address,
        destination and source; at most `limit`, and how many more there are."""
        import numpy as np
        with self.lock:
            layout = self.layout
        keys, values = self.dp.connections()
        timeouts = self.dp.live_timeouts()
        idle = monotonic_coarse_ns() - values["last_seen_ns"].astype(np.int64)
        state = values["state"] & (abi.CONN_STATE_SLOTS - 1)
        left = timeouts[state] - idle
        wanted = left >= 0
        if vip:
            wanted &= keys["daddr"] == abi.ip_be32(vip)
        if port:
            wanted &= keys["dport"] == abi.port_be16(port)
        servers = {r.real_id: r.server for r in layout.reals + list(layout.removed_reals)}
        if real:
            wanted &= np.isin(values["real_id"], [i for i, rs in servers.items()
                                                   if rs.address == real])
        sel = np.flatnonzero(wanted)
        order = sel[np.lexsort((keys["sport"][sel].byteswap(), keys["saddr"][sel].byteswap(),
                                values["real_id"][sel], keys["dport"][sel].byteswap(),
                                keys["daddr"][sel].byteswap()))]
        out = []
        for i in order[:limit]:
            k, v = keys[i], values[i]
            rs = servers.get(int(v["real_id"]))
            out.append({
                "protocol": {6: "tcp", 17: "udp"}.get(int(k["proto"]), str(k["proto"])),
                "expire_s": int(-(-int(left[i]) // 1_000_000_000)),
                "state": abi.CONN_STATES.get(int(state[i]), "none").upper(),
                "source": f"{abi.be32_ip(int(k['saddr']))}:{socket.ntohs(int(k['sport']))}",
                "virtual": f"{abi.be32_ip(int(k['daddr']))}:{socket.ntohs(int(k['dport']))}",
                "destination": f"{rs.address}:{rs.port}" if rs else "?",
            })
        return {"connections": out, "more": max(0, len(order) - limit)}

    # ---- the control socket's commands -------------------------------------------------
    def handlers(self) -> dict:
        return {"status": self.status, "reload": self.reload, "weight": self.set_weight,
                "drain": self.drain, "undrain": self.undrain, "zero": self.zero,
                "conns": self.connections}

    def set_weight(self, service: dict, rip: str, weight: int, save: bool = True) -> dict:
        spec = edits.ServiceSpec(**service)
        return self.change(lambda text: edits.set_weight(text, spec, rip, weight), save,
                           f"weight of {rip} in {spec} set to {weight}")

    def drain(self, rip: str, service: dict | None = None, save: bool = True) -> dict:
        spec = edits.ServiceSpec(**service) if service else None
        return self.change(lambda text: edits.set_drained(text, rip, spec, True), save,
                           f"drained {rip}" + (f" in {spec}" if spec else ""))

    def undrain(self, rip: str, service: dict | None = None, save: bool = True) -> dict:
        spec = edits.ServiceSpec(**service) if service else None
        return self.change(lambda text: edits.set_drained(text, rip, spec, False), save,
                           f"undrained {rip}" + (f" in {spec}" if spec else ""))

    def zero(self, service: dict | None = None) -> dict:
        """`ipvsadm -Z`: packet, byte and connection counters to 0; connections stay."""
        spec = edits.ServiceSpec(**service) if service else None
        with self.lock:
            chosen = [s for s in self.layout.services if spec is None or
                      spec.matches(s.service.vip, s.service.port, s.service.protocol)]
        if not chosen:
            return {"ok": False, "problems": [f"no service {spec} is running"]}
        self.dp.zero_stats([s.svc_id for s in chosen],
                           [r.real_id for s in chosen for r in s.reals + (s.sorry,) if r])
        self.monitor.reset()
        return {"ok": True, "message": "zeroed the counters of "
                + ", ".join(s.service.name for s in chosen)}
