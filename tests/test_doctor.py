"""`dr-lb realserver check`: every pitfall from the seeds, reproduced in namespaces.

Each test breaks a real server the way a seed did, shows the real symptom where there
is one, requires the check to name it (`dr-lb realserver check --json` and the printed
script's `check` run the same lb/realserver/realserver.sh and must say exactly the same,
see check_both), runs the fix it prints, and requires the check (and the symptom) to
clear.
"""
from __future__ import annotations

import json

import pytest

from tests.test_realserver_common import (
    PY, RIP, VIP, arp_answers, bind_udp, can_ping, check_both, codes, forget_state, ip, listen,
    needs_netns, one, py_rs, small_lab, snapshot, sysctl, write_script)

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
    findings, rc = check_both(lab, "rs1", script, [VIP], table=True)
    assert rc == 0
    assert codes(findings) == ["arp-ok", "vip-ok"]
    assert one(findings, "arp-ok")["what"] == "eth0: effective arp_ignore=1, arp_announce=2"


def test_seed_000_vip_on_lo_as_24(lab, script):
    """The VIP on lo:0 with NETMASK=255.255.255.0: other hosts can no longer reach the
    real server's own address. The check says why; its fix brings the host back."""
    py_rs(lab, "rs1", "up", VIP, check=True)
    assert can_ping(lab, "client", RIP["rs1"])
    ip(lab, "rs1", "addr", "del", f"{VIP}/32", "dev", "lo")
    ip(lab, "rs1", "addr", "add", f"{VIP}/24", "dev", "lo", "label", "lo:0")
    assert not can_ping(lab, "client", RIP["rs1"]), "seed 000's symptom did not reproduce"

    findings, rc = check_both(lab, "rs1", script, [VIP])
    assert rc == 1
    f = one(findings, "vip-prefix")
    assert f["severity"] == "error"
    assert f["what"] == f"{VIP} is on lo as /24, not /32"
    assert "seed 000" in f["why"] and "loop back into lo" in f["why"]
    assert f["fix"] == f"ip addr del {VIP}/24 dev lo && ip addr add {VIP}/32 dev lo"

    apply_fix(lab, "rs1", f)
    findings, rc = check_both(lab, "rs1", script, [VIP])
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

    findings, rc = check_both(lab, "rs1", script, [VIP])
    assert rc == 1
    f = one(findings, "arp-ignore")
    assert f["what"] == "eth0: effective arp_ignore is 0 (all=0, eth0=0)"
    assert f["fix"] == "sysctl -w net.ipv4.conf.all.arp_ignore=1"
    apply_fix(lab, "rs1", f)
    assert arp_answers(lab, "client", VIP) == [lab.macs["director"]]
    assert check_both(lab, "rs1", script, [VIP])[1] == 0


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
    findings, rc = check_both(lab, "rs1", script, [VIP])
    assert rc == 1
    f = one(findings, key.replace("_", "-"))
    assert f["what"] == (f"eth0: effective {key} is {max(all_value, dev_value)} "
                         f"(all={all_value}, eth0={dev_value})")
    assert f["fix"] == fix
    apply_fix(lab, "rs1", f)
    assert check_both(lab, "rs1", script, [VIP])[1] == 0


def test_vip_missing(lab, script):
    py_rs(lab, "rs1", "up", VIP, check=True)
    ip(lab, "rs1", "addr", "del", f"{VIP}/32", "dev", "lo")
    findings, rc = check_both(lab, "rs1", script, [VIP])
    assert rc == 1
    apply_fix(lab, "rs1", one(findings, "vip-missing"))
    assert check_both(lab, "rs1", script, [VIP])[1] == 0


