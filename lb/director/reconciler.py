"""Keeps the maps in step with the config and the neighbour table (and reloads)."""
from __future__ import annotations

import threading
import time

from lb.director import arp, config as config_mod, layout as layout_mod, netif, status
from lb.director.config import Config

PROBE_EVERY_S = 5.0


class Reconciler:
    """The desired layout of the maps, rebuilt and written whenever its inputs change."""

    def __init__(self, config: Config, dataplane, interface: netif.Interface):
        self.config = config
        self.dp = dataplane
        self.interface = interface
        self.macs: dict[str, str | None] = {}
        self.ids = layout_mod.Ids()
        self.layout: layout_mod.Layout | None = None
        self.lock = threading.Lock()
        self.xdp_mode = ""
        self._last_probe = 0.0

    @property
    def dynamic_addresses(self) -> list[str]:
        """Real servers whose MAC comes from the neighbour table."""
        return sorted({rs.address for s in self.config.services for rs in s.real_servers
                       if not rs.mac})

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
                                           self.ids, self.layout)
            self.dp.write(self.layout)

    def reload(self, path: str) -> dict:
        """Load a changed config without dropping connections, as `ipvsadm -e/-a/-d`
        would change a live table. A bad config changes nothing."""
        try:
            new = config_mod.load(path)
            problems = netif.config_problems(new)
        except config_mod.ConfigError as e:
            problems = e.problems
        if problems:
            return {"ok": False, "problems": problems}
        old = self.config
        fixed = [k for k in ("interface", "xdp_mode", "conn_table_size")
                 if getattr(new.director, k) != getattr(old.director, k)]
        if fixed:
            return {"ok": False, "problems": [
                f"{new.source}: [director] {', '.join(fixed)} changed; restart dr-lb for that"]}
        why_not = self.ids.room_for(new)
        if why_not:
            return {"ok": False, "problems": [f"{new.source}: {why_not}"]}
        with self.lock:
            self.config = new
        self.program()
        self.refresh_neighbours()
        added = [v for v in new.vips if v not in old.vips]
        if added:
            arp.announce(self.interface.name, self.interface.mac, added)
        return {"ok": True, "message": f"reloaded {path}: {len(new.services)} service(s)"
                + (f"; announced {', '.join(added)}" if added else "")}

    def status(self) -> dict:
        with self.lock:   # a consistent pair; the maps are read without holding up updates
            config, layout = self.config, self.layout
        return status.collect(config, layout, self.dp, self.interface.name, self.xdp_mode)
