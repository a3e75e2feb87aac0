"""dr-lb benchmarks: `sudo scripts/dev.sh bench` (or `python -m bench`).

1. ns/packet without a network (bpf_prog_test_run_opts, repeat): dr-lb's established
   path and a pass, against a MAC-swap reflector, measured in the same run; and new
   connections, timed one syscall each. (The test run rewrites the frame in place on
   every repeat, so a reply such as ARP's cannot be timed this way.) Then bench/sched.py:
   new connections of wrr, mh and wlc and the established packet under each, through
   a reset harness, and the lc/wlc connection-count drift under churn.
2. Packets per second with real transmission (BPF_F_TEST_XDP_LIVE_FRAMES) out of the
   director's veth in the namespace lab (native mode), into an XDP_DROP sink on the
   peer: dr-lb's established path against the reflector, in the same lab.
Figures are printed; nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lb import lab as lab_mod, libbpf
from lb.director import config as config_mod, layout as layout_mod
from lb.director.dataplane import Dataplane
from bench import frames as packet_cases   # the packet tests' frame builders
from bench import sched

HERE = Path(__file__).resolve().parent
CLIENT_MAC = "02:00:00:00:00:0a"
DIRECTOR_MAC = "02:00:00:00:00:0b"


def reflector():
    from bcc import BPF
    b = BPF(src_file=str(HERE / "reflector.c").encode())
    return b, b.load_func(b"xdp_reflect", BPF.XDP)


def frames(director_mac: str = DIRECTOR_MAC) -> dict[str, bytes]:
    """The lab's flows, built by tests/packet_cases.py's builders."""
    flow = {"src": lab_mod.CLIENT_IP, "src_mac": CLIENT_MAC, "dst_mac": director_mac}
    return {
        "syn": packet_cases.tcp("S", 50000, lab_mod.HTTP_PORT, dst=lab_mod.VIP, **flow),
        "ack": packet_cases.tcp("A", 50000, lab_mod.HTTP_PORT, dst=lab_mod.VIP, **flow),
        "udp": packet_cases.udp(50001, lab_mod.UDP_PORT, payload=b"x" * 18, dst=lab_mod.VIP,
                                **flow),
        "other": packet_cases.tcp("A", 50002, 22, dst=lab_mod.DIRECTOR_IP, **flow),
    }


def program_lab_config(dp: Dataplane, macs: dict[str, str], interface_mac: str) -> None:
    lab = lab_mod.Lab()
    cfg = config_mod.parse(lab.director_config(), source="bench")
    dp.clear_state()
    dp.write(layout_mod.build(cfg, macs, interface_mac))


def ns_per_packet(repeat: int) -> dict:
    dp = Dataplane(conn_table_size=65536)
    refl_bpf, refl = reflector()
    try:
        macs = {h.address: f"02:00:00:00:01:{i:02x}"
                for i, h in enumerate(lab_mod.HOSTS) if h.role == "real"}
        program_lab_config(dp, macs, DIRECTOR_MAC)
        f = frames()
        dp.test_run(f["syn"])                      # the flow exists from here on
        dp.test_run(f["ack"])
        dp.test_run(f["udp"])
        out = {
            "established_tcp": dp.test_run(f["ack"], repeat=repeat),
            "established_udp": dp.test_run(f["udp"], repeat=repeat),
            "pass_not_vip": dp.test_run(f["other"], repeat=repeat),
            "mac_swap_reflector": libbpf.test_run(refl.fd, f["ack"], repeat=repeat),
        }
        # New connections: every SYN from a fresh port, timed as a whole.
        syn = bytearray(f["syn"])
        n_new = min(repeat, 100_000)
        start = time.perf_counter_ns()
        for port in range(n_new):
            syn[34:36] = (1024 + port % 60000).to_bytes(2, "big")
            dp.test_run(bytes(syn))
        syscall = (time.perf_counter_ns() - start) / n_new
        verdicts = {k: v.verdict for k, v in out.items()}
        result = {k: v.duration_ns for k, v in out.items()}
        result["new_connection_incl_syscall"] = round(syscall)
        return {"repeat": repeat, "ns_per_packet": result, "verdicts": verdicts}
    finally:
        dp.close()
        refl_bpf.cleanup()


def live_pps(count: int) -> dict:
    """Frames really sent out of the director's veth, per second."""
    with lab_mod.Lab(prefix="drlb-bench", xdp_mode="native") as lab:
        lab.set_peer_program("director", libbpf.XDP_DROP)
        with lab.inside("director"):
            from lb.director import netif
            iface = netif.interface("eth0")
            dp = Dataplane(conn_table_size=65536)
            refl_bpf, refl = reflector()
            try:
                macs = {h.address: lab.macs[h.name] for h in lab.real_servers}
                program_lab_config(dp, macs, iface.mac)
                f = frames(iface.mac)
                dp.test_run(f["udp"])
                results = {}
                for name, fd in (("dr-lb established udp", dp.prog_fd),
                                 ("mac_swap_reflector", refl.fd)):
                    start = time.perf_counter()
                    libbpf.test_run(fd, f["udp"], repeat=count, live_ifindex=iface.index)
                    elapsed = time.perf_counter() - start
                    results[name] = round(count / elapsed)
                sent = dp.counters()["tx_service"]
            finally:
                dp.close()
                refl_bpf.cleanup()
    return {"frames": count, "pps": results, "dr_lb_tx_service": sent}


