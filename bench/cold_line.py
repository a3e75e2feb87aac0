"""What one cold cache line per packet costs on this host: `python -m bench.cold_line`.

The reflector, dr-lb, and the reflector reading one random line (by flow) of an array of
256 KiB to 32 MiB (bench/cold_line.c), live through the scene of `dr-lb bench`
(bench/measure.py), in the same rounds, at --flows flows (100,000): in-situ ns and pps,
medians and lowest of --rounds rounds. The flow cache's set of a flow is such a line; this
is the floor under dr-lb's figure at many flows. Figures only: nothing is asserted. Run as
root, isolated:
  unshare -m sh -c 'mount -t tmpfs tmpfs /run/netns && exec taskset -c 1 \\
      python -m bench.cold_line'
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import cffi

from bench import measure as m

HERE = Path(__file__).parent
ARRAYS = {                       # name -> cflags
    "line of 256 KiB": ["-DLINES=(1<<12)", "-DFLAGS=0"],
    "line of 1 MiB": ["-DLINES=(1<<14)", "-DFLAGS=0"],
    "line of 4 MiB": ["-DLINES=(1<<16)", "-DFLAGS=0"],
    "line of 8 MiB": ["-DLINES=(1<<17)", "-DFLAGS=0"],
    "line of 8 MiB, mmapable": ["-DLINES=(1<<17)", "-DFLAGS=BPF_F_MMAPABLE"],
    "line of 32 MiB": ["-DLINES=(1<<19)", "-DFLAGS=0"],
    "line of 8 MiB, 32 KiB maps": ["-DINNER=512", "-DOUTERN=256"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cold_line",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=800_000)
    args = ap.parse_args(argv)
    from bcc import BPF
    s = m.Settings.quick()
    s.flows = [args.flows]
    ffi = cffi.FFI()
    ffi.cdef("int bpf_map_create(int t, const char *n, unsigned k, unsigned v, unsigned m,"
             " void *o);")
    lib = ffi.dlopen("libbpf.so.1")
    with m.Bench(s, prefix="drlb-cl") as b:
        for name, cflags in ARRAYS.items():
            bpf = BPF(src_file=str(HERE / "cold_line.c").encode(), cflags=cflags)
            b.stack.callback(bpf.cleanup)
            if any(f.startswith("-DINNER") for f in cflags):
                inner = int(cflags[0].split("=")[1])
                outer = bpf[b"outer"]
                for i in range(int(cflags[1].split("=")[1])):
                    fd = lib.bpf_map_create(2, b"cold", 4, 64, inner, ffi.NULL)   # array
                    if fd < 0:
                        raise OSError("bpf_map_create failed")
                    outer[outer.Key(i)] = outer.Leaf(fd)
                    b.stack.callback(__import__("os").close, fd)
            b.fds[name] = bpf.load_func(b"xdp_cold_line", BPF.XDP).fd
        b.populate(args.flows, 64)
        programs = ["reflector", "dr-lb", *ARRAYS]
        ns: dict[str, list[float]] = {p: [] for p in programs}
        pps: dict[str, list[float]] = {p: [] for p in programs}
        for r in range(args.rounds):
            for p in m.rotate(programs, r):
                b.live(p, "native", "ack", args.flows, 64, args.frames // 4, stats=False)
                ns[p].append(b.live(p, "native", "ack", args.flows, 64, args.frames,
                                    stats=True).get("ns", 0.0))
                pps[p].append(b.live(p, "native", "ack", args.flows, 64, args.frames,
                                     stats=False)["pps"])
    base_ns, base_pps = statistics.median(ns["reflector"]), statistics.median(pps["reflector"])
    print(f"{args.flows:,} flows, {args.rounds} rounds of {args.frames:,} frames: "
          "in situ ns (median, lowest) and pps (median, × the reflector's)")
    for p in programs:
        print(f"  {p:28} {statistics.median(ns[p]):6.1f} {min(ns[p]):6.1f} ns "
              f"({statistics.median(ns[p]) - base_ns:+6.1f})   "
              f"{statistics.median(pps[p]) / 1e6:5.2f} Mpps ({statistics.median(pps[p]) / base_pps:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
