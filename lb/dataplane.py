"""The XDP program as Python sees it: compile, attach, fill maps, read counters.

This is the only module that imports bcc. Everything above it speaks in services,
real servers and counters.
"""
from __future__ import annotations

import ctypes as ct
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lb import abi, libbpf
from lb.config import Config
from lb.errors import UserError
from lb.tables import Tables



def _import_bcc():
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


# wrr_seq is written in two halves, so that a service never points at a half-written
# cycle (lb/config.py limits a config to one half).
SEQ_HALF = abi.CONST["WRR_SEQ_CAPACITY"] // 2
CLOCK_MONOTONIC_COARSE = 6   # <linux/time.h>; Python's time module does not name it


def monotonic_coarse_ns() -> int:
    """The clock bpf_ktime_get_coarse_ns() reads."""
    return time.clock_gettime_ns(getattr(time, "CLOCK_MONOTONIC_COARSE", CLOCK_MONOTONIC_COARSE))


@dataclass
class Stats:
    conns: int = 0
    packets: int = 0
    bytes: int = 0


@dataclass
class ConnCounts:
    per_real: dict[int, tuple[int, int]]   # real_id -> (active, inactive)
    entries: int


class Dataplane:
    """One compiled, loaded instance of bpf/dr_lb.c and its maps."""

    def __init__(self, conn_table_size: int = abi.CONST["CONN_TABLE_SIZE"]):
        bcc = _import_bcc()
        problem = headers_problem()
        if problem:
            raise UserError(problem)
        # The LRU keeps some free slots on each CPU's list and may evict before it is
        # full, so it gets headroom: it then holds at least conn_table_size connections.
        cpus = len(bcc.utils.get_possible_cpus())
        self.conn_table_slots = conn_table_size + cpus * abi.CONST["LRU_HEADROOM_PER_CPU"]
        cflags = [f"-I{abi.BPF_DIR}", f"-DCONN_TABLE_SIZE={self.conn_table_slots}"]
        try:
            self.bpf = bcc.BPF(src_file=str(abi.PROGRAM).encode(), cflags=cflags)
            self.fn = self.bpf.load_func(abi.PROGRAM_NAME.encode(), bcc.BPF.XDP)
        except Exception as e:  # bcc raises bare Exception
            raise UserError(f"the XDP program did not compile or load: {e}") from None
        self.conn_table_size = conn_table_size
        self._seq_half = 0                      # the half of wrr_seq services point at
        self._written_reals: dict[int, tuple[str | None, str]] = {}
        self.attached: tuple[int, str] | None = None   # (ifindex, mode)

    @property
    def prog_fd(self) -> int:
        return self.fn.fd

    def map(self, name: str):
        return self.bpf[name.encode()]

    # ---- attach ----------------------------------------------------------------------
    def attach(self, ifindex: int, mode: str) -> str:
        """Attach in `mode` ("native", "generic" or "auto"); returns the mode obtained."""
        tries = ["native", "generic"] if mode == "auto" else [mode]
        errors = []
        for m in tries:
            try:
                libbpf.xdp_attach(ifindex, self.prog_fd, m)
            except OSError as e:
                errors.append(f"{m}: {e.strerror}")
                continue
            self.attached = (ifindex, m)
            return m
        raise UserError(f"cannot attach XDP ({'; '.join(errors)})")

    def detach(self) -> None:
        """Detach our program, and only ours: after a takeover it is someone else's."""
        if self.attached:
            ifindex, mode = self.attached
            self.attached = None
            try:
                libbpf.xdp_detach(ifindex, mode, only_fd=self.prog_fd)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENODEV, errno.ENOENT):
                    raise

    # ---- programming the maps ----------------------------------------------------------
    def program(self, config: Config, tables: Tables, interface_mac: str) -> None:
        """Make the maps say what `tables` says (services, VIPs, reals, WRR, settings).

        Packets keep flowing meanwhile, so the order matters: the WRR cycles go to the
        half of wrr_seq that no service points at, and only then do the services switch
        to them (each services entry changes atomically).
        """
        self._write_settings(config, interface_mac)
        for r in tables.reals:
            self._write_real(r.real_id, r.mac, r.flags, r.server.address)
        for real_id in set(self._written_reals) - {r.real_id for r in tables.reals}:
            # Dropped from the config: its connections go on (as IPVS lets them), but no
            # persistence template may send it new ones.
            mac, address = self._written_reals[real_id]
            self._write_real(real_id, mac, abi.REAL_F_MAC_KNOWN if mac else 0, address)
        half = 1 - self._seq_half
        base = half * SEQ_HALF
        seq = self.map("wrr_seq")
        for s in tables.services:
            for i, real_id in enumerate(s.sequence):
                seq[ct.c_uint32(base + s.seq_offset + i)] = ct.c_uint32(real_id)
        services = self.map("services")
        wanted = set()
        for s in tables.services:
            key = self._svc_key(s.service.vip, s.service.port, s.service.protocol)
            leaf = services.Leaf()
            leaf.id = s.svc_id
            leaf.seq_offset = base + s.seq_offset
            leaf.seq_len = len(s.sequence)
            leaf.persist_timeout_s = s.service.persistent
            leaf.persist_mask = abi.ip_be32(s.service.persistent_netmask)
            services[key] = leaf
            wanted.add(bytes(key))
        for key in list(services.keys()):
            if bytes(key) not in wanted:
                del services[key]
        vips = self.map("vips")
        counts: dict[str, int] = {}
        for s in tables.services:
            counts[s.service.vip] = counts.get(s.service.vip, 0) + 1
        for vip, n in counts.items():
            leaf = vips.Leaf()
            leaf.services = n
            vips[vips.Key(abi.ip_be32(vip))] = leaf
        for key in list(vips.keys()):
            if abi.be32_ip(key.value) not in counts:
                del vips[key]
        self._seq_half = half

    def _write_real(self, real_id: int, mac: str | None, flags: int, address: str) -> None:
        reals = self.map("reals")
        leaf = reals.Leaf()
        if mac:
            ct.memmove(leaf.mac, abi.mac_bytes(mac), 6)
        leaf.flags = flags
        leaf.addr = abi.ip_be32(address)
        reals[ct.c_uint32(real_id)] = leaf
        self._written_reals[real_id] = (mac, address)

    def _svc_key(self, vip: str, port: int, protocol: str):
        key = self.map("services").Key()
        key.vip = abi.ip_be32(vip)
        key.port = abi.port_be16(port)
        key.proto = abi.IPPROTO[protocol]
        return key

    def _write_settings(self, config: Config, interface_mac: str) -> None:
        settings = self.map("settings")
        leaf = settings.Leaf()
        ct.memmove(leaf.mac, abi.mac_bytes(interface_mac), 6)
        leaf.flags = abi.SETTINGS_F_ICMP_ECHO if config.director.icmp_echo else 0
        seconds = {
            abi.STATE["SYN_RECV"]: abi.CONST["SYN_RECV_TIMEOUT_S"],
            abi.STATE["ESTABLISHED"]: config.timeouts.tcp,
            abi.STATE["FIN_WAIT"]: config.timeouts.tcpfin,
            abi.STATE["CLOSE"]: abi.CONST["CLOSE_TIMEOUT_S"],
            abi.STATE["UDP"]: config.timeouts.udp,
        }
        for state, s in seconds.items():
            leaf.timeout_ns[state] = s * 1_000_000_000
        settings[ct.c_uint32(0)] = leaf

    def clear_state(self) -> None:
        """Forget connections, persistence and counters (tests start from zero)."""
        for name in ("conn_table", "persist_table"):
            self.map(name).clear()
        for name in ("svc_stats", "real_stats", "counters", "wrr_pos"):
            self.map(name).clear()   # arrays: zeroes every slot

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
        return self._stats("svc_stats", svc_id)

    def real_stats(self, real_id: int) -> Stats:
        return self._stats("real_stats", real_id)

    def connections(self):
        """(key, value) of conn_table, expired entries included; batched where the
        kernel allows (much faster on a big table)."""
        table = self.map("conn_table")
        try:
            return list(table.items_lookup_batch())
        except Exception:   # bcc raises bare Exception when batch ops are unsupported
            return list(table.items())

    def conn_counts(self, config: Config) -> ConnCounts:
        """(active, inactive) per real_id among live entries, as ipvsadm counts them
        (ESTABLISHED is active, every other live state inactive), and the number of
        entries the table holds, expired ones included."""
        now = monotonic_coarse_ns()
        timeouts = self.map("settings")[ct.c_uint32(0)].timeout_ns
        counts: dict[int, list[int]] = {}
        entries = 0
        for _key, value in self.connections():
            entries += 1
            if now - value.last_seen_ns > timeouts[value.state & 7]:
                continue
            c = counts.setdefault(value.real_id, [0, 0])
            c[0 if value.state == abi.STATE["ESTABLISHED"] else 1] += 1
        return ConnCounts({k: (v[0], v[1]) for k, v in counts.items()}, entries)

    # ---- running packets without a network -----------------------------------------------
    def test_run(self, packet: bytes, repeat: int = 1) -> libbpf.TestRun:
        return libbpf.test_run(self.prog_fd, packet, repeat=repeat)

    def close(self) -> None:
        try:
            self.detach()
        finally:
            self.bpf.cleanup()
