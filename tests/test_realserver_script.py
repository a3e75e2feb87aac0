"""The generated POSIX sh script, without namespaces: syntax under every sh here, and
the guards that keep it from drifting away from the Python code it is generated from."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from lb import cli, doctor, realserver, rs_script

VIPS = ["198.18.0.21", "198.18.0.22"]
SHELLS = [s for s in ("sh", "dash", "bash", "busybox") if shutil.which(s)]


@pytest.fixture(scope="module")
def script() -> str:
    return rs_script.generate(VIPS, port=80, director="198.18.0.11")


@pytest.mark.parametrize("shell", SHELLS)
def test_every_shell_here_parses_it(script, tmp_path, shell):
    path = tmp_path / "rs.sh"
    path.write_text(script)
    argv = [shell, "sh", "-n", str(path)] if shell == "busybox" else [shell, "-n", str(path)]
    if shell == "bash":
        argv.insert(1, "--posix")
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_finds_no_warning(script, tmp_path):
    path = tmp_path / "rs.sh"
    path.write_text(script)
    r = subprocess.run(["shellcheck", "-s", "sh", "-S", "warning", str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_it_carries_the_vips_and_defaults(script):
    assert 'VIPS="198.18.0.21 198.18.0.22"' in script
    assert 'PORT="80"' in script
    assert 'DIRECTOR="198.18.0.11"' in script
    assert script.startswith("#!/bin/sh\n")
    assert not re.search(r"@[a-z_]+@", script), "an unfilled marker"


def assigned_names(script: str) -> set[str]:
    names = set(re.findall(r"\b([a-z_][a-z_0-9]*)=", script))
    names |= set(re.findall(r"\bfor ([a-z_]+) in\b", script))
    for m in re.finditer(r"\bread -r ([a-z_ ]+)", script):
        names |= set(m.group(1).split())
    return names


def test_every_placeholder_is_a_variable_the_script_sets(script):
    """A template text names a value the shell code must set before calling it; with
    `set -u` a missing one would abort the script, so catch it here."""
    names = assigned_names(script)
    texts = [t.what + t.why + t.fix for t in doctor.TEMPLATES.values()]
    texts += list(realserver.MESSAGES.values())
    for text in texts:
        for name in re.findall(r"\{(\w+)\}", text):
            assert name in names, f"{{{name}}} in {text!r} is never set in the script"


def test_every_finding_and_message_has_its_function(script):
    for code, t in doctor.TEMPLATES.items():
        fn = "f_" + code.replace("-", "_")
        assert re.search(rf"^{fn}\(\) {{ finding {t.severity} {code} ", script, re.M), code
    for key in realserver.MESSAGES:
        assert re.search(rf"^m_{key.replace('-', '_')}\(\) ", script, re.M), key


def test_the_sysctl_rules_come_from_the_python_side(script):
    assert "arp_ignore) case $2 in 1|2) return 0;; esac;;" in script
    assert "arp_announce) case $2 in 2) return 0;; esac;;" in script
    assert "arp_ignore) echo 1;;" in script and "arp_announce) echo 2;;" in script
    assert "for scope in all default lo; do" in script


def test_sh_string_escapes_what_sh_would_expand():
    word = rs_script.sh_string('a "b" $c `d` \\e {vip}')
    out = subprocess.run(["sh", "-c", f'vip=V; printf %s {word}'], capture_output=True,
                         text=True).stdout
    assert out == 'a "b" $c `d` \\e V'


def test_bad_arguments_are_one_line_with_usage(script, tmp_path):
    path = tmp_path / "rs.sh"
    path.write_text(script)
    r = subprocess.run(["sh", str(path), "check", "--port", "http"], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "--port http: give a port number" in r.stderr
    r = subprocess.run(["sh", str(path), "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage: sh" in r.stderr


def test_cli_prints_the_script():
    r = CliRunner().invoke(cli.main, ["realserver", "script", "198.18.0.21", "--port", "80"])
    assert r.exit_code == 0, r.output
    assert r.output == rs_script.generate(["198.18.0.21"], port=80)


def test_persist_files_under_a_scratch_root(tmp_path):
    """persist_up/persist_down only write files (no /proc), so no root is needed."""
    done = realserver.persist_up(["198.18.0.21"], tmp_path)
    assert done[:3] == [
        "wrote /etc/sysctl.d/90-dr-lb-realserver.conf (the ARP sysctls, applied at boot)",
        "wrote /etc/dr-lb/realserver.sh (puts 198.18.0.21 on lo at boot)",
        "wrote /etc/systemd/system/dr-lb-realserver.service (runs that script at boot)"]
    assert "systemd is not running here" in done[3]
    script = tmp_path / "etc/dr-lb/realserver.sh"
    assert script.stat().st_mode & 0o111
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    assert realserver.persisted_vips(tmp_path) == ["198.18.0.21"]
    realserver.persist_up(["198.18.0.22", "198.18.0.21"], tmp_path)
    assert realserver.persisted_vips(tmp_path) == ["198.18.0.21", "198.18.0.22"]
    assert realserver.persist_down(["198.18.0.23"], tmp_path) == []
    realserver.persist_down(["198.18.0.21"], tmp_path)
    assert realserver.persisted_vips(tmp_path) == ["198.18.0.22"]
    done = realserver.persist_down(["198.18.0.22"], tmp_path)
    assert done == ["removed /etc/systemd/system/dr-lb-realserver.service",
                    "removed /etc/dr-lb/realserver.sh",
                    "removed /etc/sysctl.d/90-dr-lb-realserver.conf"]
    assert not (tmp_path / "etc/dr-lb").exists()


@pytest.mark.parametrize("command", ["up", "down"])
def test_up_and_down_need_root(monkeypatch, command):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    called = []
    monkeypatch.setattr(realserver, command, lambda *a, **k: called.append(a) or [])
    r = CliRunner().invoke(cli.main, ["realserver", command, "198.18.0.21"])
    assert r.exit_code == 1 and not called
    assert "run it as root (sudo dr-lb realserver " + command + " 198.18.0.21)" in r.output


@pytest.mark.parametrize("args", [
    ["--port", "0"], ["--port", "99999"], ["--port", "65536"], ["--port", "1e3"],
    ["--port", ""], ["--port=-1"],
    ["--director", "198.18.0"], ["--director", "256.1.1.1"], ["--director", "01.2.3.4"],
    ["--director", "198.18.0.11.5"], ["--director", "example.com"], ["--director="],
])
def test_the_script_rejects_what_the_cli_rejects(script, tmp_path, args):
    path = tmp_path / "rs.sh"
    path.write_text(script)
    r = subprocess.run(["sh", str(path), "check", *args], capture_output=True, text=True)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("dr-lb: --") and not r.stdout
    r = CliRunner().invoke(cli.main, ["realserver", "check", "198.18.0.21", *args])
    assert r.exit_code == 2, r.output


def test_every_test_file_the_code_cites_exists():
    root = Path(__file__).resolve().parent.parent
    for module in ("doctor.py", "rs_script.py", "realserver.py", "cli_realserver.py"):
        text = (root / "lb" / module).read_text()
        for cited in re.findall(r"tests/[\w/]+\.py", text):
            assert (root / cited).is_file(), f"lb/{module} cites {cited}, which does not exist"


def test_persist_down_stops_the_unit_as_it_disables_it(monkeypatch, tmp_path):
    """`systemctl disable` alone leaves the unit active, and its ExecStop would later run
    a script that is gone."""
    calls = []
    monkeypatch.setattr(realserver, "_systemd", lambda root: True)
    monkeypatch.setattr(realserver, "_systemctl",
                        lambda *a: calls.append(a) or "ran systemctl " + " ".join(a))
    realserver.persist_up(["198.18.0.21"], tmp_path)
    calls.clear()
    done = realserver.persist_down(["198.18.0.21"], tmp_path)
    assert calls == [("disable", "--now", realserver.UNIT_NAME), ("daemon-reload",)]
    assert done[0] == f"ran systemctl disable --now {realserver.UNIT_NAME}"


def test_tests_cannot_run_down_or_persist_on_this_machines_etc():
    from tests.test_realserver_common import py_rs
    for args in (["down", "198.18.0.21"], ["up", "198.18.0.21", "--persist"]):
        with pytest.raises(AssertionError, match="--root"):
            py_rs(None, "rs1", *args)
