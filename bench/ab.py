"""A/B of builds of the data plane: `python -m bench.ab DIR [DIR...] [--rounds N]`.

Each DIR is a copy of bpf/ (say, the old and the new dr_lb.c); every build is loaded with
the lab's config into the scene of `dr-lb bench` (bench/measure.py) and measured in the same
rounds as the MAC-swap reflector, through the same reset harness (test-run ns):

  * est     an established packet, 1 flow;
  * notvip  a frame to the director's own address;
  * new     a SYN of a connection never seen (the half-open table emptied every 4 rounds).

With --live N, the builds are measured live instead, as `dr-lb bench` measures them
(Bench.live_round): N established flows sent through the scene, each build's pps (from the
sink) and in-situ ns/packet alternated with the reflector's in every round, and each
build's pps as a ratio to the reflector's of the same round.

Small differences drown in this machine's noise (2 shared vCPUs), so est and notvip take,
per round, the minimum of --trials short runs of each program, interleaved. And a build's
loaded copy alone can move by a few percent (where its maps landed): give the same DIR
twice (or copies of it) to see that bias. Prints each figure's median and best of rounds
and, for every build, the per-round ratio to the first DIR's (median, min, max).
Figures only: nothing is asserted. Run as root, isolated:
  unshare -m sh -c 'mount -t tmpfs tmpfs /run/netns && exec taskset -c 1 chrt -f 50 \\
      python -m bench.ab /tmp/old-bpf bpf --rounds 10'
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

from bench import measure as m
from lb import lab as lab_mod, libbpf
from lb.director import config as config_mod, layout as layout_mod
from lb.director.dataplane import Dataplane


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="copies of bpf/ to compare")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=15, help="runs per figure per round (min)")
    ap.add_argument("--repeat", type=int, default=10_000, help="repeats per run")
    ap.add_argument("--new-repeat", type=int, default=20_000, help="SYNs per round")
    ap.add_argument("--cases", default="est,notvip,new")
    ap.add_argument("--order", choices=m.ORDERS, default="shuffled",
                    help="est<N>: the flows' order in a pass (bench/measure.py Settings)")
    ap.add_argument("--many", type=int, default=0,
                    help="also est<N>: N established flows, each once per run "
                         "(--repeat N to see each once)")
    ap.add_argument("--live", type=int, default=0, metavar="N",
                    help="measure live at N established flows (pps, in-situ ns) instead")
    a = ap.parse_args(argv)
    cases = a.cases.split(",")
    names = []
    for d in a.dirs:   # the same DIR twice: name the copies apart
        n, k = d.name or str(d), 2
        while n in names:
            n, k = f"{d.name}#{k}", k + 1
        names.append(n)
    s = m.Settings.quick()
    s.flows = [a.live or 1]
    s.order = a.order
    res: dict[tuple[str, str], list[float]] = {}
    with m.Bench(s, prefix="drlb-ab") as b:
        cfg = config_mod.parse(lab_mod.Lab().director_config(), source="bench.ab")
        macs = {h.address: f"02:00:00:00:01:{i:02x}"
                for i, h in enumerate(lab_mod.HOSTS) if h.role == "real"}
        dps = {}
        for name, d in zip(names, a.dirs):
            dp = Dataplane(bpf_dir=d.resolve())
            b.stack.callback(dp.close)
            dp.clear_state()
            dp.write(layout_mod.build(cfg, macs, b.director_mac))
            b.dp = dps[name] = dp
            b.populate(a.live or 1, 64)
        if a.live:
            return live(b, dps, a.live, a.rounds)
        frames = {"est": m.frame("ack", 64, b.client_mac, b.director_mac),
                  "notvip": m.frame("not_vip", 64, b.client_mac, b.director_mac)}
        expect = {"est": "tx_service", "notvip": "pass_not_vip"}
        flows = {"est": 1, "notvip": 1}
        if a.many:   # est<N>: an established packet of N flows, each seen once per run
            for dp in dps.values():
                b.dp = dp
                b.populate(a.many, 64)
            frames[f"est{a.many}"] = frames["est"]
            expect[f"est{a.many}"], flows[f"est{a.many}"] = "tx_service", a.many
            cases.append(f"est{a.many}")
        syn = m.frame("syn", 64, b.client_mac, b.director_mac)
        for r in range(a.rounds):
            for case in (c for c in cases if c in frames):
                f = frames[case]
                b.set_flows("ack", flows[case], f)
                progs = [("tx", b.tx_fd), ("reflector", b.refl_fd)] + \
                        [(n, dp.prog_fd) for n, dp in dps.items()]
                best: dict[str, float] = {}
                before = {n: dp.counters()[expect[case]] for n, dp in dps.items()}
                for t in range(a.trials):
                    for name, fd in m.rotate(progs, r + t):
                        d = b.test_run(fd, f, a.repeat).duration_ns
                        best[name] = min(best.get(name, 1e9), d)
                    d = libbpf.test_run(b.tx_fd, f, repeat=a.repeat).duration_ns
                    best["alone"] = min(best.get("alone", 1e9), d)
                for n, dp in dps.items():
                    if dp.counters()[expect[case]] - before[n] < a.trials * a.repeat:
                        print(f"bench.ab: {n} {case}: WRONG PATH", file=sys.stderr)
                harness = best["tx"] - best["alone"]
                for name, _ in progs[1:]:
                    if not (case == "notvip" and name == "reflector"):
                        res.setdefault((name, case), []).append(best[name] - harness)
            if "new" in cases:
                for name, dp in m.rotate(list(dps.items()), r):
                    b.set_flows("syn", m.UNBOUNDED, syn)
                    h = b.harness_ns(syn, a.new_repeat)
                    b.set_flows("syn", m.UNBOUNDED, syn, seq=b.new_syns(a.new_repeat))
                    before = dp.counters()["tx_service"]
                    d = b.test_run(dp.prog_fd, syn, a.new_repeat).duration_ns
                    if dp.counters()["tx_service"] - before != a.new_repeat:
                        print(f"bench.ab: {name} new: WRONG PATH", file=sys.stderr)
                    res.setdefault((name, "new"), []).append(d - h)
                    if r % 4 == 3:   # room in the half-open table again
                        dp.clear_state()
                        b.dp = dp
                        b.populate(1, 64)
            print(f"round {r + 1}/{a.rounds}", file=sys.stderr)
    refl = res.get(("reflector", "est"))
    print(f"{'build':20} {'case':7} {'median':>7} {'best':>7}  x reflector (median)")
    for (name, case), v in res.items():
        x = ""
        if refl and case in ("est", "notvip"):
            x = f"{statistics.median(p / q for p, q in zip(v, refl)):.2f}x"
        print(f"{name:20} {case:7} {statistics.median(v):7.1f} {min(v):7.1f}  {x}")
    first = names[0]
    print(f"per-round ratio to {first} (median, min, max):")
    for (name, case), v in res.items():
        base = res.get((first, case))
        if name in ("reflector", first) or not base:
            continue
        rs = sorted(p / q for p, q in zip(v, base))
        print(f"  {name:18} {case:7} {statistics.median(rs):.3f}  {rs[0]:.3f}  {rs[-1]:.3f}")
    return 0


def live(b: m.Bench, dps: dict, flows: int, rounds: int) -> int:
    """--live: pps and in-situ ns of each build and of the reflector at `flows` flows."""
    for name, dp in dps.items():
        b.fds[name] = dp.prog_fd
    progs = ["reflector"] + list(dps)
    pps: dict[str, list[float]] = {p: [] for p in progs}
    ns: dict[str, list[float]] = {p: [] for p in progs}
    for r in range(rounds):
        for p in m.rotate(progs, r):
            run, n, check = b.live_round(p, "native", flows, 64, b.s.frames, dp=dps.get(p))
            if check and not check["ok"]:
                print(f"bench.ab: {p} live: WRONG PATH {check['counters']}", file=sys.stderr)
            pps[p].append(run["pps"])
            ns[p].append(math.nan if n is None else n)
        print(f"round {r + 1}/{rounds}", file=sys.stderr)
    print(f"{flows:,} flows, live, native, 64 B")
    print(f"{'build':20} {'Mpps':>6} {'x refl (median, best)':>22} {'ns in situ':>11} {'best':>6}")
    for p in progs:
        x = [v / w for v, w in zip(pps[p], pps["reflector"])]
        print(f"{p:20} {statistics.median(pps[p]) / 1e6:6.2f} {statistics.median(x):14.3f}"
              f" {max(x):7.3f} {statistics.median(ns[p]):11.1f} {min(ns[p]):6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
