"""Layer 1: the `dr-lb` command line through click's CliRunner, no root, nothing touched.

Expected failures must be one line and an exit status, never a traceback. Anything that
could change the machine (attaching XDP, editing lo) is replaced by a tripwire, so the
tests stay harmless when run as root.
"""
from __future__ import annotations

import os
import re

import pytest
from click.testing import CliRunner

from lb import cli
from tests.conftest import SCRATCH_ADDRESS, SCRATCH_IFACE

GOOD = '''
[director]
interface = "eth0"

[[service]]
vip = "192.168.0.21"
port = 80

[[service.real_server]]
address = "192.168.0.12"
weight = 2

[[service.real_server]]
address = "192.168.0.13"

[[service.real_server]]
address = "192.168.0.14"
'''

# Three mistakes: the service port, a weight, and a typo.
BAD = '''
[director]
interface = "eth0"

[[service]]
vip = "192.168.0.21"
port = 0

[[service.real_server]]
address = "192.168.0.12"
weight = -1

[[service.real_server]]
address = "192.168.0.13"
wieght = 1
'''


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def write(tmp_path):
    def write(text: str, name: str = "config.toml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


@pytest.fixture
def tripwire(monkeypatch):
    """Replace functions that would touch the machine with ones that fail the test."""
    def tripwire(module, name):
        def called(*args, **kwargs):
            pytest.fail(f"{module.__name__}.{name} was called: the command should have "
                        "stopped before touching anything")
        monkeypatch.setattr(module, name, called)
    return tripwire


def assert_one_line_failure(result, status: int, *expected: str) -> str:
    """The command failed with `status` and printed exactly one line, without a traceback."""
    out = result.output
    assert result.exit_code == status, \
        f"exit status {result.exit_code}, expected {status}; output:\n{out}"
    assert "Traceback" not in out, f"a traceback was printed:\n{out}"
    assert isinstance(result.exception, (SystemExit, type(None))), \
        f"an exception escaped: {result.exception!r}"
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{out}"
    for part in expected:
        assert part in lines[0], f"expected {part!r} in {lines[0]!r}"
    return lines[0]


def local_config(interface: str, vip: str = "198.51.100.77") -> str:
    return f'''
[director]
interface = "{interface}"

[[service]]
vip = "{vip}"
port = 80

[[service.real_server]]
address = "192.0.2.12"
'''


# --- check -----------------------------------------------------------------------------

def test_check_offline_good_file(runner, write):
    path = write(GOOD)
    result = runner.invoke(cli.main, ["check", "--offline", path])
    assert result.exit_code == 0, result.output
    ok, cost = result.output.strip().splitlines()
    assert ok == f"{path}: OK: 1 service(s), 3 real server(s) on eth0", result.output
    # 149 MiB here (tables and flow_cache); the per-CPU headroom makes it a little more on bigger machines
    assert re.fullmatch(r"conn_table_size = 1000000: the connection tables take about "
                        r"1[1-6]\d MiB of kernel memory", cost), cost


def test_check_offline_bad_file_prints_each_problem(runner, write):
    result = runner.invoke(cli.main, ["check", "--offline", write(BAD)])
    assert result.exit_code == 2, f"a bad config must exit 2; got {result.exit_code}:\n" \
                                  + result.output
    assert "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 3, "expected one line per problem (port, weight, typo), got:\n" \
                            + result.output
    for line in lines:
        assert line.startswith("dr-lb: config.toml: "), f"unexpected line: {line!r}"
    assert "port = 0" in lines[0]
    assert "weight = -1" in lines[1]
    assert "unknown key 'wieght'" in lines[2]


def test_check_offline_toml_syntax_error(runner, write):
    result = runner.invoke(cli.main, ["check", "--offline", write("[director\n")])
    assert_one_line_failure(result, 2, "config.toml", "not valid TOML", "line 1")


def test_check_missing_file(runner, tmp_path):
    result = runner.invoke(cli.main, ["check", "--offline", str(tmp_path / "nope.toml")])
    assert_one_line_failure(result, 2, "nope.toml", "cannot read")


def test_check_system_missing_interface(runner, write):
    result = runner.invoke(cli.main, ["check", write(local_config("drlb-nosuch0"))])
    assert_one_line_failure(result, 2, 'interface = "drlb-nosuch0" does not exist',
                            "use one of:")


def test_check_system_vip_is_the_directors_address(runner, write, scratch_netns):
    result = runner.invoke(cli.main, ["check", write(local_config(SCRATCH_IFACE,
                                                                  vip=SCRATCH_ADDRESS))])
    assert_one_line_failure(result, 2, f"service {SCRATCH_ADDRESS}:80/tcp",
                            "director's own address")


def test_check_system_good(runner, write, scratch_netns):
    path = write(local_config(SCRATCH_IFACE))
    result = runner.invoke(cli.main, ["check", path])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and f"on {SCRATCH_IFACE}" in result.output, result.output


@pytest.mark.parametrize("vip,why", [
    ("127.0.0.1", "loopback"), ("0.0.0.0", "unicast"), ("224.0.0.5", "unicast"),
    ("255.255.255.255", "unicast")])
def test_check_refuses_a_vip_no_host_can_own(runner, write, vip, why):
    result = runner.invoke(cli.main, ["check", "--offline", write(local_config("eth0", vip))])
    line = assert_one_line_failure(result, 2, f"vip = {vip}", why)
    assert "ip addr del" not in line, f"no advice to remove {vip} from the host: {line}"


def test_check_refuses_lo_as_the_interface(runner, write):
    result = runner.invoke(cli.main, ["check", "--offline", write(local_config("lo"))])
    assert_one_line_failure(result, 2, 'interface = "lo"', "loopback", "Ethernet")


@pytest.mark.parametrize("vip,which", [("198.51.100.0", "network"),
                                        ("198.51.100.255", "broadcast")])
def test_check_system_vip_at_the_edge_of_a_connected_subnet(runner, write, scratch_netns,
                                                            vip, which):
    result = runner.invoke(cli.main, ["check", write(local_config(SCRATCH_IFACE, vip))])
    assert_one_line_failure(result, 2, f"service {vip}:80/tcp",
                            f"{which} address of 198.51.100.0/24")


def test_check_offline_does_not_look_at_interfaces(runner, write, tripwire):
    from lb.director import netif
    tripwire(netif, "config_problems")
    result = runner.invoke(cli.main, ["check", "--offline", write(local_config("drlb-nosuch0"))])
    assert result.exit_code == 0, result.output


# --- status ----------------------------------------------------------------------------

@pytest.fixture
def empty_run_dir(monkeypatch, tmp_path):
    from lb.director import instances
    run_dir = tmp_path / "run"
    monkeypatch.setattr(instances, "RUN_DIR", run_dir)
    return run_dir


@pytest.mark.parametrize("args", [[], ["--json"]])
def test_status_when_nothing_runs(runner, empty_run_dir, args):
    result = runner.invoke(cli.main, ["status", *args])
    assert_one_line_failure(result, 1, "not running", "dr-lb up")


def test_status_for_an_interface_without_instance(runner, empty_run_dir):
    result = runner.invoke(cli.main, ["status", "--interface", "drlb-nosuch0"])
    assert_one_line_failure(result, 1, "not running on drlb-nosuch0")


# --- commands that need root, run as a normal user --------------------------------------

@pytest.fixture
def not_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)


