"""flow_cache, each CPU's cache of the connections it forwards (bpf/dr_lb_maps.h), through
the real program: it is followed only while the table agrees, never across a replaced
connection (on another CPU either), a new generation voids it, and a connection it
forwards still has its table entry refreshed every flow_sync_ns."""
from __future__ import annotations

import contextlib
import ctypes as ct
import os
import random
import time

import pytest

from lb import abi
from lb.director import config as config_mod, dataplane, layout as layout_mod
from tests.conftest import needs_root
from lb import libbpf
from tests.packet_cases import (CLIENT_IP, CONFIG, DIRECTOR_MAC, FLOW_ALT, FLOW_CHECK_BITS, RS1,
                                 RS_MACS, flow_alt, flow_hash, flow_home, flow_home_way,
                                 flow_key, flow_tag, flow_want, tcp, udp, way_holds, way_real,
                                 way_stamp, way_with)

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


def long_sync(lb, seconds: int = 30) -> None:
    """flow_sync_ns of `seconds`, for a test whose subject is not the sync: its steps
    must not depend on the machine doing them within a second (on a VM under emulation,
    flows filled at the start fell due midway, and those tests failed)."""
    settings = lb.dp.map("settings")
    value = settings[ct.c_uint32(0)]
    value.flow_sync_ns = seconds * 10**9
    settings[ct.c_uint32(0)] = value


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


def client_key(lb, sport: int, port: int = 80, src: str = CLIENT_IP) -> int:
    """CLIENT_IP:sport's flow key (to VIP:port), or another client's (`src`)."""
    svc = next(s.service for s in lb.layout.services if s.service.port == port)
    return flow_key(abi.ip_be32(src), abi.port_be16(sport), abi.ip_be32(svc.vip),
                    abi.port_be16(port), abi.IPPROTO[svc.protocol], lb.dp.flow_cache_log2)


def client_hash(lb, sport: int, port: int = 80, src: str = CLIENT_IP) -> int:
    return flow_hash(client_key(lb, sport, port, src), lb.dp.hash_seed, lb.dp.flow_cache_log2)


def cache_sets(lb, sport: int, port: int = 80, alt: bool = False,
               src: str = CLIENT_IP) -> list[int]:
    """The index of CLIENT_IP:sport's home set (to VIP:port), or with `alt` its alternate
    set, in each CPU's part of flow_cache."""
    h = client_hash(lb, sport, port, src)
    log2 = lb.dp.flow_cache_log2
    s = flow_alt(h, log2) if alt else flow_home(h)
    return [(cpu << log2) + s for cpu in range(lb.dp.flow_cache_cpus)]


def cached_ways(lb, sport: int, port: int = 80, where: tuple[bool, ...] = (False, True),
                src: str = CLIENT_IP):
    """(index, set, way number) of every way of flow_cache that holds CLIENT_IP:sport (to
    VIP:port): in its home sets, then its alternate sets (`where`: False home, True
    alternate)."""
    fc = lb.dp.map("flow_cache")
    h = client_hash(lb, sport, port, src)
    for alt in where:
        want = flow_want(h, alt)
        for idx in cache_sets(lb, sport, port, alt, src):
            value = fc[fc.Key(idx)]
            for w, way in enumerate(value.way):
                if way_holds(way, want):
                    yield idx, value, w


def cached(lb, sport: int) -> int:
    """How many CPUs hold the connection from CLIENT_IP:sport in their flow_cache."""
    return len({idx for idx, _, _ in cached_ways(lb, sport)})


def reopen_elsewhere(lb, sport: int, first: str) -> str:
    """Close CLIENT_IP:sport's connection (to `first`, the first of a fresh WRR cycle) and
    open it again on another server: new connections from the next ports until the
    cycle's next slot is another server, then the SYN. Its server's MAC."""
    mac(lb, tcp("FA", sport=sport))
    seq = lb.layout.services[0].sequence
    pos, other = 1, sport + 1
    while seq[pos % len(seq)] == seq[0]:
        mac(lb, tcp("S", sport=other))
        pos, other = pos + 1, other + 1
    again = mac(lb, tcp("S", sport=sport))
    assert again != first, "the test needs the reused port to get another server"
    return again


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
        again = reopen_elsewhere(lb, 51000, first)
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