def test_vip_on_a_real_interface_answers_arp(lab, script):
    py_rs(lab, "rs1", "up", VIP, check=True)
    ip(lab, "rs1", "addr", "del", f"{VIP}/32", "dev", "lo")
    ip(lab, "rs1", "addr", "add", f"{VIP}/24", "dev", "eth0")
    assert arp_answers(lab, "client", VIP) == [lab.macs["rs1"]], \
        "with the VIP on eth0 even arp_ignore=1 answers for it"
    findings, rc = check_both(lab, "rs1", script, [VIP])
    assert rc == 1
    f = one(findings, "vip-not-lo")
    assert f["what"] == f"{VIP} is on eth0 (/24), not on lo"
    assert f["fix"] == f"ip addr del {VIP}/24 dev eth0 && ip addr add {VIP}/32 dev lo"
    apply_fix(lab, "rs1", f)
    assert check_both(lab, "rs1", script, [VIP])[1] == 0
    assert arp_answers(lab, "client", VIP) == []


def test_lo_down(lab, script):
    py_rs(lab, "rs1", "up", VIP, check=True)
    ip(lab, "rs1", "link", "set", "lo", "down")
    findings, rc = check_both(lab, "rs1", script, [VIP])
    assert rc == 1
    apply_fix(lab, "rs1", one(findings, "lo-down"))
    assert check_both(lab, "rs1", script, [VIP])[1] == 0


def test_nothing_listens_on_the_port(lab, script):
    py_rs(lab, "rs1", "up", VIP, check=True)
    findings, rc = check_both(lab, "rs1", script, [VIP], "--port", "80")
    assert rc == 1
    f = one(findings, "port-closed")
    assert f["what"] == f"nothing listens on TCP port 80 for {VIP}"

    # The classic: the service listens on the real address only.
    p = listen(lab, "rs1", RIP["rs1"], 80)
    findings, rc = check_both(lab, "rs1", script, [VIP], "--port", "80")
    assert rc == 1
    assert one(findings, "port-wrong-address")["what"] == \
        f"TCP port 80 listens only on {RIP['rs1']}, not on {VIP}"
    p.terminate()
    p.wait()

    for address in ("0.0.0.0", VIP):
        p = listen(lab, "rs1", address, 80)
        findings, rc = check_both(lab, "rs1", script, [VIP], "--port", "80")
        assert rc == 0, findings
        assert one(findings, "port-ok")["what"] == f"TCP port 80 listens for {VIP}"
        p.terminate()
        p.wait()


def test_a_udp_service_must_be_bound_to_the_vip(lab, script):
    """A UDP reply leaves from the socket's address: bound to the VIP it is right, bound
    to a wildcard it leaves from the real server's own address (a warning: a server
    may set each reply's source itself); tests/test_e2e.py shows the client drop it."""
    def stop(p):
        p.terminate()
        p.wait()

    py_rs(lab, "rs1", "up", VIP, check=True)
    findings, rc = check_both(lab, "rs1", script, [VIP], "--udp-port", "53")
    assert rc == 1
    assert one(findings, "udp-port-closed")["what"] == \
        f"nothing is bound to UDP port 53 for {VIP}"
    listener = listen(lab, "rs1", VIP, 53)   # TCP on the port says nothing of UDP
    findings, rc = check_both(lab, "rs1", script, [VIP], "--udp-port", "53")
    assert rc == 1 and codes(findings)[-1] == "udp-port-closed"
    stop(listener)

    p = bind_udp(lab, "rs1", RIP["rs1"], 53)
    findings, rc = check_both(lab, "rs1", script, [VIP], "--udp-port", "53")
    assert rc == 1
    assert one(findings, "udp-port-wrong-address")["what"] == \
        f"UDP port 53 is bound only to {RIP['rs1']}, not to {VIP}"
    stop(p)

    p = bind_udp(lab, "rs1", "::", 53, v6only=1)
    findings, rc = check_both(lab, "rs1", script, [VIP], "--udp-port", "53")
    assert rc == 1 and codes(findings)[-1] == "udp-port-v6-only"
    stop(p)

    for address, shown in (("0.0.0.0", "0.0.0.0"), ("::", "[::]")):
        p = bind_udp(lab, "rs1", address, 53)
        findings, rc = check_both(lab, "rs1", script, [VIP], "--udp-port", "53")
        assert rc == 0, findings
        f = one(findings, "udp-port-wildcard")
        assert f["severity"] == "warning"
        assert f["what"] == f"UDP port 53 is bound to {shown}, not to {VIP}"
        assert f"not {VIP}, and the client" in f["why"] and "IP_PKTINFO" in f["why"]
        # Bound to the VIP as well (a server that binds each address): its replies to
        # the VIP leave from the VIP.
        q = bind_udp(lab, "rs1", VIP, 53)
        findings, rc = check_both(lab, "rs1", script, [VIP], "--udp-port", "53")
        assert rc == 0 and codes(findings)[-1] == "udp-port-ok"
        stop(q)
        stop(p)

    p = bind_udp(lab, "rs1", VIP, 53)
    findings, rc = check_both(lab, "rs1", script, [VIP], "--udp-port", "53", "--port", "53",
                              table=True)
    assert rc == 1, "nothing listens on TCP 53"
    assert codes(findings)[-2:] == ["port-closed", "udp-port-ok"]
    assert one(findings, "udp-port-ok")["what"] == f"UDP port 53 is bound to {VIP}"
    stop(p)


