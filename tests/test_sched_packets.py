"""Layer 2 for the schedulers of issue 9: crafted packets through the real program, maps
filled by the real control-plane code, the choice held against IPVS's algorithms as
tests/ipvs_reference.py transcribes them: sh and mh over many random clients (with and
without -port and -fallback), lc/wlc/sed/nq over random workloads of connections in
every state, thresholds, one-packet scheduling, persistence with every scheduler, and
the data plane's connection counts against the exact count of the table."""
from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from lb import abi
from lb.director import monitor
from tests import ipvs_reference as ref
from tests.conftest import needs_root
from tests.packet_cases import DIRECTOR_MAC, VIP, tcp, udp
from tests.test_packets import age_conn

pytestmark = needs_root

ADDRESSES = ["10.0.0.12", "10.0.0.13", "10.0.0.14", "10.0.0.15", "10.0.0.16"]
MACS = {a: f"02:00:00:00:00:{a.split('.')[-1]}" for a in ADDRESSES}
BY_MAC = {m: i for i, m in enumerate(MACS.values())}


def config(scheduler: str, weights: list[int], *, port: int = 80, protocol: str = "tcp",
           flags: tuple[str, ...] = (), extra: str = "", reals: dict[int, str] | None = None,
           udp_timeout: int = 300) -> str:
    """One service on VIP:port with len(weights) real servers (ADDRESSES in order);
    reals[i] adds lines to real server i."""
    text = (f'[director]\ninterface = "eth0"\n[timeouts]\nudp = {udp_timeout}\n'
            f'[[service]]\nvip = "{VIP}"\nport = {port}\nprotocol = "{protocol}"\n'
            f'scheduler = "{scheduler}"\n{extra}\n')
    if flags:
        text += "scheduler_flags = [" + ", ".join(f'"{f}"' for f in flags) + "]\n"
    for i, w in enumerate(weights):
        text += f'[[service.real_server]]\naddress = "{ADDRESSES[i]}"\nweight = {w}\n'
        text += (reals or {}).get(i, "") + "\n"
    return text


def picked(lb, frame: bytes) -> int | None:
    """The index of the real server the frame was sent to, or None if not sent."""
    r = lb.dp.test_run(frame)
    if r.verdict != "XDP_TX":
        return None
    assert r.data[6:] == abi.mac_bytes(DIRECTOR_MAC) + frame[12:], "only the MACs may change"
    return BY_MAC[abi.mac_str(r.data[:6])]


SYN = tcp("S")


def syn(src: str, sport: int = 40000, dport: int = 80, flags: str = "S") -> bytes:
    """tcp(flags, sport, dport, src) without scapy for each one (it is slow)."""
    frame = bytearray(SYN if flags == "S" else tcp(flags))
    frame[26:30] = ipaddress.IPv4Address(src).packed
    frame[34:36] = struct.pack("!H", sport)
    frame[36:38] = struct.pack("!H", dport)
    return bytes(frame)   # checksums are not checked by the program


def random_client(rng: random.Random) -> str:
    return str(ipaddress.IPv4Address(rng.randrange(0x0B000000, 0xDF000000)))


def host(a: str) -> int:
    return int(ipaddress.IPv4Address(a))


# ---- sh -------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("flags", [(), ("sh-port",)], ids=["sh", "sh-port"])
def test_sh_picks_what_ipvs_picks(program, seed, flags):
    rng = random.Random(seed)
    weights = [rng.randint(1, 5) for _ in range(rng.randint(2, 5))]
    lb = program(config("sh", weights, flags=flags), MACS, DIRECTOR_MAC)
    sh = ref.IpvsSh([ref.Dest(weight=w) for w in weights])
    for _ in range(300):
        src, sport = random_client(rng), rng.randint(1024, 65535)
        want = sh.schedule(host(src), sport if flags else 0)
        assert picked(lb, syn(src, sport)) == want, \
            f"weights {weights}, client {src}:{sport}: IPVS sh picks server {want}"


