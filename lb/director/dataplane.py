"""The XDP program as Python sees it: compile, attach, fill maps, read counters.

This is the only module that imports bcc. Everything above it speaks in services,
real servers and counters.
"""
from __future__ import annotations

import ctypes as ct
import errno
import functools
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lb import abi, libbpf
from lb.director import kept
from lb.director.config import flow_cache_shape, table_slots
from lb.director.layout import Layout
from lb.errors import UserError


def import_bcc():
    try:
        import bcc  # noqa: F401  (Debian's python3-bpfcc)
        import bcc.utils  # noqa: F401
    except ImportError:
        raise UserError("bcc's Python bindings are missing: run `sudo apt-get install "
                        "python3-bpfcc` (never `pip install bcc`, an unrelated package), "
                        "or `sudo scripts/setup.sh`") from None
    return bcc


def headers_problem() -> str | None:
    """bcc needs kernel headers under /lib/modules/$(uname -r); say how to get them."""
    build = Path("/lib/modules") / os.uname().release / "build"
    if (build / "include").is_dir():
        return None
    return (f"kernel headers not found at {build}: run `sudo scripts/setup.sh`, or "
            "`apt-get install linux-headers-amd64` and link "
            f"/lib/modules/{os.uname().release}/build and /source to "
            "/usr/src/linux-headers-<ver>-amd64 and -common")


KNOWN_HZ = (100, 250, 300, 1000)


@functools.cache
def tick_ns() -> int:
    """Nanoseconds per jiffy (1e9 / the kernel's HZ), measured: jiffies counted over
    about 100 ms of CLOCK_MONOTONIC, rounded to the nearest HZ Linux is built with."""
    t0, j0 = time.monotonic_ns(), libbpf.jiffies()
    time.sleep(0.1)
    t1, j1 = time.monotonic_ns(), libbpf.jiffies()
    hz = (j1 - j0) * 1e9 / (t1 - t0)
    return 1_000_000_000 // min(KNOWN_HZ, key=lambda h: abs(h - hz))


def program_clock_ns() -> int:
    """The clock the XDP program stamps connections with (last_seen_ns): jiffies times
    tick_ns(), read through bpf_jiffies64 as the program reads it. It ticks every few
    ms like the coarse monotonic clock, and costs the program one load instead of a
    helper call (bpf_ktime_get_coarse_ns: about 14 ns a packet here)."""
    return libbpf.jiffies() * tick_ns()


monotonic_coarse_ns = program_clock_ns   # the old name, for code written before