def other_server(lb, sport: int) -> int:
    """A real_id of VIP:80's service other than the one CLIENT_IP:sport's connection has."""
    real_id = entry(lb, sport).real_id
    return next(r for r in lb.layout.services[0].sequence if r != real_id)


def point_cache_elsewhere(lb, sport: int, src: str = CLIENT_IP) -> None:
    """Make every cached copy of CLIENT_IP:sport's connection (fresh, this generation)
    name another server of its service than the table does, as no writer would: a packet
    that reads the cache then goes there, one that reads the table does not."""
    other = other_server(lb, sport)
    fc = lb.dp.map("flow_cache")
    found = list(cached_ways(lb, sport, src=src))
    for idx, value, w in found:
        value.way[w] = way_with(value.way[w], real_id=other)
        fc[fc.Key(idx)] = value
    assert found, "nothing cached to point elsewhere"


def home_way(lb, sport: int) -> int:
    """CLIENT_IP:sport's home way (to VIP:80): bpf/dr_lb.c flow_probe."""
    return flow_home_way(client_hash(lb, sport))


def ways_holding(lb, sport: int) -> set[int]:
    """The ways of CLIENT_IP:sport's sets (to VIP:80) that hold its key."""
    return {w for _, _, w in cached_ways(lb, sport)}


def meter(lb, cpu: int):
    return lb.dp.map("flow_meter")[0][cpu]


def test_a_cpu_whose_cache_does_not_pay_passes_it_by_for_a_while(lb):
    """Flows that never come back (each probe a miss, each a cold cache line) turn this
    CPU's cache off for FLOW_METER_SKIP packets, which do not read it; then it is probed
    again."""
    window, skip = abi.CONST["FLOW_METER_WINDOW"], abi.CONST["FLOW_METER_SKIP"]
    cpu = sorted(os.sched_getaffinity(0))[0]
    with on_cpu(cpu):
        mac(lb, tcp("S", sport=52000))
        mac(lb, tcp("A", sport=52000))     # established (moves from syn_table)
        server = mac(lb, tcp("A", sport=52000))   # and cached
        point_cache_elsewhere(lb, 52000)
        assert mac(lb, tcp("A", sport=52000)) not in (server, None), "the cache is not read"
        for i in range(1, window):         # each ACK a miss: the meter turns it off
            mac(lb, tcp("S", sport=52000 + i))
            mac(lb, tcp("A", sport=52000 + i))
        assert meter(lb, cpu).skip > skip - 2 * window
        point_cache_elsewhere(lb, 52000)
        for _ in range(3):
            assert mac(lb, tcp("A", sport=52000)) == server, "the cache was read while off"
        for _ in range(skip):
            if not meter(lb, cpu).skip:
                break
            mac(lb, tcp("A", sport=52001))
        assert not meter(lb, cpu).skip, "the pause never ends"
        server = mac(lb, tcp("A", sport=52002))
        point_cache_elsewhere(lb, 52002)
        assert mac(lb, tcp("A", sport=52002)) not in (server, None), \
            "the cache was not probed again after the pause"


def test_flows_that_come_back_turn_the_cache_on_again(lb):
    """While the cache is off, one in FLOW_METER_FILL packets of the table's path fills
    it (without reading it), so that a CPU whose flows turn out to come back finds them
    in the next window and keeps its cache on; without those fills it would stay off
    for as long as each window finds nothing it could have filled itself."""
    window, skip = abi.CONST["FLOW_METER_WINDOW"], abi.CONST["FLOW_METER_SKIP"]
    cpu = sorted(os.sched_getaffinity(0))[0]
    back = range(52100, 52100 + window)        # flows that keep coming back
    long_sync(lb)
    with on_cpu(cpu):
        for sport in back:
            mac(lb, tcp("S", sport=sport))
            mac(lb, tcp("A", sport=sport))
        for i in range(window):                # flows that never come back: off
            mac(lb, tcp("S", sport=52300 + i))
            mac(lb, tcp("A", sport=52300 + i))
        assert meter(lb, cpu).skip > skip - 2 * window
        rounds = 0
        while meter(lb, cpu).skip and rounds <= skip // window:   # the pause: ~16 each
            for sport in back:
                assert mac(lb, tcp("A", sport=sport)) is not None
            rounds += 1
        assert not meter(lb, cpu).skip, "the pause never ends"
        assert rounds >= (skip - 2 * window) // window
        filled = sum(cached(lb, sport) for sport in back)
        assert filled >= window * 0.9, f"{filled} of {window} flows cached while off"
        away = [p for p in back if cached(lb, p) and ways_holding(lb, p) != {home_way(lb, p)}]
        assert len(away) <= 2, f"blind fills away from their home way: {away}"
        for sport in back:                     # the next window: hits, so it stays on
            assert mac(lb, tcp("A", sport=sport)) is not None
        m = meter(lb, cpu)
        assert m.skip == 0 and m.probes == 0 and m.hits == 0, \
            "a window of flows that came back turned the cache off"
        server = next(r.mac for r in lb.layout.reals if r.real_id == entry(lb, back[0]).real_id)
        point_cache_elsewhere(lb, back[0])
        assert mac(lb, tcp("A", sport=back[0])) not in (server, None), \
            "followed from the table, not the cache"


