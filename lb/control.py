"""How `status` and `down` reach a running `up`: a Unix socket and a state file.

Both live under /run/dr-lb, named by network namespace and interface. /run is shared
by every `ip netns exec`, while /sys/fs/bpf is not (KERNEL-NOTES), so a separate
`ip netns exec NS dr-lb status` finds the instance that another one started.
"""
from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Callable

from lb.errors import UserError
from lb.netif import netns_id

RUN_DIR = Path(os.environ.get("DR_LB_RUN_DIR", "/run/dr-lb"))


def _prefix() -> str:
    return f"{netns_id()}-"


def socket_path(interface: str) -> Path:
    return RUN_DIR / f"{_prefix()}{interface}.sock"


def state_path(interface: str) -> Path:
    return RUN_DIR / f"{_prefix()}{interface}.json"


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


def write_state(interface: str, state: dict) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = state_path(interface).with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(state_path(interface))


def remove_state(interface: str) -> None:
    for p in (socket_path(interface), state_path(interface)):
        p.unlink(missing_ok=True)


def pick_interface(interface: str | None) -> str:
    if interface:
        return interface
    running = instances()
    if not running:
        raise UserError("dr-lb is not running in this network namespace (start it with "
                        "`sudo dr-lb up CONFIG`)")
    if len(running) > 1:
        names = ", ".join(s["interface"] for s in running)
        raise UserError(f"several instances run here ({names}); choose one with --interface")
    return running[0]["interface"]


class ControlServer:
    """Answers one JSON request per connection: {"cmd": NAME} -> handler()."""

    def __init__(self, interface: str, handlers: dict[str, Callable[[], dict]]):
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        path = socket_path(interface)
        path.unlink(missing_ok=True)
        handlers_ = handlers

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    cmd = json.loads(self.rfile.readline() or b"{}").get("cmd")
                    if cmd not in handlers_:
                        reply = {"error": f"unknown command {cmd!r}"}
                    else:
                        reply = handlers_[cmd]()
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


def request(interface: str | None, cmd: str, timeout: float = 30) -> dict:
    interface = pick_interface(interface)
    path = socket_path(interface)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
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
