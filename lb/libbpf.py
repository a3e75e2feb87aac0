"""The few libbpf calls bcc does not wrap, through cffi: test runs and a bare XDP_PASS."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from functools import cache

import cffi

ffi = cffi.FFI()
ffi.cdef("""
struct bpf_test_run_opts {
    size_t sz;
    const void *data_in;
    void *data_out;
    uint32_t data_size_in;
    uint32_t data_size_out;
    const void *ctx_in;
    void *ctx_out;
    uint32_t ctx_size_in;
    uint32_t ctx_size_out;
    uint32_t retval;
    int repeat;
    uint32_t duration;
    uint32_t flags;
    uint32_t cpu;
    uint32_t batch_size;
};
struct xdp_md {
    uint32_t data;
    uint32_t data_end;
    uint32_t data_meta;
    uint32_t ingress_ifindex;
    uint32_t rx_queue_index;
    uint32_t egress_ifindex;
};
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);
int bpf_prog_load(int prog_type, const char *prog_name, const char *license,
                  const void *insns, size_t insn_cnt, const void *opts);
int bpf_xdp_attach(int ifindex, int prog_fd, uint32_t flags, const void *opts);
int bpf_xdp_detach(int ifindex, uint32_t flags, const void *opts);
int bpf_prog_get_fd_by_id(uint32_t id);
struct bpf_xdp_attach_opts {
    size_t sz;
    int old_prog_fd;
};
struct bpf_prog_info_head {     /* the first fields of struct bpf_prog_info */
    uint32_t type;
    uint32_t id;
    uint8_t tag[8];
    uint32_t jited_prog_len;
    uint32_t xlated_prog_len;
    uint64_t jited_prog_insns;
    uint64_t xlated_prog_insns;
    uint64_t load_time;
    uint32_t created_by_uid;
    uint32_t nr_map_ids;
    uint64_t map_ids;
    char name[16];
};
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, uint32_t *info_len);
int bpf_obj_get(const char *pathname);
int bpf_obj_pin(int fd, const char *pathname);
struct bpf_map_info_head {      /* the first fields of struct bpf_map_info */
    uint32_t type;
    uint32_t id;
    uint32_t key_size;
    uint32_t value_size;
    uint32_t max_entries;
    uint32_t map_flags;
    char name[16];
};
int bpf_enable_stats(int type);
int bpf_map_create(int map_type, const char *map_name, uint32_t key_size,
                   uint32_t value_size, uint32_t max_entries, const void *opts);
struct bpf_map_batch_opts {
    size_t sz;
    uint64_t elem_flags;
    uint64_t flags;
};
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                         uint32_t *count, const struct bpf_map_batch_opts *opts);
int bpf_map_update_batch(int fd, const void *keys, const void *values, uint32_t *count,
                         const struct bpf_map_batch_opts *opts);
