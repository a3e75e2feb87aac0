"""The VIP pre-filter (vip_filter, bpf/dr_lb.c maybe_vip): a frame to no VIP leaves at
once, counted as before; a false positive (an address whose bit a VIP set) still gets
the full lookups; a VIP's bit outlives the VIP, so its connections go on after a reload
removes it, as they did without the filter. Through the real program (test runs)."""
from __future__ import annotations

import ctypes as ct
import ipaddress

from bench.frames import DIRECTOR_MAC, RS_MACS, forwarded, tcp, udp
from lb import abi, libbpf
from lb.director import config as config_mod, layout as layout_mod
from tests.packet_cases import CONFIG

VIP = "10.0.0.21"


def counters_delta(dp, send):
    before = dp.counters()
    result = send()
    after = dp.counters()
    return result, {k: after[k] - before[k] for k in after if after[k] != before[k]}


def bit_set(dp, address: str) -> bool:
    h = layout_mod.vip_hash(address)
    return bool(dp.map("vip_filter")[ct.c_uint32(h // 64)].value >> (h % 64) & 1)


def collider(address: str) -> str:
    """Another address in 10.0.0.0/8 that lands on the same bit."""
    want = layout_mod.vip_hash(address)
    for n in range(1, 1 << 24):
        other = str(ipaddress.IPv4Address(0x0A000000 + n))
        if other != address and layout_mod.vip_hash(other) == want:
            return other
    raise AssertionError("no collision in 10/8")


def test_python_and_c_agree_on_the_bits(program, dataplane):
    program(CONFIG, RS_MACS, DIRECTOR_MAC)
    assert bit_set(dataplane, VIP)
    assert sum(bin(dataplane.map("vip_filter")[ct.c_uint32(w)].value).count("1")
               for w in range(abi.CONST["VIP_FILTER_WORDS"])) >= 1


def test_not_a_vip_leaves_early_with_its_counter(program, dataplane):
    program(CONFIG, RS_MACS, DIRECTOR_MAC)
    other = "10.0.0.99"
    assert not bit_set(dataplane, other)
    for frame in (tcp("A", 40000, 80, dst=other), tcp("S", 40000, 80, dst=other),
                  udp(40000, 53, dst=other)):
        r, delta = counters_delta(dataplane, lambda: dataplane.test_run(frame))
        assert r.action == libbpf.XDP_PASS and r.data == frame
        assert delta == {"pass_not_vip": 1}


def test_a_false_positive_gets_the_full_lookups(program, dataplane):
    program(CONFIG, RS_MACS, DIRECTOR_MAC)
    twin = collider(VIP)
    assert bit_set(dataplane, twin)
    frame = tcp("S", 40000, 80, dst=twin)
    r, delta = counters_delta(dataplane, lambda: dataplane.test_run(frame))
    assert r.action == libbpf.XDP_PASS and delta == {"pass_not_vip": 1}


def test_unprogrammed_director_still_says_so(dataplane):
    dataplane.clear_state()
    dataplane.map("settings").clear()
    frame = tcp("S", 40000, 80, dst="10.0.0.77")
    r, delta = counters_delta(dataplane, lambda: dataplane.test_run(frame))
    assert r.action == libbpf.XDP_PASS and delta == {"pass_not_programmed": 1}


def test_connections_of_a_removed_vip_go_on(program, dataplane):
    p = program(CONFIG, RS_MACS, DIRECTOR_MAC)
    syn, ack = tcp("S", 41000, 80), tcp("A", 41000, 80)
    first = dataplane.test_run(syn)
    assert first.action == libbpf.XDP_TX
    rs_mac = ":".join(f"{b:02x}" for b in first.data[:6])
    # A config without that VIP: its bit stays, its connection still finds its server.
    moved = CONFIG.replace(f'vip = "{VIP}"', 'vip = "10.0.0.22"')
    p.reprogram(config_mod.parse(moved, source="t.toml"), RS_MACS)
    assert bit_set(dataplane, VIP) and bit_set(dataplane, "10.0.0.22")
    r, delta = counters_delta(dataplane, lambda: dataplane.test_run(ack))
    assert r.action == libbpf.XDP_TX and delta.get("tx_service") == 1, delta
    assert r.data == forwarded(ack, rs_mac)
    # and a new connection to it is no longer balanced
    r, delta = counters_delta(dataplane, lambda: dataplane.test_run(tcp("S", 41001, 80)))
    assert r.action == libbpf.XDP_PASS and delta == {"pass_not_vip": 1}


def test_a_frame_to_no_vip_is_not_ours_whatever_mac_it_was_sent_to(program, dataplane):
    """The pre-filter comes before the MAC test: a frame to no VIP is not a VIP's, whether
    it was sent to the director or is another host's that a switch flooded; a frame to a
    VIP sent to another MAC is another director's to send on."""
    program(CONFIG, RS_MACS, DIRECTOR_MAC)
    foreign = "02:00:00:00:00:0c"
    other = "10.0.0.99"
    for frame, counter in ((tcp("A", 40000, 80, dst=other, dst_mac=foreign), "pass_not_vip"),
                           (udp(40000, 53, dst=other, dst_mac=foreign), "pass_not_vip"),
                           (tcp("A", 40000, 80, dst_mac=foreign), "pass_not_our_mac")):
        r, delta = counters_delta(dataplane, lambda: dataplane.test_run(frame))
        assert r.action == libbpf.XDP_PASS and r.data == frame
        assert delta == {counter: 1}, (frame, delta)


def test_only_tcp_to_a_probe_port_from_a_vip_is_looked_at_further(program, dataplane):
    """A frame to no VIP goes on past the pre-filter only when it may be a probe reply:
    TCP, to a probe port, from maybe a VIP. UDP from a VIP to such a port, TCP from it to
    another port, and a TCP header cut short are not ours."""
    program(CONFIG, RS_MACS, DIRECTOR_MAC)
    port, director = abi.CONST["PROBE_PORT_MIN"], "10.0.0.2"
    reply = tcp("SA", 80, port, src=VIP, dst=director)
    r, delta = counters_delta(dataplane, lambda: dataplane.test_run(reply))
    assert r.action == libbpf.XDP_PASS and delta == {"pass_probe_reply": 1}
    cut = reply[:14 + 20 + 3]             # not even the destination port whole
    for frame in (udp(80, port, src=VIP, dst=director),
                  tcp("SA", 80, port - 1, src=VIP, dst=director), cut):
        r, delta = counters_delta(dataplane, lambda: dataplane.test_run(frame))
        assert r.action == libbpf.XDP_PASS and r.data == frame
        assert delta == {"pass_not_vip": 1}, (frame, delta)
    # To a VIP, a TCP header cut short is malformed, as ever.
    cut = tcp("S", 40000, 80)[:14 + 20 + 3]
    r, delta = counters_delta(dataplane, lambda: dataplane.test_run(cut))
    assert r.action == libbpf.XDP_PASS and delta == {"pass_malformed": 1}
