"""`dr-lb realserver up/down` and the printed script's up/down, in namespaces.

`up` then `down` must leave a namespace exactly as it was (addresses, routes, lo and
every IPv4 conf sysctl), through the CLI and through the printed script run with `sh`
(both run lb/realserver/realserver.sh), and both must do and say the same thing.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.test_realserver_common import (
    PY, RIP, RS_SH, VIP, VIP2, can_ping, check_both, codes, fake_bin, forget_state, ip,
    needs_netns, py_rs, sh_rs, small_lab, snapshot, state_file_of, sysctl, with_path,
    write_script)

pytestmark = needs_netns


@pytest.fixture
def lab():
    with small_lab("drlb-rs") as lab:
        try:
            yield lab
        finally:
            forget_state(lab)


IMPLS = ["cli", "script"]


def run_up(lab, impl, host, vips, tmp_path, *extra, **kw):
    """The CLI with the VIPs as arguments, or the printed script with them as its
    defaults (no VIP argument)."""
    if impl == "cli":
        return py_rs(lab, host, "up", *vips, *extra, **kw)
    return sh_rs(lab, host, write_script(tmp_path / f"rs-{host}-{'-'.join(vips)}.sh", vips),
                 "up", *extra, **kw)


def run_down(lab, impl, host, vips, tmp_path, **kw):
    if impl == "cli":
        return py_rs(lab, host, "down", *vips, "--root", str(tmp_path / "root"), **kw)
    return sh_rs(lab, host, write_script(tmp_path / f"rs-{host}-{'-'.join(vips)}.sh", vips),
                 "down", **kw)


@pytest.mark.parametrize("impl", IMPLS)
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
def test_cli_and_script_do_and_say_the_same(lab, tmp_path, scene):
    """rs1 runs the CLI, rs2 the printed script: same output, same resulting state."""
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


@pytest.mark.parametrize("impl", IMPLS)
def test_up_replaces_a_non_32_vip_on_lo(lab, impl, tmp_path):
    ip(lab, "rs1", "addr", "add", f"{VIP}/24", "dev", "lo", "label", "lo:0")
    r = run_up(lab, impl, "rs1", [VIP], tmp_path, check=True)
    assert r.stdout.splitlines()[-2:] == [
        f"removed {VIP}/24 from lo: a VIP on lo must be /32 (seed 000)",
        f"added {VIP}/32 on lo as lo:0"]
    addrs = snapshot(lab, "rs1")["addrs"]
    assert ["lo", VIP, 32, "lo:0", 0] in addrs
    assert not [a for a in addrs if a[1] == VIP and a[2] != 32]


@pytest.mark.parametrize("impl", IMPLS)
def test_up_refuses_a_vip_on_another_interface(lab, impl, tmp_path):
    ip(lab, "rs1", "addr", "add", f"{VIP}/24", "dev", "eth0")
    before = snapshot(lab, "rs1")
    r = run_up(lab, impl, "rs1", [VIP], tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"{VIP} is on eth0 (/24)" in r.stderr
    assert f"ip addr del {VIP}/24 dev eth0" in r.stderr
    assert snapshot(lab, "rs1") == before, "a refused up must change nothing"


@pytest.mark.parametrize("impl", IMPLS)
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


@pytest.mark.parametrize("impl", IMPLS)
def test_down_without_a_record_leaves_the_sysctls(lab, impl, tmp_path):
    """As after a reboot with --persist: the sysctls came from sysctl.d, not from up."""
    for key in ("all.arp_ignore", "default.arp_ignore", "lo.arp_ignore"):
        sysctl(lab, "rs1", f"net.ipv4.conf.{key}", 1)
    for key in ("all.arp_announce", "default.arp_announce", "lo.arp_announce"):
        sysctl(lab, "rs1", f"net.ipv4.conf.{key}", 2)
    run_up(lab, impl, "rs1", [VIP], tmp_path, check=True)
    r = run_down(lab, impl, "rs1", [VIP], tmp_path, check=True)
    assert "no record of the ARP sysctls" in r.stdout
    assert snapshot(lab, "rs1")["sysctl"]["all/arp_ignore"] == "1"


@pytest.mark.parametrize("impl", IMPLS)
def test_a_stale_record_is_not_restored(lab, impl, tmp_path):
    """A record left by a deleted namespace with the same inode must not be applied."""
    path = state_file_of(lab, "rs1")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("all/arp_ignore=5\nall/arp_announce=7\n")
    before = snapshot(lab, "rs1")
    run_up(lab, impl, "rs1", [VIP], tmp_path, check=True)
    run_down(lab, impl, "rs1", [VIP], tmp_path, check=True)
    assert snapshot(lab, "rs1") == before


@pytest.mark.parametrize("impl", IMPLS)
def test_up_brings_lo_up(lab, impl, tmp_path):
    ip(lab, "rs1", "link", "set", "lo", "down")
    r = run_up(lab, impl, "rs1", [VIP], tmp_path, check=True)
    assert r.stdout.startswith("brought lo up\n")
    findings, rc = check_both(lab, "rs1", write_script(tmp_path / "rs.sh", [VIP]), [VIP])
    assert rc == 0 and "lo-down" not in codes(findings)


def rs_cmd(lab, impl, tmp_path):
    """rs(host, ARGS...): `realserver ARGS` through the CLI, or through the printed script
    with the VIPs given as arguments too."""
    if impl == "cli":
        return lambda host, *args, **kw: py_rs(lab, host, *args, **kw)
    script = write_script(tmp_path / "rs-args.sh", [VIP])
    return lambda host, *args, **kw: sh_rs(lab, host, script, *args, **kw)


DEFAULTS = 'DEFAULT_VIPS="" DEFAULT_PORT="" DEFAULT_DIRECTOR="" DEFAULT_UDP_PORT=""'


def persisted_vips(root) -> list[str]:
    text = (root / "etc/dr-lb/realserver.sh").read_text()
    return re.search(r'^DEFAULT_VIPS="([^"]*)"', text, re.M).group(1).split()


@pytest.mark.parametrize("impl", IMPLS)
def test_persist_writes_and_down_removes(lab, impl, tmp_path):
    """--persist under a scratch root (never the machine's /etc); then the persisted
    script, as the unit runs it at boot, prepares a fresh real server."""
    root = tmp_path / "root"
    rs = rs_cmd(lab, impl, tmp_path)
    r = rs("rs1", "up", VIP, "--persist", "--root", str(root), check=True)
    lines = r.stdout.splitlines()
    assert lines[-4:-1] == [
        "wrote /etc/sysctl.d/90-dr-lb-realserver.conf (the ARP sysctls, applied at boot)",
        f"wrote /etc/dr-lb/realserver.sh (puts {VIP} on lo at boot)",
        "wrote /etc/systemd/system/dr-lb-realserver.service (runs that script at boot)"]
    assert "systemd is not running here" in lines[-1]
    assert "systemctl enable dr-lb-realserver.service" in lines[-1]
    conf = (root / "etc/sysctl.d/90-dr-lb-realserver.conf").read_text()
    for scope in ("all", "default", "lo"):
        assert f"net.ipv4.conf.{scope}.arp_ignore = 1" in conf
        assert f"net.ipv4.conf.{scope}.arp_announce = 2" in conf
    unit = (root / "etc/systemd/system/dr-lb-realserver.service").read_text()
    assert "ExecStart=/bin/sh /etc/dr-lb/realserver.sh up" in unit
    assert "ExecStop=/bin/sh /etc/dr-lb/realserver.sh down" in unit
    assert "WantedBy=multi-user.target" in unit
    boot = root / "etc/dr-lb/realserver.sh"
    assert boot.stat().st_mode & 0o777 == 0o755
    assert subprocess.run(["sh", "-n", str(boot)]).returncode == 0
    # the persisted script is realserver.sh itself, with its VIPs as the defaults
    assert DEFAULTS in RS_SH.read_text()
    assert boot.read_text() == RS_SH.read_text().replace(
        DEFAULTS, f'DEFAULT_VIPS="{VIP}" DEFAULT_PORT="" DEFAULT_DIRECTOR="" '
                  'DEFAULT_UDP_PORT=""')
    assert persisted_vips(root) == [VIP]

    # The boot path: rs2 has never seen dr-lb; the persisted script prepares it.
    assert sh_rs(lab, "rs2", str(boot), "up").returncode == 0
    findings, rc = check_both(lab, "rs2", str(boot), [VIP])
    assert rc == 0 and codes(findings) == ["arp-ok", "vip-ok"]
    # Its down without VIP arguments (the unit's ExecStop) leaves the persisted files.
    r = sh_rs(lab, "rs2", str(boot), "down", check=True)
    assert "/etc/" not in r.stdout and boot.exists()

    rs("rs1", "up", VIP2, VIP, "--persist", "--root", str(root), check=True)
    assert persisted_vips(root) == [VIP, VIP2]
    r = rs("rs1", "down", "198.18.0.23", "--root", str(root), check=True)
    assert "/etc/" not in r.stdout, "a VIP that was never persisted changes no file"
    r = rs("rs1", "down", VIP, "--root", str(root), check=True)
    assert f"wrote /etc/dr-lb/realserver.sh (puts {VIP2} on lo at boot)" in r.stdout
    assert persisted_vips(root) == [VIP2]
    assert (root / "etc/sysctl.d/90-dr-lb-realserver.conf").exists()
    r = rs("rs1", "down", VIP2, "--root", str(root), check=True)
    assert r.stdout.splitlines()[-3:] == [
        "removed /etc/systemd/system/dr-lb-realserver.service",
        "removed /etc/dr-lb/realserver.sh",
        "removed /etc/sysctl.d/90-dr-lb-realserver.conf"]
    for path in ("etc/systemd/system/dr-lb-realserver.service", "etc/dr-lb/realserver.sh",
                 "etc/sysctl.d/90-dr-lb-realserver.conf"):
        assert not (root / path).exists()
    assert not (root / "etc/dr-lb").exists()


def test_down_rewrites_a_persisted_copy_from_before_udp_port(lab, tmp_path):
    """A script read from stdin (no file of its own) rewrites the persisted copy itself:
    one persisted by a release without DEFAULT_UDP_PORT still has its VIP taken out."""
    root = tmp_path / "root"
    py_rs(lab, "rs1", "up", VIP, VIP2, "--persist", "--root", str(root), check=True)
    boot = root / "etc/dr-lb/realserver.sh"
    old = boot.read_text().replace(' DEFAULT_UDP_PORT=""', "", 1)
    assert 'DEFAULT_DIRECTOR=""\n' in old
    boot.write_text(old)
    r = lab.run("rs1", "sh", "-s", "down", VIP, "--root", str(root), input=RS_SH.read_text())
    assert f"wrote /etc/dr-lb/realserver.sh (puts {VIP2} on lo at boot)" in r.stdout
    assert f'DEFAULT_VIPS="{VIP2}" DEFAULT_PORT="" DEFAULT_DIRECTOR="" DEFAULT_UDP_PORT=""\n' \
        in boot.read_text()
    assert persisted_vips(root) == [VIP2]
    py_rs(lab, "rs1", "down", VIP2, "--root", str(root), check=True)
    assert not boot.exists()


# ---- review fixes (namespaces "drlb-fx-*") ------------------------------------------------

@pytest.fixture
def fx():
    with small_lab("drlb-fx", n_real=1) as lab:
        try:
            yield lab
        finally:
            forget_state(lab)


def vip_first_then_rip(lab, host):
    """The VIP put on eth0 before the real address: the VIP is the primary of the /24,
    the real address its secondary (promote_secondaries is 0 in a new namespace)."""
    rip = RIP[host]
    ip(lab, host, "addr", "del", f"{rip}/24", "dev", "eth0")
    ip(lab, host, "addr", "add", f"{VIP}/24", "dev", "eth0")
    ip(lab, host, "addr", "add", f"{rip}/24", "dev", "eth0")
    assert lab.run(host, "sysctl", "-n", "net.ipv4.conf.eth0.promote_secondaries",
                   "net.ipv4.conf.all.promote_secondaries").stdout.split() == ["0", "0"]


@pytest.mark.parametrize("impl", IMPLS)
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


@pytest.mark.parametrize("impl", IMPLS)
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


@pytest.mark.parametrize("impl", IMPLS)
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


@pytest.mark.parametrize("impl", IMPLS)
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


@pytest.mark.parametrize("impl", IMPLS)
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


@pytest.mark.parametrize("impl", IMPLS)
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


# A stand-in `ip` that refuses to add an address, once the test has seen the earlier
# steps (so they must have been printed as they were done, not at the end).
FAIL_ADDR_ADD = r"""
if [ "$1 $2" = "addr add" ]; then
    i=0
    while [ ! -e "$SEEN" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    [ -e "$SEEN" ] || echo "the steps before it were not printed as they were done" >&2
    echo "RTNETLINK answers: Operation not permitted" >&2
    exit 2
fi
exec "$REAL_IP" "$@"
"""


@pytest.mark.parametrize("impl", IMPLS)
def test_a_failure_midway_still_shows_what_was_changed(fx, impl, tmp_path):
    """Adding the VIP fails: the sysctls already set must have been printed, each as it
    was done."""
    seen = tmp_path / "seen"
    env = with_path(fake_bin(tmp_path, ip=FAIL_ADDR_ADD), SEEN=str(seen),
                    REAL_IP=shutil.which("ip"))
    if impl == "cli":
        argv = [PY, "-m", "lb", "realserver", "up", VIP]
    else:
        argv = ["sh", write_script(tmp_path / "rs.sh", [VIP]), "up"]
    p = fx.popen("rs1", *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 env=env)
    lines = []
    for line in p.stdout:
        lines.append(line.rstrip("\n"))
        if lines[-1] == "set net.ipv4.conf.lo.arp_announce = 2":
            seen.touch()
    assert p.wait(timeout=30) == 1, (lines, p.stderr.read())
    err = p.stderr.read()
    assert "Operation not permitted" in err
    assert "not printed as they were done" not in err
    assert "set net.ipv4.conf.all.arp_ignore = 1" in lines
    assert "set net.ipv4.conf.lo.arp_announce = 2" in lines
    assert "nothing to do" not in "\n".join(lines)


# A stand-in systemctl: logs each call with what systemd's ExecStop (the script's down)
# would find at that moment: is the record of `up` still there, is the script?
FAKE_SYSTEMCTL = r"""
state=False
[ ! -e "/run/dr-lb/realserver/net-$(stat -L -c %i /proc/self/ns/net)" ] || state=True
script=False
[ ! -e "$FAKE_ROOT/etc/dr-lb/realserver.sh" ] || script=True
echo "$*|$state|$script" >> "$FAKE_LOG"
if [ "$1" = "${FAKE_FAIL:-}" ]; then echo "Failed to $1 unit: boom" >&2; exit 1; fi
"""


@pytest.mark.parametrize("impl", IMPLS)
def test_down_stops_the_unit_after_restoring_and_before_removing_the_script(fx, impl,
                                                                            tmp_path):
    """`systemctl disable --now`: the unit does not stay active, and its ExecStop runs
    while the script is still there, after down has restored everything itself."""
    root = tmp_path / "root"
    (root / "run/systemd/system").mkdir(parents=True)   # systemd runs this scratch root
    log = tmp_path / "systemctl.log"
    env = with_path(fake_bin(tmp_path, systemctl=FAKE_SYSTEMCTL), FAKE_ROOT=str(root),
                    FAKE_LOG=str(log))
    rs = rs_cmd(fx, impl, tmp_path)
    before = snapshot(fx, "rs1")

    r = rs("rs1", "up", VIP, "--persist", "--root", str(root),
           env=dict(env, FAKE_FAIL="enable"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr == ("dr-lb: `systemctl enable dr-lb-realserver.service` failed: "
                        "Failed to enable unit: boom\n")
    r = rs("rs1", "up", VIP, "--persist", "--root", str(root), env=env, check=True)
    assert r.stdout.splitlines()[-2:] == ["ran systemctl daemon-reload",
                                          "ran systemctl enable dr-lb-realserver.service"]
    log.unlink()
    r = rs("rs1", "down", VIP, "--root", str(root), env=env, check=True)
    assert log.read_text().splitlines() == [
        "disable --now dr-lb-realserver.service|False|True", "daemon-reload|False|False"]
    lines = r.stdout.splitlines()
    assert lines.index("ran systemctl disable --now dr-lb-realserver.service") > \
        lines.index("restored net.ipv4.conf.all.arp_ignore = 0")
    assert lines[-1] == "ran systemctl daemon-reload"
    assert snapshot(fx, "rs1") == before


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("vip", ["127.0.0.1", "0.0.0.0", "224.0.0.5", "255.255.255.255"])
def test_a_vip_that_would_break_the_host_is_refused_before_anything_changes(
        lab, impl, vip, tmp_path):
    """`up 127.0.0.1` used to remove 127.0.0.1/8 from lo (and `down` then left lo with no
    IPv4 address); `up 0.0.0.0` said "added" and changed the ARP sysctls."""
    before = snapshot(lab, "rs1")
    if impl == "cli":
        runs = (py_rs(lab, "rs1", "up", vip),
                py_rs(lab, "rs1", "down", vip, "--root", str(tmp_path / "root")))
    else:   # `script` refuses to print one for it: a printed script given it as argument
        script = str(write_script(tmp_path / "rs.sh", [VIP]))
        runs = (sh_rs(lab, "rs1", script, "up", vip),
                sh_rs(lab, "rs1", script, "down", vip, "--root", str(tmp_path / "root")))
    for r in runs:
        assert r.returncode != 0, r.stdout
        assert "cannot be a VIP" in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
            r.stderr
        assert snapshot(lab, "rs1") == before
