"""`dr-lb up`: the daemon around the data plane (signals, control socket, the loop)."""
from __future__ import annotations

import os
import queue
import signal
import threading
import time
from pathlib import Path

from lb.director import announce, arp, instances, journal, netif
from lb.director.journal import say
from lb.director.config import Config
from lb.director.linkwatch import LinkEvent, LinkWatch
from lb.director.reconciler import Reconciler
from lb.errors import UserError

NEIGHBOUR_REFRESH_S = 0.5


EXIT_LINK_LOST = 3   # --exit-on-link-loss: the interface was deleted


def run(config: Config, config_path: str, replace: bool = False,
        exit_on_link_loss: bool = False) -> None:
    from lb.director.dataplane import Dataplane   # bcc: keep `check` and `status` free of it
    journal.lines()

    name = config.director.interface
    iface = netif.interface(name)
    if iface is None:
        raise UserError(f"interface {name} does not exist", exit_code=2)
    # One owner per interface, taken before anything is touched; held until the process
    # ends (the kernel drops it however the process dies).
    lock_fd = None if replace else instances.acquire(name)
    if iface.xdp_mode and not replace:
        owner = instances.live_owner(name)
        who = f"dr-lb (pid {owner})" if owner else f"program id {iface.xdp_prog_id}"
        raise UserError(f"an XDP program is already attached to {name} ({who}, "
                        f"{iface.xdp_mode}); stop it with `sudo dr-lb down --interface {name}` "
                        "or take over with `dr-lb up --replace`")

    stop, reload_asked, wake = threading.Event(), threading.Event(), threading.Event()

    def on_signal(signum, frame):
        (reload_asked if signum == signal.SIGHUP else stop).set()
        wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    link_events: queue.SimpleQueue = queue.SimpleQueue()

    def on_link(event) -> None:
        link_events.put(event)
        wake.set()

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
        lock_fd = instances.acquire(name, wait_s=5)
    server = director = watch = None
    try:
        director = Reconciler(config, dp, iface, config_path, Path(config_path).read_text())
        director.resolve_initial()
        director.program()
        director.xdp_mode = dp.attach(iface.index, config.director.xdp_mode)
        director.start_monitor()
        watch = LinkWatch(name, iface.index, on_link).start()
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
            while not link_events.empty():
                event = link_events.get()
                try:
                    on_link_event(event, director, dp, config_path, exit_on_link_loss)
                except UserError as e:
                    if event.kind == "gone":
                        raise    # --exit-on-link-loss
                    print(f"dr-lb: warning: attaching to the new {name}: {e}", flush=True)
                except Exception as e:   # keep running; the next event tries again
                    print(f"dr-lb: warning: {type(e).__name__}: {e}", flush=True)
            if director.link_gone_since is not None:
                continue   # nothing to refresh on an interface that is not there
            if director.announce_pending:
                director.announce_pending = not announce_vips(director)
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
        if watch:
            watch.stop()
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
            instances.remove_state(name)   # ours: we hold the lock
            if lock_fd is not None:
                os.close(lock_fd)
    say(f"dr-lb: detached from {name}")


def on_link_event(event: LinkEvent, director: Reconciler, dp, config_path: str,
                  exit_on_link_loss: bool) -> None:
    """The interface was deleted (the kernel detached the program with it), or an
    interface of its name appeared: attach to it and carry on with the same tables."""
    name = director.interface.name
    if event.kind == "gone":
        director.link_lost(event.at)
        # Deleted: the kernel took the program with it. Renamed: it is no longer the
        # interface the config names, so it balances nothing more.
        try:
            dp.detach()
        except OSError as e:
            print(f"dr-lb: warning: detaching from index {event.index}: {e}", flush=True)
        print(f"dr-lb: interface {name} is gone (index {event.index} deleted or renamed): "
              "nothing is "
              "balanced " + ("; exiting (--exit-on-link-loss)" if exit_on_link_loss else
                             "until an interface of that name comes back"), flush=True)
        if exit_on_link_loss:
            raise UserError(f"interface {name} was deleted or renamed",
                            exit_code=EXIT_LINK_LOST)
        return
    iface = netif.interface(name)
    if iface is None or iface.index != event.index:
        return   # gone again already; its own event follows
    if not iface.ethernet:
        print(f"dr-lb: warning: the new {name} has no Ethernet address; not attaching",
              flush=True)
        return
    try:
        mode = dp.attach(iface.index, director.config.director.xdp_mode)
    except UserError as e:
        print(f"dr-lb: warning: the new {name} (index {iface.index}): {e}", flush=True)
        return
    director.link_back(iface, mode)
    # A new interface is often still down: the main loop announces once it is up.
    director.announce_pending = not announce_vips(director)
    instances.write_state(name, {"pid": os.getpid(), "interface": name,
                                 "ifindex": iface.index, "xdp_mode": mode,
                                 "config": os.path.abspath(config_path)})
    print(f"dr-lb: interface {name} is back (index {iface.index}, MAC {iface.mac}): attached "
          f"again (xdp {mode}) {time.monotonic() - event.at:.2f} s after it appeared; "
          "connections kept", flush=True)


def announce_vips(director: Reconciler) -> bool:
    """Gratuitous ARP for every VIP from the interface's MAC; False if it cannot be
    sent yet (the interface is down). A VRRP backup announces nothing."""
    if not director.answers_arp:
        return True
    try:
        arp.announce(director.interface.name, director.interface.mac,
                     list(director.config.vips))
    except OSError:
        return False
    return True
