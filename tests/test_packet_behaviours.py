"""Layer 2, continued: the behaviours of README's "Data plane, in short" that need more than
one frame, each checked where a plausible bug would show (tests/mutants.py names the bugs
these tests kill): idle timers restarted by traffic, TCP transitions that must not
happen, port reuse from FIN_WAIT, WRR exact across two CPUs, persistence templates kept
alive, and not followed to a quiesced server."""
from __future__ import annotations

import os

import pytest

from lb import abi
from lb.director import config as config_mod
from tests.conftest import needs_root
from tests.packet_cases import (CLIENT_IP, CONFIG, DIRECTOR_MAC, OTHER_NET_CLIENT_IP, RS1,
                                RS2, RS3, RS_MACS, tcp, udp)
from tests.test_packets import age_conn, assert_sent_to, conn_state, run

pytestmark = needs_root


@pytest.fixture
def lb(program):
    return program(CONFIG, dict(RS_MACS), DIRECTOR_MAC)


def mac_of(result) -> str:
    return abi.mac_str(result.data[:6])


# ---- connections: the 5-tuple, idle timers ----------------------------------------------

def test_connections_are_keyed_by_the_whole_5_tuple(lb):
    """Flows that differ only in the client's address, or only in the UDP source port,
    are separate connections, each scheduled by WRR (2:1:1: rs1, rs1, rs2, rs3)."""
    got = [mac_of(run(lb, tcp("S", sport=40500, src=src)))
           for src in ("10.0.0.10", "10.0.0.30", "10.0.0.31", "10.0.0.32")]
    assert got == [RS1, RS1, RS2, RS3], "one client address must not stand for another"
    got = [mac_of(run(lb, udp(sport=port))) for port in (40600, 40601, 40602, 40603)]
    assert got == [RS1, RS1, RS2, RS3], "UDP flows from two source ports are two flows"
    assert len(lb.dp.half_open()[0]) == 4, "four half-open TCP connections"
    assert len(list(lb.dp.map("udp_table").keys())) == 4, "four UDP flows"


@pytest.mark.parametrize("flags,state,timeout", [
    ("A", "established", 900), ("F", "fin_wait", 120)])
def test_traffic_restarts_the_idle_timer(lb, flags, state, timeout):
    """Idle `timeout - 1` s, a packet, idle `timeout - 1` s again: still the same
    connection, though more than `timeout` s passed since it began."""
    sport = 40700 + len(state)
    assert_sent_to(lb, tcp("S", sport=sport), RS1)
    assert_sent_to(lb, tcp("A", sport=sport), RS1)
    if flags != "A":
        assert_sent_to(lb, tcp(flags, sport=sport), RS1)
    for _ in range(3):
        age_conn(lb, timeout - 1, sport)
        assert_sent_to(lb, tcp("A", sport=sport), RS1, f"{state} after {timeout - 1} s idle")
    assert conn_state(lb, sport) == state


def test_udp_traffic_restarts_the_idle_timer(lb):
    assert_sent_to(lb, udp(sport=40800), RS1)
    for _ in range(3):
        age_conn(lb, 0.9, 40800, 53, 17)   # udp = 1 in CONFIG
        assert_sent_to(lb, udp(sport=40800), RS1, "a talking UDP flow keeps its server")


# ---- TCP transitions that must not happen ---------------------------------------------------

def test_syn_on_an_established_connection_keeps_it(lb):
    """A retransmitted or stray SYN neither reschedules nor demotes a live connection."""
    assert_sent_to(lb, tcp("S", sport=40900), RS1)
    assert_sent_to(lb, tcp("A", sport=40900), RS1)
    inserts = lb.dp.counters()["conn_table_insert"]
    assert_sent_to(lb, tcp("S", sport=40900), RS1, "SYN on ESTABLISHED: same server")
    assert conn_state(lb, 40900) == "established"
    assert lb.dp.counters()["conn_table_insert"] == inserts
    assert_sent_to(lb, tcp("S", sport=40901), RS1, "the stray SYN took no WRR slot")


