"""`python -m bench` = `dr-lb bench` (bench/measure.py); and the `dr-lb status` latency
figure with a full connection table, which the full run includes.
Figures are printed; nothing here asserts a time.
"""
from __future__ import annotations

import sys
import time

from lb import lab as lab_mod
from lb.director import config as config_mod, layout as layout_mod
from lb.director.dataplane import Dataplane

DIRECTOR_MAC = "02:00:00:00:00:0b"


def program_lab_config(dp: Dataplane, macs: dict[str, str], interface_mac: str) -> None:
    lab = lab_mod.Lab()
    cfg = config_mod.parse(lab.director_config(), source="bench")
    dp.clear_state()
    dp.write(layout_mod.build(cfg, macs, interface_mac))


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
        ids = layout_mod.Ids()
        layout = layout_mod.build(cfg, {}, DIRECTOR_MAC, ids)
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
        scrapes = metrics_scrape(cfg, layout, ids, dp, mon)
        return {"entries": counts.entries, "sweep_s": round(min(sweeps), 3),
                "status_s": round(min(answers), 4), "scrape_s": round(max(scrapes), 4),
                "sweep_rest_s": round(max(monitor.SWEEP_MIN_REST_S,
                                          monitor.SWEEP_REST_FACTOR * min(sweeps)), 2)}
    finally:
        dp.close()


def metrics_scrape(cfg, layout, ids, dp, mon, rounds: int = 5) -> list[float]:
    """Seconds per /metrics body (the Collector `up` serves, rendered by
    prometheus_client) over the same table: it takes the sweep's counts, never walks."""
    import threading
    from types import SimpleNamespace
    from prometheus_client import CollectorRegistry, generate_latest
    from lb.director import metrics
    collector = metrics.Collector()
    collector.director = SimpleNamespace(lock=threading.Lock(), layout=layout, config=cfg,
                                         ids=ids, dp=dp, monitor=mon, health=None,
                                         interface=SimpleNamespace(name="eth0"),
                                         xdp_mode="native")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        generate_latest(registry)
        out.append(time.perf_counter() - start)
    return out


def monitor_clock() -> int:
    from lb.director.dataplane import program_clock_ns
    return program_clock_ns()


def main() -> None:
    from lb.cli import main as cli
    cli(["bench", *sys.argv[1:]], prog_name="python -m bench")


if __name__ == "__main__":
    main()
