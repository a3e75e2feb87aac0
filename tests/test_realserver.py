"""`dr-lb realserver up/down` and the generated script's up/down, in namespaces.

`up` then `down` must leave a namespace exactly as it was (addresses, routes, lo and
every IPv4 conf sysctl), through Python and through `sh`, and both must do and say the
same thing.
"""
from __future__ import annotations

import os

import pytest

from tests.test_realserver_common import (
    PY, RIP, VIP, VIP2, can_ping, codes, doctor_both, forget_state, ip, needs_netns, py_rs,
    sh_rs, small_lab, snapshot, sysctl, write_script)

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
        return py_rs(lab, host, "down", *vips, "--root", str(tmp_path / "root"))
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
    same(py_rs(lab, "rs1", "down", VIP, VIP2, "--root", str(tmp_path)),
         sh_rs(lab, "rs2", script, "down"))
    assert state("rs1") == state("rs2")


def test_up_replaces_a_non_32_vip_on_lo(lab):
    ip(lab, "rs1", "addr", "add", f"{VIP}/24", "dev", "lo", "label", "lo:0")
    r = py_rs(lab, "rs1", "up", VIP, check=True)
    assert r.stdout.splitlines()[-2:] == [
        f"removed {VIP}/24 from lo: a VIP on lo must be /32 (seed 000)",
        f"added {VIP}/32 on lo as lo:0"]
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
    r = py_rs(lab, "rs1", "down", VIP, "--root", str(tmp_path), check=True)
    assert "no record of the ARP sysctls" in r.stdout
    assert snapshot(lab, "rs1")["sysctl"]["all/arp_ignore"] == "1"


def test_a_stale_record_is_not_restored(lab, tmp_path):
    """A record left by a deleted namespace with the same inode must not be applied."""
    from tests.test_realserver_common import PY
    inode = lab.run("rs1", PY, "-c", "from lb import realserver; "
                    "print(realserver.state_path())").stdout.strip()
    os.makedirs(os.path.dirname(inode), exist_ok=True)
    with open(inode, "w") as f:
        f.write("all/arp_ignore=5\nall/arp_announce=7\n")
    before = snapshot(lab, "rs1")
    py_rs(lab, "rs1", "up", VIP, check=True)
    py_rs(lab, "rs1", "down", VIP, "--root", str(tmp_path), check=True)
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
    assert rc == 0 and codes(findings) == ["arp-ok", "vip-ok"]

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


# ---- review fixes (namespaces "drlb-fx-*") ------------------------------------------------

@pytest.fixture
def fx():
    with small_lab("drlb-fx", n_real=1) as lab:
        try:
            yield lab
        finally:
            forget_state(lab)


def state_file_of(lab, host) -> str:
    return lab.run(host, PY, "-c", "from lb import realserver; "
                   "print(realserver.state_path())").stdout.strip()


def vip_first_then_rip(lab, host):
    """The VIP put on eth0 before the real address: the VIP is the primary of the /24,
    the real address its secondary (promote_secondaries is 0 in a new namespace)."""
    rip = RIP[host]
    ip(lab, host, "addr", "del", f"{rip}/24", "dev", "eth0")
    ip(lab, host, "addr", "add", f"{VIP}/24", "dev", "eth0")
    ip(lab, host, "addr", "add", f"{rip}/24", "dev", "eth0")
    assert lab.run(host, "sysctl", "-n", "net.ipv4.conf.eth0.promote_secondaries",
                   "net.ipv4.conf.all.promote_secondaries").stdout.split() == ["0", "0"]


