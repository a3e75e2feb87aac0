"""`dr-lb realserver up/down` and the generated script's up/down, in namespaces.

`up` then `down` must leave a namespace exactly as it was (addresses, routes, lo and
every IPv4 conf sysctl), through Python and through `sh`, and both must do and say the
same thing.
"""
from __future__ import annotations

import os

import pytest

from tests.test_realserver_common import (
    VIP, VIP2, doctor_both, forget_state, ip, needs_netns, py_rs, sh_rs, small_lab, snapshot, sysctl,
    write_script, codes)

pytestmark = needs_netns


@pytest.fixture
def lab():
    with small_lab("drlb-rs") as lab:
        try:
            yield lab
        finally:
            forget_state(lab)


def run_up(lab, impl, host, vips, tmp_path, *extra):
    if impl == "python":
        return py_rs(lab, host, "up", *vips, *extra)
    return sh_rs(lab, host, write_script(tmp_path / f"rs-{host}-{'-'.join(vips)}.sh", vips),
                 "up", *extra)


def run_down(lab, impl, host, vips, tmp_path):
    if impl == "python":
        return py_rs(lab, host, "down", *vips)
    return sh_rs(lab, host, write_script(tmp_path / f"rs-{host}-{'-'.join(vips)}.sh", vips),
                 "down")


