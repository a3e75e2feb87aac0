"""`dr-lb up`: the daemon around the data plane (signals, control socket, the loop)."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from lb.director import announce, arp, instances, journal, netif
from lb.director.journal import say
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

    leftover = announce.announced_in(config.announce.snippet) if config.announce else []
    if leftover:
        # A dr-lb that was killed left its VIPs announced, and its program (if still
        # attached) forwarding with its last maps. Withdraw them before compiling and
        # taking over, so that the router has moved the flows elsewhere meanwhile.
        early = announce.Announcer(config.announce, say)
        early.announced = leftover
        early.withdraw_all("left announced by a dr-lb that did not stop cleanly")
    dp = Dataplane(config.director.conn_table_size)   # compiled before anything is touched
    if replace:
        for line in instances.take_over(name):
            say(f"dr-lb: {line}")
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
        if director.answers_arp:
            arp.announce(name, iface.mac, list(config.vips))
        elif config.director.vrrp:
            say(f"dr-lb: VRRP {director.vrrp_state}: not answering ARP for the VIPs until "
                "keepalived makes this director MASTER (`dr-lb vrrp master`)")
        director.start_announcing()
        unresolved = [a for a in director.dynamic_addresses if not director.macs.get(a)]
        if iface.kind == "veth" and director.xdp_mode == "native":
            say(f"dr-lb: note: {name} is a veth: native XDP_TX only works when its peer has "
                "an XDP program too (an XDP_PASS one will do); otherwise use "
                "xdp_mode = \"generic\"")
        say(f"dr-lb: ready on {name} (xdp {director.xdp_mode}): "
            f"{len(config.services)} service(s), VIPs {', '.join(config.vips)}"
            + (f"; MAC not yet known for {', '.join(unresolved)}" if unresolved else ""))
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
                        say(f"dr-lb: {'' if result['ok'] else 'reload refused: '}{line}")
                director.refresh_neighbours()
                director.follow_vrrp_file()
                director.announce_again()
            except Exception as e:   # keep balancing; the next round tries again
                say(f"dr-lb: warning: {type(e).__name__}: {e}")
    finally:
        # Withdraw first, and keep forwarding for `linger` seconds, so that the router
        # has moved the flows to another director before this one stops taking them.
        if director and director.announcer:
            if director.stop_announcing() and director.config.announce:
                time.sleep(director.config.announce.linger)
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
    say(f"dr-lb: detached from {name}")
