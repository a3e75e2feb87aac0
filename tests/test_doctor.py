"""`dr-lb realserver check`: every pitfall from the seeds, reproduced in namespaces.

Each test breaks a real server the way a seed did, shows the real symptom where there
is one, requires the doctor to name it (the Python doctor and the generated script's
`check` must say exactly the same, see doctor_both), runs the fix it prints, and
requires the check (and the symptom) to clear.
"""
from __future__ import annotations

import json

import pytest

from tests.test_realserver_common import (
    PY, RIP, VIP, arp_answers, can_ping, codes, doctor_both, forget_state, ip, needs_netns,
    one, py_rs, small_lab, snapshot, sysctl, write_script)

pytestmark = needs_netns


@pytest.fixture
def lab():
    with small_lab("drlb-dr") as lab:
        try:
            yield lab
        finally:
            forget_state(lab)


@pytest.fixture
def script(tmp_path):
    return write_script(tmp_path / "rs.sh", [VIP])


def apply_fix(lab, host, finding, **replace):
    fix = finding["fix"]
    for old, new in replace.items():
        fix = fix.replace(old, new)
    lab.run(host, "sh", "-c", fix)


def test_a_prepared_real_server_passes(lab, script):
    py_rs(lab, "rs1", "up", VIP, check=True)
    findings, rc = doctor_both(lab, "rs1", script, [VIP], table=True)
    assert rc == 0
    assert codes(findings) == ["vip-ok", "arp-ok"]
    assert one(findings, "arp-ok")["what"] == "eth0: effective arp_ignore=1, arp_announce=2"


def test_seed_000_vip_on_lo_as_24(lab, script):
    """The VIP on lo:0 with NETMASK=255.255.255.0: other hosts can no longer reach the
    real server's own address. The doctor says why; its fix brings the host back."""
    py_rs(lab, "rs1", "up", VIP, check=True)
    assert can_ping(lab, "client", RIP["rs1"])
    ip(lab, "rs1", "addr", "del", f"{VIP}/32", "dev", "lo")
    ip(lab, "rs1", "addr", "add", f"{VIP}/24", "dev", "lo", "label", "lo:0")
    assert not can_ping(lab, "client", RIP["rs1"]), "seed 000's symptom did not reproduce"

    findings, rc = doctor_both(lab, "rs1", script, [VIP])
    assert rc == 1
    f = one(findings, "vip-prefix")
    assert f["severity"] == "error"
    assert f["what"] == f"{VIP} is on lo as /24, not /32"
    assert "seed 000" in f["why"] and "loop back into lo" in f["why"]
    assert f["fix"] == f"ip addr del {VIP}/24 dev lo && ip addr add {VIP}/32 dev lo"

    apply_fix(lab, "rs1", f)
    findings, rc = doctor_both(lab, "rs1", script, [VIP])
    assert rc == 0 and "vip-ok" in codes(findings)
    assert can_ping(lab, "client", RIP["rs1"])


def test_arp_ignore_0_gives_the_client_two_answers(lab, script):
    """A stand-in director owns the VIP at L2 (the VIP on its eth0, so its kernel
    answers); a real server with arp_ignore=0 answers too."""
    ip(lab, "director", "addr", "add", f"{VIP}/32", "dev", "eth0")
    py_rs(lab, "rs1", "up", VIP, check=True)
    assert arp_answers(lab, "client", VIP) == [lab.macs["director"]]
    sysctl(lab, "rs1", "net.ipv4.conf.all.arp_ignore", 0)
    assert sorted(arp_answers(lab, "client", VIP)) == sorted([lab.macs["director"],
                                                             lab.macs["rs1"]])

    findings, rc = doctor_both(lab, "rs1", script, [VIP])
    assert rc == 1
    f = one(findings, "arp-ignore")
    assert f["what"] == "eth0: effective arp_ignore is 0 (all=0, eth0=0)"
    assert f["fix"] == "sysctl -w net.ipv4.conf.all.arp_ignore=1"
    apply_fix(lab, "rs1", f)
    assert arp_answers(lab, "client", VIP) == [lab.macs["director"]]
    assert doctor_both(lab, "rs1", script, [VIP])[1] == 0


