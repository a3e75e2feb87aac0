"""What outlives `dr-lb up`, so that a restart or an upgrade keeps every connection on its
real server.

- The maps a new program needs to send an existing connection where it went before:
  conn_table, syn_table, syn_spill, udp_table, persist_table and wrr_pos, pinned on a bpffs at /run/dr-lb/bpffs/<netns>-<if>/
  (bpf/dr_lb_maps.h pins them when bcc gets -DDRLB_PIN_DIR), and the attached program
  (`program`), which a successor takes over by path. bcc opens an existing pin
  whatever its layout, so prepare() checks each one first and removes it unless it is
  exactly what this build would create.
- A record beside them, /run/dr-lb/kept/<netns>-<if>.json: each map's layout fingerprint
  (from cffi's sizes, offsets and enum values of bpf/dr_lb_abi.h) and attributes, and the
  map ids (layout.Ids: which (VIP, port, protocol[, RIP]) each svc_id/real_id means) with
  the real servers' last MACs. conn_value.real_id indexes `reals`, so a restarted director
  must give every real server the id it had, even if the config changed meanwhile.

Both live under /run: a reboot forgets them together, as it forgets the connections.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lb import abi, libbpf
from lb.director import layout as layout_mod
from lb.director.config import Config, Health, RealServer
from lb.director.instances import BPFFS, RUN_DIR, instance_key
from lb.errors import UserError

RECORDS = RUN_DIR / "kept"
KEPT_MAPS = ("conn_table", "syn_table", "syn_spill", "udp_table", "persist_table", "wrr_pos")
# The connection tables: conn_key -> conn_value each, but syn_table (sets of them).
CONN_MAPS = ("conn_table", "syn_table", "syn_spill", "udp_table")
PROGRAM_PIN = "program"     # the attached program (instances.program_pin)
BPF_F_MMAPABLE = 1 << 10
RECORD_VERSION = 1


def pin_dir(interface: str) -> Path:
    return BPFFS / instance_key(interface)


def record_path(interface: str) -> Path:
    return RECORDS / f"{instance_key(interface)}.json"


# ---- the layout this build expects -------------------------------------------------------

def _struct(name: str) -> list:
    t = abi.ffi.typeof(f"struct {name}")
    return [name, abi.ffi.sizeof(t),
            [[f, fld.offset, abi.ffi.sizeof(fld.type), fld.type.cname] for f, fld in t.fields]]


def _enum(name: str) -> list:
    return [name, sorted(abi.ffi.typeof(f"enum {name}").relements.items())]


def fingerprints() -> dict[str, str]:
    """Per kept map, a hash of what its keys and values mean, from bpf/dr_lb_abi.h as cffi
    reads it (sizes, offsets, types, enum values): comments and unrelated structs don't
    change it. struct wrr_pos lives in dr_lb_maps.h (it holds a bpf_spin_lock, which
    cffi cannot parse); its size is checked against the pinned map's value_size."""
    conn = [_struct("conn_key"), _struct("conn_value"), _enum("conn_state"), _enum("conn_flags")]
    parts = {
        **{name: conn for name in CONN_MAPS},
        # Its sets are chosen by the hash in bpf/dr_lb.c (conn_hash) with the recorded seed.
        "syn_table": conn + [_struct("syn_entry"), _struct("syn_set"), "conn_hash splitmix64 v1, spill mark"],
        "persist_table": [_struct("persist_key"), _struct("persist_value")],
        "wrr_pos": ["u32 svc_id -> {bpf_spin_lock lock; u32 pos}"],
    }
    return {name: hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:16]
            for name, p in parts.items()}


def expected_attrs(slots: dict[str, int]) -> dict[str, dict]:
    """The attributes bcc gives each kept map in this build, with `slots` the tables'
    sizes (config.table_slots); tests/test_kept.py compares them with the compiled
    program's."""
    size = abi.ffi.sizeof
    return {
        **{name: {"type": "lru_hash", "key_size": size("struct conn_key"),
                  "value_size": size("struct conn_value"),
                  "max_entries": slots[name], "map_flags": 0} for name in CONN_MAPS},
        "syn_table": {"type": "array", "key_size": 4, "value_size": size("struct syn_set"),
                      "max_entries": slots["syn_table"], "map_flags": BPF_F_MMAPABLE},
        "persist_table": {"type": "lru_hash", "key_size": size("struct persist_key"),
                          "value_size": size("struct persist_value"),
                          "max_entries": abi.CONST["PERSIST_TABLE_SIZE"], "map_flags": 0},
        "wrr_pos": {"type": "array", "key_size": 4, "value_size": 8,
                    "max_entries": abi.CONST["MAX_SERVICES"], "map_flags": 0},
    }