def test_fin_after_rst_stays_closed(lb):
    assert_sent_to(lb, tcp("S", sport=41000), RS1)
    assert_sent_to(lb, tcp("R", sport=41000), RS1)
    assert_sent_to(lb, tcp("FA", sport=41000), RS1)
    assert conn_state(lb, 41000) == "close", "a FIN must not reopen a closed connection"


def test_syn_on_fin_wait_starts_a_new_connection(lb):
    """Port reuse: the client closed and opens again from the same port. The entry is
    replaced, not refreshed: the next WRR slot, a new SYN_RECV entry, one more
    connection in the stats but no new key in conn_table."""
    assert_sent_to(lb, tcp("S", sport=41100), RS1)
    assert_sent_to(lb, tcp("A", sport=41100), RS1)
    assert_sent_to(lb, tcp("FA", sport=41100), RS1)
    assert conn_state(lb, 41100) == "fin_wait"
    inserts = lb.dp.counters()["conn_table_insert"]
    assert_sent_to(lb, tcp("S", sport=41100), RS1, "port reuse: WRR position 1 is rs1")
    assert conn_state(lb, 41100) == "syn_recv"
    assert lb.dp.counters()["conn_table_insert"] == inserts, "the key was already there"
    assert lb.dp.real_stats(lb.layout.services[0].reals[0].real_id).conns == 2
    assert_sent_to(lb, tcp("S", sport=41101), RS2, "the reuse consumed WRR slot 1")


# ---- WRR across CPUs --------------------------------------------------------------------------

