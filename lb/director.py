"""`dr-lb up` and `dr-lb down`: the director's life cycle around the data plane."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from lb import abi, arp, control, libbpf, netif, status, tables as tables_mod
from lb import config as config_mod
from lb.config import Config
from lb.errors import UserError

NEIGHBOUR_REFRESH_S = 0.5
PROBE_EVERY_S = 5.0


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("this needs root: run it with sudo")


class Director:
    """Keeps the maps in step with the config and the neighbour table."""

    def __init__(self, config: Config, dataplane, interface: netif.Interface):
        self.config = config
        self.dp = dataplane
        self.interface = interface
        self.macs: dict[str, str | None] = {}
        self.ids = tables_mod.Ids()
        self.tables = tables_mod.build(config, self.macs, self.ids)
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
            self.tables = tables_mod.build(self.config, self.macs, self.ids)
            self.dp.program(self.config, self.tables, self.interface.mac)

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
            config, tables = self.config, self.tables
        return status.collect(config, tables, self.dp, self.interface.name, self.xdp_mode)


def run(config: Config, config_path: str, replace: bool = False) -> None:
    from lb.dataplane import Dataplane   # imports bcc; keep `check` and `status` free of it

    name = config.director.interface
    iface = netif.interface(name)
    if iface is None:
        raise UserError(f"interface {name} does not exist", exit_code=2)
    if iface.xdp_mode and not replace:
        owner = next((s for s in control.instances() if s.get("interface") == name), None)
        who = f"dr-lb (pid {owner['pid']})" if owner else f"program id {iface.xdp_prog_id}"
        raise UserError(f"an XDP program is already attached to {name} ({who}, "
                        f"{iface.xdp_mode}); stop it with `sudo dr-lb down --interface {name}` "
                        "or take over with `dr-lb up --replace`")

    stop, reload_asked, wake = threading.Event(), threading.Event(), threading.Event()

    def on_signal(signum, frame):
        (reload_asked if signum == signal.SIGHUP else stop).set()
        wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    dp = Dataplane(config.director.conn_table_size)   # compiled before anything is touched
    if replace:
        for line in take_over(name):
            print(f"dr-lb: {line}", flush=True)
    server = None
    try:
        director = Director(config, dp, iface)
        director.resolve_initial()
        director.program()
        director.xdp_mode = dp.attach(iface.index, config.director.xdp_mode)
        server = control.ControlServer(name, {
            "status": director.status,
            "reload": lambda: director.reload(config_path),
        })
        control.write_state(name, {"pid": os.getpid(), "interface": name,
                                   "ifindex": iface.index, "xdp_mode": director.xdp_mode,
                                   "config": os.path.abspath(config_path)})
        arp.announce(name, iface.mac, list(config.vips))
        unresolved = [a for a in director.dynamic_addresses if not director.macs.get(a)]
        if iface.kind == "veth" and director.xdp_mode == "native":
            print(f"dr-lb: note: {name} is a veth: native XDP_TX only works when its peer has "
                  "an XDP program too (an XDP_PASS one will do); otherwise use "
                  "xdp_mode = \"generic\"", flush=True)
        print(f"dr-lb: ready on {name} (xdp {director.xdp_mode}): "
              f"{len(config.services)} service(s), VIPs {', '.join(config.vips)}"
              + (f"; MAC not yet known for {', '.join(unresolved)}" if unresolved else ""),
              flush=True)
        while not stop.is_set():
            wake.wait(NEIGHBOUR_REFRESH_S)
            wake.clear()
            if stop.is_set():
                break
            try:
                if reload_asked.is_set():
                    reload_asked.clear()
                    result = director.reload(config_path)
                    for line in result.get("problems", [result.get("message", "")]):
                        print(f"dr-lb: {'' if result['ok'] else 'reload refused: '}{line}",
                              flush=True)
                director.refresh_neighbours()
            except Exception as e:   # keep balancing; the next round tries again
                print(f"dr-lb: warning: {type(e).__name__}: {e}", flush=True)
    finally:
        if server:
            server.close()
        try:
            dp.close()
        finally:
            control.remove_state(name)
    print(f"dr-lb: detached from {name}", flush=True)


def detach_any(iface: netif.Interface) -> None:
    """Remove whatever XDP program is on the interface (a leftover, or --replace)."""
    modes = ["native", "generic"] if iface.xdp_mode == "multi" else [iface.xdp_mode]
    for mode in modes:
        libbpf.xdp_detach(iface.index, mode)


def stop_instance(state: dict) -> str | None:
    """SIGTERM a running `up` recorded in `state` and wait for it; what was done."""
    pid = state["pid"]
    if not _is_dr_lb(pid):
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        raise UserError(f"dr-lb (pid {pid}) did not stop within 10 s")
    return f"stopped dr-lb (pid {pid}) on {state['interface']}"


def take_over(interface: str) -> list[str]:
    """--replace: stop the instance that owns the interface, clear what is left."""
    done = []
    state = next((s for s in control.instances() if s["interface"] == interface), None)
    if state:
        stopped = stop_instance(state)
        done += [stopped] if stopped else []
        control.remove_state(interface)
    iface = netif.interface(interface)
    if iface and iface.xdp_mode:
        detach_any(iface)
        done.append(f"removed the XDP program that was on {interface} (id "
                    f"{iface.xdp_prog_id}, {iface.xdp_mode})")
    return done


def down(interface: str | None) -> list[str]:
    running = control.instances()
    if interface is None:
        if len(running) == 1:
            interface = running[0]["interface"]
        elif len(running) > 1:
            raise UserError("several instances run here ("
                            + ", ".join(s["interface"] for s in running)
                            + "); choose one with --interface")
        else:
            raise UserError("dr-lb is not running in this network namespace; to remove a "
                            "leftover XDP program give --interface")
    done = []
    state = next((s for s in running if s["interface"] == interface), None)
    if state:
        stopped = stop_instance(state)
        done += [stopped] if stopped else []
    iface = netif.interface(interface)
    if iface is None:
        raise UserError(f"interface {interface} does not exist")
    if iface.xdp_mode:
        owner = libbpf.prog_name(iface.xdp_prog_id)
        if owner != abi.PROGRAM_NAME:
            raise UserError(f"the XDP program on {interface} (id {iface.xdp_prog_id}, named "
                            f"{owner!r}) is not dr-lb's; leaving it. To remove it anyway: "
                            f"`ip link set dev {interface} xdp off`")
        detach_any(iface)
        done.append(f"removed a leftover XDP program (id {iface.xdp_prog_id}, "
                    f"{iface.xdp_mode}) from {interface}")
    if state:
        control.remove_state(interface)
    return done or [f"nothing to do: no dr-lb and no XDP program on {interface}"]


def _is_dr_lb(pid: int) -> bool:
    """The pid runs `dr-lb up` (and not some process that got a recycled pid)."""
    if not _alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"up" in argv and any(a.endswith(b"dr-lb") or a == b"lb" for a in argv)


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting for its parent has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
