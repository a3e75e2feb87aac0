"""Health checks in the data plane, through the real program (bpf_prog_test_run_opts):
a down server leaves the cycle, on_failure = "reschedule" moves its connections
(REAL_F_RESCHEDULE), the sorry server takes over when nobody else can, and a real
server's answer to a DR-path probe is hidden from the director's kernel."""
from __future__ import annotations

import ipaddress

import pytest

from lb import abi
from lb.director import config as config_mod
from lb.director.layout import real_key, vip_hash
from tests.conftest import needs_root
from tests.packet_cases import (CLIENT_IP, CONFIG, DIRECTOR_MAC, RS1, RS2, RS3, RS_MACS, VIP,
                                forwarded, tcp, udp)

pytestmark = needs_root

DIRECTOR_IP = "10.0.0.11"
SORRY_IP, SORRY_MAC = "10.0.0.15", "02:00:00:00:00:15"
PROBE_PORT = abi.CONST["PROBE_PORT_MIN"]


def with_health(on_failure: str, sorry: bool = False) -> str:
    """CONFIG with tcp checks on the port-80 service and the UDP one."""
    extra = f'sorry_server = "{SORRY_IP}"\n' if sorry else ""
    text = CONFIG.replace("port = 80\n", f'port = 80\n{extra}[service.health]\ntype = "tcp"\n'
                          f'on_failure = "{on_failure}"\n', 1)
    return text.replace('protocol = "udp"\n', 'protocol = "udp"\n[service.health]\n'
                        f'type = "tcp"\nport = 53\non_failure = "{on_failure}"\n', 1)


def down(*addresses: str, port: int = 80, protocol: str = "tcp") -> dict:
    svc = config_mod.Service(VIP, port, protocol)
    return {real_key(svc, a): "down" for a in addresses}


def mac_of(result) -> str:
    return abi.mac_str(result.data[:6])


@pytest.fixture
def lb(program):
    def _lb(on_failure: str, sorry: bool = False):
        return program(with_health(on_failure, sorry), dict(RS_MACS, **{SORRY_IP: SORRY_MAC}),
                       DIRECTOR_MAC)
    return _lb


def moved(lb, before: dict) -> dict:
    return {k: v - before[k] for k, v in lb.dp.counters().items() if v != before[k]}


def test_a_down_server_gets_no_new_connections_and_keeps_its_own(lb):
    lb = lb("keep")
    r = lb.dp.test_run(tcp("S", sport=50000))
    assert mac_of(r) == RS1
    lb.dp.test_run(tcp("A", sport=50000))
    lb.reprogram(lb.config, dict(RS_MACS), health=down("10.0.0.12"))
    for i in range(8):
        assert mac_of(lb.dp.test_run(tcp("S", sport=50100 + i))) in (RS2, RS3)
    r = lb.dp.test_run(tcp("A", sport=50000))
    assert r.verdict == "XDP_TX" and r.data == forwarded(tcp("A", sport=50000), RS1), \
        "on_failure = keep: the down server's connection goes on to it"


def test_reschedule_moves_the_next_packet_of_a_connection_to_a_healthy_server(lb):
    lb = lb("reschedule")
    assert mac_of(lb.dp.test_run(tcp("S", sport=50200))) == RS1
    lb.dp.test_run(tcp("A", sport=50200))
    assert mac_of(lb.dp.test_run(udp(sport=50201))) == RS1
    lb.reprogram(lb.config, dict(RS_MACS), health={**down("10.0.0.12"),
                                                   **down("10.0.0.12", port=53,
                                                          protocol="udp")})
    before = lb.dp.counters()
    r = lb.dp.test_run(tcp("PA", sport=50200, payload=b"GET / HTTP/1.0\r\n\r\n"))
    assert r.verdict == "XDP_TX" and mac_of(r) in (RS2, RS3), \
        "the established connection's next packet must go to a healthy server"
    assert moved(lb, before) == {"tx_service": 1, "conn_rescheduled": 1}
    new_home = mac_of(r)
    # It stays with its new server (which resets it), as a closing connection.
    assert mac_of(lb.dp.test_run(tcp("A", sport=50200))) == new_home
    table = lb.dp.map("conn_table")
    value = next(v for k, v in table.items() if abi.port_be16(50200) == k.sport)
    assert abi.CONN_STATES[value.state] == "close"
    # UDP flows move as well.
    r = lb.dp.test_run(udp(sport=50201))
    assert r.verdict == "XDP_TX" and mac_of(r) in (RS2, RS3)