@pytest.mark.parametrize("seed", range(3))
def test_sh_fallback_picks_what_ipvs_picks_with_servers_unavailable(program, seed):
    """Drained (weight 0 to IPVS: it keeps one bucket) and unreachable (its buckets kept,
    but unavailable: IPVS's OVERLOAD does that) servers; without sh-fallback their
    clients are dropped, with it they go where ip_vs_sh_get_fallback() sends them."""
    rng = random.Random(seed)
    n = rng.randint(3, 5)
    weights = [rng.randint(1, 4) for _ in range(n)]
    drained, gone = rng.sample(range(n), 2)
    dests = [ref.Dest(weight=0 if i == drained else w, overloaded=i == gone)
             for i, w in enumerate(weights)]
    sh = ref.IpvsSh(dests)
    macs = dict(MACS, **{ADDRESSES[gone]: None})
    for flags in ((), ("sh-fallback",)):
        lb = program(config("sh", weights, flags=flags,
                            reals={drained: "drained = true"}), macs, DIRECTOR_MAC)
        dropped = 0
        for _ in range(300):
            src = random_client(rng)
            want = sh.schedule(host(src), 0, fallback=bool(flags))
            dropped += want is None
            assert picked(lb, syn(src, rng.randint(1024, 65535))) == want, \
                f"weights {weights}, drained {drained}, unreachable {gone}, {flags}: {src}"
        assert (dropped > 0) == (not flags), "without fallback some clients are dropped"
        assert lb.dp.counters()["drop_no_real_server"] == dropped


# ---- mh -------------------------------------------------------------------------------------

def kernel_mh(weights: list[int], port: int = 80) -> ref.IpvsMh:
    dests = [ref.Dest(addr=host(ADDRESSES[i]), port=port, weight=w)
             for i, w in enumerate(weights)]
    return ref.IpvsMh(dests, abi.CONST["MH_TABLE_SIZE"], abi.CONST["MH_TAB_BITS"])


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("flags", [(), ("mh-port",)], ids=["mh", "mh-port"])
def test_mh_picks_what_ipvs_picks(program, seed, flags):
    """The program hashes the client with IPVS's hsiphash and reads the table Python
    built: for many random clients it picks what ip_vs_mh_schedule() picks."""
    rng = random.Random(seed)
    weights = [rng.choice([1, 1, 2, 3, 5]) for _ in range(rng.randint(2, 5))]
    lb = program(config("mh", weights, flags=flags), MACS, DIRECTOR_MAC)
    mh = kernel_mh(weights)
    for _ in range(300):
        src, sport = random_client(rng), rng.randint(1024, 65535)
        want = mh.schedule(host(src), sport if flags else 0)
        assert picked(lb, syn(src, sport)) == want, \
            f"weights {weights}, client {src}:{sport}: IPVS mh picks server {want}"


def test_mh_port_spreads_one_client_and_plain_mh_does_not(program):
    rng = random.Random(5)
    for flags, spread in (((), 1), (("mh-port",), 4)):
        lb = program(config("mh", [1, 1, 1, 1], flags=flags), MACS, DIRECTOR_MAC)
        servers = {picked(lb, syn("10.9.8.7", rng.randint(1024, 65535))) for _ in range(64)}
        assert len(servers) == spread, f"{flags}: one client reached {servers}"


@pytest.mark.parametrize("seed", range(2))
def test_mh_fallback_picks_what_ipvs_picks_with_servers_unavailable(program, seed):
    rng = random.Random(100 + seed)
    n = 5
    weights = [rng.choice([1, 2, 3]) for _ in range(n)]
    drained, gone = rng.sample(range(n), 2)
    mh = kernel_mh(weights)         # drained keeps its entries (IPVS's last_weight)
    for i in (drained, gone):
        mh.dests[i].overloaded = True
    macs = dict(MACS, **{ADDRESSES[gone]: None})
    for flags in ((), ("mh-fallback",), ("mh-fallback", "mh-port")):
        lb = program(config("mh", weights, flags=flags,
                            reals={drained: "drained = true"}), macs, DIRECTOR_MAC)
        for _ in range(200):
            src, sport = random_client(rng), rng.randint(1024, 65535)
            want = mh.schedule(host(src), sport if "mh-port" in flags else 0,
                               fallback="mh-fallback" in flags)
            assert picked(lb, syn(src, sport)) == want, \
                f"weights {weights}, drained {drained}, unreachable {gone}, {flags}: {src}"