@functools.cache
def flow_stamp_shift() -> int:
    """log2 of the ticks in a unit of a flow_cache way's stamp (bpf/dr_lb_consts.h
    FLOW_STAMP_SHIFT): the most that keeps FLOW_SYNC_MAX_NS 32 units or more (4 ticks at
    HZ=250, 16 at HZ=1000), so that a sync is timed to a 32nd and a stamp wraps after
    2^FLOW_STAMP_BITS units (a minute or more)."""
    ticks = abi.CONST["FLOW_SYNC_MAX_NS"] // tick_ns()
    return max(0, (ticks // 32).bit_length() - 1)


def map_memory(map_fd: int, size: int, writable: bool = False):
    """The values of an mmapable array map (BPF_F_MMAPABLE), `size` bytes of them, mapped
    into this process (whole pages): read, or written, in place, with no copy out of the
    kernel."""
    import mmap
    return mmap.mmap(map_fd, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE, mmap.MAP_SHARED,
                     mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))


def _fill(obj, value):
    """A ctypes key or leaf from an int or a {field: value} of the C struct's fields."""
    if not isinstance(value, dict):
        obj.value = value
        return obj
    for name, v in value.items():
        if isinstance(v, bytes):
            ct.memmove(getattr(obj, name), v, len(v))
        elif isinstance(v, dict):
            _fill(getattr(obj, name), v)
        elif isinstance(v, list):
            array = getattr(obj, name)
            for i, item in enumerate(v):
                array[i] = item
        else:
            setattr(obj, name, v)
    return obj


@dataclass
class Stats:
    conns: int = 0
    packets: int = 0
    bytes: int = 0


def _sum(stats) -> Stats:
    out = Stats()
    for s in stats:
        out.conns, out.packets, out.bytes = (out.conns + s.conns, out.packets + s.packets,
                                             out.bytes + s.bytes)
    return out


@dataclass
class ConnCounts:
    per_real: dict[int, tuple[int, int]]   # real_id -> (active, inactive)
    entries: int                           # in conn_table
    half_open: int = 0                     # in syn_table
    udp: int = 0                           # in udp_table
    kept: int = 0      # conn_table entries this program found at its start (lb/director/monitor.py)
    inserts: int = 0   # conn_table_insert read just before the table was (lb/director/monitor.py)


class Dataplane:
    """One compiled, loaded instance of bpf/dr_lb.c and its maps."""

    def __init__(self, conn_table_size: int = abi.CONST["CONN_TABLE_SIZE"],
                 pin_dir: Path | None = None, bpf_dir: Path | None = None,
                 hash_seed: int | None = None):
        """Compile and load. With `pin_dir` (a bpffs directory), the maps that outlive the
        process (lb/director/kept.py) are pinned there, or reused if already pinned.
        `bpf_dir`: another copy of bpf/ (bench/ab.py compares two builds); the ABI stays
        this package's. `hash_seed`: the secret that places connections in syn_table and
        flow_cache; a kept syn_table needs the seed that placed its entries (kept.py),
        otherwise a random one."""
        bcc = import_bcc()
        problem = headers_problem()
        if problem:
            raise UserError(problem)
        cpus = len(bcc.utils.get_possible_cpus())
        slots = table_slots(conn_table_size, cpus)
        self.flow_cache_cpus, self.flow_cache_log2 = flow_cache_shape(conn_table_size, cpus)
        self.conn_table_slots = slots["conn_table"]
        self.syn_table_sets = slots["syn_table"]
        self.syn_spill_slots = slots["syn_spill"]
        self.udp_table_slots = slots["udp_table"]
        bpf_dir = bpf_dir or abi.BPF_DIR
        cflags = [f"-I{bpf_dir}", f"-DCONN_TABLE_SIZE={self.conn_table_slots}",
                  f"-DSYN_TABLE_SETS={self.syn_table_sets}",
                  f"-DSYN_SPILL_SIZE={self.syn_spill_slots}",
                  f"-DUDP_TABLE_SIZE={self.udp_table_slots}",
                  f"-DFLOW_CACHE_CPUS={self.flow_cache_cpus}",
                  f"-DFLOW_CACHE_LOG2={self.flow_cache_log2}",
                  f"-DTICK_NS={tick_ns()}ULL",
                  f"-DFLOW_STAMP_SHIFT={flow_stamp_shift()}"]
        if pin_dir is not None:
            cflags.append(f'-DDRLB_PIN_DIR="{pin_dir}"')
        self.pin_dir = pin_dir
        try:
            self.bpf = bcc.BPF(src_file=str(bpf_dir / abi.PROGRAM.name).encode(),
                               cflags=cflags)
            self.fn = self.bpf.load_func(abi.PROGRAM_NAME.encode(), bcc.BPF.XDP)
            # The new-connection path of the schedulers other than plain wrr/rr, which
            # xdp_main reaches by a tail call (bpf/dr_lb.c handle_l4).
            self.sched_fn = self.bpf.load_func(abi.SCHED_PROGRAM_NAME.encode(), bcc.BPF.XDP)
            self.bpf[b"sched_prog"][ct.c_int(0)] = ct.c_int(self.sched_fn.fd)
        except Exception as e:  # bcc raises bare Exception
            raise UserError(f"the XDP program did not compile or load: {e}") from None
        self.conn_table_size = conn_table_size
        # (map, id) -> what zero_stats() took away, so that totals never go back (metrics).
        self.zeroed: dict[tuple[str, int], Stats] = {}
        # svc_id -> its real_ids, dropped ones included (layout.removed_reals; ids are not
        # reused while the program runs): the service's stats are the sum of theirs
        # (real_stats; the program keeps no second count). Written by write().
        self._svc_reals: dict[int, list[int]] = {}
        self.attached: tuple[int, str] | None = None   # (ifindex, mode)
        # reals rows hold the layout's fields and the connection-count correction, which
        # the monitor's sweeps write; both writers take this lock.
        self._reals_lock = threading.Lock()
        self._real_rows: dict[int, dict] = {}
        self._fix: dict[int, tuple[int, int]] = {}
        self._flow_gen = 0   # settings.flow_gen last written (write, forget_flows)
        self._flow_aged = 0  # units it was advanced by since flow_cache was last cleared
        self._flow_mmap = None   # flow_cache, mapped on first use (_flow_ways)
        self._flow_swept_at = 0.0   # time.monotonic() of the last sweep_flows
        self.hash_seed = secrets.randbits(64) if hash_seed is None else hash_seed
        self._syn_mmap = None   # syn_table, mapped on first read (_syn_entries)

    @property
    def prog_fd(self) -> int:
        return self.fn.fd

    def map(self, name: str):
        return self.bpf[name.encode()]

    # ---- attach ----------------------------------------------------------------------
    def attach(self, ifindex: int, mode: str, replace: tuple[int, str] | None = None) -> str:
        """Attach in `mode` ("native", "generic" or "auto"); returns the mode obtained.

        With `replace` = (program id, its mode), put ours in place of that program in one
        step (XDP_FLAGS_REPLACE), so that no packet meets the interface without one; "auto"
        then keeps the old program's mode."""
        if replace:
            old_id, old_mode = replace
            if mode in ("auto", old_mode):
                old_fd = self._program_fd(old_id)
                try:
                    libbpf.xdp_replace(ifindex, self.prog_fd, old_mode, old_fd)
                except OSError as e:
                    raise UserError(f"cannot replace the XDP program (id {old_id}, "
                                    f"{old_mode}): {e.strerror}") from None
                finally:
                    os.close(old_fd)
                self.attached = (ifindex, old_mode)
                self._pin_program()
                return old_mode
            # Another mode cannot be swapped in one step: remove, then attach.
            libbpf.xdp_detach(ifindex, old_mode)
        tries = ["native", "generic"] if mode == "auto" else [mode]
        errors = []
        for m in tries:
            try:
                libbpf.xdp_attach(ifindex, self.prog_fd, m)
            except OSError as e:
                errors.append(f"{m}: {e.strerror}")
                continue
            self.attached = (ifindex, m)
            self._pin_program()
            return m
        raise UserError(f"cannot attach XDP ({'; '.join(errors)})")

    # The attached program is pinned beside the kept maps, so that a successor (`up
    # --replace`, after a crash too) takes it over by path (`bpftool prog show pinned`
    # finds it too); by id (BPF_PROG_GET_FD_BY_ID) is the fallback.
    PROGRAM_PIN = kept.PROGRAM_PIN

    def _pin_program(self) -> None:
        if self.pin_dir is None:
            return
        path = self.pin_dir / self.PROGRAM_PIN
        try:
            path.unlink(missing_ok=True)
            libbpf.obj_pin(self.prog_fd, str(path))
        except OSError as e:   # a successor then needs CAP_SYS_ADMIN; keep balancing
            print(f"dr-lb: warning: cannot pin the program at {path}: {e}", flush=True)

    def _program_fd(self, prog_id: int) -> int:
        """An fd for the attached program `prog_id`: from its pin when the pin is that
        program, else by its id."""
        if self.pin_dir is not None:
            try:
                fd = libbpf.pinned_fd(str(self.pin_dir / self.PROGRAM_PIN))
            except OSError:
                fd = None
            if fd is not None:
                if libbpf.prog_id(fd) == prog_id:
                    return fd
                os.close(fd)
        try:
            return libbpf.prog_fd_by_id(prog_id)
        except OSError as e:
            if e.errno != errno.EPERM:
                raise
            raise UserError(f"cannot take over the XDP program (id {prog_id}): dr-lb did "
                            "not pin it, and taking a program by its id needs "
                            "CAP_SYS_ADMIN; run as full root, or `dr-lb down` it first") \
                from None

    def _unpin_program(self) -> None:
        """Remove the program's pin if it is ours (not a successor's)."""
        if self.pin_dir is None:
            return
        path = self.pin_dir / self.PROGRAM_PIN
        try:
            fd = libbpf.pinned_fd(str(path))
        except OSError:
            return
        try:
            if libbpf.prog_id(fd) == libbpf.prog_id(self.prog_fd):
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def detach(self) -> bool:
        """Detach our program, and only ours: after a takeover it is someone else's.
        Whether ours was still there and is now detached."""
        if self.attached:
            ifindex, mode = self.attached
            self.attached = None
            try:
                libbpf.xdp_detach(ifindex, mode, only_fd=self.prog_fd)
                self._unpin_program()
                return True
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENODEV, errno.ENOENT):
                    raise
        return False

    # ---- programming the maps ----------------------------------------------------------
    def write(self, layout: Layout) -> None:
        """Make the maps hold what `layout` says.

        Packets keep flowing meanwhile, so the order matters: the WRR cycles go to the
        half of wrr_seq that no service points at, and only then do the services switch
        to them (each services entry changes atomically).
        """
        self._put("settings", [(0, dict(layout.settings_row(), flow_gen=self._next_flow_gen(),
                                        hash_seed=self.hash_seed))])
        svc_reals: dict[int, list[int]] = {}
        for r in [*layout.reals, *layout.removed_reals]:
            svc_reals.setdefault(r.svc_id, []).append(r.real_id)
        self._svc_reals = svc_reals
        with self._reals_lock:
            self._real_rows = dict(layout.real_rows())
            self._put("reals", [(i, self._with_fix(i, row)) for i, row in self._real_rows.items()])
        self._put("wrr_seq", layout.wrr_rows())
        self._set_bits("vip_filter", layout.vip_filter_words())   # before the services
        self._put("sched_table", layout.sched_rows())
        self._put("services", layout.service_rows(), prune=True)
        self._put("vips", layout.vip_rows(), prune=True)

    def _with_fix(self, real_id: int, row: dict) -> dict:
        active, inactive = self._fix.get(real_id, (0, 0))
        return dict(row, fix_active=active, fix_inactive=inactive)

    BATCH = 1024   # rows from which an array's ints are written in one syscall

    def _put(self, name: str, rows, prune: bool = False) -> None:
        """Write (key, value) rows, keys and values given as ints or {field: value};
        with prune, delete every other key."""
        table = self.map(name)
        rows = list(rows)
        if not prune and len(rows) >= self.BATCH and all(
                not isinstance(k, dict) and not isinstance(v, dict) for k, v in rows[:8]):
            ks, vs = zip(*rows)
            table.items_update_batch((table.Key * len(rows))(*ks), (table.Leaf * len(rows))(*vs))
            return
        wanted = set()
        for key, value in rows:
            k, v = _fill(table.Key(), key), _fill(table.Leaf(), value)
            table[k] = v
            wanted.add(bytes(k))
        if prune:
            for k in list(table.keys()):
                if bytes(k) not in wanted:
                    del table[k]

    def _set_bits(self, name: str, words: dict[int, int]) -> None:
        """OR bits into an array of u64 words (bits are only ever added)."""
        table = self.map(name)
        for word, bits in words.items():
            key = ct.c_uint32(word)
            old = table[key].value
            if old | bits != old:
                table[key] = ct.c_uint64(old | bits)

    def write_conn_fix(self, fixes: dict[int, tuple[int, int]]) -> int:
        """Set each real server's correction (active, inactive) that the program adds to
        its own connection count (real_conns); a real server left out gets (0, 0).
        Writes only the rows that change; returns how many."""
        written = 0
        with self._reals_lock:
            for real_id in set(fixes) | set(self._fix):
                new = fixes.get(real_id, (0, 0))
                if new == self._fix.get(real_id, (0, 0)) or real_id not in self._real_rows:
                    continue
                if new == (0, 0):
                    self._fix.pop(real_id, None)
                else:
                    self._fix[real_id] = new
                self._put("reals", [(real_id, self._with_fix(real_id, self._real_rows[real_id]))])
                written += 1
        return written

    def forget_flows(self) -> None:
        """Make every CPU's flow_cache way due at once (settings.flow_gen advanced by
        FLOW_GEN_STEP units, as if a sync's time had passed): needed after anything but
        the program changes conn_table or udp_table, so that no CPU follows its cached
        copy of an entry that is no longer there (or no longer the same) without reading
        the table first."""
        table = self.map("settings")
        row = table[ct.c_uint32(0)]
        if not row.flow_gen:
            return   # not written yet: the cache is void anyway (flow_sync_ns = 0)
        row.flow_gen = self._next_flow_gen()
        table[ct.c_uint32(0)] = row

    def _next_flow_gen(self) -> int:
        """settings.flow_gen advanced by FLOW_GEN_STEP (never 0: "not written yet"). A
        stamp has FLOW_STAMP_BITS, so advances that add up to FLOW_STALE_UNITS would bring
        a way untouched since back towards fresh: flow_cache is cleared first (every
        CPU's flows then read their table entries once, as after a sync)."""
        step = abi.CONST["FLOW_GEN_STEP"]
        if self._flow_aged + step >= abi.CONST["FLOW_STALE_UNITS"]:
            self._flow_ways()[:] = 0
            self._flow_aged = 0
        self._flow_aged += step
        self._flow_gen = (self._flow_gen + step) % 2**32 or step
        return self._flow_gen

    def _flow_ways(self):
        """flow_cache's ways as one array of uint64, in place (the array is mmapable)."""
        import numpy as np
        size = (self.flow_cache_cpus << self.flow_cache_log2) * \
            abi.ffi.sizeof("struct flow_set")
        if self._flow_mmap is None:
            self._flow_mmap = map_memory(self.map("flow_cache").map_fd, size, writable=True)
        return np.frombuffer(self._flow_mmap, np.uint64, size // 8)

    def flow_stamp_now(self) -> int:
        """The stamp a way stored now gets (bpf/dr_lb.c flow_stamp)."""
        units = (libbpf.jiffies() % 2**32) >> flow_stamp_shift()
        return (units + self._flow_gen) % (1 << abi.CONST["FLOW_STAMP_BITS"])

    FLOW_SWEEP_S = 4.0   # well under FLOW_STALE_UNITS' 16 s (a unit is 16 ms or less)

    def sweep_flows(self, every_s: float = 0.0) -> int:
        """Clear flow_cache's ways FLOW_STALE_UNITS old or older (how many), unless the
        last sweep was less than `every_s` ago: a way's stamp wraps after
        2^FLOW_STAMP_BITS units (a minute or more), and one left untouched that long would
        look fresh again. The daemon's loop calls it with FLOW_SWEEP_S (a few ms for the
        default table's 4 MiB). A way the program refills meanwhile may be cleared with
        them: a miss, and the table's path refills it."""
        now = time.monotonic()
        if now - self._flow_swept_at < every_s:
            return 0
        self._flow_swept_at = now
        ways = self._flow_ways()
        bits = abi.CONST["FLOW_STAMP_BITS"]
        stamps = (ways >> abi.CONST["FLOW_REAL_BITS"]) & ((1 << bits) - 1)
        age = (self.flow_stamp_now() - stamps.astype("int64")) % (1 << bits)
        stale = (ways != 0) & (age >= abi.CONST["FLOW_STALE_UNITS"])
        ways[stale] = 0
        return int(stale.sum())

    def clear_state(self) -> None:
        """Forget connections, persistence and counters (tests start from zero)."""
        self.forget_flows()
        for name in ("conn_table", "syn_spill", "udp_table", "persist_table"):
            self._delete_all(name)
        self._zero_array("syn_table", self.syn_table_sets)
        for name in ("real_stats", "counters", "wrr_pos", "real_conns",
                     "flow_meter"):
            self.map(name).clear()   # arrays: zeroes every slot
        self.write_conn_fix({})

    def _delete_all(self, name: str) -> None:
        """Empty a hash map in a few syscalls: bcc's clear() deletes key by key, and each
        delete sends its next-key walk back to the start (minutes for 100,000 entries)."""
        table = self.map(name)
        capacity = {"conn_table": self.conn_table_slots, "syn_spill": self.syn_spill_slots,
                    "udp_table": self.udp_table_slots}.get(name, abi.CONST["PERSIST_TABLE_SIZE"])
        keys, _, n = libbpf.map_dump(table.map_fd, ct.sizeof(table.Key), ct.sizeof(table.Leaf),
                                     capacity)
        if n:
            array = (table.Key * n).from_buffer_copy(bytes(keys[:n * ct.sizeof(table.Key)]))
            table.items_delete_batch(array)

    # ---- reading ---------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        table = self.map("counters")
        return {name: int(sum(table[ct.c_uint32(idx)])) for name, idx in abi.COUNTERS.items()}

    def _stats(self, name: str, index: int) -> Stats:
        per_cpu = self.map(name)[ct.c_uint32(index)]
        return Stats(conns=sum(v.conns for v in per_cpu),
                     packets=sum(v.packets for v in per_cpu),
                     bytes=sum(v.bytes for v in per_cpu))

    def service_stats(self, svc_id: int) -> Stats:
        """A service's stats: the sum of its real servers', those dropped from the config
        included (their traffic was the service's, as IPVS counts it)."""
        return _sum(self.real_stats(i) for i in self._svc_reals.get(svc_id, ()))

    def real_stats(self, real_id: int) -> Stats:
        return self._stats("real_stats", real_id)

    def connections(self, half_open: bool = True):
        """The connections as two numpy record arrays (keys, values) with the layouts of
        struct conn_key and conn_value, expired entries included: conn_table's, then
        (with half_open) syn_table's, then udp_table's."""
        import numpy as np
        parts = [self._dump("conn_table", self.conn_table_slots)]
        if half_open:
            parts.append(self.half_open())
        parts.append(self._dump("udp_table", self.udp_table_slots))
        return (np.concatenate([k for k, _ in parts]), np.concatenate([v for _, v in parts]))

    def _dump(self, name: str, capacity: int):
        import numpy as np
        table = self.map(name)
        keys, values, n = libbpf.map_dump(table.map_fd, ct.sizeof(table.Key),
                                          ct.sizeof(table.Leaf), capacity)
        return (np.frombuffer(keys, abi.numpy_dtype("conn_key"), n),
                np.frombuffer(values, abi.numpy_dtype("conn_value"), n))

    def _syn_entries(self):
        """syn_table's entries as a (n, sizeof(struct syn_entry)) array of bytes, read in
        place: the table is mmapable, so no copy out of the kernel (a batch copy of its
        8 MiB made every sweep slow enough that `status` stopped counting afresh)."""
        import numpy as np
        if self._syn_mmap is None:
            size = self.syn_table_sets * abi.ffi.sizeof("struct syn_set")
            self._syn_mmap = map_memory(self.map("syn_table").map_fd, size)
        entry = abi.ffi.sizeof("struct syn_entry")
        ways = self.syn_table_sets * abi.CONST["SYN_TABLE_WAYS"]
        return np.frombuffer(self._syn_mmap, np.uint8, ways * entry).reshape(ways, entry)

    @staticmethod
    def _split(entries):
        """Rows of struct syn_entry bytes -> (conn_key, conn_value) record arrays."""
        key_size = abi.ffi.sizeof("struct conn_key")
        return (entries[:, :key_size].copy().view(abi.numpy_dtype("conn_key")).ravel(),
                entries[:, key_size:].copy().view(abi.numpy_dtype("conn_value")).ravel())

    def half_open(self):
        """The half-open connections as connections() gives them (keys, values), expired
        ones included: every entry of syn_table's sets whose key is not free, then
        syn_spill's."""
        import numpy as np
        entries = self._syn_entries()
        keys, values = self._split(
            entries[np.flatnonzero(entries[:, abi.ffi.offsetof("struct conn_key", "proto")])])
        spill_keys, spill_values = self._dump("syn_spill", self.syn_spill_slots)
        return np.concatenate([keys, spill_keys]), np.concatenate([values, spill_values])

    def half_open_slot(self, key) -> tuple[int, int] | None:
        """(set, way) of syn_table holding the connection whose conn_key is `key` (any
        object with its fields), or None. A scan of the table: for tests and tools."""
        import numpy as np
        ways = abi.CONST["SYN_TABLE_WAYS"]
        keys, _ = self._split(self._syn_entries())
        hit = np.flatnonzero((keys["saddr"] == key.saddr) & (keys["daddr"] == key.daddr) &
                             (keys["sport"] == key.sport) & (keys["dport"] == key.dport) &
                             (keys["proto"] == key.proto) & (keys["proto"] != 0))
        return (int(hit[0]) // ways, int(hit[0]) % ways) if hit.size else None

    def _zero_array(self, name: str, entries: int) -> None:
        """Every entry of an array map zeroed, in one syscall."""
        table = self.map(name)
        keys = (table.Key * entries)(*range(entries))
        table.items_update_batch(keys, (table.Leaf * entries)())

    def live_timeouts(self):
        """The idle timeout of each connection state, in ns, as the program reads them."""
        import numpy as np
        return np.array(self.map("settings")[ct.c_uint32(0)].timeout_ns, dtype=np.int64)

    def live(self, values):
        """Which of `values` (from connections()) have not passed their state's timeout."""
        import numpy as np
        idle = program_clock_ns() - values["last_seen_ns"].astype(np.int64)
        return idle <= self.live_timeouts()[values["state"] & (abi.CONN_STATE_SLOTS - 1)]

    def conn_counts(self) -> ConnCounts:
        """(active, inactive) per real_id among live entries, as ipvsadm counts them
        (ESTABLISHED is active, every other live state inactive), and the number of
        entries the table holds, expired ones included."""
        import numpy as np
        _, main = self._dump("conn_table", self.conn_table_slots)
        _, half_open = self.half_open()
        _, udp = self._dump("udp_table", self.udp_table_slots)
        values = np.concatenate([main, half_open, udp])
        live = self.live(values)
        established = values["state"] == abi.STATE["ESTABLISHED"]
        ids = values["real_id"]
        active = np.bincount(ids[live & established], minlength=abi.CONST["MAX_REALS"])
        inactive = np.bincount(ids[live & ~established], minlength=abi.CONST["MAX_REALS"])
        return ConnCounts({int(i): (int(active[i]), int(inactive[i]))
                           for i in np.flatnonzero(active + inactive)}, len(main),
                          len(half_open), len(udp))

    def referenced_ids(self) -> tuple[set[int], set[int]]:
        """(svc_ids, real_ids) that entries of conn_table and persist_table refer to."""
        import numpy as np
        _, values = self.connections()
        table = self.map("persist_table")
        _, pvalues, n = libbpf.map_dump(table.map_fd, ct.sizeof(table.Key),
                                        ct.sizeof(table.Leaf), abi.CONST["PERSIST_TABLE_SIZE"])
        pv = np.frombuffer(pvalues, abi.numpy_dtype("persist_value"), n)
        return ({int(i) for i in np.unique(values["svc_id"])},
                {int(i) for i in np.unique(np.concatenate([values["real_id"],
                                                           pv["real_id"]]))})

    def counted_conns(self) -> dict[int, tuple[int, int]]:
        """(active, inactive) per real_id as the program counts them (real_conns),
        before the correction; real servers at (0, 0) left out."""
        import numpy as np
        table = self.map("real_conns")
        _, values, n = libbpf.map_dump(table.map_fd, ct.sizeof(table.Key),
                                       ct.sizeof(table.Leaf), abi.CONST["MAX_REALS"])
        v = np.frombuffer(values, abi.numpy_dtype("real_conns"), n)
        nonzero = np.flatnonzero((v["active"] != 0) | (v["inactive"] != 0))
        return {int(i): (int(v["active"][i]), int(v["inactive"][i])) for i in nonzero}

    def conn_fix(self) -> dict[int, tuple[int, int]]:
        """The corrections last written (write_conn_fix)."""
        with self._reals_lock:
            return dict(self._fix)

    def overloaded(self) -> set[int]:
        """real_ids whose OVERLOAD flag the program has set (connection thresholds)."""
        import numpy as np
        table = self.map("real_conns")
        _, values, n = libbpf.map_dump(table.map_fd, ct.sizeof(table.Key),
                                       ct.sizeof(table.Leaf), abi.CONST["MAX_REALS"])
        v = np.frombuffer(values, abi.numpy_dtype("real_conns"), n)
        return {int(i) for i in np.flatnonzero(v["overloaded"])}

    def zero_stats(self, svc_ids: list[int], real_ids: list[int]) -> None:
        """Packet, byte and connection counters of these services (all their real servers,
        dropped ones included) and real servers to 0."""
        table = self.map("real_stats")
        of_services = [r for s in svc_ids for r in self._svc_reals.get(s, ())]
        for i in dict.fromkeys([*real_ids, *of_services]):
            before = self.real_stats(i)
            table[ct.c_uint32(i)] = table.Leaf()   # per-CPU: every CPU's slot zeroed
            z = self.zeroed.setdefault(("real_stats", i), Stats())
            z.conns, z.packets, z.bytes = (z.conns + before.conns,
                                           z.packets + before.packets,
                                           z.bytes + before.bytes)

    def zeroed_stats(self, name: str, index: int) -> Stats:
        """What zero_stats() has taken from this entry ("real_stats", a real_id) or service
        ("svc_stats", a svc_id: its servers') since the program was loaded."""
        if name == "svc_stats":
            return _sum(self.zeroed_stats("real_stats", i)
                        for i in self._svc_reals.get(index, ()))
        return self.zeroed.get((name, index), Stats())

    # ---- running packets without a network -----------------------------------------------
    def test_run(self, packet: bytes, repeat: int = 1) -> libbpf.TestRun:
        return libbpf.test_run(self.prog_fd, packet, repeat=repeat)

    def close(self) -> bool:
        """Detach (if ours is still attached) and unload; whether it detached."""
        try:
            return self.detach()
        finally:
            for mapped in (self._syn_mmap, self._flow_mmap):
                if mapped is not None:
                    mapped.close()
            self.bpf.cleanup()