@pytest.mark.parametrize("impl", ["python", "sh"])
def test_the_removal_up_suggests_keeps_the_real_address(fx, impl, tmp_path):
    """A VIP that is eth0's primary address: a bare `ip addr del` would take the real
    address (its secondary) with it; the command up prints turns promotion on first."""
    vip_first_then_rip(fx, "rs1")
    r = run_up(fx, impl, "rs1", [VIP], tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    cmd = r.stderr.strip().partition("Remove it first: ")[2]
    assert cmd == ("sysctl -w net.ipv4.conf.eth0.promote_secondaries=1 && "
                   f"ip addr del {VIP}/24 dev eth0")
    fx.run("rs1", "sh", "-c", cmd)
    addrs = snapshot(fx, "rs1")["addrs"]
    assert ["eth0", RIP["rs1"], 24, "eth0", 0] in addrs
    assert can_ping(fx, "client", RIP["rs1"])
    assert run_up(fx, impl, "rs1", [VIP], tmp_path).returncode == 0


@pytest.mark.parametrize("impl", ["python", "sh"])
@pytest.mark.parametrize("why", ["only-address", "default-route-source"])
def test_up_refuses_the_real_address_given_as_the_vip(fx, impl, why, tmp_path):
    rip = RIP["rs1"]
    reason = "this host's only address outside lo"
    if why == "default-route-source":
        ip(fx, "rs1", "addr", "add", "198.18.0.99/24", "dev", "eth0")   # a secondary
        ip(fx, "rs1", "route", "add", "default", "via", "198.18.0.1")
        reason = "the source address of this host's default route"
    before = snapshot(fx, "rs1")
    r = run_up(fx, impl, "rs1", [rip], tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{rip} is on eth0 (/24) and is {reason}" in r.stderr
    assert "looks like this host's own address" in r.stderr
    assert "ip addr del" not in r.stderr
    assert snapshot(fx, "rs1") == before


@pytest.mark.parametrize("impl", ["python", "sh"])
def test_an_address_on_lo_that_up_did_not_add_does_not_keep_the_sysctls(fx, impl, tmp_path):
    """An anycast /32 on lo is not a VIP of ours: down still restores the sysctls."""
    ip(fx, "rs1", "addr", "add", "10.9.9.9/32", "dev", "lo")
    before = snapshot(fx, "rs1")
    assert run_up(fx, impl, "rs1", [VIP], tmp_path).returncode == 0
    r = run_down(fx, impl, "rs1", [VIP], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "restored net.ipv4.conf.all.arp_ignore = 0" in r.stdout
    assert "left the ARP sysctls" not in r.stdout
    assert snapshot(fx, "rs1") == before


@pytest.mark.parametrize("impl", ["python", "sh"])
def test_a_stale_record_is_dropped_even_when_up_changes_nothing(fx, impl, tmp_path):
    """The sysctls are already right (sysctl.d), and a dead namespace with the same
    inode left a record: up must not adopt it, and down must not apply it."""
    for scope in ("all", "default", "lo"):
        sysctl(fx, "rs1", f"net.ipv4.conf.{scope}.arp_ignore", 1)
        sysctl(fx, "rs1", f"net.ipv4.conf.{scope}.arp_announce", 2)
    path = state_file_of(fx, "rs1")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("all/arp_ignore=5\nall/arp_announce=7\nvip=198.18.0.99\n")
    before = snapshot(fx, "rs1")
    r = run_up(fx, impl, "rs1", [VIP], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "set " not in r.stdout
    r = run_down(fx, impl, "rs1", [VIP], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "restored" not in r.stdout
    assert snapshot(fx, "rs1") == before


@pytest.mark.parametrize("impl", ["python", "sh"])
def test_a_record_none_of_whose_vips_is_on_lo_is_not_applied_by_down(fx, impl, tmp_path):
    path = state_file_of(fx, "rs1")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for scope in ("all", "default", "lo"):
        sysctl(fx, "rs1", f"net.ipv4.conf.{scope}.arp_ignore", 1)
        sysctl(fx, "rs1", f"net.ipv4.conf.{scope}.arp_announce", 2)
    with open(path, "w") as f:
        f.write("all/arp_ignore=5\nvip=198.18.0.99\n")
    before = snapshot(fx, "rs1")
    r = run_down(fx, impl, "rs1", [VIP], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "dropped a stale record" in r.stdout
    assert snapshot(fx, "rs1") == before
    assert not os.path.exists(path)


@pytest.mark.parametrize("impl", ["python", "sh"])
def test_up_with_the_vip_on_lo_as_both_32_and_24(fx, impl, tmp_path):
    ip(fx, "rs1", "addr", "add", f"{VIP}/24", "dev", "lo", "label", "lo:0")
    ip(fx, "rs1", "addr", "add", f"{VIP}/32", "dev", "lo", "label", "lo:1")
    r = run_up(fx, impl, "rs1", [VIP], tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"removed {VIP}/24 from lo: a VIP on lo must be /32 (seed 000)" in r.stdout
    assert "added" not in r.stdout
    assert [a for a in snapshot(fx, "rs1")["addrs"] if a[1] == VIP] == \
        [["lo", VIP, 32, "lo:1", 0]]
    assert can_ping(fx, "client", RIP["rs1"])
    # a second copy is removed by down too
    ip(fx, "rs1", "addr", "add", f"{VIP}/24", "dev", "lo", "label", "lo:0")
    r = run_down(fx, impl, "rs1", [VIP], tmp_path)
    assert r.returncode == 0, r.stderr
    assert not [a for a in snapshot(fx, "rs1")["addrs"] if a[1] == VIP]


FAIL_ADDR_ADD_PY = r"""
import sys
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
real = IPRoute.addr
def addr(self, command, *args, **kw):
    if command == "add":
        raise NetlinkError(1, "Operation not permitted")
    return real(self, command, *args, **kw)
IPRoute.addr = addr
from lb import cli
cli.main(["realserver", "up", *sys.argv[1:]])
"""

FAIL_ADDR_ADD_SH = r"""
ip() {
    case "$1 $2" in
        "addr add") echo "RTNETLINK answers: Operation not permitted" >&2; return 2;;
    esac
    command ip "$@"
}
. "$0"
"""


@pytest.mark.parametrize("impl", ["python", "sh"])
def test_a_failure_midway_still_shows_what_was_changed(fx, impl, tmp_path):
    """Adding the VIP fails (a stand-in `ip`/netlink that refuses it): the sysctls
    already set must have been printed."""
    if impl == "python":
        r = fx.run("rs1", PY, "-c", FAIL_ADDR_ADD_PY, VIP, check=False)
    else:
        script = write_script(tmp_path / "rs.sh", [VIP])
        r = fx.run("rs1", "sh", "-c", FAIL_ADDR_ADD_SH, script, "up", check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Operation not permitted" in r.stderr
    assert "set net.ipv4.conf.all.arp_ignore = 1" in r.stdout.splitlines()
    assert "set net.ipv4.conf.lo.arp_announce = 2" in r.stdout.splitlines()
    assert "nothing to do" not in r.stdout


FAKE_SYSTEMD = r"""
import os, sys
from pathlib import Path
from lb import realserver
calls = []
def systemctl(*args):
    # what systemd's ExecStop (the script's down) would find at this moment
    calls.append((args, realserver.state_path().exists(),
                  (Path(sys.argv[1]) / realserver.PERSIST_SCRIPT).exists()))
    return "ran systemctl " + " ".join(args)
realserver._systemd = lambda root: True
realserver._systemctl = systemctl
lines = realserver.down([sys.argv[2]], root=sys.argv[1])
print("\n".join(lines))
print(repr(calls))
"""


def test_down_stops_the_unit_after_restoring_and_before_removing_the_script(fx, tmp_path):
    """`systemctl disable --now`: the unit does not stay active, and its ExecStop runs
    while the script is still there, after down has restored everything itself."""
    root = tmp_path / "root"
    before = snapshot(fx, "rs1")
    py_rs(fx, "rs1", "up", VIP, "--persist", "--root", str(root), check=True)
    r = fx.run("rs1", PY, "-c", FAKE_SYSTEMD, str(root), VIP)
    lines = r.stdout.splitlines()
    calls = eval(lines[-1])
    assert calls == [(("disable", "--now", "dr-lb-realserver.service"), False, True),
                     (("daemon-reload",), False, False)]
    assert lines.index("ran systemctl disable --now dr-lb-realserver.service") > \
        lines.index("restored net.ipv4.conf.all.arp_ignore = 0")
    assert snapshot(fx, "rs1") == before