def test_mh_table_survives_a_server_going_away_for_the_others(program):
    """A flow whose server stays keeps it when another loses its MAC: the table is built
    from the config alone."""
    rng = random.Random(9)
    lb = program(config("mh", [1, 1, 1, 1], flags=("mh-fallback",)), MACS, DIRECTOR_MAC)
    clients = [random_client(rng) for _ in range(200)]
    before = [picked(lb, syn(c, 1000)) for c in clients]
    lb.reprogram(lb.config, dict(MACS, **{ADDRESSES[2]: None}))
    lb.dp.clear_state()
    after = [picked(lb, syn(c, 1000)) for c in clients]
    for b, a in zip(before, after):
        assert a == b if b != 2 else a != 2


# ---- lc, wlc, sed, nq -----------------------------------------------------------------------

class Workload:
    """Connections driven through the program with a model of the table beside it:
    server index and TCP state of each, as IPVS would count them."""

    def __init__(self, lb, rng: random.Random):
        self.lb, self.rng = lb, rng
        self.conns: dict[tuple[str, int], list] = {}   # (client, port) -> [server, state]
        self.next_port = 1024

    def counts(self, n: int) -> list[tuple[int, int]]:
        active = [0] * n
        inactive = [0] * n
        for server, state in self.conns.values():
            if state == "established":
                active[server] += 1
            else:
                inactive[server] += 1
        return list(zip(active, inactive))

    def new(self) -> tuple[int | None, tuple[str, int]]:
        client = (random_client(self.rng), self.next_port)
        self.next_port += 1
        server = picked(self.lb, syn(*client))
        if server is not None:
            self.conns[client] = [server, "syn_recv"]
        return server, client

    def step(self, client, flags: str, state: str) -> None:
        server, _ = self.conns[client]
        assert picked(self.lb, syn(*client, flags=flags)) == server, \
            "a packet of a known connection goes to its server"
        self.conns[client][1] = state

    def random_event(self) -> None:
        if not self.conns:
            return
        client = self.rng.choice(list(self.conns))
        state = self.conns[client][1]
        if state == "syn_recv":
            self.step(client, "A", "established")
        elif state == "established":
            self.step(client, self.rng.choice(["F", "R"]),
                      "fin_wait" if self.rng.random() < 0.5 else "close")


def least_dests(weights, available, counts, thresholds=None) -> list[ref.Dest]:
    return [ref.Dest(weight=w if available[i] else 0, activeconns=a, inactconns=ia,
                     overloaded=bool(thresholds and thresholds[i].overloaded))
            for i, (w, (a, ia)) in enumerate(zip(weights, counts))]


@pytest.mark.parametrize("scheduler", ["lc", "wlc", "sed", "nq"])
@pytest.mark.parametrize("seed", range(3))
def test_least_connection_picks_what_ipvs_picks(program, scheduler, seed):
    """A random workload (new connections, handshakes completed, FIN, RST): before each
    new connection the program and IPVS's algorithm, given the same active/inactive
    counts, pick the same server. Weights include 0, and one server is unreachable."""
    rng = random.Random(seed * 10 + len(scheduler))
    n = 5
    weights = [rng.choice([0, 1, 1, 2, 3, 5]) for _ in range(n)]
    weights[rng.randrange(n)] = rng.randint(1, 4)      # at least one can take connections
    gone = rng.randrange(n)
    available = [i != gone for i in range(n)]
    macs = dict(MACS, **{ADDRESSES[gone]: None})
    lb = program(config(scheduler, weights), macs, DIRECTOR_MAC)
    work = Workload(lb, rng)
    choose = ref.LEAST[scheduler]
    for _ in range(150):
        for _ in range(rng.randint(0, 3)):
            work.random_event()
        want = choose(least_dests(weights, available, work.counts(n)))
        got, _ = work.new()
        assert got == want, (f"{scheduler} weights {weights} (server {gone} unreachable), "
                             f"counts {work.counts(n)}: IPVS picks {want}, dr-lb {got}")
    assert_counts_exact(lb, n, work)