# ---- bpffs ---------------------------------------------------------------------------

def _is_bpffs(path: Path) -> bool:
    target = str(path.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        sep = fields.index("-")
        if fields[4] == target and fields[sep + 1] == "bpf":
            return True
    return False


def _private_mount_ns() -> bool:
    """Whether this process has a mount namespace of its own, unlike its parent's
    (`ip netns exec`, or a sandboxed service): a mount made here dies with it."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{os.getppid()}/ns/mnt")
    except OSError:
        return False


def ensure_bpffs() -> list[str]:
    """Mount a bpffs at /run/dr-lb/bpffs unless one is there; warnings to print."""
    if _is_bpffs(BPFFS):
        return []
    BPFFS.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], capture_output=True,
                       text=True)
    if r.returncode != 0 or not _is_bpffs(BPFFS):
        raise UserError(f"cannot mount a bpffs at {BPFFS} ({r.stderr.strip()}); mount it "
                        f"with `mount -t bpf bpf {BPFFS}`")
    if _private_mount_ns():
        return [f"mounted a bpffs at {BPFFS} in a private mount namespace: the kept state "
                f"will not outlive this process; mount it first from the host (`mkdir -p "
                f"{BPFFS} && mount -t bpf bpf {BPFFS}`)"]
    return []


# ---- the ids --------------------------------------------------------------------------

def ids_to_json(ids: layout_mod.Ids) -> dict:
    return {"services": [[*k, i] for k, i in sorted(ids.services.items(), key=lambda kv: kv[1])],
            "reals": [[*k, i] for k, i in sorted(ids.reals.items(), key=lambda kv: kv[1])],
            "servers": {str(i): asdict(rs) for i, rs in sorted(ids.servers.items())}}


def ids_from_json(data: dict) -> layout_mod.Ids:
    ids = layout_mod.Ids()
    ids.services = {(v, p, proto): i for v, p, proto, i in data["services"]}
    ids.reals = {(v, p, proto, rip): i for v, p, proto, rip, i in data["reals"]}
    ids.servers = {int(i): _real_server(rs) for i, rs in data["servers"].items()}
    return ids


def _real_server(data: dict) -> RealServer:
    """A RealServer from asdict() (its Health as a dict, expect as a list)."""
    health = dict(data.get("health") or {})
    if "expect" in health:
        health["expect"] = tuple(health["expect"])
    return RealServer(**{**data, "health": Health(**health)})


def compact(ids: layout_mod.Ids, config: Config, referenced: tuple[set[int], set[int]]) -> int:
    """Forget ids that neither `config` nor any kept entry uses, so that ids do not pile up
    restart after restart; `referenced` is (svc_ids, real_ids) found in the kept maps.
    Returns how many were forgotten. Not while another program still runs on the maps
    (--replace): it may place a connection on any id it knows."""
    svc_ids, real_ids = referenced
    in_config = {(s.vip, s.port, s.protocol) for s in config.services}
    reals_in_config = {(s.vip, s.port, s.protocol, rs.address) for s in config.services
                       for rs in s.real_servers}
    dropped = 0
    for key, i in list(ids.services.items()):
        if key not in in_config and i not in svc_ids:
            del ids.services[key]
            dropped += 1
    for key, i in list(ids.reals.items()):
        if key not in reals_in_config and i not in real_ids:
            del ids.reals[key]
            ids.servers.pop(i, None)
            dropped += 1
    return dropped


# ---- the record and the pins ----------------------------------------------------------

@dataclass
class Kept:
    """What prepare() found for an instance."""
    interface: str
    pin_dir: Path
    kept: list[str] = field(default_factory=list)      # maps reused as they were
    reset: dict[str, str] = field(default_factory=dict)  # map -> why it starts empty
    ids: layout_mod.Ids | None = None
    macs: dict[str, str] = field(default_factory=dict)  # real server address -> last MAC
    warnings: list[str] = field(default_factory=list)
    hash_seed: int | None = None   # the seed that placed the kept syn_table's entries

    def notice(self) -> str | None:
        """The one line saying that kept state had another layout, if it had."""
        if not self.reset:
            return None
        why = "; ".join(f"{m}: {r}" for m, r in self.reset.items())
        return (f"the kept state in {self.pin_dir} has another layout ({why}); starting "
                f"with empty {', '.join(self.reset)}")


def _read_record(interface: str) -> dict | None:
    try:
        data = json.loads(record_path(interface).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == RECORD_VERSION else None


def prepare(interface: str, slots: dict[str, int]) -> Kept:
    """Mount the bpffs if needed, and leave in the instance's pin directory only the pins
    this build can use as they are: a pin with another layout (or without a record) is
    removed, and the program starts that map empty."""
    warnings = ensure_bpffs()
    d = pin_dir(interface)
    d.mkdir(parents=True, exist_ok=True)
    record = _read_record(interface)
    recorded = (record or {}).get("maps", {})
    fps, want = fingerprints(), expected_attrs(slots)
    out = Kept(interface, d, warnings=warnings)
    for name in KEPT_MAPS:
        info = libbpf.pinned_map_info(str(d / name))
        if info is None:
            continue
        rec = recorded.get(name)
        if rec is None:
            why = "no layout record"
        elif name == "syn_table" and not isinstance((record or {}).get("hash_seed"), int):
            why = "no hash seed recorded"
        elif rec.get("fingerprint") != fps[name]:
            why = "made by a build with another bpf/dr_lb_abi.h"
        elif info != want[name]:
            why = ", ".join(f"{k} {info[k]} (this build: {want[name][k]})"
                            for k in info if info[k] != want[name][k])
        else:
            out.kept.append(name)
            continue
        (d / name).unlink()
        out.reset[name] = why
    if "syn_table" in out.kept:
        out.hash_seed = record["hash_seed"]
    if record and set(out.kept) & {*CONN_MAPS, "persist_table"}:
        try:
            out.ids = ids_from_json(record["ids"])
            out.macs = dict(record.get("macs", {}))
        except (KeyError, TypeError, ValueError):
            out.ids = None
    return out


class Recorder:
    """Writes an instance's record whenever the ids or MACs change, and stops once
    another process (a successor, `up --replace`) has taken the record over."""

    def __init__(self, interface: str, slots: dict[str, int], hash_seed: int):
        self.interface = interface
        self.slots = slots
        self.hash_seed = hash_seed
        self.last = ""
        self.active = True

    def save(self, ids: layout_mod.Ids, layout: layout_mod.Layout | None) -> None:
        if not self.active:
            return
        path = record_path(self.interface)
        current = _read_record(self.interface)
        if current and current.get("pid") not in (None, os.getpid()) and \
                Path(f"/proc/{current['pid']}").exists():
            self.active = False     # a successor owns the state now
            return
        fps, attrs = fingerprints(), expected_attrs(self.slots)
        macs = {}
        if layout is not None:
            macs = {r.server.address: r.mac for r in layout.reals + list(layout.removed_reals)
                    if r.mac}
        data = {"version": RECORD_VERSION, "pid": os.getpid(),
                "maps": {m: {"fingerprint": fps[m], **attrs[m]} for m in KEPT_MAPS},
                "ids": ids_to_json(ids), "macs": macs, "hash_seed": self.hash_seed}
        text = json.dumps(data, indent=1, sort_keys=True)
        if text == self.last:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        self.last = text


def forget(interface: str) -> list[str]:
    """Remove an instance's kept state (`dr-lb down --forget`); what was removed."""
    done = []
    d = pin_dir(interface)
    if d.is_dir():
        shutil.rmtree(d)
        done.append(f"forgot the kept connection state ({d})")
    rec = record_path(interface)
    if rec.exists():
        rec.unlink()
        if not done:
            done.append(f"forgot the kept ids ({rec})")
    return done
