"""Announcing the VIPs through BIRD 2 ([announce]): dr-lb writes a config snippet and has
BIRD reload it with its own control tool, `birdc configure`.

What dr-lb owns is one file, `[announce] snippet`, holding one static protocol
(`[announce] protocol`, default dr_lb_vips) with a /32 blackhole route per VIP that may
take traffic. The operator's bird.conf includes that file and exports the protocol's
routes to the BGP neighbours (`export where proto = "dr_lb_vips";`), with BFD if wanted;
BGP then puts this director's address as the next hop. A blackhole route never belongs
in the director's own kernel table (a `protocol kernel` must not export it), and dr-lb's
XDP program takes the VIP's packets before any route is looked at anyway.

A VIP is announced while the program is attached and at least one real server of one of
its services can take new connections (weight > 0, MAC known, not drained, not down by
its health check). It is withdrawn when the last one goes, on `dr-lb down`, SIGTERM and
SIGINT. An empty protocol (nothing announced) is valid BIRD.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

from lb.director.config import Announce

BIRDC_TIMEOUT_S = 10


def render(vips: list[str], protocol: str, owner: str = "dr-lb") -> str:
    """The snippet: a static protocol with a /32 blackhole route per VIP."""
    routes = "".join(f"\troute {vip}/32 blackhole;\n" for vip in vips)
    return (f"# Written by {owner}; do not edit: dr-lb rewrites this file whenever the VIPs\n"
            f"# it announces change. Include it from bird.conf and export protocol\n"
            f"# {protocol} to your BGP neighbours (see dr-lb's README).\n"
            f"protocol static {protocol} {{\n\tipv4;\n{routes}}}\n")


def write_atomically(path: str, text: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def birdc(socket: str, *command: str) -> tuple[bool, str]:
    """Run `birdc -s SOCKET COMMAND`; (it worked, its output in one line)."""
    try:
        r = subprocess.run(["birdc", "-s", socket, *command], capture_output=True,
                           text=True, timeout=BIRDC_TIMEOUT_S)
    except FileNotFoundError:
        return False, "birdc is not installed (Debian: apt-get install bird2)"
    except subprocess.TimeoutExpired:
        return False, f"birdc -s {socket} {' '.join(command)} did not answer within " \
                      f"{BIRDC_TIMEOUT_S} s"
    out = " ".join(line.strip() for line in (r.stdout + r.stderr).splitlines()
                   if line.strip() and not line.startswith("BIRD "))
    return r.returncode == 0, out


def reconfigure(socket: str) -> tuple[bool, str]:
    """`birdc configure`: BIRD re-reads its config (with the snippet); a config it
    cannot parse is refused and the old one keeps running."""
    ok, out = birdc(socket, "configure")
    return ok and ("Reconfigured" in out or "Reconfiguration in progress" in out
                   or "Reconfiguration already in progress" in out), out


ROUTE_RE = re.compile(r"^\s*route\s+([0-9.]+)/32\s+blackhole;", re.M)


def announced_in(snippet: str) -> list[str]:
    """The VIPs a snippet on disk announces (a dr-lb that was killed leaves them)."""
    try:
        return ROUTE_RE.findall(Path(snippet).read_text())
    except OSError:
        return []


class Announcer:
    """Keeps the snippet equal to the VIPs that should be announced and BIRD reloaded.

    update() is called after every change of the maps (any thread); it writes and
    reloads only when the set changed, or when the last reload failed."""

    def __init__(self, settings: Announce, log=print, owner: str = "dr-lb"):
        self.settings = settings
        self.log = log
        self.owner = owner
        self.announced: list[str] | None = None   # None: not written yet, or failed
        self._lock = threading.Lock()
        self._last_error = ""

    def _fail(self, line: str) -> bool:
        """Log a failure once (update() is retried every round until it works)."""
        if line != self._last_error:
            self.log(line)
            self._last_error = line
        self.announced = None
        return False

    def update(self, vips: list[str], why: str = "") -> bool:
        with self._lock:
            vips = list(vips)
            if vips == self.announced:
                return True
            before = self.announced or []
            s = self.settings
            try:
                write_atomically(s.snippet, render(vips, s.protocol, self.owner))
            except OSError as e:
                return self._fail(f"dr-lb: announce: cannot write {s.snippet}: "
                                  f"{e.strerror or e}")
            ok, out = reconfigure(s.control_socket)
            if not ok:
                return self._fail(f"dr-lb: announce: BIRD did not take {s.snippet}: {out}")
            if self._last_error:
                self.log(f"dr-lb: announce: BIRD took {s.snippet} again")
                self._last_error = ""
            self.announced = vips
            added = [v for v in vips if v not in before]
            gone = [v for v in before if v not in vips]
            words = []
            if added:
                words.append(f"announcing {', '.join(added)}")
            if gone:
                words.append(f"withdrew {', '.join(gone)}")
            if words:
                self.log(f"dr-lb: announce: {'; '.join(words)}" + (f" ({why})" if why else ""))
            return True

    def settings_changed(self, settings: Announce | None) -> bool:
        """A reload changed [announce]: withdraw from the old snippet if it moved."""
        if settings == self.settings:
            return False
        if settings is None or (settings.snippet, settings.control_socket,
                                settings.protocol) != (self.settings.snippet,
                                                       self.settings.control_socket,
                                                       self.settings.protocol):
            self.withdraw_all("[announce] changed")
        if settings is not None:
            self.settings = settings
            self.announced = None
        return True

    def withdraw_all(self, why: str) -> bool:
        return self.update([], why)
