"""The running instances: how `status`, `reload` and `down` find and reach a running
`up` (a Unix socket and a state file), and how `down` and `up --replace` stop one.

Both files live under /run/dr-lb, named by network namespace and interface. /run is shared
by every `ip netns exec`, while /sys/fs/bpf is not (KERNEL-NOTES), so a separate
`ip netns exec NS dr-lb status` finds the instance that another one started.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Callable

from lb import abi, libbpf
from lb.director import netif
from lb.director.netif import netns_id
from lb.errors import UserError

RUN_DIR = Path(os.environ.get("DR_LB_RUN_DIR", "/run/dr-lb"))


def _prefix() -> str:
    return f"{netns_id()}-"


def socket_path(interface: str) -> Path:
    return RUN_DIR / f"{_prefix()}{interface}.sock"


def state_path(interface: str) -> Path:
    return RUN_DIR / f"{_prefix()}{interface}.json"


def vrrp_path(interface: str) -> Path:
    return RUN_DIR / f"{_prefix()}{interface}.vrrp"


VRRP_STATES = ("master", "backup", "fault", "stop")


def read_vrrp_state(interface: str) -> str:
    """The last state keepalived gave (`dr-lb vrrp STATE`); "backup" if none."""
    try:
        state = vrrp_path(interface).read_text().strip()
    except OSError:
        return "backup"
    return state if state in VRRP_STATES else "backup"


def write_vrrp_state(interface: str, state: str) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = vrrp_path(interface).with_suffix(".vrrp-tmp")
    tmp.write_text(state + "\n")
    tmp.replace(vrrp_path(interface))


def instances() -> list[dict]:
    """State files of the instances in this network namespace."""
    out = []
    if RUN_DIR.is_dir():
        for p in sorted(RUN_DIR.glob(f"{_prefix()}*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
    return out


def find(interface: str) -> dict | None:
    """The state file of the instance on `interface`, if one runs here."""
    return next((s for s in instances() if s.get("interface") == interface), None)


def write_state(interface: str, state: dict) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = state_path(interface).with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(state_path(interface))


def remove_state(interface: str) -> None:
    for p in (socket_path(interface), state_path(interface)):
        p.unlink(missing_ok=True)


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("this needs root: run it with sudo")


NOT_RUNNING = ("dr-lb is not running in this network namespace (start it with "
               "`sudo dr-lb up CONFIG`)")


def pick_interface(interface: str | None, not_running: str = NOT_RUNNING) -> str:
    """The instance a command means: the one given, or the only one running here."""
    if interface:
        return interface
    running = instances()
    if not running:
        raise UserError(not_running)
    if len(running) > 1:
        names = ", ".join(s["interface"] for s in running)
        raise UserError(f"several instances run here ({names}); choose one with --interface")
    return running[0]["interface"]


class ControlServer:
    """Answers one JSON request per connection: {"cmd": NAME, "args": {...}} ->
    handler(**args)."""

    def __init__(self, interface: str, handlers: dict[str, Callable[[], dict]]):
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        path = socket_path(interface)
        path.unlink(missing_ok=True)
        handlers_ = handlers

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    req = json.loads(self.rfile.readline() or b"{}")
                    cmd = req.get("cmd")
                    if cmd not in handlers_:
                        reply = {"error": f"unknown command {cmd!r}"}
                    else:
                        reply = handlers_[cmd](**req.get("args", {}))
                except Exception as e:  # a bad request must not stop the balancer
                    reply = {"error": f"{type(e).__name__}: {e}"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        os.chmod(path, 0o600)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def request(interface: str | None, cmd: str, timeout: float = 30, **args) -> dict:
    interface = pick_interface(interface)
    path = socket_path(interface)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise UserError(f"dr-lb is not running on {interface} in this network namespace "
                        "(no control socket; `sudo dr-lb down` clears a leftover)") from None
    except PermissionError:
        raise UserError("permission denied on the control socket: run as root (sudo)") from None
    except (ConnectionRefusedError, socket.timeout):
        raise UserError(f"the dr-lb instance on {interface} does not answer; if it died, "
                        f"run `sudo dr-lb down --interface {interface}`") from None
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or not reply:
        raise UserError(f"the dr-lb instance on {interface} gave no answer (was it stopping?); "
                        "try again")
    if "error" in reply:
        raise UserError(f"the running instance says: {reply['error']}")
    return reply


# ---- stopping an instance ---------------------------------------------------------------

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
    state = find(interface)
    if state:
        stopped = stop_instance(state)
        done += [stopped] if stopped else []
        remove_state(interface)
    iface = netif.interface(interface)
    if iface and iface.xdp_mode:
        detach_any(iface)
        done.append(f"removed the XDP program that was on {interface} (id "
                    f"{iface.xdp_prog_id}, {iface.xdp_mode})")
    return done


def down(interface: str | None) -> list[str]:
    interface = pick_interface(interface, "dr-lb is not running in this network namespace; "
                                          "to remove a leftover XDP program give --interface")
    done = []
    state = find(interface)
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
        remove_state(interface)
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