def test_reschedule_ends_when_the_server_is_back(lb):
    lb = lb("reschedule")
    assert mac_of(lb.dp.test_run(tcp("S", sport=50300))) == RS1
    lb.dp.test_run(tcp("A", sport=50300))
    lb.reprogram(lb.config, dict(RS_MACS), health=down("10.0.0.12"))
    lb.reprogram(lb.config, dict(RS_MACS), health={})
    assert mac_of(lb.dp.test_run(tcp("A", sport=50300))) == RS1, \
        "a connection that sent nothing while its server was down stays with it"


def test_every_server_down_without_a_sorry_server_drops_and_counts(lb):
    lb = lb("keep")
    lb.reprogram(lb.config, dict(RS_MACS), health=down(*RS_MACS))
    before = lb.dp.counters()
    r = lb.dp.test_run(tcp("S", sport=50400))
    assert r.verdict == "XDP_DROP"
    assert moved(lb, before) == {"drop_no_real_server": 1}


def test_sorry_server_takes_new_connections_only_while_every_server_is_down(lb):
    lb = lb("keep", sorry=True)
    assert mac_of(lb.dp.test_run(tcp("S", sport=50500))) == RS1, "sorry server used too soon"
    lb.reprogram(lb.config, dict(RS_MACS, **{SORRY_IP: SORRY_MAC}),
                 health=down(*RS_MACS))
    r = lb.dp.test_run(tcp("S", sport=50501))
    assert r.verdict == "XDP_TX" and r.data == forwarded(tcp("S", sport=50501), SORRY_MAC)
    lb.dp.test_run(tcp("A", sport=50501))
    lb.reprogram(lb.config, dict(RS_MACS, **{SORRY_IP: SORRY_MAC}), health=down("10.0.0.12"))
    assert mac_of(lb.dp.test_run(tcp("S", sport=50502))) in (RS2, RS3)
    assert mac_of(lb.dp.test_run(tcp("A", sport=50501))) == SORRY_MAC, \
        "the sorry server keeps the connections it took"


def test_sorry_server_with_persistence_lets_clients_go_back(program):
    mask = 'persistent_netmask = "255.255.255.0"\n'
    text = CONFIG.replace(mask, f'{mask}sorry_server = "{SORRY_IP}"\n[service.health]\n'
                          'type = "tcp"\n', 1)
    macs = dict(RS_MACS, **{SORRY_IP: SORRY_MAC})
    lb = program(text, macs, DIRECTOR_MAC)
    lb.reprogram(lb.config, macs, health=down(*RS_MACS, port=443))
    assert mac_of(lb.dp.test_run(tcp("S", sport=50600, dport=443))) == SORRY_MAC
    lb.reprogram(lb.config, macs, health={})
    assert mac_of(lb.dp.test_run(tcp("S", sport=50601, dport=443))) != SORRY_MAC, \
        "a persistence template must not keep a client on the sorry server"


# ---- the DR-path probe's answers -----------------------------------------------------------

def probe_answer(flags: str = "SA", dport: int = PROBE_PORT, src: str = VIP,
                 sport: int = 80) -> bytes:
    return tcp(flags, sport=sport, dport=dport, src=src, dst=DIRECTOR_IP, src_mac=RS1)


