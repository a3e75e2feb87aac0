"""`dr-lb up`: the daemon around the data plane (signals, control socket, the loop)."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from lb.director import arp, instances, journal, netif
from lb.director.config import Config
from lb.director.reconciler import Reconciler
from lb.errors import UserError

NEIGHBOUR_REFRESH_S = 0.5


def run(config: Config, config_path: str, replace: bool = False) -> None:
    from lb.director.dataplane import Dataplane   # bcc: keep `check` and `status` free of it
    journal.lines()

    name = config.director.interface
    iface = netif.interface(name)
    if iface is None:
        raise UserError(f"interface {name} does not exist", exit_code=2)
    if iface.xdp_mode and not replace:
        owner = instances.find(name)
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
        for line in instances.take_over(name):
            print(f"dr-lb: {line}", flush=True)
    server = director = None
    try:
        director = Reconciler(config, dp, iface, config_path, Path(config_path).read_text())
        director.resolve_initial()
        director.program()
        director.xdp_mode = dp.attach(iface.index, config.director.xdp_mode)
        director.start_monitor()
        director.start_health()
        server = instances.ControlServer(name, director.handlers())
        instances.write_state(name, {"pid": os.getpid(), "interface": name,
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
                    result = director.reload()
                    for line in result.get("problems", [result.get("message", "")]):
                        print(f"dr-lb: {'' if result['ok'] else 'reload refused: '}{line}",
                              flush=True)
                director.refresh_neighbours()
            except Exception as e:   # keep balancing; the next round tries again
                print(f"dr-lb: warning: {type(e).__name__}: {e}", flush=True)
    finally:
        if server:
            server.close()
        if director and director.health:
            director.health.stop()
        if director and director.monitor:
            director.monitor.stop()
        try:
            dp.close()
        finally:
            instances.remove_state(name)
    print(f"dr-lb: detached from {name}", flush=True)