def real_ids(lb) -> list[int]:
    return [r.real_id for r in lb.layout.services[0].reals]


def assert_counts_exact(lb, n: int, work: Workload) -> None:
    """The program's own count equals the model's and the table's exact count."""
    counted = lb.dp.counted_conns()
    exact = lb.dp.conn_counts().per_real
    ids = real_ids(lb)
    model = work.counts(n)
    for i in range(n):
        assert counted.get(ids[i], (0, 0)) == model[i] == exact.get(ids[i], (0, 0)), \
            f"server {i}: program counts {counted.get(ids[i])}, table {exact.get(ids[i])}"


def age(lb, client: tuple[str, int], seconds: float, dport: int = 80) -> None:
    """Make a TCP connection `seconds` older, in whichever table holds it (a half-open
    one waits in syn_table)."""
    age_conn(lb, seconds, client[1], dport, 6, src=client[0])


def correct(lb) -> None:
    """What the monitor does after each sweep."""
    lb.dp.write_conn_fix(monitor.conn_fixes(lb.dp.conn_counts().per_real,
                                            lb.dp.counted_conns()))


def test_expired_connections_count_until_the_correction_then_not(program):
    """lc: the program cannot see connections expire; until the control plane's next
    correction they still count, after it the choice is IPVS's again."""
    lb = program(config("lc", [1, 1]), MACS, DIRECTOR_MAC)
    work = Workload(lb, random.Random(1))
    first = [work.new() for _ in range(4)]          # two each, alternately
    assert [s for s, _ in first] == [0, 1, 0, 1]
    for server, client in first:
        work.step(client, "A", "established")
    for server, client in first:
        if server == 0:                              # both of server 0's expire
            age(lb, client, 901)
            del work.conns[client]
    assert work.new()[0] == 0, "ties go to the first; 2 counted active on each still"
    correct(lb)
    fixes = lb.dp.conn_fix()
    assert fixes[real_ids(lb)[0]] == (-2, 0), f"server 0's two expired connections: {fixes}"
    for _ in range(3):
        assert work.new()[0] == 0, "server 0 has 1 (inactive) against 2 active"


# ---- thresholds ---------------------------------------------------------------------------

def test_upper_threshold_stops_new_connections_until_below_lower(program):
    """wrr 1:1 with server 0 at upper 4, lower 2: at 4 connections it takes no new ones
    (its slots are skipped), existing ones go on; it comes back only below 2."""
    lb = program(config("wrr", [1, 1], reals={0: "upper = 4\nlower = 2"}), MACS, DIRECTOR_MAC)
    work = Workload(lb, random.Random(2))
    got = [work.new()[0] for _ in range(10)]
    assert got == [0, 1, 0, 1, 0, 1, 0, 1, 1, 1], f"server 0 stops at 4: {got}"
    mine = [c for c, (s, _) in work.conns.items() if s == 0]
    work.step(mine[0], "A", "established")          # existing connections go on
    for k, expect in ((1, 1), (2, 1), (3, 0)):       # 3 left, then 2: still over; 1: back
        age(lb, mine[k], 61)
        del work.conns[mine[k]]
        correct(lb)
        got = work.new()[0]
        assert got == expect, f"{4 - k} connections left on server 0: went to {got}"
    assert abi.CONST["MAX_REALS_PER_SERVICE"] >= 2


