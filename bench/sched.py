"""Scheduler figures (issue 9), part of `python -m bench` (and `python -m bench.sched`):

1. ns per new connection for wrr, mh and wlc, and per established packet under each,
   by bpf_prog_test_run_opts through a reset harness (bench/newflow.c: every repeat a
   connection never seen, the harness's own cost measured in the same round and
   subtracted), the median of several rounds.
2. How far the data plane's per-server connection counts (what lc/wlc/sed/nq and the
   thresholds read: its own +1/-1 plus the monitor's correction) drift from the truth
   (the live entries of the table) under churn: connections made, closed, expired
   (short timeouts) and evicted (a small table), with lb/director/monitor.py's
   sweeper running as in `dr-lb up`.
Figures are printed; nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import ctypes as ct
import json
import random
import statistics
import time
from pathlib import Path

from lb import abi, lab as lab_mod, libbpf
from lb.director import config as config_mod, layout as layout_mod, monitor
from lb.director.dataplane import Dataplane
from bench import frames as packet_cases

HERE = Path(__file__).resolve().parent
DIRECTOR_MAC = "02:00:00:00:00:0b"
CLIENT_MAC = "02:00:00:00:00:0a"
MEASURED = ("wrr", "mh", "wlc")
FRAME_HEAD = 54       # bench/newflow.c


def lab_config(scheduler: str, tcp: int = 900, tcpfin: int = 120) -> config_mod.Config:
    """The lab's config with `scheduler` on VIP:80 (its real servers 2:1:1)."""
    text = lab_mod.Lab().director_config().replace('scheduler = "wrr"',
                                                   f'scheduler = "{scheduler}"', 1)
    text = text.replace("tcp = 900\ntcpfin = 120\n", f"tcp = {tcp}\ntcpfin = {tcpfin}\n", 1)
    return config_mod.parse(text, source="bench")


def lab_macs() -> dict[str, str]:
    return {h.address: f"02:00:00:00:01:{i:02x}"
            for i, h in enumerate(lab_mod.HOSTS) if h.role == "real"}


def program(dp: Dataplane, cfg: config_mod.Config) -> None:
    dp.clear_state()
    dp.write(layout_mod.build(cfg, lab_macs(), DIRECTOR_MAC))


def flow_frames() -> dict[str, bytes]:
    flow = {"src": lab_mod.CLIENT_IP, "src_mac": CLIENT_MAC, "dst_mac": DIRECTOR_MAC,
            "dst": lab_mod.VIP}
    return {"syn": packet_cases.tcp("S", 50000, lab_mod.HTTP_PORT, **flow),
            "ack": packet_cases.tcp("A", 50000, lab_mod.HTTP_PORT, **flow)}


class Harness:
    def __init__(self) -> None:
        from bcc import BPF
        self.bpf = BPF(src_file=str(HERE / "newflow.c").encode())
        self.reset = self.bpf.load_func(b"xdp_newflow", BPF.XDP)
        self.tx = self.bpf.load_func(b"xdp_tx", BPF.XDP)

    def run(self, target_fd: int, frame: bytes, repeat: int, new_flows: bool) -> libbpf.TestRun:
        cfg = self.bpf[b"newflow_cfg"]
        value = cfg.Leaf()
        value.flows = 1 if new_flows else 0
        value.base_saddr = 0x0B000000            # 11.0.0.0: never the lab's client
        ct.memmove(ct.addressof(value.frame), frame[:FRAME_HEAD], FRAME_HEAD)
        cfg[ct.c_int(0)] = value
        self.bpf[b"newflow_seq"].clear()
        self.bpf[b"progs"][ct.c_int(0)] = ct.c_int(target_fd)
        return libbpf.test_run(self.reset.fd, frame, repeat=repeat)

    def own_cost(self, frame: bytes, repeat: int, new_flows: bool) -> int:
        """(harness -> XDP_TX) less XDP_TX alone: what the harness adds."""
        through = self.run(self.tx.fd, frame, repeat, new_flows).duration_ns
        alone = libbpf.test_run(self.tx.fd, frame, repeat=repeat).duration_ns
        return through - alone

    def close(self) -> None:
        self.bpf.cleanup()