def test_a_flow_is_cached_in_its_home_way(lb):
    """A flow's entry goes to its home way (one of the set's eight, from the hash) when
    that is free, where every probe looks first."""
    sports = range(52600, 52616)
    for sport in sports:
        mac(lb, tcp("S", sport=sport))
        mac(lb, tcp("A", sport=sport))
        mac(lb, tcp("A", sport=sport))
    homes = {sport: (ways_holding(lb, sport), home_way(lb, sport)) for sport in sports}
    assert all(held == {home} for held, home in homes.values()), homes


def test_a_replaced_connection_is_forgotten_in_every_way_of_a_set(lb):
    """A blind fill (while the cache was off) may put a key in another way of a set that
    already holds it: a replaced connection voids every copy."""
    ways = abi.CONST["FLOW_CACHE_WAYS"]
    cpu = sorted(os.sched_getaffinity(0))[0]
    with on_cpu(cpu):
        mac(lb, tcp("S", sport=52500))
        mac(lb, tcp("A", sport=52500))
        first = mac(lb, tcp("A", sport=52500))
        (idx, value, found), = [w for w in cached_ways(lb, 52500)]
        for w in range(ways):
            value.way[w] = value.way[found]
        lb.dp.map("flow_cache")[lb.dp.map("flow_cache").Key(idx)] = value
        assert len(list(cached_ways(lb, 52500))) == ways
        again = reopen_elsewhere(lb, 52500, first)
        assert mac(lb, tcp("A", sport=52500)) == again, \
            "a copy of the replaced connection was followed"


def same_set_flows(lb, count: int) -> list[tuple[str, int]]:
    """`count` clients (address, port; no two with one port) whose connections to VIP:80
    share one set of flow_cache (the same set on every CPU), drawn at random from
    10.1.0.0/16: one client's ports, or any run of keys, never fill a set, as flow_hash
    (one multiply) spreads a run evenly (2^16 ports over 2^14 sets: 4 in each)."""
    rng = random.Random(count)
    by_set: dict[int, dict[int, str]] = {}
    for _ in range(1_000_000):
        src = f"10.1.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        sport = rng.randrange(1024, 61000)
        flows = by_set.setdefault(cache_sets(lb, sport, src=src)[0], {})   # CPU 0's
        flows.setdefault(sport, src)
        if len(flows) == count:
            return [(src, sport) for sport, src in flows.items()]
    pytest.fail(f"no {count} flows share a set")


def strangers(lb, idx: int) -> None:
    """Fill set `idx` of flow_cache with ways of other clients' flows, synced just now (for
    flow_sync_ns none is due), as a busy director's would be."""
    fc = lb.dp.map("flow_cache")
    value = fc[fc.Key(idx)]
    rng, now = random.Random(idx), lb.dp.flow_stamp_now()
    for w in range(len(value.way)):
        value.way[w] = way_with(flow_want(rng.getrandbits(FLOW_CHECK_BITS), rng.random() < .5),
                                real_id=1, stamp=now)
    fc[fc.Key(idx)] = value


