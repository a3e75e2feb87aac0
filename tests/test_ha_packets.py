"""Layer 2 for issue 12: sloppy pickup and the VRRP backup's silence on ARP, with crafted
packets through the real program and maps filled by the real control-plane code."""
from __future__ import annotations

import random

from bench import frames
from lb import abi
from lb.director import layout as layout_mod
from tests.conftest import needs_root
from tests.packet_cases import DIRECTOR_MAC, VIP
from tests.test_sched_packets import MACS, config, picked, random_client, syn

pytestmark = needs_root


def state_of(lb, frame: bytes) -> str:
    """The connection table's state for the frame's flow."""
    keys, values = lb.dp.connections()
    sport = int.from_bytes(frame[34:36], "big")
    for k, v in zip(keys, values):
        if int(k["sport"]) == int.from_bytes(sport.to_bytes(2, "big"), "little"):
            return abi.CONN_STATES[int(v["state"]) & (abi.CONN_STATE_SLOTS - 1)]
    return "none"


def test_sloppy_mh_picks_up_a_connection_on_the_server_a_syn_would_have_had(program):
    """What ECMP moved here mid-connection goes where the director that saw its SYN sent
    it: mh's hash of the same client, with no state shared."""
    rng = random.Random(12)
    flags = ("mh-port",)
    seen = program(config("mh", [2, 1, 1], flags=flags), MACS, DIRECTOR_MAC)
    clients = [(random_client(rng), rng.randint(1024, 65535)) for _ in range(200)]
    first = [picked(seen, syn(c, p)) for c, p in clients]
    # Another director: the same config with sloppy, an empty table, only ACKs arrive.
    other = program(config("mh", [2, 1, 1], flags=flags, extra="sloppy = true"), MACS,
                    DIRECTOR_MAC)
    assert [picked(other, syn(c, p, flags="A")) for c, p in clients] == first
    counts = other.dp.counters()
    assert counts["conn_sloppy_pickup"] == len(clients)
    assert counts["pass_tcp_no_conn"] == 0
    # The next segment of each follows the entry the pickup made, in ESTABLISHED.
    assert [picked(other, syn(c, p, flags="PA")) for c, p in clients] == first
    assert other.dp.counters()["conn_sloppy_pickup"] == len(clients)
    assert state_of(other, syn(*clients[0], flags="A")) == "established"


def test_sloppy_pickup_takes_the_state_of_the_segments_flags(program):
    lb = program(config("sh", [1, 1], extra="sloppy = true"), MACS, DIRECTOR_MAC)
    fin, rst = syn("10.1.1.1", 5000, flags="FA"), syn("10.1.1.2", 5001, flags="R")
    assert picked(lb, fin) is not None and picked(lb, rst) is not None
    assert state_of(lb, fin) == "fin_wait"
    assert state_of(lb, rst) == "close"


def test_without_sloppy_a_segment_past_the_syn_is_passed(program):
    lb = program(config("mh", [1, 1]), MACS, DIRECTOR_MAC)
    assert picked(lb, syn("10.1.1.1", 5000, flags="A")) is None
    counts = lb.dp.counters()
    assert counts["pass_tcp_no_conn"] == 1 and counts["conn_sloppy_pickup"] == 0


def test_a_vrrp_backup_leaves_arp_for_the_vips_to_the_master(program):
    lb = program(config("mh", [1, 1], extra="") .replace('interface = "eth0"',
                                                       'interface = "eth0"\nvrrp = true'),
                 MACS, DIRECTOR_MAC)
    request = frames.arp(pdst=VIP)
    assert lb.dp.test_run(request).verdict == "XDP_TX", "MASTER (the layout's default)"
    backup = layout_mod.build(lb.config, MACS, DIRECTOR_MAC, lb.ids, lb.layout,
                              answer_arp=False)
    lb.dp.write(backup)
    assert lb.dp.test_run(request).verdict == "XDP_PASS"
    assert lb.dp.counters()["pass_arp_backup"] == 1
    # Traffic that still arrives (a stale ARP cache) is forwarded: nothing breaks.
    assert picked(lb, syn("10.1.1.1", 5000)) is not None
