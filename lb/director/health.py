"""Health checks: a real server whose service is dead stops getting new connections.

Each checked real server (lb/director/config.py's Health, type "tcp" or "http") is
checked every `interval` seconds, all of them concurrently on one asyncio loop in a
thread of its own, so that a slow or silent server never delays another's check. One
check is two probes at once, and passes only if both pass within `timeout`:

- its own address: a TCP connection to RIP:port (keepalived's TCP_CHECK), or an HTTP
  GET whose status must be expected (keepalived's HTTP_GET);
- the DR path, for TCP services: a SYN to VIP:port sent to the real server's MAC must
  get a SYN-ACK from that MAC (lb/director/probe.py). This catches what the first
  cannot: a VIP that fell off the real server's lo, while its own address still answers.

States, per (service, real server): "unchecked" (type "none", or no result yet),
"up" and "down". The first result decides between up and down; after that `fall`
failures in a row take a server down and `rise` successes in a row bring it back.
record() is that state machine, pure. A transition calls on_change() (the reconciler
rebuilds the layout, in which a down server leaves the WRR cycle) and writes one line
to the journal.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from lb.director.config import Config, Health, RealServer, Service
from lb.director.layout import real_key
from lb.director.netif import Interface
from lb.director.probe import OPEN, REFUSED, DrProber, Probe

UP, DOWN, UNCHECKED = "up", "down", "unchecked"
HTTP_LINE_MAX = 8192


@dataclass(frozen=True)
class State:
    state: str = UNCHECKED
    last: str = "not checked yet"     # the last check's result, in words
    since: float = 0.0                # Unix time the state began
    successes: int = 0                # in a row
    failures: int = 0                 # in a row

    def public(self) -> dict:
        """As `status --json` shows it."""
        return {"state": self.state, "last": self.last, "since": round(self.since, 3)}


def record(st: State, ok: bool, text: str, rise: int, fall: int, now: float) -> State:
    """`st` after one check result. From unchecked the first result decides; an up
    server goes down after `fall` failures in a row, a down one up after `rise`
    successes in a row."""
    successes, failures = (st.successes + 1, 0) if ok else (0, st.failures + 1)
    state = st.state
    if state == UNCHECKED:
        state = UP if ok else DOWN
    elif state == UP and failures >= fall:
        state = DOWN
    elif state == DOWN and successes >= rise:
        state = UP
    return State(state, text, now if state != st.state else st.since, successes, failures)


# ---- one check ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A real server of a service, as it is checked."""
    key: tuple
    service: Service
    server: RealServer

    @property
    def check(self) -> Health:
        return self.server.health

    @property
    def port(self) -> int:
        return self.check.port or self.server.port

    @property
    def name(self) -> str:
        return f"{self.server.address}:{self.server.port} in {self.service.name}"

    def same_check(self, other: "Target") -> bool:
        return (self.key, self.check, self.server.port) == (other.key, other.check,
                                                             other.server.port)


def targets(config: Config) -> dict[tuple, Target]:
    return {real_key(svc, rs.address): Target(real_key(svc, rs.address), svc, rs)
            for svc in config.services for rs in svc.real_servers if rs.health.checked}