def test_a_flow_whose_home_set_is_full_is_cached_in_its_alternate_set(lb):
    """One flow more than a set has ways: the last one's home set is full of live flows, so
    it goes to its alternate set (marked so), where it is found and followed."""
    ways = abi.CONST["FLOW_CACHE_WAYS"]
    flows = same_set_flows(lb, ways + 1)
    cpu = sorted(os.sched_getaffinity(0))[0]
    long_sync(lb)
    with on_cpu(cpu):
        for src, sport in flows:
            mac(lb, tcp("S", sport=sport, src=src))
            mac(lb, tcp("A", sport=sport, src=src))      # established
            mac(lb, tcp("A", sport=sport, src=src))      # and cached
        at_home = {f: list(cached_ways(lb, f[1], where=(False,), src=f[0])) for f in flows}
        away = [f for f in flows if not at_home[f]]
        assert len(away) == 1, f"{ways} flows at home and one away, not {away}"
        (src, sport), = away
        (idx, value, w), = cached_ways(lb, sport, where=(True,), src=src)
        assert idx == cache_sets(lb, sport, alt=True, src=src)[cpu] and value.way[w] & FLOW_ALT
        server = mac(lb, tcp("A", sport=sport, src=src))
        point_cache_elsewhere(lb, sport, src)
        assert mac(lb, tcp("A", sport=sport, src=src)) not in (server, None), \
            "followed from the table, not from the alternate set"


def test_a_home_way_is_not_taken_for_a_flow_in_its_alternate_set(lb):
    """A way of set s with the check bits of a key whose alternate set is s is of another
    key (whose home set is s) unless it is marked FLOW_ALT: not followed."""
    sport, cpu = 53400, sorted(os.sched_getaffinity(0))[0]
    with on_cpu(cpu):
        mac(lb, tcp("S", sport=sport))
        server = mac(lb, tcp("A", sport=sport))         # established, not cached yet
        strangers(lb, cache_sets(lb, sport)[cpu])      # its home set full
        other_id = other_server(lb, sport)
        fc, idx = lb.dp.map("flow_cache"), cache_sets(lb, sport, alt=True)[cpu]
        value = fc[fc.Key(idx)]
        value.way[home_way(lb, sport)] = way_with(flow_want(client_hash(lb, sport)),
                                                  real_id=other_id, stamp=lb.dp.flow_stamp_now())
        fc[fc.Key(idx)] = value
        assert mac(lb, tcp("A", sport=sport)) == server, "another key's way was followed"
        assert list(cached_ways(lb, sport, where=(True,))), "not cached in its alternate set"
        point_cache_elsewhere(lb, sport)
        assert mac(lb, tcp("A", sport=sport)) not in (server, None), "the alternate set is not read"


def test_a_replaced_connection_is_forgotten_in_its_alternate_set(lb):
    sport, cpu = 53500, sorted(os.sched_getaffinity(0))[0]
    with on_cpu(cpu):
        mac(lb, tcp("S", sport=sport))
        first = mac(lb, tcp("A", sport=sport))
        strangers(lb, cache_sets(lb, sport)[cpu])
        assert mac(lb, tcp("A", sport=sport)) == first
        assert list(cached_ways(lb, sport, where=(True,)))
        again = reopen_elsewhere(lb, sport, first)
        assert mac(lb, tcp("A", sport=sport)) == again, \
            "the replaced connection was followed from its alternate set"


def test_flows_taking_turns_in_an_overfull_set_mostly_stay_cached(lb):
    """One flow more than a set has ways, each in turn (as a cyclic pass of a benchmark,
    or clients polling at one rate), their alternate sets full too: a miss pushes out a
    way of the home set at random, so most turns still find their flow. Pushing out the
    one synced longest ago would push out the very flow that comes next, every time: no
    turn would ever hit."""
    ways = abi.CONST["FLOW_CACHE_WAYS"]
    flows = same_set_flows(lb, ways + 1)
    cpu = sorted(os.sched_getaffinity(0))[0]
    rounds = 5
    unit_s = (dataplane.tick_ns() << dataplane.flow_stamp_shift()) / 1e9 + 0.002
    assert unit_s * len(flows) < lb.layout.flow_sync_ns / 1e9, "a turn must come before a sync"
    with on_cpu(cpu):
        for src, sport in flows:
            strangers(lb, cache_sets(lb, sport, alt=True, src=src)[cpu])
            mac(lb, tcp("S", sport=sport, src=src))
            mac(lb, tcp("A", sport=sport, src=src))      # established, and into the set
        before = meter(lb, cpu)
        assert before.skip == 0 and before.probes + rounds * len(flows) < \
            abi.CONST["FLOW_METER_WINDOW"], "the turns must fit in one window of the meter"
        for _ in range(rounds):
            for src, sport in flows:            # (live all the round: none due)
                strangers(lb, cache_sets(lb, sport, alt=True, src=src)[cpu])
            for src, sport in flows:
                assert mac(lb, tcp("A", sport=sport, src=src)) is not None
                time.sleep(unit_s)               # a stamp's unit apart: synced at distinct times
        after = meter(lb, cpu)
    hits, probes = after.hits - before.hits, after.probes - before.probes
    assert probes == rounds * len(flows)
    # At random (9 flows, 8 ways): at least 24 of 45 in 100,000 simulated runs, 33 for
    # half of them.
    assert hits >= probes // 4, f"{hits} of {probes} turns found their flow in the cache"