""")

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
ACTIONS = {XDP_ABORTED: "XDP_ABORTED", XDP_DROP: "XDP_DROP", XDP_PASS: "XDP_PASS",
           XDP_TX: "XDP_TX", XDP_REDIRECT: "XDP_REDIRECT"}
BPF_PROG_TYPE_XDP = 6
BPF_F_TEST_XDP_LIVE_FRAMES = 2
XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
XDP_FLAGS_REPLACE = 16
MODE_FLAGS = {"generic": XDP_FLAGS_SKB_MODE, "native": XDP_FLAGS_DRV_MODE}


@cache
def _lib():
    return ffi.dlopen("libbpf.so.1")


@dataclass
class TestRun:
    action: int
    data: bytes
    duration_ns: int

    @property
    def verdict(self) -> str:
        return ACTIONS.get(self.action, str(self.action))


def test_run(prog_fd: int, packet: bytes, repeat: int = 1, live_ifindex: int = 0,
             batch_size: int = 64) -> TestRun:
    """Run one packet through a loaded XDP program (bpf_prog_test_run_opts).

    With live_ifindex, frames are really sent out of that interface
    (BPF_F_TEST_XDP_LIVE_FRAMES): the traffic generator of bench/.
    """
    opts = ffi.new("struct bpf_test_run_opts *")
    opts.sz = ffi.sizeof("struct bpf_test_run_opts")
    data_in = ffi.from_buffer(packet)
    data_out = ffi.new("char[]", len(packet) + 256)
    opts.data_in = data_in
    opts.data_size_in = len(packet)
    opts.repeat = repeat
    ctx = None
    if live_ifindex:
        ctx = ffi.new("struct xdp_md *")
        ctx.data_end = len(packet)
        ctx.ingress_ifindex = live_ifindex
        opts.ctx_in = ctx
        opts.ctx_size_in = ffi.sizeof("struct xdp_md")
        opts.flags = BPF_F_TEST_XDP_LIVE_FRAMES
        opts.batch_size = batch_size
    else:
        opts.data_out = data_out
        opts.data_size_out = len(packet) + 256
    err = _lib().bpf_prog_test_run_opts(prog_fd, opts)
    if err:
        raise OSError(-err, f"bpf_prog_test_run_opts: {os.strerror(-err)}")
    out = bytes(ffi.buffer(data_out, opts.data_size_out)) if not live_ifindex else b""
    return TestRun(action=opts.retval, data=out, duration_ns=opts.duration)


def map_dump(map_fd: int, key_size: int, value_size: int, capacity: int,
             chunk: int = 262144) -> tuple[memoryview, memoryview, int]:
    """Every (key, value) of a hash map in a few syscalls (BPF_MAP_LOOKUP_BATCH): the keys
    and the values as contiguous buffers, and how many there are."""
    keys = ffi.new("char[]", max(capacity, 1) * key_size)
    values = ffi.new("char[]", max(capacity, 1) * value_size)
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    token = ffi.new("char[]", max(key_size, 8))
    count = ffi.new("uint32_t *")
    total, first = 0, True
    while total < capacity:
        count[0] = min(chunk, capacity - total)
        err = _lib().bpf_map_lookup_batch(map_fd, ffi.NULL if first else token, token,
                                          keys + total * key_size,
                                          values + total * value_size, count, opts)
        total += count[0]
        first = False
        if err == -errno.ENOENT:   # the end of the map
            break
        if err:
            raise OSError(-err, f"bpf_map_lookup_batch: {os.strerror(-err)}")
    return (memoryview(ffi.buffer(keys, total * key_size)),
            memoryview(ffi.buffer(values, total * value_size)), total)


def load_xdp_return(action: int = XDP_PASS) -> int:
    """A two-instruction XDP program that returns `action`; returns its fd.

    With XDP_PASS it is what native XDP_TX on a veth needs on the peer (KERNEL-NOTES);
    with XDP_DROP it is the sink that bench/ transmits into.
    """
    insns = bytes([0xb7, 0, 0, 0, action, 0, 0, 0,    # r0 = action
                   0x95, 0, 0, 0, 0, 0, 0, 0])         # exit
    fd = _lib().bpf_prog_load(BPF_PROG_TYPE_XDP, b"drlb_return", b"GPL", insns, 2, ffi.NULL)
    if fd < 0:
        raise OSError(-fd, f"loading an XDP program: {os.strerror(-fd)}")
    return fd


BPF_FUNC_JIFFIES64 = 118


@cache
def _jiffies_prog() -> int:
    """An XDP program that writes bpf_jiffies64() into the first 8 bytes of its frame."""
    insns = bytes([
        0xbf, 0x16, 0, 0, 0, 0, 0, 0,                     # r6 = r1 (ctx)
        0x85, 0, 0, 0, BPF_FUNC_JIFFIES64, 0, 0, 0,       # call bpf_jiffies64
        0x61, 0x62, 0, 0, 0, 0, 0, 0,                     # r2 = ctx->data
        0x61, 0x63, 4, 0, 0, 0, 0, 0,                     # r3 = ctx->data_end
        0xbf, 0x24, 0, 0, 0, 0, 0, 0,                     # r4 = r2
        0x07, 0x04, 0, 0, 8, 0, 0, 0,                     # r4 += 8
        0x2d, 0x34, 1, 0, 0, 0, 0, 0,                     # if r4 > r3 goto +1
        0x7b, 0x02, 0, 0, 0, 0, 0, 0,                     # *(u64 *)(r2 + 0) = r0
        0xb7, 0, 0, 0, XDP_PASS, 0, 0, 0,                 # r0 = XDP_PASS
        0x95, 0, 0, 0, 0, 0, 0, 0])                       # exit
    fd = _lib().bpf_prog_load(BPF_PROG_TYPE_XDP, b"drlb_jiffies", b"GPL", insns,
                              len(insns) // 8, ffi.NULL)
    if fd < 0:
        raise OSError(-fd, f"loading the jiffies program: {os.strerror(-fd)}")
    return fd


def jiffies() -> int:
    """The kernel's jiffies now: the clock the XDP program reads (bpf_jiffies64, which the
    verifier inlines into one load)."""
    out = test_run(_jiffies_prog(), bytes(64))
    return int.from_bytes(out.data[:8], "little")


def xdp_attach(ifindex: int, prog_fd: int, mode: str) -> None:
    """Attach in this network namespace; mode "native" or "generic"."""
    err = _lib().bpf_xdp_attach(ifindex, prog_fd,
                                MODE_FLAGS[mode] | XDP_FLAGS_UPDATE_IF_NOEXIST, ffi.NULL)
    if err:
        raise OSError(-err, os.strerror(-err))


def xdp_replace(ifindex: int, prog_fd: int, mode: str, old_prog_fd: int) -> None:
    """Atomically put prog_fd in place of old_prog_fd, which must be the interface's program
    in `mode` (otherwise OSError EEXIST): the interface is never without a program."""
    opts = ffi.new("struct bpf_xdp_attach_opts *")
    opts.sz = ffi.sizeof("struct bpf_xdp_attach_opts")
    opts.old_prog_fd = old_prog_fd
    err = _lib().bpf_xdp_attach(ifindex, prog_fd, MODE_FLAGS[mode] | XDP_FLAGS_REPLACE, opts)
    if err:
        raise OSError(-err, os.strerror(-err))


def xdp_detach(ifindex: int, mode: str, only_fd: int | None = None) -> None:
    """Detach the interface's program; with only_fd, only if that is the one attached
    (otherwise OSError EEXIST), so that nobody removes a successor's program."""
    opts = ffi.NULL
    flags = MODE_FLAGS[mode]
    if only_fd is not None:
        opts = ffi.new("struct bpf_xdp_attach_opts *")
        opts.sz = ffi.sizeof("struct bpf_xdp_attach_opts")
        opts.old_prog_fd = only_fd
        flags |= XDP_FLAGS_REPLACE
    err = _lib().bpf_xdp_detach(ifindex, flags, opts)
    if err:
        raise OSError(-err, os.strerror(-err))


