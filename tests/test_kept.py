"""lb/director/kept.py: the state that outlives `dr-lb up`. Pure parts (the notice, the ids'
record) without root; with root, the program compiled with a pin directory pins exactly
the maps and attributes kept.py expects, and prepare() reuses them, or removes one whose
record says another layout. End to end (restarts, upgrades) in tests/test_service.py."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lb import libbpf
from lb.director import config as config_mod, kept, layout
from tests.conftest import needs_root

CONFIG = """\
[director]
interface = "eth0"
[[service]]
vip = "192.168.0.21"
port = 80
[[service.real_server]]
address = "192.168.0.12"
[[service.real_server]]
address = "192.168.0.13"
"""


def test_notice_is_one_line_naming_every_map_and_why():
    k = kept.Kept("eth0", Path("/run/dr-lb/bpffs/1-eth0"),
                  reset={"conn_table": "made by a build with another bpf/dr_lb_abi.h",
                         "wrr_pos": "max_entries 8 (this build: 256)"})
    line = k.notice()
    assert "\n" not in line
    assert line.startswith("the kept state in /run/dr-lb/bpffs/1-eth0 has another layout")
    assert line.endswith("starting with empty conn_table, wrr_pos")
    assert kept.Kept("eth0", Path("/x")).notice() is None


def test_ids_survive_their_record():
    cfg = config_mod.parse(CONFIG)
    ids = layout.Ids()
    layout.build(cfg, {}, "02:00:00:00:00:01", ids)
    back = kept.ids_from_json(json.loads(json.dumps(kept.ids_to_json(ids))))
    assert back.services == ids.services and back.reals == ids.reals
    assert back.servers == ids.servers


def test_fingerprints_cover_every_kept_map_and_are_stable():
    fps = kept.fingerprints()
    assert set(fps) == set(kept.KEPT_MAPS)
    assert fps == kept.fingerprints()
    # conn_table and udp_table hold the same structs; syn_table (sets of them) and the
    # others differ.
    assert fps["conn_table"] == fps["udp_table"]
    assert len({fps["conn_table"], fps["syn_table"], fps["persist_table"], fps["wrr_pos"]}) == 4


@pytest.fixture
def pins(monkeypatch):
    """A pin directory of its own on the bpffs under /run/dr-lb (the kept.py functions
    name it after an interface; a made-up one cannot meet a real instance)."""
    kept.ensure_bpffs()
    name = f"drlb-sv-test{os.getpid()}"
    yield name, kept.pin_dir(name)
    shutil.rmtree(kept.pin_dir(name), ignore_errors=True)
    kept.record_path(name).unlink(missing_ok=True)


@pytest.mark.parametrize("size", [4096])
def test_compiled_program_pins_what_kept_expects_and_a_restart_reuses_it(pins, size):
    from lb.director.config import table_slots
    from lb.director.dataplane import Dataplane
    name, d = pins
    slots = table_slots(size)
    found = kept.prepare(name, slots)
    assert found.kept == [] and found.reset == {}
    dp = Dataplane(size, pin_dir=found.pin_dir)
    try:
        want = kept.expected_attrs(slots)
        for m in kept.KEPT_MAPS:
            assert libbpf.pinned_map_info(str(d / m)) == want[m], m
        cfg = config_mod.parse(CONFIG)
        ids = layout.Ids()
        kept.Recorder(name, slots, dp.hash_seed).save(ids, layout.build(cfg, {}, "02:00:00:00:00:01", ids))
    finally:
        dp.close()
    again = kept.prepare(name, slots)
    assert again.kept == list(kept.KEPT_MAPS) and again.reset == {}
    assert again.ids.reals == ids.reals
    # Another conn_table_size: the connection tables' sizes differ, their pins go.
    other = kept.prepare(name, table_slots(size * 2))
    assert list(other.reset) == list(kept.CONN_MAPS)
    assert all("max_entries" in other.reset[m] for m in kept.CONN_MAPS)
    assert not any((d / m).exists() for m in kept.CONN_MAPS) and (d / "persist_table").exists()
    # Another build's persist_value: the record's fingerprint differs, the pin goes.
    record = json.loads(kept.record_path(name).read_text())
    record["maps"]["persist_table"]["fingerprint"] = "0" * 16
    kept.record_path(name).write_text(json.dumps(record))
    third = kept.prepare(name, slots)
    assert third.reset == {"persist_table": "made by a build with another bpf/dr_lb_abi.h"}
    assert third.kept == ["wrr_pos"] and not (d / "persist_table").exists()

for _mark in needs_root:
    test_compiled_program_pins_what_kept_expects_and_a_restart_reuses_it = _mark(
        test_compiled_program_pins_what_kept_expects_and_a_restart_reuses_it)


def test_a_server_removed_while_stopped_is_laid_out_from_the_record():
    """After a restart a real server gone from the config keeps its id (its connections
    hold it): its entry is built from the record, health and all."""
    cfg = config_mod.parse(CONFIG)
    ids = layout.Ids()
    layout.build(cfg, {}, "02:00:00:00:00:01", ids)
    back = kept.ids_from_json(json.loads(json.dumps(kept.ids_to_json(ids))))
    smaller = config_mod.parse(CONFIG.rsplit("[[service.real_server]]", 1)[0])
    built = layout.build(smaller, {"192.168.0.13": "02:00:00:00:00:13"},
                         "02:00:00:00:00:01", back)
    (removed,) = built.removed_reals
    assert removed.server.address == "192.168.0.13"
    assert removed.real_id == ids.reals[("192.168.0.21", 80, "tcp", "192.168.0.13")]
    assert isinstance(removed.flags, int)
