"""The running instances: how `status`, `reload` and `down` find and reach a running
`up` (a Unix socket and a state file), and how `down` and `up --replace` stop one.

Both files live under /run/dr-lb, named by network namespace and interface. /run is shared
by every `ip netns exec`, while /sys/fs/bpf is not (KERNEL-NOTES), so a separate
`ip netns exec NS dr-lb status` finds the instance that another one started.
"""
from __future__ import annotations

import fcntl
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
STOP_WAIT_S = 10.0       # how long `down` and `up --replace` wait for an instance to stop
BPFFS = RUN_DIR / "bpffs"        # lb/director/kept.py: the state that outlives `up`


def _prefix() -> str:
    return f"{netns_id()}-"


def instance_key(interface: str) -> str:
    """Names everything of the instance on `interface` in this network namespace."""
    return f"{_prefix()}{interface}"


def program_pin(interface: str) -> Path:
    """Where `up` pins its attached program, beside the kept maps (lb/director/kept.py),
    for a successor to take over by path."""
    return BPFFS / instance_key(interface) / "program"


def socket_path(interface: str) -> Path:
    return RUN_DIR / f"{_prefix()}{interface}.sock"


def state_path(interface: str) -> Path:
    return RUN_DIR / f"{_prefix()}{interface}.json"


def lock_path(interface: str) -> Path:
    return RUN_DIR / f"{_prefix()}{interface}.lock"


# ---- one owner per interface ---------------------------------------------------------------
#
# `up` takes an exclusive flock on the interface's lock file before it touches anything
# and holds it until it exits; the kernel drops it when the process dies, however it
# dies. So the lock's holder is the one live instance on the interface, and the state file
# is only a cache of what it wrote: `status`, `down` and `up --replace` believe a state
# file only when its pid is the holder's. The lock file itself is never removed (removing
# it would let two processes hold locks on two different files of the same name).

def acquire(interface: str, wait_s: float = 0.0) -> int:
    """Take the interface's lock (waiting up to `wait_s`); the fd to keep open, or a
    UserError naming the instance that holds it."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(interface), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    os.close(fd)
    pid = lock_holder(interface)
    who = f"pid {pid}" if pid else "another process"
    raise UserError(f"dr-lb already runs on {interface} ({who}); stop it with "
                    f"`sudo dr-lb down --interface {interface}` or take over with "
                    "`dr-lb up --replace`")


def lock_holder(interface: str) -> int | None:
    """The pid that holds the interface's lock (the live instance), or None."""
    path = lock_path(interface)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None           # nobody holds it
        except BlockingIOError:
            pass
        st = os.fstat(fd)
        return _flock_pid(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) or -1
    finally:
        os.close(fd)


def _flock_pid(major: int, minor: int, inode: int) -> int | None:
    """The pid of a FLOCK lock on that inode, from /proc/locks."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        f = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF" ("->" marks a waiter)
        if "->" in f or len(f) < 6 or f[1] != "FLOCK":
            continue
        try:
            maj, mnr, ino = f[5].split(":")
            if (int(maj, 16), int(mnr, 16), int(ino)) == (major, minor, inode):
                return int(f[4])
        except ValueError:
            continue
    return None


def valid_state(state) -> bool:
    """A state file as `up` writes it (anything else is ignored, never acted on)."""
    return (isinstance(state, dict) and isinstance(state.get("pid"), int)
            and not isinstance(state.get("pid"), bool) and state["pid"] > 0
            and isinstance(state.get("interface"), str) and state["interface"]
            and "/" not in state["interface"])


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
    """State files of the instances in this network namespace (the well-formed ones)."""
    out = []
    if RUN_DIR.is_dir():
        for p in sorted(RUN_DIR.glob(f"{_prefix()}*.json")):
            try:
                state = json.loads(p.read_text())
            except (OSError, ValueError, RecursionError):
                continue
            if valid_state(state) and p.name == state_path(state["interface"]).name:
                out.append(state)
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
    """Remove the interface's socket and state file: only their owner (the lock's
    holder) or, with no holder, `down` and `up --replace` clearing leftovers call it."""
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
                req = cmd = None
                try:
                    req = json.loads(self.rfile.readline() or b"{}")
                    cmd = req.get("cmd")
                    if cmd not in handlers_:
                        reply = {"error": f"unknown command {cmd!r}"}
                    else:
                        reply = handlers_[cmd](**req.get("args", {}))
                except Exception as e:  # a bad request must not stop the balancer
                    reply = {"error": f"{type(e).__name__}: {e}"}
                try:
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    print(f"dr-lb: a control client hung up before the answer to "
                          f"{cmd!r}", flush=True)

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


def live_owner(interface: str) -> int | None:
    """The pid of the live instance on the interface: the lock's holder, if it is a
    dr-lb `up` (a pid nobody can verify is never signalled)."""
    pid = lock_holder(interface)
    return pid if pid and pid > 0 and _is_dr_lb(pid) else None


def stop_instance(state: dict) -> str | None:
    """SIGTERM the live `up` on the state's interface and wait for it; what was done.
    The pid comes from the lock, not from the state file, which anyone may have
    rewritten."""
    pid = live_owner(state["interface"])
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        raise UserError(f"dr-lb (pid {pid}) did not stop within {STOP_WAIT_S:.0f} s")
    return f"stopped dr-lb (pid {pid}) on {state['interface']}"


def stop_predecessor(interface: str) -> list[str]:
    """--replace, once the new program is attached in place of the old one: stop the
    instance that ran it (the lock's holder; it exits without detaching its successor's
    program), and clear the files of one that died without a word. The caller then
    takes the lock."""
    try:
        stopped = stop_instance({"interface": interface})
    except UserError as e:      # the caller's wait for the lock says what to do
        return [str(e)]
    if lock_holder(interface) is None:   # nobody owns the files now: clear leftovers
        remove_state(interface)
    return [stopped] if stopped else []


def down(interface: str | None) -> list[str]:
    interface = pick_interface(interface, "dr-lb is not running in this network namespace; "
                                          "to remove a leftover XDP program give --interface")
    done = []
    holder = lock_holder(interface)
    if holder is not None and live_owner(interface) is None:
        raise UserError(f"the lock of {interface} is held by pid {holder}, which is not a "
                        "dr-lb `up` this command can verify; leaving everything as it is")
    stopped = stop_instance({"interface": interface})
    done += [stopped] if stopped else []
    state = find(interface)
    if holder is None and state:
        done.append(f"removed a stale state file (pid {state['pid']} does not hold "
                    f"{interface}; nothing was signalled)")
    iface = netif.interface(interface)
    if iface is None:
        if state or stopped:
            remove_state(interface)
            return done
        raise UserError(f"interface {interface} does not exist")
    if iface.xdp_mode:
        owner = libbpf.prog_name(iface.xdp_prog_id)
        if owner != abi.PROGRAM_NAME:
            raise UserError(f"the XDP program on {interface} (id {iface.xdp_prog_id}, named "
                            f"{owner!r}) is not dr-lb's; leaving it. To remove it anyway: "
                            f"`ip link set dev {interface} xdp off`")
        detach_any(iface)
        program_pin(interface).unlink(missing_ok=True)   # a pin keeps a program loaded
        done.append(f"removed a leftover XDP program (id {iface.xdp_prog_id}, "
                    f"{iface.xdp_mode}) from {interface}")
    if lock_holder(interface) is None:
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