def test_every_server_over_its_threshold_drops_with_its_own_reason(program):
    lb = program(config("wlc", [1, 1], reals={0: "upper = 1", 1: "upper = 2"}), MACS,
                 DIRECTOR_MAC)
    work = Workload(lb, random.Random(3))
    assert sorted(work.new()[0] for _ in range(3)) == [0, 1, 1]
    before = lb.dp.counters()
    assert work.new()[0] is None
    after = lb.dp.counters()
    assert after["drop_overloaded"] == before["drop_overloaded"] + 1
    assert after["drop_no_real_server"] == before["drop_no_real_server"]
    assert lb.dp.overloaded() == set(real_ids(lb))


@pytest.mark.parametrize("scheduler", ["lc", "sh", "mh"])
def test_thresholds_with_other_schedulers(program, scheduler):
    """An overloaded server is unavailable to every scheduler (sh and mh without
    fallback then drop its clients, with drop_overloaded)."""
    lb = program(config(scheduler, [1, 1], reals={0: "upper = 1", 1: "upper = 1"}), MACS,
                 DIRECTOR_MAC)
    work = Workload(lb, random.Random(4))
    got = [work.new()[0] for _ in range(60)]
    assert sorted(s for s in got if s is not None) == [0, 1], \
        f"each server takes exactly one connection, then is overloaded: {got}"
    assert lb.dp.counters()["drop_overloaded"] == 58
    assert lb.dp.counters()["drop_no_real_server"] == 0


# ---- one-packet scheduling ------------------------------------------------------------------

def test_ops_schedules_every_datagram_and_keeps_no_entry(program):
    lb = program(config("rr", [1, 1, 1], port=53, protocol="udp", extra="ops = true"), MACS,
                 DIRECTOR_MAC)
    frame = udp(sport=5353)
    got = [picked(lb, frame) for _ in range(6)]
    assert got == [0, 1, 2, 0, 1, 2], f"one flow, each datagram on its own: {got}"
    assert not list(lb.dp.map("conn_table").keys()), "no connection entry"
    counters = lb.dp.counters()
    assert counters["tx_service"] == 6 and counters["conn_table_insert"] == 0
    assert lb.dp.service_stats(lb.layout.services[0].svc_id).conns == 6, \
        "each datagram is a connection in the stats, as in IPVS"


def test_without_ops_a_udp_flow_sticks(program):
    lb = program(config("rr", [1, 1, 1], port=53, protocol="udp"), MACS, DIRECTOR_MAC)
    frame = udp(sport=5353)
    assert [picked(lb, frame) for _ in range(3)] == [0, 0, 0]


# ---- persistence and the established path ---------------------------------------------------

@pytest.mark.parametrize("scheduler", ["wrr", "rr", "sh", "mh", "lc", "wlc", "sed", "nq"])
def test_persistence_templates_work_with_every_scheduler(program, scheduler):
    lb = program(config(scheduler, [1, 2, 1], extra='persistent = 300\n'
                        'persistent_netmask = "255.255.255.0"'), MACS, DIRECTOR_MAC)
    first = picked(lb, syn("10.7.7.1", 2000))
    assert first is not None
    for i in range(12):
        assert picked(lb, syn(f"10.7.7.{i + 2}", 3000 + i)) == first, \
            "a client of the same /24 follows the template"
    assert lb.dp.counters()["persist_hit"] == 12


@pytest.mark.parametrize("scheduler", ["sh", "mh", "wlc"])
def test_counts_follow_every_transition(program, scheduler):
    """The program's count of active and inactive connections per server equals the
    table's exact count after a random workload (nothing expired, nothing evicted)."""
    lb = program(config(scheduler, [2, 1, 1]), MACS, DIRECTOR_MAC)
    work = Workload(lb, random.Random(7))
    for _ in range(200):
        work.new()
        work.random_event()
        work.random_event()
    # A SYN on a closed connection starts another (port reuse): the old entry leaves.
    closed = [c for c, (_, st) in work.conns.items() if st in ("fin_wait", "close")][:5]
    for client in closed:
        server = picked(lb, syn(*client))
        work.conns[client] = [server, "syn_recv"]
    assert_counts_exact(lb, 3, work)