def test_default_route_through_the_director(lab, script):
    py_rs(lab, "rs1", "up", VIP, check=True)
    director = RIP["director"]
    findings, rc = check_both(lab, "rs1", script, [VIP], "--director", director)
    assert rc == 0, "no default route is a warning, not an error"
    assert one(findings, "no-default-route")["severity"] == "warning"

    ip(lab, "rs1", "route", "add", "default", "via", director)
    findings, rc = check_both(lab, "rs1", script, [VIP], "--director", director)
    assert rc == 1
    f = one(findings, "gateway-director")
    assert "seed 002" in f["why"]
    apply_fix(lab, "rs1", f, ROUTER_ADDRESS="198.18.0.1")
    findings, rc = check_both(lab, "rs1", script, [VIP], "--director", director)
    assert rc == 0
    assert one(findings, "gateway-ok")["what"] == \
        "the default route goes through 198.18.0.1, not the director"


def test_a_fresh_host_gets_every_problem_at_once(lab, script):
    findings, rc = check_both(lab, "rs1", script, [VIP], "--port", "80",
                               "--director", RIP["director"], table=True)
    assert rc == 1
    # the ARP fixes first: copied top-down they come before the one that adds the VIP
    assert codes(findings) == ["arp-ignore", "arp-announce", "vip-missing", "port-closed",
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
    check_both(lab, "rs1", script, [VIP], "--port", "80", "--director", RIP["director"])
    assert snapshot(lab, "rs1") == before


def test_every_interface_is_checked_and_dotted_names_are_written_as_sysctl_wants(lab, script):
    """A second interface whose own value wins in max(all, dev); its sysctl name has a
    dot, which sysctl(8) writes as a slash (net.ipv4.conf.v/1.arp_ignore)."""
    py_rs(lab, "rs1", "up", VIP, check=True)
    ip(lab, "rs1", "link", "add", "v.1", "type", "veth", "peer", "name", "v.2")
    lab.run("rs1", "sh", "-c", "echo 3 > /proc/sys/net/ipv4/conf/v.1/arp_ignore")
    findings, rc = check_both(lab, "rs1", script, [VIP])
    assert rc == 1
    assert codes(findings) == ["arp-ok", "arp-ignore", "arp-ok", "vip-ok"]
    f = one(findings, "arp-ignore")
    assert f["what"] == "v.1: effective arp_ignore is 3 (all=1, v.1=3)"
    assert f["fix"] == "sysctl -w net.ipv4.conf.v/1.arp_ignore=1"
    apply_fix(lab, "rs1", f)
    findings, rc = check_both(lab, "rs1", script, [VIP])
    assert rc == 0 and codes(findings) == ["arp-ok", "arp-ok", "arp-ok", "vip-ok"]
    # up also fixes an interface whose own value would win
    lab.run("rs1", "sh", "-c", "echo 5 > /proc/sys/net/ipv4/conf/v.2/arp_announce")
    r = py_rs(lab, "rs1", "up", VIP, check=True)
    assert r.stdout == "set net.ipv4.conf.v/2.arp_announce = 2\n"


# ---- review fixes (namespaces "drlb-fx-*") ------------------------------------------------

@pytest.fixture
def fx():
    with small_lab("drlb-fx", n_real=1) as lab:
        try:
            yield lab
        finally:
            forget_state(lab)


def test_the_fix_for_a_primary_vip_on_eth0_keeps_the_real_address(fx, script):
    """The VIP added to eth0 before the real address is the primary of the /24: `ip addr
    del` alone would delete the real address (its secondary) too."""
    rip = RIP["rs1"]
    ip(fx, "rs1", "addr", "del", f"{rip}/24", "dev", "eth0")
    ip(fx, "rs1", "addr", "add", f"{VIP}/24", "dev", "eth0")
    ip(fx, "rs1", "addr", "add", f"{rip}/24", "dev", "eth0")
    findings, rc = check_both(fx, "rs1", script, [VIP])
    assert rc == 1
    f = one(findings, "vip-not-lo")
    assert f["fix"] == ("sysctl -w net.ipv4.conf.eth0.promote_secondaries=1 && "
                        f"ip addr del {VIP}/24 dev eth0 && ip addr add {VIP}/32 dev lo")
    apply_fix(fx, "rs1", f)
    assert ["eth0", rip, 24, "eth0", 0] in snapshot(fx, "rs1")["addrs"]
    assert can_ping(fx, "client", rip)
    py_rs(fx, "rs1", "up", VIP, check=True)
    assert check_both(fx, "rs1", script, [VIP])[1] == 0


@pytest.mark.parametrize("why", ["only-address", "default-route-source"])
def test_the_real_address_given_as_the_vip_gets_no_removal(fx, tmp_path, why):
    rip = RIP["rs1"]
    script = write_script(tmp_path / "rs.sh", [rip])
    reason = "this host's only address outside lo"
    if why == "default-route-source":
        ip(fx, "rs1", "addr", "add", "198.18.0.99/24", "dev", "eth0")
        ip(fx, "rs1", "route", "add", "default", "via", "198.18.0.1")
        reason = "the source address of this host's default route"
    findings, rc = check_both(fx, "rs1", script, [rip], table=True)
    assert rc == 1
    f = one(findings, "vip-own-address")
    assert f["what"] == f"{rip} is on eth0 (/24) and is {reason}"
    assert "ip addr del" not in f["fix"] and rip in f["fix"]
    assert "vip-not-lo" not in codes(findings)


def test_vip_on_lo_as_both_32_and_24(fx, script):
    py_rs(fx, "rs1", "up", VIP, check=True)
    ip(fx, "rs1", "addr", "add", f"{VIP}/24", "dev", "lo", "label", "lo:1")
    findings, rc = check_both(fx, "rs1", script, [VIP])
    assert rc == 1
    assert codes(findings) == ["arp-ok", "vip-ok", "vip-prefix"]
    f = one(findings, "vip-prefix")
    assert f["fix"] == f"ip addr del {VIP}/24 dev lo"
    apply_fix(fx, "rs1", f)
    findings, rc = check_both(fx, "rs1", script, [VIP])
    assert rc == 0 and codes(findings) == ["arp-ok", "vip-ok"]


def test_only_the_first_removal_adds_the_32(fx, script):
    """/24 and /16 on lo, no /32: applied top-down, one fix adds the /32, not two."""
    py_rs(fx, "rs1", "up", VIP, check=True)
    ip(fx, "rs1", "addr", "del", f"{VIP}/32", "dev", "lo")
    ip(fx, "rs1", "addr", "add", f"{VIP}/24", "dev", "lo", "label", "lo:0")
    ip(fx, "rs1", "addr", "add", f"{VIP}/16", "dev", "lo", "label", "lo:1")
    findings, rc = check_both(fx, "rs1", script, [VIP])
    fixes = [f["fix"] for f in findings if f["code"] == "vip-prefix"]
    assert fixes == [f"ip addr del {VIP}/24 dev lo && ip addr add {VIP}/32 dev lo",
                     f"ip addr del {VIP}/16 dev lo"]
    for fix in fixes:
        fx.run("rs1", "sh", "-c", fix)
    assert check_both(fx, "rs1", script, [VIP])[1] == 0


LISTEN6 = ("import socket, sys, time; s = socket.socket(socket.AF_INET6); "
           "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
           "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(sys.argv[2])); "
           "s.bind(('::', int(sys.argv[1]))); s.listen(); print('listening', flush=True); "
           "time.sleep(600)")


def test_a_v6only_wildcard_listener_does_not_serve_the_vip(fx, script):
    """nginx `listen [::]:80` is IPV6_V6ONLY: a connection to the IPv4 VIP is refused."""
    import subprocess
    py_rs(fx, "rs1", "up", VIP, check=True)
    connect = ("import socket, sys; socket.create_connection((sys.argv[1], 80), 1)")
    for v6only, code in ((1, "port-v6-only"), (0, "port-ok")):
        p = fx.popen("rs1", PY, "-c", LISTEN6, "80", str(v6only), stdout=subprocess.PIPE,
                     text=True)
        assert p.stdout.readline().strip() == "listening"
        served = fx.run("rs1", PY, "-c", connect, VIP, check=False).returncode == 0
        assert served == (not v6only)
        # what the check reads: ss (iproute2 >= 4.17) writes [::]:80 for a v6only
        # socket and *:80 for a dual-stack one
        local = [line.split()[3] for line in
                 fx.run("rs1", "ss", "-Hltn", "sport = :80").stdout.splitlines()]
        assert local == (["[::]:80"] if v6only else ["*:80"]), local
        # a port with a leading zero: the script reads it as the CLI does (80, not octal)
        findings, rc = check_both(fx, "rs1", script, [VIP], "--port", "080")
        assert codes(findings)[-1] == code and rc == (1 if v6only else 0)
        if v6only:
            f = one(findings, code)
            assert f["what"] == f"TCP port 80 listens only on [::] with IPV6_V6ONLY, not for {VIP}"
            assert "ipv6only=off" in f["fix"]
            assert "(nginx: add `listen 80;`)" in f["fix"], "backquotes are printed as such"
            assert "nginx `listen [::]:80`" in f["why"]
        p.terminate()
        p.wait()


def test_fixes_copied_top_down_never_announce_the_vip(fx, script):
    """A stand-in director owns the VIP at L2; rs1 is fresh (arp_ignore 0). Applying the
    check's fixes in the order it prints them, rs1 must never answer ARP for the VIP."""
    ip(fx, "director", "addr", "add", f"{VIP}/32", "dev", "eth0")
    findings, rc = check_both(fx, "rs1", script, [VIP])
    assert rc == 1
    assert codes(findings) == ["arp-ignore", "arp-announce", "vip-missing"]
    for f in findings:
        apply_fix(fx, "rs1", f)
        assert arp_answers(fx, "client", VIP) == [fx.macs["director"]], f["code"]
    assert check_both(fx, "rs1", script, [VIP])[1] == 0
    for code in ("arp-ignore", "arp-announce"):
        assert "sysctl -w lasts until the next reboot" in one(findings, code)["why"]
        assert "up --persist" in one(findings, code)["why"]
    assert f"dr-lb realserver up {VIP}" in one(findings, "vip-missing")["why"]