def test_flows_due_for_their_sync_keep_the_cache_on(lb):
    """Flows filled together fall due for their sync together (after a reload, or a
    benchmark's first pass): found but due is not a miss for the meter, which would
    otherwise turn the cache off for a window that found every flow."""
    window = abi.CONST["FLOW_METER_WINDOW"]
    cpu = sorted(os.sched_getaffinity(0))[0]
    ports = range(52700, 52700 + window)
    with on_cpu(cpu):
        for sport in ports:
            mac(lb, tcp("S", sport=sport))
            mac(lb, tcp("A", sport=sport))      # established
            mac(lb, tcp("A", sport=sport))      # cached
            lb.dp.map("flow_meter").clear()     # (each a miss so far: the meter starts over)
        assert all(cached(lb, sport) == 1 for sport in ports)
        fc = lb.dp.map("flow_cache")
        # every one due: synced 100 units ago (a sync is 32 units or fewer)
        long_ago = (lb.dp.flow_stamp_now() - 100) % (1 << abi.CONST["FLOW_STAMP_BITS"])
        for sport in ports:
            for idx, value, w in list(cached_ways(lb, sport)):
                value.way[w] = way_with(value.way[w], stamp=long_ago)
                fc[fc.Key(idx)] = value
        for sport in ports:
            assert mac(lb, tcp("A", sport=sport)) is not None
        m = meter(lb, cpu)
        assert m.skip == 0, "flows due for their sync turned the cache off"
    assert all(cached(lb, sport) == 1 for sport in ports)
    synced = [way_stamp(value.way[w]) for sport in ports
              for _, value, w in cached_ways(lb, sport)]
    assert long_ago not in synced, "a flow due for its sync was not refreshed"


def test_one_client_port_to_two_services_is_two_flows(lb):
    """The cache's key is the client's address and port and the service: the same client
    port to VIP:80 and to VIP:443 are two connections (each with its own real_id, one per
    service and server), each followed to its own."""
    sport = 52900
    for port in (80, 443):
        mac(lb, tcp("S", sport=sport, dport=port))
        mac(lb, tcp("A", sport=sport, dport=port))
        mac(lb, tcp("A", sport=sport, dport=port))      # cached
        assert len(list(cached_ways(lb, sport, port))) == 1
    ids = {port: next(v.real_id for k, v in lb.dp.map("conn_table").items()
                      if k.sport == abi.port_be16(sport) and k.dport == abi.port_be16(port))
           for port in (80, 443)}
    assert ids[80] != ids[443]
    before = {port: lb.dp.real_stats(i).packets for port, i in ids.items()}
    for _ in range(5):
        assert mac(lb, tcp("A", sport=sport, dport=443)) is not None
    after = {port: lb.dp.real_stats(i).packets for port, i in ids.items()}
    assert after[443] - before[443] == 5 and after[80] == before[80], \
        "VIP:443's packets were followed to VIP:80's connection"


def tag_twins(vip: str, log2: int, first: int = 80) -> int:
    """A port whose service on `vip` has the flow tag of VIP:first's (TCP)."""
    v, proto = abi.ip_be32(vip), abi.IPPROTO["tcp"]
    want = flow_tag(v, abi.port_be16(first), proto, log2)
    return next(p for p in range(first + 1, 65536)
                if flow_tag(v, abi.port_be16(p), proto, log2) == want)


