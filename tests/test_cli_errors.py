"""Errors a user can hit at `dr-lb up`: one line that says what to do, no traceback,
and nothing attached. The checks fail before the kernel is touched; those that need an
Ethernet interface to get that far run in a scratch network namespace (root)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from lb import cli

CONFIG = """
[director]
interface = "drlb0"
[[service]]
vip = "198.18.0.21"
port = 80
[[service.real_server]]
address = "198.18.0.12"
"""


def tripwire(monkeypatch, target: str) -> None:
    def called(*args, **kwargs):
        pytest.fail(f"{target} was called: `up` must stop before touching the machine")
    monkeypatch.setattr(target, called)


@pytest.fixture
def up(tmp_path, monkeypatch):
    """`dr-lb up` as root on the host's lo, with everything that would touch the host
    (taking over an instance, attaching XDP, the control socket, announcing VIPs, mounting
    a bpffs for the kept state) replaced
    by a failure: if a check regressed, the test fails instead of attaching to lo."""
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(signal, "signal", lambda *a: None)   # keep pytest's handlers
    monkeypatch.setattr("lb.director.instances.RUN_DIR", tmp_path / "run")
    for target in ("lb.libbpf.xdp_attach", "lb.director.dataplane.Dataplane.attach",
                   "lb.director.instances.stop_predecessor", "lb.director.instances.ControlServer",
                   "lb.director.arp.announce", "lb.director.kept.prepare"):
        tripwire(monkeypatch, target)
    path = tmp_path / "config.toml"

    def _up(text: str = CONFIG):
        path.write_text(text)
        return CliRunner(mix_stderr=False).invoke(cli.main, ["up", str(path)])
    return _up


def one_line(result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"a traceback escaped: {result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"want one line, got {result.stderr!r}"
    return lines[0]


def test_missing_kernel_headers_say_how_to_fix(up, monkeypatch, scratch_netns):
    monkeypatch.setattr("lb.director.dataplane.headers_problem",
                        lambda: "kernel headers not found at /lib/modules/x/build: run "
                                "`sudo scripts/setup.sh`")
    r = up()
    assert r.exit_code == 1
    assert "setup.sh" in one_line(r)


def test_missing_bcc_says_which_package(up, monkeypatch, scratch_netns):
    monkeypatch.setitem(sys.modules, "bcc", None)   # import bcc now raises ImportError
    r = up()
    assert r.exit_code == 1
    line = one_line(r)
    assert "python3-bpfcc" in line and "never `pip install bcc`" in line, line


def test_missing_interface_is_a_config_error(up):
    r = up(CONFIG.replace('interface = "drlb0"', 'interface = "nosuch0"'))
    assert r.exit_code == 2
    assert "nosuch0" in one_line(r) and "does not exist" in r.stderr


@pytest.mark.netns
@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_an_interface_without_ethernet_address_is_a_config_error(tmp_path):
    """A tun device has no MAC, and DR rewrites MACs: rejected before anything else."""
    ns = f"drlb-tun-{os.getpid()}"   # unique: runs beside other test runs
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "tuntap", "add", "dev", "t0", "mode", "tun"], check=True)
        cfg = tmp_path / "config.toml"
        cfg.write_text(CONFIG.replace('interface = "drlb0"', 'interface = "t0"'))
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "lb", "check",
                            str(cfg)], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert "no Ethernet address" in r.stderr and "Traceback" not in r.stderr, r.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.parametrize("command", ["check", "up"])
@pytest.mark.parametrize("content,says", [
    (CONFIG.encode("utf-8").replace(b"drlb0", b"drlb\xe90"), "not UTF-8"),
    (b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deep"),
    (b"x = " + b"{a = " * 100_000 + b"1" + b"}" * 100_000 + b"\n", "nested too deep"),
], ids=["latin-1", "deep-array", "deep-table"])
def test_a_file_that_is_not_utf8_or_nests_too_deep_is_one_line_exit_2(
        tmp_path, monkeypatch, command, content, says):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    result = CliRunner(mix_stderr=False).invoke(cli.main, [command, str(path)])
    line = one_line(result)
    assert result.exit_code == 2 and says in line, (result.exit_code, line)


def test_check_says_what_the_connection_table_costs(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.replace('interface = "drlb0"',
                                   'interface = "drlb0"\nconn_table_size = 100000000'))
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["check", "--offline", str(path)])
    assert r.exit_code == 0, r.stderr
    assert "conn_table_size = 100000000: the connection tables take about 15.2 GiB" \
        in r.stdout, r.stdout


def test_up_refuses_a_table_that_does_not_fit_in_available_memory(up, monkeypatch,
                                                                  scratch_netns):
    """Before compiling or attaching: one line with the figure and a size that fits."""
    monkeypatch.setattr("lb.director.netif.mem_available", lambda: 2 * 2**30)
    monkeypatch.setattr("lb.director.dataplane.Dataplane",
                        lambda *a: pytest.fail("must be refused before compiling"))
    r = up(CONFIG.replace('interface = "drlb0"',
                          'interface = "drlb0"\nconn_table_size = 100000000'))
    line = one_line(r)
    assert r.exit_code == 2, line
    assert "conn_table_size = 100000000 needs about 15.2 GiB" in line and "2,048 MiB" in line
    assert "for example" in line, line
