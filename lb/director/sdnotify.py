"""systemd's readiness protocol (sd_notify(3)), without a library: one datagram of
NAME=VALUE lines to the Unix socket named by $NOTIFY_SOCKET. Nothing is sent when the
variable is unset (not started by systemd with Type=notify)."""
from __future__ import annotations

import os
import socket
import time


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):          # abstract namespace: a leading NUL byte
        return "\0" + addr[1:]
    if addr.startswith("/"):
        return addr
    return None                       # unset, or a form we do not speak (vsock:...)


def notify(*fields: str) -> bool:
    """Send the fields ("READY=1", "STATUS=...") as one datagram; whether it was sent."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall("\n".join(fields).encode())
    except OSError:
        return False                  # systemd gone: keep balancing
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}")


def reloading() -> bool:
    # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the reload it asked for.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1")
