"""Python's view of bpf/dr_lb_abi.h and bpf/dr_lb_consts.h, derived from those files.

Nothing here is written twice: struct layouts and enums come from cffi parsing the
header, and constants from the #defines of the constants header.
"""
from __future__ import annotations

import re
import socket
import struct
from importlib import resources
from pathlib import Path

import cffi


def _bpf_dir() -> Path:
    """The directory of the C sources, as a real path (bcc compiles from files and gets
    this directory as -I).

    The repository keeps them in bpf/, beside lb/. An installed dr-lb (`pip install .`,
    a wheel) carries them as package data in lb/bpf/: pyproject.toml maps the package
    lb.bpf to bpf/. An editable install or a checkout on PYTHONPATH imports lb/ from the
    repository, where they are the bpf/ beside it. The installed copy is looked for
    first, the repository's second, both from where `lb` itself was imported, so that a
    worktree on PYTHONPATH compiles its own bpf/ and never another checkout's.

    Assumes lb is installed as files on disk (a wheel or editable install, not a zip):
    then importlib.resources gives a real pathlib.Path.
    """
    lb_dir = resources.files("lb")
    if not isinstance(lb_dir, Path):
        raise RuntimeError(f"dr-lb must be installed as files, not in an archive ({lb_dir}): "
                           "bcc compiles its C sources from a directory")
    for candidate in (lb_dir / "bpf", lb_dir.parent / "bpf"):
        if (candidate / "dr_lb.c").is_file():
            return candidate.resolve()
    raise RuntimeError(f"dr-lb's C sources are missing: neither {lb_dir / 'bpf'} (an "
                       f"installed dr-lb) nor {lb_dir.parent / 'bpf'} (a checkout) has "
                       "dr_lb.c; reinstall dr-lb")


BPF_DIR = _bpf_dir()
ABI_HEADER = BPF_DIR / "dr_lb_abi.h"
CONSTS_HEADER = BPF_DIR / "dr_lb_consts.h"
PROGRAM = BPF_DIR / "dr_lb.c"
PROGRAM_NAME = "xdp_main"   # dr_lb.c's entry point; the kernel shows it as the program name
SCHED_PROGRAM_NAME = "xdp_sched"   # tail-called by xdp_main for a new connection (see dr_lb.c)


def _read_consts() -> dict[str, int]:
    consts = {}
    for name, value in re.findall(r"^#define\s+([A-Z_][A-Z0-9_]*)\s+(\d+)\s*$",
                                  CONSTS_HEADER.read_text(), re.M):
        consts[name] = int(value)
    return consts


CONST = _read_consts()

ffi = cffi.FFI()
ffi.cdef("\n".join(line for line in ABI_HEADER.read_text().splitlines()
                   if not line.lstrip().startswith("#")))


def enum_values(enum: str, prefix: str) -> dict[str, int]:
    """{'tx_service': 0, ...} for `enum drlb_counter` with prefix 'COUNTER_'."""
    elements = ffi.typeof(f"enum {enum}").relements
    return {name[len(prefix):].lower(): value for name, value in elements.items()
            if name.startswith(prefix) and not name.endswith("_COUNT")
            and not name.endswith("_SLOTS")}


COUNTERS = dict(sorted(enum_values("drlb_counter", "COUNTER_").items(), key=lambda kv: kv[1]))
COUNTER_COUNT = ffi.typeof("enum drlb_counter").relements["COUNTER_COUNT"]
CONN_STATES = {v: k for k, v in enum_values("conn_state", "CONN_").items()}
STATE = {k.upper(): v for v, k in CONN_STATES.items()}
REAL_F_MAC_KNOWN = ffi.typeof("enum real_flags").relements["REAL_F_MAC_KNOWN"]
REAL_F_SCHEDULABLE = ffi.typeof("enum real_flags").relements["REAL_F_SCHEDULABLE"]
REAL_F_RESCHEDULE = ffi.typeof("enum real_flags").relements["REAL_F_RESCHEDULE"]
SETTINGS_F_ICMP_ECHO = ffi.typeof("enum settings_flags").relements["SETTINGS_F_ICMP_ECHO"]
SETTINGS_F_ARP_BACKUP = ffi.typeof("enum settings_flags").relements["SETTINGS_F_ARP_BACKUP"]

CONN_STATE_SLOTS = ffi.typeof("enum conn_state").relements["CONN_STATE_SLOTS"]
# wrr_seq holds the WRR cycles in use and the next ones, a half each, so that a service
# never points at a half-written cycle (lb/director/layout.py).
SEQ_HALF = CONST["WRR_SEQ_CAPACITY"] // 2
# sched_table likewise holds the sh/mh tables and real-server lists in use and the next.
SCHED_HALF = CONST["SCHED_TABLE_CAPACITY"] // 2
SCHED = {k: v for k, v in enum_values("sched_kind", "SCHED_").items()}
SVC_F = {k: v for k, v in enum_values("svc_flags", "SVC_F_").items()}

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


def numpy_dtype(struct: str):
    """A numpy dtype with the layout of `struct <struct>` (for reading a map in bulk)."""
    import numpy as np
    fields = ffi.typeof(f"struct {struct}").fields
    sizes = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}
    names, formats, offsets = [], [], []
    for name, f in fields:
        if f.type.kind == "array":
            formats.append((sizes[ffi.sizeof(f.type.item)], f.type.length))
        else:
            formats.append(sizes[ffi.sizeof(f.type)])
        names.append(name)
        offsets.append(f.offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": ffi.sizeof(f"struct {struct}")})


def ip_be32(address: str) -> int:
    """An IPv4 address as the u32 the program reads from the packet (network order)."""
    return struct.unpack("=I", socket.inet_aton(address))[0]


def be32_ip(value: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", value))


def port_be16(port: int) -> int:
    return socket.htons(port)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_str(raw) -> str:
    return ":".join(f"{b:02x}" for b in bytes(raw))