def test_two_services_with_one_tag_each_keep_their_own_servers(program):
    """Two services whose flow tags are equal give one client port the same flow key: each
    packet still goes to its own service's server (a cached copy of the other's is not
    followed), and the one that comes back most is served from the cache."""
    vip = "10.0.0.21"
    twin = tag_twins(vip, program(CONFIG, dict(RS_MACS), DIRECTOR_MAC).dp.flow_cache_log2)
    service = CONFIG[CONFIG.index("[[service]]"):CONFIG.index("[[service]]\nvip = \"10.0.0.21\"\nport = 53")]
    text = CONFIG + service.replace("port = 80", f"port = {twin}")
    lb = program(text, dict(RS_MACS), DIRECTOR_MAC)
    assert client_key(lb, 53100, 80) == client_key(lb, 53100, twin)
    ids = {}
    for port in (80, twin):
        mac(lb, tcp("S", sport=53100, dport=port))
        assert mac(lb, tcp("A", sport=53100, dport=port)) is not None
        ids[port] = next(v.real_id for k, v in lb.dp.map("conn_table").items()
                         if k.sport == abi.port_be16(53100) and k.dport == abi.port_be16(port))
    assert ids[80] != ids[twin]
    for _ in range(3):
        for port in (80, twin):
            before = lb.dp.real_stats(ids[port]).packets
            assert mac(lb, tcp("A", sport=53100, dport=port)) is not None
            assert lb.dp.real_stats(ids[port]).packets == before + 1, \
                f"VIP:{port}'s packet was followed to the other service's server"
    for _ in range(3):
        assert mac(lb, tcp("A", sport=53100, dport=twin)) is not None
    assert ids[twin] in {way_real(value.way[w]) for _, value, w in cached_ways(lb, 53100, twin)}, \
        "the connection that came last is not cached"


def test_a_cached_server_of_another_service_is_not_followed(lb):
    """A way whose key matches but whose server serves another service (two services' tags
    are equal) is a miss: the packet goes by the table, to its own service's server."""
    mac(lb, tcp("S", sport=53150))
    server = mac(lb, tcp("A", sport=53150))
    assert mac(lb, tcp("A", sport=53150)) == server and list(cached_ways(lb, 53150))
    foreign = next(r.real_id for s in lb.layout.services if s.service.port == 53 for r in s.reals)
    fc = lb.dp.map("flow_cache")
    for idx, value, w in list(cached_ways(lb, 53150)):
        value.way[w] = way_with(value.way[w], real_id=foreign)
        fc[fc.Key(idx)] = value
    stats = lb.dp.real_stats(foreign).packets
    assert mac(lb, tcp("A", sport=53150)) == server, "followed to another service's server"
    assert lb.dp.real_stats(foreign).packets == stats


def test_ways_too_old_to_tell_from_fresh_are_swept(lb):
    """A way keeps its sync time in FLOW_STAMP_BITS units, which wrap (a minute or more):
    the daemon's loop sweeps ways FLOW_STALE_UNITS old, long before one left untouched
    could look fresh again, and leaves the others."""
    for sport in (53200, 53201):
        mac(lb, tcp("S", sport=sport))
        mac(lb, tcp("A", sport=sport))
        assert mac(lb, tcp("A", sport=sport)) is not None and cached(lb, sport)
    old = (lb.dp.flow_stamp_now() - abi.CONST["FLOW_STALE_UNITS"]) % \
        (1 << abi.CONST["FLOW_STAMP_BITS"])
    fc = lb.dp.map("flow_cache")
    for idx, value, w in list(cached_ways(lb, 53200)):
        value.way[w] = way_with(value.way[w], stamp=old)
        fc[fc.Key(idx)] = value
    assert lb.dp.sweep_flows() >= 1
    assert not cached(lb, 53200), "a way too old was left"
    assert cached(lb, 53201), "a fresh way was swept"


def test_generations_that_add_up_to_stale_clear_the_cache(lb):
    """Each new generation ages every way by FLOW_GEN_STEP units (due: read the table
    again); so many that a way left untouched would be FLOW_STALE_UNITS old clear the
    cache first, so that none comes back round to fresh."""
    mac(lb, tcp("S", sport=53300))
    server = mac(lb, tcp("A", sport=53300))
    assert mac(lb, tcp("A", sport=53300)) == server and cached(lb, 53300)
    point_cache_elsewhere(lb, 53300)
    lb.dp.forget_flows()
    assert mac(lb, tcp("A", sport=53300)) == server, "a way of an old generation was followed"
    steps = abi.CONST["FLOW_STALE_UNITS"] // abi.CONST["FLOW_GEN_STEP"]
    point_cache_elsewhere(lb, 53300)
    for _ in range(steps):
        lb.dp.forget_flows()
    assert not cached(lb, 53300), "generations added up to a wrap without a clear"