def status_latency(entries: int) -> dict:
    """What `dr-lb status` costs with `entries` connections in the table: the sweep that
    counts ActiveConn/InActConn (a batched read of the whole table, in the background),
    and the status answer itself (counts from the last sweep, counters read live)."""
    from lb.director import monitor, status
    dp = Dataplane()
    try:
        program_lab_config(dp, {h.address: f"02:00:00:00:01:{i:02x}"
                                for i, h in enumerate(lab_mod.HOSTS) if h.role == "real"},
                           DIRECTOR_MAC)
        table = dp.map("conn_table")
        keys, values = (table.Key * entries)(), (table.Leaf * entries)()
        now = monitor_clock()
        for i in range(entries):
            keys[i].saddr, keys[i].dport, keys[i].proto = i + 1, 0x5000, 6
            values[i].real_id, values[i].state, values[i].last_seen_ns = i % 3, 1 + i % 2, now
        table.items_update_batch(keys, values)
        cfg = config_mod.parse(lab_mod.Lab().director_config(), source="bench")
        layout = layout_mod.build(cfg, {}, DIRECTOR_MAC)
        mon = monitor.Monitor(dp, lambda: ([], []))
        sweeps = []
        for _ in range(3):
            start = time.perf_counter()
            mon.sweep_once()
            sweeps.append(time.perf_counter() - start)
        answers = []
        for _ in range(5):
            start = time.perf_counter()
            counts, age = mon.conn_counts()
            status.collect(cfg, layout, dp, "eth0", "native", counts, age, mon.rates())
            answers.append(time.perf_counter() - start)
        return {"entries": counts.entries, "sweep_s": round(min(sweeps), 3),
                "status_s": round(min(answers), 4),
                "sweep_rest_s": round(max(monitor.SWEEP_MIN_REST_S,
                                          monitor.SWEEP_REST_FACTOR * min(sweeps)), 2)}
    finally:
        dp.close()


def monitor_clock() -> int:
    from lb.director.dataplane import monotonic_coarse_ns
    return monotonic_coarse_ns()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--frames", type=int, default=2_000_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--status-entries", type=int, default=1_000_000,
                    help="connections in the table for the `status` figure")
    args = ap.parse_args()
    st = status_latency(args.status_entries)
    print(f"dr-lb status with {st['entries']} connections: answers in {st['status_s']} s; "
          f"the background count of ActiveConn/InActConn takes {st['sweep_s']} s and "
          f"rests {st['sweep_rest_s']} s between counts", flush=True)
    ns = ns_per_packet(args.repeat)
    sched_ns = sched.new_connection_ns(min(args.repeat, 200_000))
    drifts = sched.drift_scenarios(10.0)
    pps = live_pps(args.frames)
    if args.json:
        print(json.dumps({"ns_per_packet": ns, "live": pps, "status": st,
                          "sched_ns": sched_ns, "count_drift": drifts}, indent=2))
        return
    base = ns["ns_per_packet"]["mac_swap_reflector"]
    print(f"ns/packet (bpf_prog_test_run_opts, repeat={args.repeat}, same run):")
    for k, v in ns["ns_per_packet"].items():
        note = "" if k.endswith("syscall") else f"  ({v / base:.2f}x reflector)"
        print(f"  {k:<30}{v:>8} ns{note}  {ns['verdicts'].get(k, '')}")
    print(f"live frames out of the lab director's veth (native, {args.frames} frames):")
    ref = pps["pps"]["mac_swap_reflector"]
    for k, v in pps["pps"].items():
        print(f"  {k:<30}{v / 1e6:>8.2f} Mpps  ({v / ref:.2f}x reflector)")
    print(f"  dr-lb counted {pps['dr_lb_tx_service']} frames sent to a real server")
    print(sched.report(sched_ns, drifts))


if __name__ == "__main__":
    main()
