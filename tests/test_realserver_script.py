"""lb/realserver/realserver.sh and the copy `dr-lb realserver script` prints, without
namespaces: syntax under every sh here, shellcheck, the printed copy, the arguments, and
the thin Python around the file."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from lb import cli, realserver
from lb.findings import Finding
from tests.test_realserver_common import RS_SH

VIPS = ["198.18.0.21", "198.18.0.22"]
SHELLS = [s for s in ("sh", "dash", "bash", "busybox") if shutil.which(s)]
DEFAULTS = 'DEFAULT_VIPS="" DEFAULT_PORT="" DEFAULT_DIRECTOR="" DEFAULT_UDP_PORT=""'
CODES = {   # every finding check can report, with its severity
    "arp-ignore": "error", "arp-announce": "error", "arp-ok": "ok", "lo-down": "error",
    "vip-missing": "error", "vip-prefix": "error", "vip-own-address": "error",
    "vip-not-lo": "error", "vip-ok": "ok", "port-closed": "error",
    "port-wrong-address": "error", "port-v6-only": "error", "port-ok": "ok",
    "udp-port-closed": "error", "udp-port-wrong-address": "error",
    "udp-port-v6-only": "error", "udp-port-wildcard": "warning", "udp-port-ok": "ok",
    "no-default-route": "warning", "gateway-director": "error", "gateway-ok": "ok"}
MESSAGES = ["lo-up", "added", "dropped", "set", "removed", "not-on-lo", "kept", "restored",
            "no-record", "stale-record", "on-other", "own-address"]


def printed(vips=VIPS, *options: str) -> str:
    r = CliRunner().invoke(cli.main, ["realserver", "script", *vips, *options])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def script() -> str:
    return printed(VIPS, "--port", "80", "--director", "198.18.0.11", "--udp-port", "5300")


@pytest.fixture
def script_file(script, tmp_path) -> str:
    path = tmp_path / "rs.sh"
    path.write_text(script)
    return str(path)


@pytest.mark.parametrize("shell", SHELLS)
def test_every_shell_here_parses_it(script_file, shell):
    for path in (str(RS_SH), script_file):
        argv = [shell, "sh", "-n", path] if shell == "busybox" else [shell, "-n", path]
        if shell == "bash":
            argv.insert(1, "--posix")
        r = subprocess.run(argv, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_finds_no_warning():
    r = subprocess.run(["shellcheck", "-s", "sh", "-S", "warning", str(RS_SH)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_the_printed_script_is_the_file_with_its_defaults_filled_in(script):
    """`dr-lb realserver script` prints realserver.sh itself; only the defaults differ."""
    text = RS_SH.read_text()
    assert text.count(DEFAULTS) == 1
    assert script == text.replace(DEFAULTS, 'DEFAULT_VIPS="198.18.0.21 198.18.0.22" '
                                            'DEFAULT_PORT="80" DEFAULT_DIRECTOR="198.18.0.11" '
                                            'DEFAULT_UDP_PORT="5300"')
    assert script.startswith("#!/bin/sh\n")
    assert printed(["198.18.0.21", "198.18.0.21"]) == text.replace(
        DEFAULTS, 'DEFAULT_VIPS="198.18.0.21" DEFAULT_PORT="" DEFAULT_DIRECTOR="" '
                  'DEFAULT_UDP_PORT=""')


def test_the_file_is_package_data():
    with realserver.script_path() as path:
        assert Path(path).read_text() == RS_SH.read_text()
    assert '"lb.realserver" = ["*.sh"]' in (RS_SH.parents[2] / "pyproject.toml").read_text()


def assigned_names(text: str) -> set[str]:
    names = set(re.findall(r"\b([a-z_][a-z_0-9]*)=", text))
    names |= set(re.findall(r"\bfor ([a-z_]+) in\b", text))
    for m in re.finditer(r"\bread -r ([a-z_ ]+)", text):
        names |= set(m.group(1).split())
    return names


def test_every_placeholder_is_a_variable_the_script_sets():
    """A finding or message text names values the shell code must set before calling
    it; with `set -u` a missing one would abort the script, so catch it here."""
    text = RS_SH.read_text()
    names = assigned_names(text) | set(re.findall(r"^([A-Z_]+)=", text, re.M))
    texts = re.findall(r"^[fm]_\w+\(\) \{ (.*)$", text, re.M)
    assert len(texts) == len(CODES) + len(MESSAGES)
    for line in texts:
        for name in re.findall(r"\$\{?(\w+)", line):
            assert name in names, f"${name} in {line!r} is never set in the script"


def test_every_finding_and_message_has_its_function():
    text = RS_SH.read_text()
    for code, severity in CODES.items():
        fn = "f_" + code.replace("-", "_")
        assert re.search(rf"^{fn}\(\) {{ finding {severity} {code} ", text, re.M), code
    for key in MESSAGES:
        assert re.search(rf"^m_{key.replace('-', '_')}\(\) ", text, re.M), key


def test_the_sysctl_rules():
    text = RS_SH.read_text()
    assert "arp_ignore) case $2 in 1|2) return 0;; esac;;" in text
    assert "arp_announce) case $2 in 2) return 0;; esac;;" in text
    assert "arp_ignore) echo 1;;" in text and "arp_announce) echo 2;;" in text
    assert 'SCOPES="all default lo"' in text


def test_bad_arguments_are_one_line_with_usage(script_file):
    for path in (script_file, str(RS_SH)):
        r = subprocess.run(["sh", path, "check", "--port", "http"], capture_output=True,
                           text=True)
        assert r.returncode == 1 and "--port http: give a port number" in r.stderr
        r = subprocess.run(["sh", path, "frobnicate"], capture_output=True, text=True)
        assert r.returncode == 2 and "usage: sh" in r.stderr
        r = subprocess.run(["sh", path, "check", "198.18.0.300"], capture_output=True,
                           text=True)
        assert r.returncode == 1 and r.stderr.startswith("dr-lb: 198.18.0.300: give an IPv4")
        for args in (["down", "--persist"], ["up", "--machine"], ["up", "-x"]):
            r = subprocess.run(["sh", path, *args], capture_output=True, text=True)
            assert r.returncode == 2 and f"unknown argument for {args[0]}" in r.stderr


def test_the_file_itself_needs_vips():
    """realserver.sh has no default VIPs: without VIP arguments it says so."""
    for command in ("up", "down", "check", "script"):
        r = subprocess.run(["sh", str(RS_SH), command], capture_output=True, text=True)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert f"give the VIPs: sh {RS_SH} {command} VIP..." in r.stderr
        assert not r.stdout


def test_cli_prints_the_script():
    r = CliRunner().invoke(cli.main, ["realserver", "script", "198.18.0.21", "--port", "80"])
    assert r.exit_code == 0, r.output
    assert r.output == RS_SH.read_text().replace(
        DEFAULTS, 'DEFAULT_VIPS="198.18.0.21" DEFAULT_PORT="80" DEFAULT_DIRECTOR="" '
                  'DEFAULT_UDP_PORT=""')


def test_check_machine_output_becomes_findings():
    assert realserver.parse_findings(
        "error\tvip-missing\t198.18.0.21 is not configured\twhy `this`\tip addr add x\n"
        "ok\tarp-ok\teth0: fine\t\t\n") == [
        Finding("error", "vip-missing", "198.18.0.21 is not configured", "why `this`",
                "ip addr add x"),
        Finding("ok", "arp-ok", "eth0: fine", "", "")]
    from lb.errors import UserError
    with pytest.raises(UserError, match="unexpected line"):
        realserver.parse_findings("error\tno-tabs-enough\n")


@pytest.mark.parametrize("command", ["up", "down"])
def test_up_and_down_need_root(monkeypatch, command):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    called = []
    monkeypatch.setattr(realserver, command, lambda *a, **k: called.append(a) or 0)
    r = CliRunner().invoke(cli.main, ["realserver", command, "198.18.0.21"])
    assert r.exit_code == 1 and not called
    assert "run it as root (sudo dr-lb realserver " + command + " 198.18.0.21)" in r.output


@pytest.mark.parametrize("command", ["up", "down"])
def test_the_script_needs_root_too(tmp_path, command):
    """As a user other than root, the script stops before touching anything."""
    nobody = shutil.which("setpriv")
    if nobody is None:
        pytest.skip("setpriv (util-linux) is not installed")
    r = subprocess.run([nobody, "--reuid=65534", "--regid=65534", "--clear-groups",
                        "sh", str(RS_SH), command, "198.18.0.21"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and not r.stdout
    assert r.stderr == f"dr-lb: permission denied: run as root (sudo sh {RS_SH} {command})\n"


@pytest.mark.parametrize("args", [
    ["--port", "0"], ["--port", "99999"], ["--port", "65536"], ["--port", "1e3"],
    ["--port", ""], ["--port=-1"],
    ["--udp-port", "0"], ["--udp-port", "65536"], ["--udp-port", "x"], ["--udp-port="],
    ["--director", "198.18.0"], ["--director", "256.1.1.1"], ["--director", "01.2.3.4"],
    ["--director", "198.18.0.11.5"], ["--director", "example.com"], ["--director="],
])
def test_the_script_rejects_what_the_cli_rejects(script_file, args):
    for path in (script_file, str(RS_SH)):
        r = subprocess.run(["sh", path, "check", *args, "198.18.0.21"], capture_output=True,
                           text=True)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert r.stderr.startswith("dr-lb: --") and not r.stdout
    r = CliRunner().invoke(cli.main, ["realserver", "check", "198.18.0.21", *args])
    assert r.exit_code == 2, r.output


def test_every_test_file_the_code_cites_exists():
    root = Path(__file__).resolve().parent.parent
    for path in ("lb/realserver/__init__.py", "lb/realserver/realserver.sh",
                 "lb/cli/realserver.py"):
        text = (root / path).read_text()
        for cited in re.findall(r"tests/[\w/]+\.py", text):
            assert (root / cited).is_file(), f"{path} cites {cited}, which does not exist"


def test_tests_cannot_run_down_or_persist_on_this_machines_etc():
    from tests.test_realserver_common import py_rs, sh_rs
    for args in (["down", "198.18.0.21"], ["up", "198.18.0.21", "--persist"]):
        with pytest.raises(AssertionError, match="--root"):
            py_rs(None, "rs1", *args)
        with pytest.raises(AssertionError, match="--root"):
            sh_rs(None, "rs1", "rs.sh", *args)
