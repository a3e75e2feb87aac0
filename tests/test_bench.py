"""`dr-lb bench` end to end, with tiny settings: a real run in the lab (prefix drlb-bn2)
whose table, JSON and plot are checked for structure and for dr-lb having taken the
measured path (its exit counters), never for a time. Argument errors need no root."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from lb import cli
from tests.conftest import needs_netns

PROGRAMS = {"kernel", "reflector", "dr-lb"}


def one_line_error(r) -> str:
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["--sizes", "40"], "outside 64-1500"),
    (["--sizes", "64 x"], "expected numbers"),
    (["--flows", "0"], "positive"),
    (["--modes", "offload"], "native and/or generic"),
])
def test_bad_arguments_are_one_line(args, words, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["bench", *args])
    assert r.exit_code == 2
    assert words in one_line_error(r)


def test_needs_root(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["bench", "--quick"])
    assert r.exit_code == 1 and "root" in one_line_error(r)


@pytest.mark.parametrize("flows", [1, 2, 3, 1000, 100_000, 1_000_000, 65_536, 3 ** 10])
def test_a_shuffled_pass_takes_each_flow_once_and_far_from_the_one_before(flows):
    """bench/progs.c: frame i of a pass is from flow i * stride % flows."""
    from bench.measure import flow_stride
    stride = flow_stride(flows)
    order = [i * stride % flows for i in range(flows)]
    assert sorted(order) == list(range(flows))
    if flows >= 1000:
        gaps = {min((b - a) % flows, (a - b) % flows) for a, b in zip(order, order[1:])}
        assert min(gaps) > flows // 4, "consecutive frames from flows made close together"


def test_the_order_is_an_option(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["bench", "--order", "random"])
    assert r.exit_code == 2 and "shuffled" in r.stderr


def test_a_cpu_it_may_not_use_is_one_line_and_the_affinity_stays():
    from bench.measure import pinned
    from lb.errors import UserError
    before = os.sched_getaffinity(0)
    with pytest.raises(UserError, match=r"--cpu 4096: cannot run there"):
        with pinned(4096):
            pass
    assert os.sched_getaffinity(0) == before
    with pinned(None) as cpu:
        assert cpu == max(before) and os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(0) == before


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    affinity = os.sched_getaffinity(0)
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", "--quick", "--rounds", "2", "--flows", "1 1000", "--sizes", "64 512",
            "--modes", "native generic", "--frames", "4000", "--repeat", "4000",
            "--syn-frames", "4000", "--min-seconds", "0.02", "--json", str(out / "b.json"),
            "--plot", str(out / "b.png"), "--lab-prefix", "drlb-bn2"]
    r = CliRunner(mix_stderr=False).invoke(cli.main, args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert os.sched_getaffinity(0) == affinity, "the run's pinning outlived it"
    return r, json.loads((out / "b.json").read_text()), out / "b.png"


@pytest.mark.usefixtures()
class TestTinyRun:
    pytestmark = needs_netns

    def test_json_has_every_figure(self, tiny_run):
        _, res, _ = tiny_run
        assert {"date", "machine", "settings", "test_run", "live", "new_connections",
                "elapsed_s"} <= set(res)
        assert res["settings"]["rounds"] == 2 and res["settings"]["min_seconds"] == 0.02
        # The whole run on one CPU (every flow's frames on the same one, as RSS gives).
        assert res["machine"]["pinned_cpu"] == max(os.sched_getaffinity(0))
        live = res["live"]
        keys = {(r["mode"], r["size"], r["flows"], r["program"]) for r in live}
        assert keys == {(m, s, f, p) for m in ("native", "generic") for s in (64, 512)
                        for f in (1, 1000) for p in PROGRAMS}
        for r in live:
            assert len(r["pps"]["rounds"]) == 2 and r["pps"]["best"] > 0, r
            assert r["pps"]["best"] >= r["pps"]["median"]
            if r["program"] == "kernel":
                assert r["ns_in_situ"] is None
            else:
                assert 0 < r["ns_in_situ"]["best"] <= r["ns_in_situ"]["median"], r
            # Frames came back: the kernel forwarded them, the XDP programs sent them;
            # and no more than were sent: 4,000 frames last well under --min-seconds, so
            # each run sent them again and again, and counted every time.
            assert 0.5 < r["returned"] <= 1.0, r

    def test_dr_lb_took_the_measured_path(self, tiny_run):
        _, res, _ = tiny_run
        for r in res["live"]:
            if r["program"] == "dr-lb":
                assert r["path"]["ok"] and r["path"]["checks"] == 2, r
        cases = {(r["program"], r["case"], r["flows"]): r for r in res["test_run"]}
        assert set(cases) == {("reflector", "established", 1), ("dr-lb", "established", 1),
                              ("dr-lb", "established", 1000), ("dr-lb", "not a VIP", 1),
                              ("dr-lb", "new connection", None),
                              ("dr-lb", "new connection, table full", None)}
        for (prog, case, _), r in cases.items():
            assert len(r["ns"]["rounds"]) == 2
            if prog == "dr-lb":
                assert r["path"]["ok"], r
                assert r["path"]["expect"] == ("pass_not_vip" if case == "not a VIP"
                                               else "tx_service")
        # A new connection costs more than following one (a table insert and the WRR
        # lock), which a harness that did not make every SYN new would not show.
        assert (cases[("dr-lb", "new connection", None)]["ns"]["median"]
                > cases[("dr-lb", "established", 1)]["ns"]["median"])
        nc = res["new_connections"]["live"]
        assert {(r["mode"], r["program"]) for r in nc} == {
            (m, p) for m in ("native", "generic") for p in PROGRAMS}
        assert all(r["syns_per_s"]["best"] > 0 for r in nc)
        assert all(r["path"]["ok"] for r in nc if r["program"] == "dr-lb")

    def test_table_and_plot(self, tiny_run):
        r, res, png = tiny_run
        out = r.stdout
        assert "test-run, reset method" in out and "live frames" in out
        assert "WRONG PATH" not in out
        for mode in ("native", "generic"):
            assert sum(line.split()[:1] == [mode] for line in out.splitlines()) >= 4
        assert "figures written to" in out and "plot written to" in out
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "[" in r.stderr and "live native" in r.stderr   # the progress line