# ---- health checks and the sorry server with every scheduler -------------------------------

HASHED_AND_LEAST = ["sh", "mh", "lc", "wlc", "sed", "nq"]
SORRY_IP = "10.0.0.19"
SORRY_MAC = "02:00:00:00:00:19"


def down(*indexes: int, port: int = 80, protocol: str = "tcp") -> dict:
    from lb.director.layout import real_key
    from lb.director.config import Service
    svc = Service(VIP, port, protocol)
    return {real_key(svc, ADDRESSES[i]): "down" for i in indexes}


@pytest.mark.parametrize("scheduler", HASHED_AND_LEAST + ["wrr", "rr"])
def test_a_down_server_leaves_every_schedulers_choice(program, scheduler):
    """Failing its health check, a server takes no new connection whatever the
    scheduler, and no client is dropped for it: sh and mh (without fallback) rebuild
    their tables without it, as IPVS does when keepalived removes the server."""
    rng = random.Random(11)
    lb = program(config(scheduler, [2, 1, 1], extra='[service.health]\ntype = "tcp"'),
                 MACS, DIRECTOR_MAC)
    clients = [(random_client(rng), rng.randint(1024, 65535)) for _ in range(120)]
    before = [picked(lb, syn(*c)) for c in clients]
    assert 0 in before
    lb.dp.clear_state()
    lb.reprogram(lb.config, MACS, health=down(0))
    after = [picked(lb, syn(c, p + 1)) for c, p in clients]
    assert None not in after, "no client may be dropped while two servers are up"
    assert 0 not in after, f"{scheduler}: the down server got new connections"
    if scheduler == "mh":     # Maglev: only the down server's clients move
        kept = [a == b for a, b, in zip(after, before) if b != 0]
        assert sum(kept) / len(kept) > 0.9, "mh moved the clients of servers still up"


@pytest.mark.parametrize("scheduler", HASHED_AND_LEAST + ["rr"])
def test_sorry_server_takes_over_with_every_scheduler(program, scheduler):
    text = config(scheduler, [1, 1], extra=f'sorry_server = "{SORRY_IP}"\n'
                  '[service.health]\ntype = "tcp"', reals={0: "upper = 5"})
    macs = dict(MACS, **{SORRY_IP: SORRY_MAC})
    lb = program(text, macs, DIRECTOR_MAC)
    rng = random.Random(12)
    assert {picked(lb, syn(random_client(rng))) for _ in range(8)} <= {0, 1}
    lb.reprogram(lb.config, macs, health=down(0, 1))
    for _ in range(8):
        r = lb.dp.test_run(syn(random_client(rng)))
        assert r.verdict == "XDP_TX" and abi.mac_str(r.data[:6]) == SORRY_MAC, scheduler
    lb.reprogram(lb.config, macs, health=down(0))
    assert {picked(lb, syn(random_client(rng))) for _ in range(8)} == {1}, \
        "the sorry server leaves as soon as one server is up"


def test_rescheduled_connections_move_their_counts(program):
    """on_failure = "reschedule" with wlc: each moved connection leaves its old server's
    count and joins its new server's, and the counts stay exact."""
    lb = program(config("wlc", [1, 1, 1], extra='[service.health]\ntype = "tcp"\n'
                        'on_failure = "reschedule"'), MACS, DIRECTOR_MAC)
    work = Workload(lb, random.Random(13))
    for _ in range(30):
        work.new()
    for client in list(work.conns)[:20]:
        work.step(client, "A", "established")
    lb.reprogram(lb.config, MACS, health=down(0))
    before = lb.dp.counters()["conn_rescheduled"]
    moved = [c for c, (s, _) in work.conns.items() if s == 0]
    for client in moved:
        server = picked(lb, syn(*client, flags="PA"))
        assert server in (1, 2)
        # Past its SYN: a closing connection now (its new server resets it).
        work.conns[client] = [server, "close"]
    assert lb.dp.counters()["conn_rescheduled"] - before == len(moved) > 0
    assert_counts_exact(lb, 3, work)