@pytest.mark.parametrize("impl", ["python", "sh"])
def test_up_then_down_leaves_the_namespace_as_it_was(lab, impl, tmp_path):
    # Start from values that are not the kernel defaults, including an interface whose
    # own value would win over `all` in max(all, eth0) (seed 004).
    sysctl(lab, "rs1", "net.ipv4.conf.all.arp_ignore", 2)
    sysctl(lab, "rs1", "net.ipv4.conf.eth0.arp_announce", 5)
    sysctl(lab, "rs1", "net.ipv4.conf.eth0.arp_ignore", 8)
    before = snapshot(lab, "rs1")

    r = run_up(lab, impl, "rs1", [VIP, VIP2], tmp_path)
    assert r.returncode == 0, r.stderr
    during = snapshot(lab, "rs1")
    assert ["lo", VIP, 32, "lo:0", 0] in during["addrs"]
    assert ["lo", VIP2, 32, "lo:1", 0] in during["addrs"]
    for scope in ("all", "default", "lo", "eth0"):
        assert during["sysctl"][f"{scope}/arp_announce"] == "2"
    for scope in ("all", "default", "lo", "eth0"):
        assert during["sysctl"][f"{scope}/arp_ignore"] == "1"
    assert "set net.ipv4.conf.eth0.arp_announce = 2" in r.stdout
    assert "set net.ipv4.conf.eth0.arp_ignore = 1" in r.stdout

    r = run_down(lab, impl, "rs1", [VIP, VIP2], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "restored net.ipv4.conf.eth0.arp_announce = 5" in r.stdout
    assert snapshot(lab, "rs1") == before


@pytest.mark.parametrize("scene", ["fresh", "vip-as-24", "one-already-up"])
def test_python_and_script_do_and_say_the_same(lab, tmp_path, scene):
    """rs1 runs the Python path, rs2 the script: same output, same resulting state."""
    for host in ("rs1", "rs2"):
        if scene == "vip-as-24":
            ip(lab, host, "addr", "add", f"{VIP}/24", "dev", "lo", "label", "lo:0")
        if scene == "one-already-up":
            py_rs(lab, host, "up", VIP2, check=True)
    script = write_script(tmp_path / "rs.sh", [VIP, VIP2])

    def same(py, sh):
        assert py.returncode == sh.returncode == 0, (py.stderr, sh.stderr)
        assert py.stdout == sh.stdout

    def state(host):
        s = snapshot(lab, host)
        own = {"rs1": "198.18.0.12", "rs2": "198.18.0.13"}[host]
        return repr(s).replace(own, "RIP")

    same(py_rs(lab, "rs1", "up", VIP, VIP2), sh_rs(lab, "rs2", script, "up"))
    assert state("rs1") == state("rs2")
    # a second up has nothing to do
    same(py_rs(lab, "rs1", "up", VIP, VIP2), sh_rs(lab, "rs2", script, "up"))
    assert py_rs(lab, "rs1", "up", VIP, VIP2).stdout == "nothing to do: already prepared\n"
    same(py_rs(lab, "rs1", "down", VIP, VIP2), sh_rs(lab, "rs2", script, "down"))
    assert state("rs1") == state("rs2")


def test_up_replaces_a_non_32_vip_on_lo(lab):
    ip(lab, "rs1", "addr", "add", f"{VIP}/24", "dev", "lo", "label", "lo:0")
    r = py_rs(lab, "rs1", "up", VIP, check=True)
    assert f"replaced {VIP}/24 on lo with {VIP}/32 as lo:0 (seed 000)" in r.stdout
    addrs = snapshot(lab, "rs1")["addrs"]
    assert ["lo", VIP, 32, "lo:0", 0] in addrs
    assert not [a for a in addrs if a[1] == VIP and a[2] != 32]


@pytest.mark.parametrize("impl", ["python", "sh"])
def test_up_refuses_a_vip_on_another_interface(lab, impl, tmp_path):
    ip(lab, "rs1", "addr", "add", f"{VIP}/24", "dev", "eth0")
    before = snapshot(lab, "rs1")
    r = run_up(lab, impl, "rs1", [VIP], tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"{VIP} is on eth0 (/24)" in r.stderr
    assert f"ip addr del {VIP}/24 dev eth0" in r.stderr
    assert snapshot(lab, "rs1") == before, "a refused up must change nothing"


@pytest.mark.parametrize("impl", ["python", "sh"])
def test_down_keeps_the_sysctls_while_another_vip_is_on_lo(lab, impl, tmp_path):
    before = snapshot(lab, "rs1")
    assert run_up(lab, impl, "rs1", [VIP, VIP2], tmp_path).returncode == 0
    r = run_down(lab, impl, "rs1", [VIP], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"removed {VIP}/32 from lo",
        f"left the ARP sysctls as they are: lo still has {VIP2}"]
    s = snapshot(lab, "rs1")["sysctl"]
    assert (s["all/arp_ignore"], s["all/arp_announce"]) == ("1", "2")
    r = run_down(lab, impl, "rs1", [VIP2], tmp_path)
    assert "restored net.ipv4.conf.all.arp_ignore = 0" in r.stdout
    assert snapshot(lab, "rs1") == before


def test_down_without_a_record_leaves_the_sysctls(lab, tmp_path):
    """As after a reboot with --persist: the sysctls came from sysctl.d, not from up."""
    for key in ("all.arp_ignore", "default.arp_ignore", "lo.arp_ignore"):
        sysctl(lab, "rs1", f"net.ipv4.conf.{key}", 1)
    for key in ("all.arp_announce", "default.arp_announce", "lo.arp_announce"):
        sysctl(lab, "rs1", f"net.ipv4.conf.{key}", 2)
    py_rs(lab, "rs1", "up", VIP, check=True)
    r = py_rs(lab, "rs1", "down", VIP, check=True)
    assert "no record of the ARP sysctls" in r.stdout
    assert snapshot(lab, "rs1")["sysctl"]["all/arp_ignore"] == "1"


def test_a_stale_record_is_not_restored(lab):
    """A record left by a deleted namespace with the same inode must not be applied."""
    from tests.test_realserver_common import PY
    inode = lab.run("rs1", PY, "-c", "from lb import realserver; "
                    "print(realserver.state_path())").stdout.strip()
    os.makedirs(os.path.dirname(inode), exist_ok=True)
    with open(inode, "w") as f:
        f.write("all/arp_ignore=5\nall/arp_announce=7\n")
    before = snapshot(lab, "rs1")
    py_rs(lab, "rs1", "up", VIP, check=True)
    py_rs(lab, "rs1", "down", VIP, check=True)
    assert snapshot(lab, "rs1") == before


def test_up_brings_lo_up(lab, tmp_path):
    ip(lab, "rs1", "link", "set", "lo", "down")
    r = py_rs(lab, "rs1", "up", VIP, check=True)
    assert r.stdout.startswith("brought lo up\n")
    findings, rc = doctor_both(lab, "rs1", write_script(tmp_path / "rs.sh", [VIP]), [VIP])
    assert rc == 0 and "lo-down" not in codes(findings)


def test_persist_writes_and_down_removes(lab, tmp_path):
    """--persist under a scratch root (never the machine's /etc); then the persisted
    script, as the unit runs it at boot, prepares a fresh real server."""
    root = tmp_path / "root"
    r = py_rs(lab, "rs1", "up", VIP, "--persist", "--root", str(root), check=True)
    assert "wrote /etc/sysctl.d/90-dr-lb-realserver.conf" in r.stdout
    assert "wrote /etc/dr-lb/realserver.sh" in r.stdout
    assert "wrote /etc/systemd/system/dr-lb-realserver.service" in r.stdout
    assert "systemctl enable dr-lb-realserver.service" in r.stdout
    conf = (root / "etc/sysctl.d/90-dr-lb-realserver.conf").read_text()
    for scope in ("all", "default", "lo"):
        assert f"net.ipv4.conf.{scope}.arp_ignore = 1" in conf
        assert f"net.ipv4.conf.{scope}.arp_announce = 2" in conf
    unit = (root / "etc/systemd/system/dr-lb-realserver.service").read_text()
    assert "ExecStart=/bin/sh /etc/dr-lb/realserver.sh up" in unit
    assert "WantedBy=multi-user.target" in unit

    # The boot path: rs2 has never seen dr-lb; the persisted script prepares it.
    boot = str(root / "etc/dr-lb/realserver.sh")
    assert sh_rs(lab, "rs2", boot, "up").returncode == 0
    findings, rc = doctor_both(lab, "rs2", boot, [VIP])
    assert rc == 0 and codes(findings) == ["vip-ok", "arp-ok"]

    r = py_rs(lab, "rs1", "up", VIP2, "--persist", "--root", str(root), check=True)
    assert f'VIPS="{VIP} {VIP2}"' in (root / "etc/dr-lb/realserver.sh").read_text()
    r = py_rs(lab, "rs1", "down", VIP, "--root", str(root), check=True)
    assert f"wrote /etc/dr-lb/realserver.sh (puts {VIP2} on lo at boot)" in r.stdout
    assert (root / "etc/sysctl.d/90-dr-lb-realserver.conf").exists()
    r = py_rs(lab, "rs1", "down", VIP2, "--root", str(root), check=True)
    for path in ("etc/systemd/system/dr-lb-realserver.service", "etc/dr-lb/realserver.sh",
                 "etc/sysctl.d/90-dr-lb-realserver.conf"):
        assert f"removed /{path}" in r.stdout
        assert not (root / path).exists()
    assert not (root / "etc/dr-lb").exists()
