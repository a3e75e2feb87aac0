"""dr-lb as a systemd service, without root: the unit `dr-lb systemd-unit` prints (checked by
`systemd-analyze verify` where systemd is installed), the sd_notify datagrams, and the
[metrics] config. The running service is tested end to end in tests/test_service.py."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lb.director import config as config_mod, sdnotify, unit

REPO = Path(__file__).resolve().parent.parent
CONFIG = """\
[director]
interface = "eth0"
{metrics}
[[service]]
vip = "192.168.0.21"
port = 80

[[service.real_server]]
address = "192.168.0.12"
"""


def dr_lb(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lb", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=60)


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


# ---- the unit ---------------------------------------------------------------------------

def test_unit_text(tmp_path):
    cfg = tmp_path / "director.toml"
    r = dr_lb("systemd-unit", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    d = directives(r.stdout)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"]
    (start,) = d["ExecStart"]
    assert start.endswith(f" up --replace {cfg}"), start
    assert start.split()[0] == sys.executable and "-m lb" in start, \
        "run from a checkout, the unit runs this interpreter with -m lb"
    assert d["CapabilityBoundingSet"] == [" ".join(unit.CAPABILITIES)]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectControlGroups", "RestrictSUIDSGID"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"]
    assert d["ReadWritePaths"] == [f"/run/dr-lb {tmp_path}"]
    # systemd makes /run/dr-lb before the namespace that ReadWritePaths needs it for (a
    # fresh boot has none: the unit failed with status 226/NAMESPACE on the Vagrant
    # director), and keeps it when the service stops (the kept state's bpffs is there)
    assert d["RuntimeDirectory"] == ["dr-lb"]
    assert d["RuntimeDirectoryPreserve"] == ["yes"]
    assert d["WantedBy"] == ["multi-user.target"]


def test_unit_names_the_installed_launcher(tmp_path):
    launcher = tmp_path / "bin" / "dr-lb"
    launcher.parent.mkdir()
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    r = subprocess.run([sys.executable, "-c", "import sys; from lb.director import unit; "
                        f"sys.argv[0] = {str(launcher)!r}; print(unit.dr_lb_command())"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.stdout.strip() == str(launcher), r.stderr


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    cfg = tmp_path / "director.toml"
    cfg.write_text(CONFIG.format(metrics=""))
    path = tmp_path / "dr-lb.service"
    path.write_text(dr_lb("systemd-unit", "--config", str(cfg)).stdout)
    r = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                       timeout=60, env=os.environ | {"SYSTEMD_LOG_LEVEL": "warning"})
    # verify also complains about unrelated units of the machine it runs on; only ours counts
    ours = [line for line in (r.stdout + r.stderr).splitlines() if "dr-lb.service" in line]
    assert ours == [], "\n".join(ours)


def test_vagrant_director_installs_this_unit():
    text = (REPO / "vagrant" / "provision-director.sh").read_text()
    assert '"$DRLB" systemd-unit --config "$CONFIG" --install' in text
    assert "[Service]" not in text, "the Vagrant director must not carry its own unit"


# ---- sd_notify --------------------------------------------------------------------------

def listen(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(5)
    return s


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_datagrams(tmp_path, monkeypatch, abstract):
    name = f"drlb-sv-unit-{os.getpid()}"
    with listen("\0" + name if abstract else str(tmp_path / "notify")) as s:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name if abstract else str(tmp_path / "notify"))
        assert sdnotify.ready("balancing on eth0")
        assert s.recv(4096) == b"READY=1\nSTATUS=balancing on eth0"
        assert sdnotify.reloading()
        fields = s.recv(4096).decode().split("\n")
        assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=")
        assert abs(int(fields[1].split("=")[1]) - time_us()) < 5_000_000
        assert sdnotify.stopping()
        assert s.recv(4096) == b"STOPPING=1"


def time_us() -> int:
    import time
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_notify_without_systemd_sends_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.ready("x")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))   # systemd gone
    assert not sdnotify.stopping()


# ---- [metrics] --------------------------------------------------------------------------

@pytest.mark.parametrize("listen_value,want", [
    ('"127.0.0.1:9469"', ("127.0.0.1", 9469)),
    ('"[::1]:9469"', ("::1", 9469)),
    ('":9100"', ("", 9100)),
])
def test_metrics_listen_accepted(listen_value, want):
    cfg = config_mod.parse(CONFIG.format(metrics=f"[metrics]\nlisten = {listen_value}\n"))
    assert cfg.metrics.listen == want


def test_no_metrics_table_serves_none():
    assert config_mod.parse(CONFIG.format(metrics="")).metrics is None


@pytest.mark.parametrize("table,words", [
    ('listen = "localhost:9469"', "listen = 'localhost:9469' is not an address:port"),
    ('listen = "127.0.0.1:99999"', "is not an address:port"),
    ('listen = "127.0.0.1"', "is not an address:port"),
    ('listen = 9469', "listen = 9469 is not an address:port"),
    ('', "[metrics]: listen is missing"),
    ('listen = "127.0.0.1:9469"\nport = 1', "[metrics]: unknown key 'port'"),
])
def test_bad_metrics_config_exit_2_one_line(tmp_path, table, words):
    path = tmp_path / "director.toml"
    path.write_text(CONFIG.format(metrics=f"[metrics]\n{table}\n"))
    r = dr_lb("check", str(path))
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_metrics_give_every_event_counter_a_series_of_its_own():
    """Counters bpf/dr_lb_abi.h marks "event:" are not a packet's exit: they stay out of
    drlb_packets_total{reason} (whose sum is the packets seen)."""
    import re
    from lb.director import metrics
    text = (REPO / "bpf" / "dr_lb_abi.h").read_text()
    events = {m.lower() for m in re.findall(r"COUNTER_(\w+),\s*/\* event:", text)}
    assert events and events == metrics.EVENTS