def prog_fd_by_id(prog_id: int) -> int:
    """An fd for a loaded program (for example the one attached to an interface)."""
    fd = _lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        raise OSError(-fd, f"program id {prog_id}: {os.strerror(-fd)}")
    return fd


def prog_id(fd: int) -> int:
    """The id of the program behind `fd`."""
    info = ffi.new("struct bpf_prog_info_head *")
    size = ffi.new("uint32_t *", ffi.sizeof("struct bpf_prog_info_head"))
    err = _lib().bpf_obj_get_info_by_fd(fd, info, size)
    if err:
        raise OSError(-err, f"program fd {fd}: {os.strerror(-err)}")
    return info.id


def obj_pin(fd: int, path: str) -> None:
    """Pin a program or map at `path` on a bpffs."""
    err = _lib().bpf_obj_pin(fd, os.fsencode(path))
    if err:
        raise OSError(-err, f"pinning at {path}: {os.strerror(-err)}")


BPF_MAP_TYPE_ARRAY = 2


def array_map(name: str, value_size: int, entries: int) -> int:
    """A new BPF array (u32 keys), for an array of maps; the caller closes the fd."""
    fd = _lib().bpf_map_create(BPF_MAP_TYPE_ARRAY, name.encode(), 4, value_size, entries,
                               ffi.NULL)
    if fd < 0:
        raise OSError(-fd, f"bpf_map_create: {os.strerror(-fd)}")
    return fd