@pytest.mark.parametrize("key,all_value,dev_value,fix", [
    # max(all, eth0) wins (seed 004): a good `all` does not help against a worse eth0.
    ("arp_ignore", 1, 3, "sysctl -w net.ipv4.conf.eth0.arp_ignore=1"),
    ("arp_ignore", 1, 8, "sysctl -w net.ipv4.conf.eth0.arp_ignore=1"),
    ("arp_announce", 2, 5, "sysctl -w net.ipv4.conf.eth0.arp_announce=2"),
    ("arp_announce", 1, 0, "sysctl -w net.ipv4.conf.all.arp_announce=2"),
    ("arp_announce", 0, 4, "sysctl -w net.ipv4.conf.all.arp_announce=2 "
                           "net.ipv4.conf.eth0.arp_announce=2"),
])
def test_effective_value_is_max_of_all_and_interface(lab, script, key, all_value,
                                                     dev_value, fix):
    py_rs(lab, "rs1", "up", VIP, check=True)
    sysctl(lab, "rs1", f"net.ipv4.conf.all.{key}", all_value)
    sysctl(lab, "rs1", f"net.ipv4.conf.eth0.{key}", dev_value)
    findings, rc = doctor_both(lab, "rs1", script, [VIP])
    assert rc == 1
    f = one(findings, key.replace("_", "-"))
    assert f["what"] == (f"eth0: effective {key} is {max(all_value, dev_value)} "
                         f"(all={all_value}, eth0={dev_value})")
    assert f["fix"] == fix
    apply_fix(lab, "rs1", f)
    assert doctor_both(lab, "rs1", script, [VIP])[1] == 0


def test_vip_missing(lab, script):
    py_rs(lab, "rs1", "up", VIP, check=True)
    ip(lab, "rs1", "addr", "del", f"{VIP}/32", "dev", "lo")
    findings, rc = doctor_both(lab, "rs1", script, [VIP])
    assert rc == 1
    apply_fix(lab, "rs1", one(findings, "vip-missing"))
    assert doctor_both(lab, "rs1", script, [VIP])[1] == 0


def test_vip_on_a_real_interface_answers_arp(lab, script):
    py_rs(lab, "rs1", "up", VIP, check=True)
    ip(lab, "rs1", "addr", "del", f"{VIP}/32", "dev", "lo")
    ip(lab, "rs1", "addr", "add", f"{VIP}/24", "dev", "eth0")
    assert arp_answers(lab, "client", VIP) == [lab.macs["rs1"]], \
        "with the VIP on eth0 even arp_ignore=1 answers for it"
    findings, rc = doctor_both(lab, "rs1", script, [VIP])
    assert rc == 1
    f = one(findings, "vip-not-lo")
    assert f["what"] == f"{VIP} is on eth0 (/24), not on lo"
    assert f["fix"] == f"ip addr del {VIP}/24 dev eth0 && ip addr add {VIP}/32 dev lo"
    apply_fix(lab, "rs1", f)
    assert doctor_both(lab, "rs1", script, [VIP])[1] == 0
    assert arp_answers(lab, "client", VIP) == []


def test_lo_down(lab, script):
    py_rs(lab, "rs1", "up", VIP, check=True)
    ip(lab, "rs1", "link", "set", "lo", "down")
    findings, rc = doctor_both(lab, "rs1", script, [VIP])
    assert rc == 1
    apply_fix(lab, "rs1", one(findings, "lo-down"))
    assert doctor_both(lab, "rs1", script, [VIP])[1] == 0


LISTEN = ("import socket, sys, time; s = socket.socket(); "
          "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
          "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print('listening', flush=True); "
          "time.sleep(600)")


