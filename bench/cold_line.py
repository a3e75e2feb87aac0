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
import os
import statistics
from pathlib import Path

from bench import measure as m
from lb import libbpf

HERE = Path(__file__).parent
LINE = 64
# name -> (lines, array flags, lines per inner map or 0: one array)
ARRAYS = {
    "line of 256 KiB": (1 << 12, "0", 0),
    "line of 1 MiB": (1 << 14, "0", 0),
    "line of 2 MiB": (1 << 15, "0", 0),
    "line of 4 MiB": (1 << 16, "0", 0),
    "line of 8 MiB": (1 << 17, "0", 0),
    "line of 8 MiB, mmapable": (1 << 17, "BPF_F_MMAPABLE", 0),
    "line of 32 MiB": (1 << 19, "0", 0),
    "line of 8 MiB, 32 KiB maps": (1 << 17, "0", 512),
}


def cflags(lines: int, flags: str, inner: int) -> list[str]:
    if inner:
        return [f"-DINNER={inner}", f"-DOUTERN={lines // inner}"]
    return [f"-DLINES={lines}", f"-DFLAGS={flags}"]


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
    with m.Bench(s, prefix="drlb-cl") as b:
        for name, (lines, flags, inner) in ARRAYS.items():
            bpf = BPF(src_file=str(HERE / "cold_line.c").encode(),
                      cflags=cflags(lines, flags, inner))
            b.stack.callback(bpf.cleanup)
            if inner:   # the outer array's maps, made here (bcc makes only the template)
                outer = bpf[b"outer"]
                for i in range(lines // inner):
                    fd = libbpf.array_map("cold", LINE, inner)
                    b.stack.callback(os.close, fd)
                    outer[outer.Key(i)] = outer.Leaf(fd)
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