OPS_CONFIG = CONFIG.replace('protocol = "udp"\n', 'protocol = "udp"\nops = true\n', 1)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_wrr_is_exact_while_two_cpus_schedule_at_once(program):
    """Two processes pinned to two CPUs schedule at the same time, each with one
    test-run of `repeat` datagrams to a one-packet-scheduling UDP service (every datagram
    is scheduled, nothing is kept, so the kernel schedules at full speed on both CPUs).
    The WRR position is shared under a spin lock, so the 2:1:1 split is exact; without
    the lock both CPUs often take the same slot and the counts drift."""
    # test-run's repeats reuse the frame the previous one wrote (KERNEL-NOTES), and only
    # frames to the director's MAC are balanced: each real server gets the director's
    # MAC here, so that every rewritten frame is again one for the director. The split
    # is read from the per-server counts, not from MACs.
    lb = program(OPS_CONFIG, {ip: DIRECTOR_MAC for ip in RS_MACS}, DIRECTOR_MAC)
    cpus = sorted(os.sched_getaffinity(0))[:2]
    n = 400_000                       # per CPU; 2n is a multiple of the cycle (4)
    frame = udp(sport=40600)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    old_affinity = os.sched_getaffinity(0)
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        code = 1
        try:
            os.sched_setaffinity(0, {cpus[1]})
            os.write(ready_w, b"r")
            os.read(go_r, 1)
            code = 0 if lb.dp.test_run(frame, repeat=n).verdict == "XDP_TX" else 3
        finally:
            os._exit(code)
    try:
        os.sched_setaffinity(0, {cpus[0]})
        assert os.read(ready_r, 1) == b"r"
        os.write(go_w, b"g")
        assert lb.dp.test_run(frame, repeat=n).verdict == "XDP_TX"
    finally:
        _, status = os.waitpid(pid, 0)
        os.sched_setaffinity(0, old_affinity)
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, "the other CPU's datagrams were not sent"
    assert not any(list(lb.dp.map(t).keys()) for t in ("conn_table", "udp_table")) \
        and not len(lb.dp.half_open()[0]), "ops keeps no connection"
    udp_service = lb.layout.services[1]
    assert udp_service.service.protocol == "udp"
    conns = [lb.dp.real_stats(r.real_id).conns for r in udp_service.reals]
    assert conns == [n, n // 2, n // 2], f"2:1:1 of {2 * n} new flows gave {conns}"


# ---- persistence templates ------------------------------------------------------------------------

def age_template(lb, seconds: float) -> None:
    table = lb.dp.map("persist_table")
    (key, value), = table.items()
    value.last_seen_ns -= int(seconds * 1e9)
    table[key] = value
    lb.dp.forget_flows()   # as time would have voided the CPUs' flow_cache


def test_a_template_hit_refreshes_the_template(lb):
    """persistent = 300: a new connection at 200 s renews the template, so one more at
    400 s still follows it."""
    assert mac_of(run(lb, tcp("S", sport=41200, dport=443))) == RS1
    age_template(lb, 200)
    assert mac_of(run(lb, tcp("S", sport=41201, dport=443))) == RS1
    age_template(lb, 200)
    assert mac_of(run(lb, tcp("S", sport=41202, dport=443))) == RS1, \
        "the template placed a connection 200 s ago: it must still be alive"
    assert lb.dp.counters()["persist_hit"] == 2


def test_a_template_is_kept_alive_while_its_connection_is_used(lb):
    """IPVS keeps a template while it has connections: traffic on a persistent
    connection renews its template."""
    assert_sent_to(lb, tcp("S", sport=41300, dport=443), RS1)
    assert_sent_to(lb, tcp("A", sport=41300, dport=443), RS1)
    for _ in range(2):
        age_template(lb, 200)
        assert_sent_to(lb, tcp("PA", sport=41300, dport=443, payload=b"x"), RS1)
    assert mac_of(run(lb, tcp("S", sport=41301, dport=443))) == RS1, \
        "the template's connection talked 200 s ago: a new connection must follow it"
    assert lb.dp.counters()["persist_hit"] == 1


def test_a_connection_does_not_keep_another_servers_template_alive(lb):
    """After its template expired and a new one placed the client elsewhere, the old
    connection's traffic renews nothing: the new template still expires on time."""
    assert_sent_to(lb, tcp("S", sport=41400, dport=443), RS1)
    assert_sent_to(lb, tcp("A", sport=41400, dport=443), RS1)
    age_template(lb, 301)
    assert mac_of(run(lb, tcp("S", sport=41401, dport=443))) == RS2, "expired: WRR slot 1"
    age_template(lb, 200)
    assert_sent_to(lb, tcp("PA", sport=41400, dport=443, payload=b"x"), RS1)
    age_template(lb, 200)
    assert mac_of(run(lb, tcp("S", sport=41402, dport=443))) == RS3, \
        "rs1's connection must not have renewed the template that points to rs2"


def test_a_template_of_a_quiesced_server_is_not_followed(lb):
    """Weight 0 (IPVS with expire_quiescent_template=1): the client's next connection
    goes to another server, its current one goes on."""
    assert_sent_to(lb, tcp("S", sport=41500, dport=443), RS1)
    assert_sent_to(lb, tcp("A", sport=41500, dport=443), RS1)
    head, tail = CONFIG.split("port = 443", 1)
    quiesced = head + "port = 443" + tail.replace(
        'address = "10.0.0.12"\n', 'address = "10.0.0.12"\nweight = 0\n', 1)
    lb.reprogram(config_mod.parse(quiesced), dict(RS_MACS))
    for port in (41501, 41502, 41503):
        r = run(lb, tcp("S", sport=port, dport=443))
        assert r.verdict == "XDP_TX" and mac_of(r) in (RS2, RS3), \
            f"a new connection followed the template to the quiesced rs1 ({r.verdict})"
    assert_sent_to(lb, tcp("A", sport=41500, dport=443), RS1, "the open connection goes on")


def test_templates_are_per_port(program):
    """Two persistent services on one VIP: a client's template for one does not place
    its connections to the other."""
    block = CONFIG[CONFIG.rindex("[[service]]", 0, CONFIG.index("port = 443")):]
    text = CONFIG + "\n" + block.replace("port = 443", "port = 8443")
    lb = program(text, dict(RS_MACS), DIRECTOR_MAC)
    assert mac_of(run(lb, tcp("S", sport=41600, dport=443, src=OTHER_NET_CLIENT_IP))) == RS1
    assert mac_of(run(lb, tcp("S", sport=41601, dport=443))) == RS2
    assert mac_of(run(lb, tcp("S", sport=41602, dport=8443))) == RS1, \
        "port 8443 has its own template and its own WRR position"
    assert mac_of(run(lb, tcp("S", sport=41603, dport=443, src=CLIENT_IP))) == RS2
