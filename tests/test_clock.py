"""The program and the control plane read one clock: jiffies x tick_ns (bpf_jiffies64,
inlined by the verifier). A connection's last_seen_ns is "now" for the control plane, so
its idle time, status --conns' expire and the live counts are right."""
from __future__ import annotations

import time

from bench.frames import DIRECTOR_MAC, RS_MACS, tcp
from lb import libbpf
from lb.director import dataplane as dataplane_mod
from tests.packet_cases import CONFIG


def test_tick_is_a_linux_hz(dataplane):
    assert 1_000_000_000 // dataplane_mod.tick_ns() in dataplane_mod.KNOWN_HZ


def test_jiffies_advance_with_time(dataplane):
    j0 = libbpf.jiffies()
    time.sleep(0.05)
    elapsed_ns = (libbpf.jiffies() - j0) * dataplane_mod.tick_ns()
    assert 20_000_000 <= elapsed_ns <= 1_000_000_000


def test_a_new_connection_is_stamped_with_the_control_planes_now(program, dataplane):
    program(CONFIG, RS_MACS, DIRECTOR_MAC)
    before = dataplane_mod.program_clock_ns()
    assert dataplane.test_run(tcp("S", 42000, 80)).action == libbpf.XDP_TX
    after = dataplane_mod.program_clock_ns()
    _, values = dataplane.connections()
    assert len(values) == 1
    assert before <= int(values["last_seen_ns"][0]) <= after
    assert dataplane.live(values).all()