async def check_own(t: Target) -> tuple[bool, str]:
    """keepalived's TCP_CHECK or HTTP_GET on the real server's own address."""
    address = f"{t.server.address}:{t.port}"
    try:
        reader, writer = await asyncio.open_connection(t.server.address, t.port)
    except ConnectionRefusedError:
        return False, f"{address} refused the connection"
    except OSError as e:
        return False, f"cannot connect to {address}: {e.strerror or e}"
    try:
        if t.check.type == "tcp":
            return True, f"{address} accepts connections"
        h = t.check
        host = h.host or (t.server.address if t.port == 80 else address)
        writer.write(f"GET {h.path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: dr-lb health "
                     "check\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        url = f"http://{address}{h.path}"
        parts = line[:HTTP_LINE_MAX].decode("latin-1").split()
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return False, f"{url} did not answer HTTP" + (f" ({line[:40]!r})" if line else "")
        status = int(parts[1])
        want = ", ".join(map(str, h.expect)) if h.expect else "2xx"
        if not h.accepts(status):
            return False, f"{url} answered {status}, expected {want}"
        return True, f"{url} answered {status}"
    except OSError as e:
        return False, f"{address}: {e.strerror or e}"
    finally:
        writer.close()


async def check_dr_path(t: Target, prober: DrProber, mac: str | None,
                        timeout: float) -> tuple[bool, str]:
    """The SYN probe of the DR path (TCP services only)."""
    vip = f"{t.service.vip}:{t.service.port}"
    if mac is None:
        return False, f"DR path: {t.server.address} does not answer ARP"
    result = await prober.probe(Probe(t.server.address, mac, t.service.vip, t.service.port),
                                timeout, resend_s=max(timeout / 2, 0.2))
    if result == OPEN:
        return True, f"SYN-ACK for {vip} through the DR path"
    if result == REFUSED:
        return False, f"DR path: {vip} refused (RST): nothing listens on the VIP"
    return False, (f"DR path: no answer to a SYN for {vip} within {timeout:g} s: is the VIP "
                   "on its lo?")


async def check_once(t: Target, prober: DrProber | None,
                     mac: str | None) -> tuple[bool, str]:
    """Both probes at once (without a prober, the own address only); the failures in
    words, else the successes."""
    timeout = t.check.timeout

    async def own() -> tuple[bool, str]:
        try:
            return await asyncio.wait_for(check_own(t), timeout)
        except TimeoutError:
            return False, (f"no answer from {t.server.address}:{t.port} within "
                           f"{timeout:g} s")

    probes = [own()]
    if t.service.protocol == "tcp" and prober is not None:
        probes.append(check_dr_path(t, prober, mac, timeout))
    results = await asyncio.gather(*probes)
    failed = [text for ok, text in results if not ok]
    return (False, "; ".join(failed)) if failed else (True, "; ".join(t for _, t in results))


# ---- all the checks ------------------------------------------------------------------------

@dataclass
class HealthChecker:
    """Checks every checked real server of the running config, each on its own schedule.

    `mac_of(address)` gives a real server's current MAC (None: unknown);
    `on_change()` is called (from the checker's thread) after a state changed;
    `log(line)` writes to the journal. update() and states() may be called from any
    thread."""
    interface: Interface
    mac_of: Callable[[str], str | None]
    on_change: Callable[[], None]
    log: Callable[[str], None] = print
    _targets: dict[tuple, Target] = field(default_factory=dict)
    _states: dict[tuple, State] = field(default_factory=dict)
    _started: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _tasks: dict[tuple, asyncio.Task] = field(default_factory=dict)
    _prober: DrProber | None = None

    # ---- from any thread ---------------------------------------------------------------
    def update(self, config: Config) -> None:
        """Check what `config` says from now on. A server whose check is unchanged keeps
        its state; a new or changed one starts unchecked; others are forgotten."""
        wanted = targets(config)
        with self._lock:
            old = self._targets
            kept = {k for k, t in wanted.items() if k in old and old[k].same_check(t)}
            now = time.time()
            self._states = {k: self._states[k] if k in kept else State(since=now)
                            for k in wanted}
            self._targets = wanted
        if self._loop:
            self._loop.call_soon_threadsafe(self._sync_tasks, kept)

    def states(self) -> dict[tuple, str]:
        """real_key -> "up" | "down" | "unchecked", as layout.build() takes them."""
        with self._lock:
            return {k: s.state for k, s in self._states.items()}

    def report(self, config: Config) -> dict[tuple, dict]:
        """real_key -> {"state", "last", "since"} for every real server of `config`."""
        with self._lock:
            states = dict(self._states)
        out = {}
        for svc in config.services:
            for rs in svc.real_servers:
                key = real_key(svc, rs.address)
                st = states.get(key) or State(
                    last="health checks are off (type = \"none\")", since=self._started)
                out[key] = st.public()
        return out

    def start(self) -> "HealthChecker":
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._main(ready))
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=main, daemon=True, name="dr-lb-health")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            try:
                self._loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:
                pass    # the loop has ended already
            self._thread.join(timeout=10)

    # ---- on the checker's loop -------------------------------------------------------
    async def _main(self, ready: threading.Event) -> None:
        self._stop_event = asyncio.Event()
        try:
            self._prober = DrProber(self.interface)
        except OSError as e:
            self.log(f"dr-lb: warning: health checks cannot probe the DR path "
                     f"({e.strerror or e}); they check the real servers' own addresses only")
        with self._lock:
            keep = set(self._targets)
        self._sync_tasks(keep)
        ready.set()
        await self._stop_event.wait()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._prober:
            self._prober.close()

    def _sync_tasks(self, kept: set) -> None:
        with self._lock:
            wanted = dict(self._targets)
        for key in list(self._tasks):
            if key not in wanted or key not in kept or self._tasks[key].done():
                self._tasks.pop(key).cancel()
        for key in wanted:
            if key not in self._tasks:
                self._tasks[key] = asyncio.get_running_loop().create_task(self._run(key))

    async def _run(self, key: tuple) -> None:
        """Check one real server every interval, from the start of one check to the
        start of the next (a check that overruns starts the next at once)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            with self._lock:
                t = self._targets.get(key)   # a reload may have changed its weight
            if t is None:
                return
            try:
                ok, text = await check_once(t, self._prober, self.mac_of(t.server.address))
            except Exception as e:   # a bug in a check must not stop the others
                ok, text = False, f"check failed: {type(e).__name__}: {e}"
            self._record(t, ok, text)
            due = max(due + t.check.interval, loop.time())

    def _record(self, t: Target, ok: bool, text: str) -> None:
        with self._lock:
            current = self._targets.get(t.key)
            if current is None or not current.same_check(t) or t.key not in self._states:
                return   # its check changed while it ran: the result is void
            old = self._states[t.key]
            new = record(old, ok, text, t.check.rise, t.check.fall, time.time())
            self._states[t.key] = new
        if new.state != old.state:
            was = "" if old.state == UNCHECKED else f" (was {old.state})"
            self.log(f"dr-lb: health: {t.name} is {new.state}{was}: {text}")
            try:
                self.on_change()
            except Exception as e:
                self.log(f"dr-lb: warning: applying health of {t.name}: "
                         f"{type(e).__name__}: {e}")

