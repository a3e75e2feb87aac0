"""`dr-lb up`: the daemon around the data plane (signals, control socket, the loop)."""
from __future__ import annotations

import os
import queue
import signal
import threading
import time
from pathlib import Path

from lb.director import announce, arp, instances, journal, kept, netif, sdnotify
from lb.director.config import Config, table_slots
from lb.director.linkwatch import LinkEvent, LinkWatch
from lb.director.reconciler import Reconciler
from lb.errors import UserError

NEIGHBOUR_REFRESH_S = 0.5
EXIT_LINK_LOST = 3   # --exit-on-link-loss: the interface was deleted


def say(line: str) -> None:
    journal.say(f"dr-lb: {line}")


def run(config: Config, config_path: str, replace: bool = False,
        exit_on_link_loss: bool = False) -> None:
    from lb.director.dataplane import (Dataplane, headers_problem,   # bcc: not for
                                        import_bcc)                  # `check`
    journal.lines()

    started = time.monotonic()
    name = config.director.interface
    iface = netif.interface(name)
    if iface is None:
        raise UserError(f"interface {name} does not exist", exit_code=2)
    # One owner per interface: its lock is taken before anything is touched and held
    # until the process ends (the kernel drops it however the process dies). --replace
    # takes it once the program is in place and the old owner has stopped.
    lock_fd = None if replace else instances.acquire(name)
    if iface.xdp_mode and not replace:
        who = f"program id {iface.xdp_prog_id}"
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
        early = announce.Announcer(config.announce, journal.say)
        early.announced = leftover
        early.withdraw_all("left announced by a dr-lb that did not stop cleanly")
    metrics = None
    if config.metrics and not replace:   # a predecessor holds the port until it stops
        from lb.director import metrics as metrics_mod
        metrics = metrics_mod.serve(config.metrics.listen)

    import_bcc()                     # missing: one line, before anything is touched
    slots = table_slots(config.director.conn_table_size)
    problem = headers_problem()      # before the kept state is touched (a bpffs mounted)
    if problem:
        raise UserError(problem)
    found = kept.prepare(name, slots)
    for line in found.warnings + [found.notice()]:
        if line:
            say(line)
    dp = Dataplane(config.director.conn_table_size, pin_dir=found.pin_dir,
                   hash_seed=found.hash_seed)
    recorder = kept.Recorder(name, slots, dp.hash_seed)
    iface = netif.interface(name)            # what is attached now, a few seconds later
    if iface is None:
        dp.close()
        raise UserError(f"interface {name} disappeared while the program was compiled",
                        exit_code=2)
    old_program = None
    if iface.xdp_mode == "multi":            # both modes in use: cannot swap in one step
        instances.detach_any(iface)
    elif iface.xdp_mode:
        old_program = (iface.xdp_prog_id, iface.xdp_mode)
    server = director = watch = None
    handed_over = False
    try:
        director = Reconciler(config, dp, iface, config_path, Path(config_path).read_text())
        if found.ids is not None:
            director.ids = found.ids
            director.macs.update(found.macs)
            if old_program is None:          # nothing else places connections right now
                kept.compact(director.ids, config, dp.referenced_ids())
        director.after_program = recorder.save
        director.resolve_initial()
        director.program()
        director.xdp_mode = dp.attach(iface.index, config.director.xdp_mode,
                                      replace=old_program)
        if old_program:
            say(f"replaced the XDP program on {name} (id {old_program[0]}, "
                f"{old_program[1]}) in one step")
        if replace:
            for line in instances.stop_predecessor(name):
                say(line)
            lock_fd = instances.acquire(name, wait_s=instances.STOP_WAIT_S)
        if config.metrics and metrics is None:
            from lb.director import metrics as metrics_mod
            metrics = metrics_mod.serve(config.metrics.listen, must=False)
        director.start_monitor()
        watch = LinkWatch(name, iface.index, on_link).start()
        director.start_health()
        recorder.save(director.ids, director.layout)   # ours now, even if nothing changed
        handlers = director.handlers()
        reload_counts = {"reloads": 0, "errors": 0}

        def counted_reload() -> dict:
            sdnotify.reloading()
            try:
                result = director.reload()
            except Exception:
                reload_counts["errors"] += 1
                raise
            finally:
                sdnotify.ready(f"balancing on {name}")
            reload_counts["reloads" if result.get("ok") else "errors"] += 1
            return result

        handlers["reload"] = counted_reload
        if metrics is not None:
            metrics.bind(director, reload_counts)
        server = instances.ControlServer(name, handlers)
        instances.write_state(name, {"pid": os.getpid(), "interface": name,
                                     "ifindex": iface.index, "xdp_mode": director.xdp_mode,
                                     "config": os.path.abspath(config_path),
                                     "kept": str(found.pin_dir)})
        if director.answers_arp:
            arp.announce(name, iface.mac, list(config.vips))
        elif config.director.vrrp:
            say(f"VRRP {director.vrrp_state}: not answering ARP for the VIPs until "
                "keepalived makes this director MASTER (`dr-lb vrrp master`)")
        director.start_announcing()
        unresolved = [a for a in director.dynamic_addresses if not director.macs.get(a)]
        if iface.kind == "veth" and director.xdp_mode == "native":
            say(f"note: {name} is a veth: native XDP_TX only works when its peer has "
                "an XDP program too (an XDP_PASS one will do); otherwise use "
                "xdp_mode = \"generic\"")
        counts, _ = director.monitor.conn_counts()
        kept_note = (f"; kept {counts.entries} connection table entr"
                     f"{'y' if counts.entries == 1 else 'ies'}"
                     if "conn_table" in found.kept else "")
        say(f"ready on {name} (xdp {director.xdp_mode}) in "
            f"{time.monotonic() - started:.1f} s: "
            f"{len(config.services)} service(s), VIPs {', '.join(config.vips)}"
            + (f"; MAC not yet known for {', '.join(unresolved)}" if unresolved else "")
            + kept_note)
        sdnotify.ready(f"balancing on {name} (xdp {director.xdp_mode})")
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
                    say(f"warning: attaching to the new {name}: {e}")
                except Exception as e:   # keep running; the next event tries again
                    say(f"warning: {type(e).__name__}: {e}")
            try:   # flow_cache's ways too old to tell from fresh: every round, whatever
                dp.sweep_flows(dp.FLOW_SWEEP_S)   # else this round does or fails to do
            except Exception as e:
                say(f"warning: {type(e).__name__}: {e}")
            if director.link_gone_since is not None:
                continue   # nothing to refresh on an interface that is not there
            if director.announce_pending:
                director.announce_pending = not announce_vips(director)
            try:
                if reload_asked.is_set():
                    reload_asked.clear()
                    result = counted_reload()
                    for line in result.get("problems", [result.get("message", "")]):
                        say(f"{'' if result['ok'] else 'reload refused: '}{line}")
                director.refresh_neighbours()
                director.follow_vrrp_file()
                director.announce_again()
            except Exception as e:   # keep balancing; the next round tries again
                say(f"warning: {type(e).__name__}: {e}")
    finally:
        sdnotify.stopping()
        if watch:
            watch.stop()
        # Withdraw first, and keep forwarding for `linger` seconds, so that the router
        # has moved the flows to another director before this one stops taking them.
        if director and director.announcer:
            if director.stop_announcing() and director.config.announce:
                time.sleep(director.config.announce.linger)
        if metrics is not None:
            metrics.close()
        if server:
            server.close()
        if director and director.health:
            director.health.stop()
        if director and director.monitor:
            director.monitor.stop()
        if lock_fd is None and dp.attached:
            # --replace put our program in place but could not become the owner (the old
            # instance did not stop): leave it attached, as a crashed `up` would.
            dp.bpf.cleanup()
            raise UserError(f"the XDP program on {name} was replaced, but the old instance "
                            "did not stop; run `dr-lb up --replace` again once it has")
        try:
            handed_over = not dp.close() and dp.attached is None and director is not None \
                and director.xdp_mode != ""
        finally:
            if lock_fd is not None:
                instances.remove_state(name)   # ours: we hold the lock
                os.close(lock_fd)
    if handed_over:
        say(f"left {name} to its successor (its XDP program stays); state kept in "
            f"{found.pin_dir}")
    else:
        say(f"detached from {name}; state kept in {found.pin_dir}")


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
            say(f"warning: detaching from index {event.index}: {e}")
        say(f"interface {name} is gone (index {event.index} deleted or renamed): nothing is "
            "balanced " + ("; exiting (--exit-on-link-loss)" if exit_on_link_loss else
                           "until an interface of that name comes back"))
        if exit_on_link_loss:
            raise UserError(f"interface {name} was deleted or renamed",
                            exit_code=EXIT_LINK_LOST)
        return
    iface = netif.interface(name)
    if iface is None or iface.index != event.index:
        return   # gone again already; its own event follows
    if not iface.ethernet:
        say(f"warning: the new {name} has no Ethernet address; not attaching")
        return
    try:
        mode = dp.attach(iface.index, director.config.director.xdp_mode)
    except UserError as e:
        say(f"warning: the new {name} (index {iface.index}): {e}")
        return
    director.link_back(iface, mode)
    # A new interface is often still down: the main loop announces once it is up.
    director.announce_pending = not announce_vips(director)
    instances.write_state(name, {**(instances.find(name) or {}), "pid": os.getpid(),
                                 "interface": name, "ifindex": iface.index, "xdp_mode": mode,
                                 "config": os.path.abspath(config_path)})
    say(f"interface {name} is back (index {iface.index}, MAC {iface.mac}): attached again "
        f"(xdp {mode}) {time.monotonic() - event.at:.2f} s after it appeared; connections kept")


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