def test_up_needs_root(runner, write, not_root, tripwire):
    from lb.director import daemon
    tripwire(daemon, "run")
    result = runner.invoke(cli.main, ["up", write(GOOD)])
    assert_one_line_failure(result, 1, "needs root", "sudo")


def test_down_needs_root(runner, not_root, tripwire, empty_run_dir):
    from lb.director import instances
    tripwire(instances, "down")
    result = runner.invoke(cli.main, ["down"])
    assert_one_line_failure(result, 1, "needs root", "sudo")


def test_lab_demo_needs_root(runner, not_root, tripwire):
    from lb.lab import demo
    tripwire(demo, "run")
    result = runner.invoke(cli.main, ["lab", "demo"])
    assert_one_line_failure(result, 1, "needs root", "sudo")


# --- realserver ------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["up", "down"])
@pytest.mark.parametrize("bad", ["192.168.0.300", "vip", "fe80::1"])
def test_realserver_rejects_a_bad_ip(runner, tripwire, command, bad):
    from lb import realserver
    tripwire(realserver, command)
    result = runner.invoke(cli.main, ["realserver", command, "192.168.0.21", bad])
    assert result.exit_code == 2, f"a bad IP must exit 2, got {result.exit_code}:\n" \
                                  + result.output
    assert "Traceback" not in result.output
    assert f"'{bad}' is not an IPv4 address" in result.output, result.output


def test_realserver_up_needs_a_vip(runner, tripwire):
    from lb import realserver
    tripwire(realserver, "up")
    result = runner.invoke(cli.main, ["realserver", "up"])
    assert result.exit_code == 2, result.output


def test_help_lists_the_commands(runner):
    result = runner.invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status", "check", "realserver", "lab"):
        assert f"  {command} " in result.output, f"{command} missing from --help"