def listen(lab, host, address, port):
    import subprocess
    p = lab.popen(host, PY, "-c", LISTEN, address, str(port), stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "listening"
    return p


def test_nothing_listens_on_the_port(lab, script):
    py_rs(lab, "rs1", "up", VIP, check=True)
    findings, rc = doctor_both(lab, "rs1", script, [VIP], "--port", "80")
    assert rc == 1
    f = one(findings, "port-closed")
    assert f["what"] == f"nothing listens on TCP port 80 for {VIP}"

    # The classic: the service listens on the real address only.
    p = listen(lab, "rs1", RIP["rs1"], 80)
    findings, rc = doctor_both(lab, "rs1", script, [VIP], "--port", "80")
    assert rc == 1
    assert one(findings, "port-wrong-address")["what"] == \
        f"TCP port 80 listens only on {RIP['rs1']}, not on {VIP}"
    p.terminate()
    p.wait()

    for address in ("0.0.0.0", VIP):
        p = listen(lab, "rs1", address, 80)
        findings, rc = doctor_both(lab, "rs1", script, [VIP], "--port", "80")
        assert rc == 0, findings
        assert one(findings, "port-ok")["what"] == f"TCP port 80 listens for {VIP}"
        p.terminate()
        p.wait()


def test_default_route_through_the_director(lab, script):
    py_rs(lab, "rs1", "up", VIP, check=True)
    director = RIP["director"]
    findings, rc = doctor_both(lab, "rs1", script, [VIP], "--director", director)
    assert rc == 0, "no default route is a warning, not an error"
    assert one(findings, "no-default-route")["severity"] == "warning"

    ip(lab, "rs1", "route", "add", "default", "via", director)
    findings, rc = doctor_both(lab, "rs1", script, [VIP], "--director", director)
    assert rc == 1
    f = one(findings, "gateway-director")
    assert "seed 002" in f["why"]
    apply_fix(lab, "rs1", f, ROUTER_ADDRESS="198.18.0.1")
    findings, rc = doctor_both(lab, "rs1", script, [VIP], "--director", director)
    assert rc == 0
    assert one(findings, "gateway-ok")["what"] == \
        "the default route goes through 198.18.0.1, not the director"


def test_a_fresh_host_gets_every_problem_at_once(lab, script):
    findings, rc = doctor_both(lab, "rs1", script, [VIP], "--port", "80",
                               "--director", RIP["director"], table=True)
    assert rc == 1
    assert codes(findings) == ["vip-missing", "arp-ignore", "arp-announce", "port-closed",
                               "no-default-route"]
    for f in findings:
        assert f["what"] and f["why"] and f["fix"], f


def test_json_and_exit_status(lab):
    r = py_rs(lab, "rs1", "check", VIP, "--json")
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["errors"] == 3 and data["warnings"] == 0
    assert set(data["findings"][0]) == {"severity", "code", "what", "why", "fix"}
    r = py_rs(lab, "rs1", "check", VIP)
    assert r.stdout.splitlines()[0].split() == ["SEVERITY", "CHECK", "WHAT"]
    assert r.stdout.splitlines()[-1] == "3 error(s), 0 warning(s), 0 check(s) passed"


def test_check_changes_nothing(lab, script):
    before = snapshot(lab, "rs1")
    doctor_both(lab, "rs1", script, [VIP], "--port", "80", "--director", RIP["director"])
    assert snapshot(lab, "rs1") == before


def test_every_interface_is_checked_and_dotted_names_are_written_as_sysctl_wants(lab, script):
    """A second interface whose own value wins in max(all, dev); its sysctl name has a
    dot, which sysctl(8) writes as a slash (net.ipv4.conf.v/1.arp_ignore)."""
    py_rs(lab, "rs1", "up", VIP, check=True)
    ip(lab, "rs1", "link", "add", "v.1", "type", "veth", "peer", "name", "v.2")
    lab.run("rs1", "sh", "-c", "echo 3 > /proc/sys/net/ipv4/conf/v.1/arp_ignore")
    findings, rc = doctor_both(lab, "rs1", script, [VIP])
    assert rc == 1
    assert codes(findings) == ["vip-ok", "arp-ok", "arp-ignore", "arp-ok"]
    f = one(findings, "arp-ignore")
    assert f["what"] == "v.1: effective arp_ignore is 3 (all=1, v.1=3)"
    assert f["fix"] == "sysctl -w net.ipv4.conf.v/1.arp_ignore=1"
    apply_fix(lab, "rs1", f)
    findings, rc = doctor_both(lab, "rs1", script, [VIP])
    assert rc == 0 and codes(findings) == ["vip-ok", "arp-ok", "arp-ok", "arp-ok"]
    # up also fixes an interface whose own value would win
    lab.run("rs1", "sh", "-c", "echo 5 > /proc/sys/net/ipv4/conf/v.2/arp_announce")
    r = py_rs(lab, "rs1", "up", VIP, check=True)
    assert r.stdout == "set net.ipv4.conf.v/2.arp_announce = 2\n"