def new_connection_ns(repeat: int = 200_000, rounds: int = 5) -> dict:
    """{scheduler: {"new_connection": ns, "established": ns}}, medians over rounds."""
    dp = Dataplane()
    h = Harness()
    f = flow_frames()
    samples: dict[str, dict[str, list[int]]] = {
        s: {"new_connection": [], "established": []} for s in MEASURED}
    checks = {}
    try:
        for _ in range(rounds):
            for scheduler in MEASURED:
                program(dp, lab_config(scheduler))
                own = h.own_cost(f["syn"], repeat, True)
                r = h.run(dp.prog_fd, f["syn"], repeat, True)
                c = dp.counters()
                checks[scheduler] = {"verdict": r.verdict, "tx_service": c["tx_service"],
                                     "conn_table_insert": c["conn_table_insert"]}
                assert c["conn_table_insert"] == repeat == c["tx_service"], \
                    f"{scheduler}: every repeat must be a new connection sent on: {c}"
                samples[scheduler]["new_connection"].append(r.duration_ns - own)
                dp.test_run(f["syn"])
                dp.test_run(f["ack"])                       # one established flow
                own = h.own_cost(f["ack"], repeat, False)
                r = h.run(dp.prog_fd, f["ack"], repeat, False)
                assert r.verdict == "XDP_TX"
                samples[scheduler]["established"].append(r.duration_ns - own)
    finally:
        h.close()
        dp.close()
    return {"repeat": repeat, "rounds": rounds, "checks": checks,
            "ns": {s: {k: round(statistics.median(v)) for k, v in d.items()}
                   for s, d in samples.items()}}


def wlc_choice(counts: list[tuple[int, int]], weights: list[int]) -> int | None:
    """ip_vs_wlc_schedule() over (active, inactive) per server: the least
    (active * 256 + inactive) / weight, ties to the first."""
    best = None
    for i, ((a, ia), w) in enumerate(zip(counts, weights)):
        if w <= 0:
            continue
        oh = a * 256 + ia
        if best is None or oh * best[2] < best[1] * w:
            best = (i, oh, w)
    return None if best is None else best[0]


