"""flow_cache, each CPU's cache of the connections it forwards (bpf/dr_lb_maps.h), through
the real program: it is followed only while the table agrees, never across a replaced
connection (on another CPU either), a new generation voids it, and a connection it
forwards still has its table entry refreshed every flow_sync_ns."""
from __future__ import annotations

import contextlib
import os
import time

import pytest

from lb import abi
from lb.director import config as config_mod, layout as layout_mod
from tests.conftest import needs_root
from tests.packet_cases import CONFIG, DIRECTOR_MAC, RS1, RS_MACS, tcp, udp

pytestmark = needs_root


@pytest.fixture
def lb(program):
    return program(CONFIG, dict(RS_MACS), DIRECTOR_MAC)


@contextlib.contextmanager
def on_cpu(cpu: int):
    """test-run runs the program on the CPU of the thread that asks."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def two_cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    return cpus[0], cpus[1]


def mac(lb, frame: bytes) -> str | None:
    r = lb.dp.test_run(frame)
    return abi.mac_str(r.data[:6]) if r.verdict == "XDP_TX" else None


def entry(lb, sport: int, table: str = "conn_table"):
    return next(v for k, v in lb.dp.map(table).items() if k.sport == abi.port_be16(sport))


def cached(lb, sport: int) -> int:
    """How many CPUs hold the connection from CLIENT_IP:sport in their flow_cache."""
    fc = lb.dp.map("flow_cache")
    found = 0
    for _, value in fc.items_lookup_batch():
        for way in value.way:
            if way.gen and way.ports & 0xFFFF == abi.port_be16(sport):
                found += 1
    return found


def test_a_port_reused_on_one_cpu_is_not_followed_from_another_cpus_cache(lb):
    """A connection closes and its 5-tuple opens a new one (to another server) on CPU a;
    CPU b had the old one in its cache: its next packet goes to the new server."""
    a, b = two_cpus()
    with on_cpu(a):
        first = mac(lb, tcp("S", sport=51000))
        mac(lb, tcp("A", sport=51000))
    with on_cpu(b):
        assert mac(lb, tcp("A", sport=51000)) == first
        assert mac(lb, tcp("A", sport=51000)) == first   # now from b's cache
    assert cached(lb, 51000) >= 1
    with on_cpu(a):
        mac(lb, tcp("FA", sport=51000))
        # New connections elsewhere until the WRR cycle's next slot is another server.
        seq = lb.layout.services[0].sequence
        pos, sport = 1, 51001
        while seq[pos % len(seq)] == seq[0]:
            mac(lb, tcp("S", sport=sport))
            pos, sport = pos + 1, sport + 1
        again = mac(lb, tcp("S", sport=51000))
        assert again != first, "the test needs the reused port to get another server"
        assert mac(lb, tcp("A", sport=51000)) == again
    with on_cpu(b):
        assert mac(lb, tcp("A", sport=51000)) == again, \
            "CPU b followed its cached copy of the connection that was replaced"


def test_a_new_generation_voids_every_cache(lb):
    mac(lb, tcp("S", sport=51200))
    mac(lb, tcp("A", sport=51200))
    assert mac(lb, tcp("A", sport=51200)) == RS1
    assert cached(lb, 51200) == 1
    lb.dp.clear_state()
    before = lb.dp.counters()["pass_tcp_no_conn"]
    assert mac(lb, tcp("A", sport=51200)) is None, "a forgotten connection was followed"
    assert lb.dp.counters()["pass_tcp_no_conn"] == before + 1


def test_a_cached_connection_refreshes_its_entry_every_flow_sync_ns(lb):
    """From the cache, nothing is written per packet; once flow_sync_ns has passed, the
    next packet reads the table again and refreshes last_seen_ns (so a connection that
    is in use never expires, and status shows when it was last seen)."""
    sync_s = lb.layout.flow_sync_ns / 1e9
    assert 0 < sync_s <= 1
    mac(lb, tcp("S", sport=51300))
    mac(lb, tcp("A", sport=51300))
    mac(lb, tcp("A", sport=51300))
    seen = entry(lb, 51300).last_seen_ns
    time.sleep(0.05)
    for _ in range(3):
        assert mac(lb, tcp("A", sport=51300)) == RS1
    assert entry(lb, 51300).last_seen_ns == seen, "the cache was not used"
    time.sleep(sync_s + 0.05)
    assert mac(lb, tcp("A", sport=51300)) == RS1
    assert entry(lb, 51300).last_seen_ns > seen, "the table's entry was not refreshed"


def test_closing_and_new_packets_never_take_the_cache(lb):
    """A FIN or RST changes the state in the table (which the cache would skip), a SYN
    may start a new connection: all three read the table."""
    mac(lb, tcp("S", sport=51400))
    mac(lb, tcp("A", sport=51400))
    mac(lb, tcp("A", sport=51400))
    mac(lb, tcp("FA", sport=51400))
    assert abi.CONN_STATES[entry(lb, 51400).state] == "fin_wait"
    mac(lb, tcp("R", sport=51400))
    assert abi.CONN_STATES[entry(lb, 51400).state] == "close"


def test_flow_sync_is_a_quarter_of_the_shortest_timeout_at_most_a_second():
    def sync(text: str) -> int:
        cfg = config_mod.parse(text, source="t.toml")
        return layout_mod.build(cfg, dict(RS_MACS), DIRECTOR_MAC).flow_sync_ns
    assert sync(CONFIG) == 250_000_000, "udp = 1 in CONFIG"
    assert sync(CONFIG.replace("udp = 1\n", "udp = 300\n")) == \
        abi.CONST["FLOW_SYNC_MAX_NS"] == 10**9
    assert sync(CONFIG.replace("udp = 1\n", "udp = 300\n").replace(
        "persistent = 300", "persistent = 2")) == 500_000_000, "persistence counts too"


def test_a_cached_connection_is_not_sent_to_a_server_whose_mac_is_unknown(lb):
    """The cache holds the server, not its MAC or flags: reals is read for every packet.
    (The control plane writes a new generation with every layout; here the flag alone
    changes, as no writer does, to show that the cached path reads it.)"""
    mac(lb, tcp("S", sport=51500))
    mac(lb, tcp("A", sport=51500))
    assert mac(lb, tcp("A", sport=51500)) == RS1
    assert cached(lb, 51500) == 1
    table = lb.dp.map("reals")
    real_id = entry(lb, 51500).real_id
    row = table[table.Key(real_id)]
    row.flags &= ~abi.REAL_F_MAC_KNOWN
    table[table.Key(real_id)] = row
    before = lb.dp.counters()["drop_real_mac_unknown"]
    assert mac(lb, tcp("A", sport=51500)) is None
    assert lb.dp.counters()["drop_real_mac_unknown"] == before + 1


def test_a_cpu_whose_cache_does_not_pay_passes_it_by_for_a_while(lb):
    """Flows that never come back (each probe a miss, each a cold cache line) turn this
    CPU's cache off for FLOW_METER_SKIP packets (neither read nor filled), then it is
    probed again."""
    window, skip = abi.CONST["FLOW_METER_WINDOW"], abi.CONST["FLOW_METER_SKIP"]
    with on_cpu(sorted(os.sched_getaffinity(0))[0]):
        for i in range(window):            # each ACK a miss: the meter turns it off
            mac(lb, tcp("S", sport=52000 + i))
            mac(lb, tcp("A", sport=52000 + i))
        for _ in range(3):
            assert mac(lb, tcp("A", sport=52000)) == RS1
        assert cached(lb, 52000) == 0, "the cache was filled while it should be off"
        for _ in range(skip - 3):
            mac(lb, tcp("A", sport=52001))
        for _ in range(2):
            mac(lb, tcp("A", sport=52002))
        assert cached(lb, 52002) == 1, "the cache was not probed again after the pause"
