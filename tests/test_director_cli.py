"""`dr-lb check --json`, and `dr-lb up` driven as an operator would, on one namespace of
its own: the `auto` mode falling back to generic, a non-default conn_table_size,
`status --interface`, reload on SIGHUP removing a service and its VIP from the maps
(read from the kernel with bpftool, not from `status`), and SIGINT detaching."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lb import abi, cli
from lb.lab.demo import wait_ready
from tests.conftest import needs_netns

NS = f"drlb-dc-{os.getpid()}"   # unique: runs beside other test runs
IFACE = "br0"                   # a bridge has a MAC but no native XDP: `auto` falls back
VIP, VIP2 = "198.18.0.21", "198.18.0.22"
CONN_TABLE_SIZE = 5000

CONFIG = f"""
[director]
interface = "{IFACE}"
xdp_mode = "auto"
conn_table_size = {CONN_TABLE_SIZE}

[[service]]
vip = "{VIP}"
port = 80
[[service.real_server]]
address = "198.18.0.12"
mac = "02:00:00:00:00:12"

[[service]]
vip = "{VIP2}"
port = 53
protocol = "udp"
[[service.real_server]]
address = "198.18.0.13"
mac = "02:00:00:00:00:13"
"""


def test_check_json_through_the_cli(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text(CONFIG)
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["check", "--offline", "--json", str(path)])
    assert r.exit_code == 0, r.output + r.stderr
    from lb.director.config import table_memory_bytes
    assert json.loads(r.stdout) == {"config": str(path), "ok": True, "services": 2,
                                    "real_servers": 2, "interface": IFACE,
                                    "table_memory_bytes": table_memory_bytes(CONN_TABLE_SIZE)}
    path.write_text(CONFIG.replace("port = 80", "port = 0"))
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["check", "--offline", "--json", str(path)])
    assert r.exit_code == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert "port = 0" in r.stderr


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def in_ns(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", NS, *argv, check=check)


def dr_lb(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return in_ns(sys.executable, "-m", "lb", *args, check=check)


@pytest.fixture
def namespace():
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "link", "add", IFACE, "type", "bridge")
        sh("ip", "-n", NS, "addr", "add", "198.18.0.11/24", "dev", IFACE)
        sh("ip", "-n", NS, "link", "set", IFACE, "up")
        yield NS
    finally:
        # The kept state and the lock file are named by the namespace's inode, which a
        # later namespace may get again: they go with it.
        in_ns(sys.executable, "-c", "from lb.director import instances, kept; "
              f"kept.forget({IFACE!r}); instances.lock_path({IFACE!r}).unlink(missing_ok=True)",
              check=False)
        sh("ip", "netns", "del", NS, check=False)


def xdp_prog_id() -> int | None:
    link, = json.loads(sh("ip", "-j", "-n", NS, "link", "show", IFACE).stdout)
    xdp = link.get("xdp") or {}
    return (xdp.get("prog") or {}).get("id")


def maps_of(prog_id: int) -> dict[str, dict]:
    """The program's maps as the kernel has them: name -> bpftool's map record."""
    prog = json.loads(sh("bpftool", "-j", "prog", "show", "id", str(prog_id)).stdout)
    records = (json.loads(sh("bpftool", "-j", "map", "show", "id", str(i)).stdout)
               for i in prog["map_ids"])
    return {m["name"]: m for m in records}


def entries(map_record: dict) -> list:
    return json.loads(sh("bpftool", "-j", "map", "dump", "id", str(map_record["id"])).stdout)


def wait_for(condition, what: str, limit_s: float = 20) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {limit_s} s"
        time.sleep(0.05)


def netns_test(fn):
    for mark in needs_netns:   # root and netns markers, skipped without root
        fn = mark(fn)
    return fn


@netns_test
@pytest.mark.usefixtures("namespace")
def test_up_auto_mode_sighup_reload_and_sigint(tmp_path: Path):
    config = tmp_path / "lb.toml"
    config.write_text(CONFIG)
    up = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-m", "lb", "up",
                           str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True)
    try:
        wait_ready(up)
        # auto: native is refused on a bridge, generic is what runs.
        data = json.loads(dr_lb("status", "--interface", IFACE, "--json").stdout)
        assert data["interface"] == IFACE and data["xdp_mode"] == "generic", data
        assert data["conn_table"]["size"] == CONN_TABLE_SIZE
        assert sorted((s["vip"], s["port"]) for s in data["services"]) == \
            [(VIP, 80), (VIP2, 53)]
        table = dr_lb("status", "--interface", IFACE).stdout
        assert f"TCP  {VIP}:80" in table and f"UDP  {VIP2}:53" in table, table

        prog_id = xdp_prog_id()
        assert prog_id, "no XDP program on the interface"
        maps = maps_of(prog_id)
        cpus = possible_cpus()
        assert maps["conn_table"]["max_entries"] == \
            CONN_TABLE_SIZE + cpus * abi.CONST["LRU_HEADROOM_PER_CPU"], maps["conn_table"]
        assert len(entries(maps["services"])) == 2 and len(entries(maps["vips"])) == 2

        # SIGHUP: reload without the UDP service; its service and its VIP leave the maps.
        config.write_text(CONFIG[:CONFIG.index("[[service]]\nvip = \"" + VIP2)])
        up.send_signal(signal.SIGHUP)
        wait_for(lambda: len(entries(maps["services"])) == 1, "the removed service gone "
                 "from the services map")
        wait_for(lambda: len(entries(maps["vips"])) == 1, f"{VIP2} gone from the vips map")
        assert xdp_prog_id() == prog_id, "a reload must not replace the program"
        data = json.loads(dr_lb("status", "--json").stdout)
        assert [(s["vip"], s["port"]) for s in data["services"]] == [(VIP, 80)]

        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=30)
        assert up.returncode == 0, out
        assert f"detached from {IFACE}" in out, out
        assert xdp_prog_id() is None, "the program is still attached after SIGINT"
        r = dr_lb("status", "--interface", IFACE, check=False)
        assert r.returncode == 1 and "not running" in r.stderr, r.stderr
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
            dr_lb("down", "--interface", IFACE, check=False)


def possible_cpus() -> int:
    """Possible CPUs, as the kernel sizes per-CPU things (bcc's get_possible_cpus)."""
    count = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count