# ---- a known connection never runs scheduling code ------------------------------------------

@pytest.mark.parametrize("scheduler", ["mh", "wlc", "sh"])
def test_a_known_connection_never_reaches_the_scheduler(program, scheduler):
    """With xdp_sched taken out of sched_prog, new connections of a non-wrr service
    cannot be scheduled (dropped), while the packets of connections made before go on:
    the established path never gets to the scheduling code."""
    import ctypes as ct
    lb = program(config(scheduler, [1, 2, 1]), MACS, DIRECTOR_MAC)
    work = Workload(lb, random.Random(14))
    made = [work.new() for _ in range(10)]
    progs = lb.dp.map("sched_prog")
    del progs[ct.c_int(0)]
    try:
        for server, client in made:
            for flags, state in (("A", "established"), ("PA", "established"),
                                 ("F", "fin_wait")):
                work.step(client, flags, state)
        before = lb.dp.counters()
        assert picked(lb, syn("10.55.0.1")) is None
        assert lb.dp.counters()["drop_no_real_server"] == before["drop_no_real_server"] + 1
    finally:
        progs[ct.c_int(0)] = ct.c_int(lb.dp.sched_fn.fd)
    assert picked(lb, syn("10.55.0.1")) is not None


def test_a_known_connection_does_not_move_the_wrr_position(program):
    lb = program(config("wrr", [1, 1, 1]), MACS, DIRECTOR_MAC)
    work = Workload(lb, random.Random(15))
    first, client = work.new()
    for _ in range(5):
        work.step(client, "A", "established")
    assert [work.new()[0] for _ in range(3)] == [(first + k) % 3 for k in (1, 2, 3)]


# ---- counts under LRU eviction ----------------------------------------------------------

@pytest.fixture(scope="module")
def small_table():
    """The program again, with a connection table of a few hundred entries, so that the
    LRU evicts (the session's holds 1,000,000)."""
    from lb.director.dataplane import Dataplane
    dp = Dataplane(conn_table_size=256)
    yield dp
    dp.close()


def test_counts_are_right_again_after_lru_eviction(small_table):
    """The program cannot see the LRU evict an entry; the monitor's correction brings
    each server's count back to the table's exact count, and lc then picks as IPVS
    does with the true counts."""
    from lb.director import config as config_mod
    from tests.conftest import Programmed
    small_table.clear_state()
    lb = Programmed(small_table, config_mod.parse(config("lc", [1, 1, 1]), source="t"), MACS,
                    DIRECTOR_MAC)
    work = Workload(lb, random.Random(16))
    rng = random.Random(17)
    for _ in range(3 * small_table.conn_table_slots):
        server, client = work.new()     # the model cannot know which ones are evicted,
        if rng.random() < 0.5:          # so only the newest connection moves on
            work.step(client, "A", "established")
    counts = small_table.conn_counts()
    inserts = small_table.counters()["conn_table_insert"]
    assert counts.entries < inserts, "the LRU must have evicted entries"
    counted = small_table.counted_conns()
    ids = real_ids(lb)
    assert sum(sum(counted.get(i, (0, 0))) for i in ids) > counts.entries, \
        "before the correction the program still counts the evicted connections"
    correct(lb)
    fix = small_table.conn_fix()
    exact = counts.per_real
    for i in ids:
        a, ia = counted.get(i, (0, 0))
        fa, fia = fix.get(i, (0, 0))
        assert (a + fa, ia + fia) == exact.get(i, (0, 0))
    # With the corrected counts lc picks what IPVS picks from the table's true counts.
    choose = ref.LEAST["lc"]
    want = choose([ref.Dest(weight=1, activeconns=a, inactconns=ia)
                   for a, ia in (exact.get(i, (0, 0)) for i in ids)])
    assert work.new()[0] == want
