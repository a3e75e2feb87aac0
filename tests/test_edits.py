"""Runtime changes written into the config in place (lb/director/edits.py), no kernel."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from lb import cli
from lb.director import edits
from lb.errors import UserError

TEXT = '''# the lab's director
[director]
interface = "eth0"   # the segment

[[service]]   # web
vip = "192.168.0.21"
port = 80
[[service.real_server]]
address = "192.168.0.12"
weight = 2   # the big one
[[service.real_server]]
address = "192.168.0.13"

[[service]]
vip = "192.168.0.21"
port = 53
protocol = "udp"
[[service.real_server]]
address = "192.168.0.12"
'''
WEB = edits.ServiceSpec("192.168.0.21", 80)


def reals(text: str, port: int) -> dict:
    cfg = edits.validated(text, "c.toml")
    svc = next(s for s in cfg.services if s.port == port)
    return {r.address: r for r in svc.real_servers}


def test_set_weight_keeps_comments_and_layout():
    out = edits.set_weight(TEXT, WEB, "192.168.0.13", 5)
    assert reals(out, 80)["192.168.0.13"].weight == 5
    assert reals(out, 80)["192.168.0.12"].weight == 2
    assert out.replace("weight = 5\n", "") == TEXT, "only the one line may change"
    assert "# the big one" in edits.set_weight(TEXT, WEB, "192.168.0.12", 3)


def test_drain_and_undrain_round_trip_to_the_same_text():
    drained = edits.set_drained(TEXT, "192.168.0.12", None, True)
    assert reals(drained, 80)["192.168.0.12"].drained
    assert reals(drained, 53)["192.168.0.12"].drained, "without --service: every service"
    assert reals(drained, 80)["192.168.0.12"].effective_weight == 0
    assert reals(drained, 80)["192.168.0.12"].weight == 2, "undrain needs the weight kept"
    assert edits.set_drained(drained, "192.168.0.12", None, False) == TEXT


def test_drain_one_service_only():
    out = edits.set_drained(TEXT, "192.168.0.12", edits.ServiceSpec("192.168.0.21", 53, "udp"),
                            True)
    assert reals(out, 53)["192.168.0.12"].drained
    assert not reals(out, 80)["192.168.0.12"].drained


@pytest.mark.parametrize("call,words", [
    (lambda: edits.set_weight(TEXT, edits.ServiceSpec("192.168.0.99", 80), "192.168.0.12", 1),
     ["no service 192.168.0.99:80", "192.168.0.21:80/tcp"]),
    (lambda: edits.set_weight(TEXT, edits.ServiceSpec("192.168.0.21", 80, "udp"),
                              "192.168.0.12", 1), ["no service 192.168.0.21:80/udp"]),
    (lambda: edits.set_weight(TEXT, WEB, "192.168.0.99", 1),
     ["192.168.0.99 is not a real server of service 192.168.0.21:80"]),
    (lambda: edits.set_drained(TEXT, "192.168.0.99", None, True),
     ["192.168.0.99 is not a real server of any service"]),
])
def test_unknown_service_or_real_server_says_which(call, words):
    with pytest.raises(UserError) as e:
        call()
    assert e.value.exit_code == 2
    for w in words:
        assert w in str(e.value)


def test_write_in_place_keeps_the_mode_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TEXT)
    os.chmod(path, 0o640)
    edits.write_in_place(path, "x = 1\n")
    assert path.read_text() == "x = 1\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["c.toml"]


@pytest.mark.parametrize("args", [
    ["weight", "192.168.0.21", "192.168.0.12", "1"],
    ["weight", "192.168.0.21:99999", "192.168.0.12", "1"],
    ["weight", "192.168.0.21:80/sctp", "192.168.0.12", "1"],
    ["weight", "192.168.0.21:80", "192.168.0.12", "-1"],
    ["weight", "192.168.0.21:80", "192.168.0.12", "65536"],
    ["weight", "192.168.0.21:80", "nohost", "1"],
    ["drain", "192.168.0.300"],
    ["zero", "--service", "vip:80"],
    ["status", "--vip", "192.168.0.21"],
])
def test_bad_arguments_exit_2_before_asking_the_instance(args, monkeypatch):
    from lb.director import instances
    monkeypatch.setattr(instances, "request",
                        lambda *a, **k: pytest.fail("a bad argument reached the instance"))
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