BPF_STATS_RUN_TIME = 0
# Offsets in struct bpf_prog_info (uapi/linux/bpf.h, stable ABI): run_time_ns, run_cnt.
_RUN_TIME_OFFSET, _RUN_CNT_OFFSET, _INFO_LEN = 192, 200, 208


def enable_stats() -> int:
    """Turn on the kernel's per-program run time and count (what sysctl
    kernel.bpf_stats_enabled does) for as long as the returned fd stays open."""
    fd = _lib().bpf_enable_stats(BPF_STATS_RUN_TIME)
    if fd < 0:
        raise OSError(-fd, f"BPF_ENABLE_STATS: {os.strerror(-fd)}")
    return fd


def run_stats(prog_fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program: its in-situ cost, counted while stats are on."""
    info = ffi.new("char[]", 256)
    size = ffi.new("uint32_t *", _INFO_LEN)
    err = _lib().bpf_obj_get_info_by_fd(prog_fd, info, size)
    if err:
        raise OSError(-err, f"bpf_obj_get_info_by_fd: {os.strerror(-err)}")
    raw = bytes(ffi.buffer(info, _INFO_LEN))
    return (int.from_bytes(raw[_RUN_TIME_OFFSET:_RUN_TIME_OFFSET + 8], "little"),
            int.from_bytes(raw[_RUN_CNT_OFFSET:_RUN_CNT_OFFSET + 8], "little"))


def prog_name(prog_id: int) -> str:
    """The name a loaded program was given (bcc names it after its function)."""
    fd = prog_fd_by_id(prog_id)
    try:
        info = ffi.new("struct bpf_prog_info_head *")
        size = ffi.new("uint32_t *", ffi.sizeof("struct bpf_prog_info_head"))
        err = _lib().bpf_obj_get_info_by_fd(fd, info, size)
        if err:
            raise OSError(-err, f"program id {prog_id}: {os.strerror(-err)}")
        return ffi.string(info.name).decode(errors="replace")
    finally:
        os.close(fd)


BPF_MAP_TYPES = {1: "hash", 2: "array", 5: "percpu_hash", 6: "percpu_array", 9: "lru_hash"}


def pinned_map_info(path: str) -> dict | None:
    """The attributes of the map pinned at `path` (type, key_size, value_size, max_entries,
    map_flags), or None if nothing is pinned there."""
    fd = _lib().bpf_obj_get(os.fsencode(path))
    if fd < 0:
        if -fd == errno.ENOENT:
            return None
        raise OSError(-fd, f"{path}: {os.strerror(-fd)}")
    try:
        info = ffi.new("struct bpf_map_info_head *")
        size = ffi.new("uint32_t *", ffi.sizeof("struct bpf_map_info_head"))
        err = _lib().bpf_obj_get_info_by_fd(fd, info, size)
        if err:
            raise OSError(-err, f"{path}: {os.strerror(-err)}")
        return {"type": BPF_MAP_TYPES.get(info.type, str(info.type)),
                "key_size": info.key_size, "value_size": info.value_size,
                "max_entries": info.max_entries, "map_flags": info.map_flags}
    finally:
        os.close(fd)


def pinned_fd(path: str) -> int:
    """An fd for the object pinned at `path` (close it with os.close)."""
    fd = _lib().bpf_obj_get(os.fsencode(path))
    if fd < 0:
        raise OSError(-fd, f"{path}: {os.strerror(-fd)}")
    return fd


def map_update_batch(map_fd: int, keys: bytes, values: bytes, count: int,
                     chunk: int = 65536) -> None:
    """Write `count` (key, value) pairs, laid out back to back in `keys` and `values`, in
    a few syscalls (BPF_MAP_UPDATE_BATCH): how tests and bench/ fill a table."""
    key_size, value_size = len(keys) // max(count, 1), len(values) // max(count, 1)
    kbuf, vbuf = ffi.from_buffer(keys), ffi.from_buffer(values)
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    n = ffi.new("uint32_t *")
    done = 0
    while done < count:
        n[0] = min(chunk, count - done)
        err = _lib().bpf_map_update_batch(map_fd, kbuf + done * key_size,
                                          vbuf + done * value_size, n, opts)
        if err:
            raise OSError(-err, f"bpf_map_update_batch: {os.strerror(-err)}")
        done += n[0]
