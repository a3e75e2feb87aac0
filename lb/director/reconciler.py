"""Keeps the maps in step with the config and the neighbour table (and reloads)."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Callable

from lb import abi, frames
from lb.director import (announce as announce_mod, arp, config as config_mod, edits,
                         health as health_mod, instances, layout as layout_mod, monitor,
                         netif, status)
from lb.director.dataplane import program_clock_ns
from lb.director.config import Config
from lb.director.journal import say
from lb.errors import UserError

PROBE_EVERY_S = 5.0
ARP_REFRESH_S = 0.9   # who-has for every real server with a MAC from the neighbour table


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
        self._last_arp = 0.0
        self._arp_sock: socket.socket | None = None
        self.link_gone_since: float | None = None   # time.monotonic() it was deleted
        self.link_changes = 0
        self.announce_pending = False               # VIPs to announce once the link is up
        # Called with (ids, layout) after every write (lb/director/kept.py records them).
        self.after_program: Callable | None = None
        # [announce]: set by start_announcing() once the program is attached.
        self.announcer: announce_mod.Announcer | None = None
        # [director] vrrp: the role keepalived gave us last (`dr-lb vrrp STATE`), kept in
        # /run so that a restarted instance starts in it; without vrrp, always MASTER.
        self.vrrp_state = instances.read_vrrp_state(interface.name) \
            if config.director.vrrp else "master"

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
        # What the real servers said themselves (answers to ask_macs, gratuitous ARP)
        # wins over the kernel's entry, which the kernel may keep for a while longer.
        for addr, mac in self.heard_macs().items():
            if netif.usable_mac(table.get(addr)) != mac:
                try:
                    netif.set_neighbour(self.interface.index, addr, mac)
                except Exception:
                    pass
                table[addr] = (netif.NUD_REACHABLE, mac)
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
        if probe_missing and now - self._last_arp > ARP_REFRESH_S:
            self._last_arp = now
            self.ask_macs(sorted(set(self.dynamic_addresses) - set(missing)))
        if macs == self.macs:
            return False
        self.macs = macs
        self.program()
        return True

    def heard_macs(self) -> dict[str, str]:
        """Sender MACs of the ARP frames heard since the last call from the real servers
        whose MAC comes from the neighbour table (read from a packet socket)."""
        wanted = set(self.dynamic_addresses)
        if not wanted:
            return {}
        if self._arp_sock is None:
            try:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                     socket.htons(frames.ETH_P_ARP))
                sock.bind((self.interface.name, 0))
                sock.setblocking(False)
            except OSError:
                return {}
            self._arp_sock = sock
        heard = {}
        try:
            while True:
                sender = frames.parse_arp_sender(self._arp_sock.recv(128))
                if sender and sender[0] in wanted:
                    heard[sender[0]] = sender[1]
        except BlockingIOError:
            pass
        except OSError:   # the interface went away: a new socket next time
            self.close_arp()
        return heard

    def close_arp(self) -> None:
        if self._arp_sock is not None:
            self._arp_sock.close()
            self._arp_sock = None

    def ask_macs(self, addresses: list[str]) -> None:
        """Broadcast who-has for each address. The director's kernel never talks to the
        real servers (the XDP program does), so its entries would never be confirmed and
        a server whose MAC changed (a new NIC, a failover) would keep getting frames at
        its old one for good. The answers, and any gratuitous ARP, update the kernel's
        entries (the XDP program passes ARP that is not a request for a VIP), and the
        next refresh reads them: a new MAC is in use within ARP_REFRESH_S + one refresh."""
        if not addresses:
            return
        iface = self.interface
        try:
            frames.send(iface.name, frames.ETH_P_ARP,
                        [frames.arp_request(iface.mac, arp.source_for(iface, a), a)
                         for a in addresses])
        except OSError:
            pass   # the interface is down or gone: the link watch reports it

    def resolve_initial(self, wait_s: float = 3.5) -> None:
        self.refresh_neighbours()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(
                not self.macs.get(a) for a in self.dynamic_addresses):
            time.sleep(0.1)
            self.refresh_neighbours(probe_missing=False)

    # ---- the interface going and coming back (lb/director/linkwatch.py) ---------------
    def link_lost(self, at: float) -> None:
        self.link_gone_since = at
        self.link_changes += 1
        if self.health:
            self.health.set_interface(None)

    def link_back(self, iface: netif.Interface, xdp_mode: str) -> None:
        """A new interface of the same name, with the program attached: its MAC is the
        source of every frame from now on, and its neighbours are asked again."""
        with self.lock:
            self.interface, self.xdp_mode = iface, xdp_mode
            self.link_gone_since = None
            self.link_changes += 1
        self.close_arp()
        self.program()
        if self.health:
            self.health.set_interface(iface)
        self._last_probe = 0.0
        self.refresh_neighbours()

    def link_status(self) -> dict:
        gone = self.link_gone_since
        return {"state": "gone" if gone is not None else "up",
                "gone_for_s": round(time.monotonic() - gone, 1) if gone is not None else 0,
                "ifindex": self.interface.index, "mac": self.interface.mac,
                "changes": self.link_changes}

    @property
    def answers_arp(self) -> bool:
        return not self.config.director.vrrp or self.vrrp_state == "master"

    def program(self) -> None:
        with self.lock:
            self.layout = layout_mod.build(self.config, self.macs, self.interface.mac,
                                           self.ids, self.layout,
                                           health=self.health.states() if self.health else {},
                                           answer_arp=self.answers_arp)
            self.dp.write(self.layout)
            if self.after_program:
                self.after_program(self.ids, self.layout)
            usable = self.layout.usable_vips
        if self.announcer:
            self.announcer.update(usable, "real servers changed")

    def start_announcing(self, log=say) -> None:
        """[announce]: announce the usable VIPs from now on (the program is attached)."""
        if self.config.announce is None:
            return
        self.announcer = announce_mod.Announcer(
            self.config.announce, log,
            owner=f"dr-lb on {self.interface.name} from {self.path}")
        with self.lock:
            usable = self.layout.usable_vips
        self.announcer.update(usable, "attached")

    def announce_again(self) -> None:
        """Every round of the daemon's loop: retry a reload BIRD did not take."""
        if self.announcer and self.announcer.announced is None:
            with self.lock:
                usable = self.layout.usable_vips
            self.announcer.update(usable, "retried")

    def stop_announcing(self) -> bool:
        """Withdraw every VIP (down, SIGTERM); True if something had been announced."""
        if not self.announcer:
            return False
        had = bool(self.announcer.announced)
        self.announcer.withdraw_all("stopping")
        return had

    def follow_vrrp_file(self) -> None:
        """[director] vrrp: take up a state that `dr-lb vrrp` wrote to /run but could not
        tell us (keepalived may end a notify script as it stops)."""
        if self.config.director.vrrp:
            state = instances.read_vrrp_state(self.interface.name)
            if state != self.vrrp_state:
                self.set_vrrp(state)

    def set_vrrp(self, state: str) -> dict:
        """keepalived's notify (`dr-lb vrrp STATE`): only the MASTER answers ARP for the
        VIPs, and it sends gratuitous ARP for them at once."""
        if not self.config.director.vrrp:
            return {"ok": False, "problems": [
                "[director] vrrp is not set in the running config; add vrrp = true and "
                "reload to let keepalived decide who answers ARP"]}
        before, self.vrrp_state = self.vrrp_state, state
        self.program()
        if state == "master":
            arp.announce(self.interface.name, self.interface.mac, list(self.config.vips))
            message = (f"VRRP {state} (was {before}): answering ARP for "
                       f"{', '.join(self.config.vips)}; gratuitous ARP sent")
        else:
            message = f"VRRP {state} (was {before}): not answering ARP for the VIPs"
        say(f"dr-lb: {message}")
        return {"ok": True, "message": message}

    def start_health(self, log=say) -> None:
        """Start checking the real servers' health (after the program is attached: it
        hides the DR-path probes' answers from the kernel)."""
        self.health = health_mod.HealthChecker(self.interface, self.mac_of, self.program,
                                               log)
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
        if self.announcer:
            self.announcer.settings_changed(new.announce)
            if new.announce is None:
                self.announcer = None
        elif new.announce is not None and old.announce is None:
            self.start_announcing()
        self.program()
        self.refresh_neighbours()
        added = [v for v in new.vips if v not in old.vips]
        if added and self.answers_arp:
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
        data = status.collect(config, layout, self.dp, self.interface.name, self.xdp_mode,
                              counts, age, self.monitor.rates(),
                              self.health.report(config) if self.health else None)
        data["link"] = self.link_status()
        return data

    def connections(self, vip: str | None = None, port: int | None = None,
                    real: str | None = None, limit: int = 1000) -> dict:
        """The live connections as `ipvsadm -Lnc` lists them, sorted by virtual address,
        destination and source; at most `limit`, and how many more there are."""
        import numpy as np
        with self.lock:
            layout = self.layout
        keys, values = self.dp.connections()
        timeouts = self.dp.live_timeouts()
        idle = program_clock_ns() - values["last_seen_ns"].astype(np.int64)
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
                "conns": self.connections, "vrrp": self.set_vrrp}

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