def _churn(prog_fd: int, seconds: float) -> None:
    """New connections through the program for `seconds`: every one a SYN, 80% then an
    ACK (established), 30% of those a FIN. Run in a child process, so that the monitor's
    sweeps in the parent do not wait for this loop's interpreter lock (in `dr-lb up` the
    churn comes from the network, not from Python)."""
    rng = random.Random(1)
    f = flow_frames()
    frames = [bytearray(f["syn"]), bytearray(f["ack"]),
              bytearray(packet_cases.tcp("F", 50000, lab_mod.HTTP_PORT,
                                         src=lab_mod.CLIENT_IP, dst=lab_mod.VIP))]
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        src = (0x0B000000 + n // 60000).to_bytes(4, "big")
        port = (1024 + n % 60000).to_bytes(2, "big")
        for frame in frames:
            frame[26:30], frame[34:36] = src, port
        libbpf.test_run(prog_fd, bytes(frames[0]))
        if rng.random() < 0.8:
            libbpf.test_run(prog_fd, bytes(frames[1]))
            if rng.random() < 0.3:
                libbpf.test_run(prog_fd, bytes(frames[2]))


def count_drift(seconds: float = 10.0, table_size: int = 4096, sample_s: float = 0.25,
                scheduler: str = "wlc") -> dict:
    """Churn through the real program (a child process) with the monitor's sweeper
    running (this process, as in `dr-lb up`); at each sample, for each real server,
    (program's count + correction) - live entries of the table, and whether wlc picks
    the same server from both. The count the scheduler reads is off by what expired or
    was evicted since the last sweep."""
    import os
    dp = Dataplane(conn_table_size=table_size)
    try:
        cfg = lab_config(scheduler, tcp=2, tcpfin=1)
        program(dp, cfg)
        lay = layout_mod.build(cfg, lab_macs(), DIRECTOR_MAC)
        ids = [r.real_id for r in lay.services[0].reals]
        weights = [r.server.weight for r in lay.services[0].reals]
        mon = monitor.Monitor(dp, lambda: ([], []))
        mon.start()
        child = os.fork()
        if child == 0:
            try:
                _churn(dp.prog_fd, seconds)
            finally:
                os._exit(0)
        drifts, truths, agree, samples = [], [], 0, 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(sample_s)
            counted, fix = dp.counted_conns(), dp.conn_fix()
            exact = dp.conn_counts().per_real
            seen_all, true_all = [], []
            for i in ids:
                seen = [c + x for c, x in zip(counted.get(i, (0, 0)), fix.get(i, (0, 0)))]
                true = exact.get(i, (0, 0))
                drifts.append(sum(seen) - sum(true))
                truths.append(sum(true))
                seen_all.append(tuple(seen))
                true_all.append(true)
            samples += 1
            agree += wlc_choice(seen_all, weights) == wlc_choice(true_all, weights)
        os.waitpid(child, 0)
        mon.stop()
        inserts = dp.counters()["conn_table_insert"]
    finally:
        dp.close()
    rel = [abs(d) / t for d, t in zip(drifts, truths) if t]
    return {"scheduler": scheduler, "seconds": seconds, "new_connections": inserts,
            "new_per_s": round(inserts / seconds), "table_size": table_size,
            "samples": len(drifts),
            "mean_live_per_server": round(statistics.mean(truths)),
            "drift_mean_abs": round(statistics.mean(abs(d) for d in drifts), 1),
            "drift_max_abs": max(abs(d) for d in drifts),
            "drift_mean_rel_pct": round(100 * statistics.mean(rel), 2),
            "drift_max_rel_pct": round(100 * max(rel), 2),
            "same_choice_pct": round(100 * agree / samples, 1),
            "sweep_s": round(mon.sweep_s, 4),
            "sweep_period_s": round(max(monitor.SWEEP_MIN_REST_S,
                                        monitor.SWEEP_REST_FACTOR * mon.sweep_s)
                                    + mon.sweep_s, 3)}


# Churn scenarios: connections live 2 s (tcp) / 1 s after a FIN; the table holds them
# all ("expiry": drift is what expired since the last sweep), or a tenth ("eviction":
# the LRU evicts at the rate of new connections).
DRIFT_TABLES = {"expiry": 65536, "eviction": 4096}


def drift_scenarios(seconds: float) -> dict:
    return {name: count_drift(seconds, table_size=size) for name, size in DRIFT_TABLES.items()}


def report(ns: dict, drifts: dict) -> str:
    lines = [f"schedulers, ns per packet (test-run through a reset harness, repeat="
             f"{ns['repeat']}, median of {ns['rounds']} rounds):"]
    for s, d in ns["ns"].items():
        lines.append(f"  {s:<5} new connection {d['new_connection']:>6} ns   "
                     f"established {d['established']:>5} ns")
    lines.append("lc/wlc connection-count drift from the table's live entries under churn "
                 "(tcp 2 s, tcpfin 1 s; per server, at samples every 0.25 s):")
    for name, d in drifts.items():
        lines.append(
            f"  {name:<9} {d['new_per_s']} new/s, table {d['table_size']}, "
            f"{d['mean_live_per_server']} live per server: mean |drift| "
            f"{d['drift_mean_abs']} ({d['drift_mean_rel_pct']}%), max {d['drift_max_abs']} "
            f"({d['drift_max_rel_pct']}%); wlc's choice the true counts' in "
            f"{d['same_choice_pct']}% of samples; a sweep every {d['sweep_period_s']} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.sched", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--churn-seconds", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ns = new_connection_ns(args.repeat, args.rounds)
    drifts = drift_scenarios(args.churn_seconds)
    if args.json:
        print(json.dumps({"sched_ns": ns, "count_drift": drifts}, indent=2))
    else:
        print(report(ns, drifts))


if __name__ == "__main__":
    main()