@pytest.mark.parametrize("flags", ["SA", "RA"])
@pytest.mark.parametrize("dport", [abi.CONST["PROBE_PORT_MIN"], abi.CONST["PROBE_PORT_MAX"]])
def test_probe_answer_is_passed_with_a_foreign_destination_mac(lb, flags, dport):
    lb = lb("keep")
    frame = probe_answer(flags, dport)
    before = lb.dp.counters()
    r = lb.dp.test_run(frame)
    assert r.verdict == "XDP_PASS"
    assert r.data == bytes(6) + frame[6:], \
        "only the destination MAC may change, to one the kernel does not take as its own"
    assert moved(lb, before) == {"pass_probe_reply": 1}
    assert not list(lb.dp.map("conn_table").keys())


def same_filter_bit(vip: str) -> str:
    """An address that is no VIP but shares the VIP's bit in the pre-filter, so that only
    the exact VIP lookup tells them apart."""
    return next(a for i in range(1, 1 << 24)
                if (a := str(ipaddress.IPv4Address((10 << 24) + i))) != vip
                and vip_hash(a) == vip_hash(vip))


@pytest.mark.parametrize("frame, counter", [
    (probe_answer(dport=abi.CONST["PROBE_PORT_MIN"] - 1), "pass_not_vip"),
    (probe_answer(src="10.0.0.99"), "pass_not_vip"),
    (probe_answer(src=same_filter_bit(VIP)), "pass_not_vip"),
    (udp(sport=80, dport=PROBE_PORT, src=VIP, dst=DIRECTOR_IP), "pass_not_vip"),
    (tcp("SA", sport=80, dport=PROBE_PORT, src=CLIENT_IP, dst=VIP), "pass_vip_other_port"),
], ids=["below-the-probe-ports", "not-from-a-vip", "not-a-vip-same-filter-bit", "udp",
        "to-the-vip"])
def test_other_frames_are_not_taken_for_probe_answers(lb, frame, counter):
    lb = lb("keep")
    before = lb.dp.counters()
    r = lb.dp.test_run(frame)
    assert r.verdict == "XDP_PASS" and r.data == frame
    assert moved(lb, before) == {counter: 1}


def test_reschedule_moves_a_half_open_connection_too(lb):
    """A connection still in syn_table (SYN seen, no ACK yet) of a server that fails its
    check moves like an established one: its next SYN is placed anew in syn_table, its
    ACK goes to a healthy server and into conn_table."""
    lb = lb("reschedule")
    assert mac_of(lb.dp.test_run(tcp("S", sport=50400))) == RS1
    lb.reprogram(lb.config, dict(RS_MACS), health=down("10.0.0.12"))
    before = lb.dp.counters()
    r = lb.dp.test_run(tcp("S", sport=50400))
    assert r.verdict == "XDP_TX" and mac_of(r) in (RS2, RS3), "the repeated SYN must move"
    # Placed anew in its own syn_table slot: no new key, nothing evicted for it.
    assert moved(lb, before) == {"tx_service": 1, "conn_rescheduled": 1}
    home = mac_of(r)
    r = lb.dp.test_run(tcp("A", sport=50400))
    assert mac_of(r) == home, "its ACK follows the new placement (promoted, not moved again)"
    assert mac_of(lb.dp.test_run(tcp("S", sport=50401))) in (RS2, RS3)
    lb.dp.test_run(tcp("S", sport=50402))  # a third placement, cycling past RS1
    # A half-open connection whose server failed, seen next with its ACK: moved at once.
    lb.reprogram(lb.config, dict(RS_MACS), health={})
    for sport in range(50410, 50420):
        if mac_of(lb.dp.test_run(tcp("S", sport=sport))) == RS1:
            break
    lb.reprogram(lb.config, dict(RS_MACS), health=down("10.0.0.12"))
    before = lb.dp.counters()
    r = lb.dp.test_run(tcp("A", sport=sport))
    assert r.verdict == "XDP_TX" and mac_of(r) in (RS2, RS3)
    assert moved(lb, before) == {"tx_service": 1, "conn_rescheduled": 1,
                                 "conn_table_insert": 1}
    assert abi.port_be16(sport) not in lb.dp.half_open()[0]["sport"], "it must leave syn_table"
