"""`dr-lb check --live` (lb.director.live_check) on the lab's director, against a running
`dr-lb up` and against real servers broken the way the seeds broke them.

Each test shows the symptom from the client or the director where there is one,
requires the live check to name the problem, applies the fix it prints, and requires
the problem to be gone.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lb.lab.demo import launch_director
from lb.lab import HOSTS, VIP, Lab
from tests.test_realserver_common import (
    PY, RIP, arp_answers, bind_udp, codes, forget_state, ip, listen, needs_netns, one, py_rs,
    sysctl, udp_echo)

pytestmark = needs_netns


def require_dataplane() -> None:
    """These tests run as root (needs_netns), where setup.sh installed bcc and the
    headers: their absence is a broken machine, a failure, not a reason to skip."""
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.fail("bcc is missing (python3-bpfcc): `dr-lb up` cannot run; "
                    "run scripts/setup.sh")
    from lb.director.dataplane import headers_problem
    problem = headers_problem()
    if problem:
        pytest.fail(f"`dr-lb up` cannot compile: {problem}")


def start_director(lab: Lab, config: Path, *options: str) -> subprocess.Popen:
    """`dr-lb up [OPTIONS] CONFIG` in the director; returns once it printed `ready`."""
    require_dataplane()
    return launch_director(lab, config, *options)


def live(lab: Lab, config: Path) -> tuple[list[dict], int]:
    r = lab.run("director", PY, "-m", "lb", "check", "--live", str(config), "--json", check=False)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)["findings"], r.returncode


def errors(findings: list[dict]) -> list[str]:
    return codes(findings, "error")


def tcp_config(lab: Lab, port: int, reals: list[str], extra: str = "") -> str:
    return (f'[director]\ninterface = "eth0"\nxdp_mode = "generic"\n\n'
            f'[[service]]\nvip = "{VIP}"\nport = {port}\nprotocol = "tcp"\n'
            + "".join(f'\n[[service.real_server]]\naddress = "{r}"\n{extra if i == 0 else ""}'
                      for i, r in enumerate(reals)))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The lab with prepared, serving real servers and `dr-lb up` running."""
    tmp = tmp_path_factory.mktemp("live")
    with Lab(prefix="drlb-lc") as lab:
        try:
            lab.prepare_real_servers()
            lab.start_servers()
            config = tmp / "lab.toml"
            config.write_text(lab.director_config())
            start_director(lab, config)
            yield lab, config, tmp
        finally:
            forget_state(lab)


# An XDP program that only returns XDP_PASS, attached to eth0 and left there (the
# attachment outlives the process), as a crashed balancer would leave it.
LEFTOVER_XDP = """
from pyroute2 import IPRoute
from lb import libbpf
libbpf.xdp_attach(IPRoute().link_lookup(ifname="eth0")[0], libbpf.load_xdp_return(), "generic")
"""


# ---- nobody answers ARP for the VIP (seed 003), then dr-lb up does --------------------------

def test_nobody_answers_arp_for_the_vip_until_dr_lb_is_up(tmp_path):
    with Lab(prefix="drlb-ln", hosts=HOSTS[:3]) as lab:
        try:
            lab.prepare_real_servers()
            lab.start_servers()
            config = tmp_path / "lab.toml"
            config.write_text(lab.director_config())
            assert arp_answers(lab, "client", VIP) == [], "someone answers ARP for the VIP"

            findings, rc = live(lab, config)
            assert rc == 1
            assert errors(findings) == ["dataplane-down", "vip-arp-nobody"]
            f = one(findings, "vip-arp-nobody")
            assert f["what"] == f"nobody answers ARP for VIP {VIP}"
            assert "no route to host" in f["why"] and "seed 003" in f["why"]
            assert f["fix"] == f"dr-lb up {config}"
            # The real server itself is fine, and the DR path to it works.
            assert one(findings, "rs-ok")["what"].startswith(f"real server {RIP['rs1']} is at")
            assert codes(findings).count("probe-ok") == 2

            # A leftover XDP program that does not answer is no better.
            lab.run("director", PY, "-c", LEFTOVER_XDP)
            findings, rc = live(lab, config)
            f = one(findings, "vip-arp-xdp-silent")
            assert f["fix"] == f"dr-lb up --replace {config}"
            assert "named drlb_return" in f["what"], f["what"]

            # `down` leaves a program that is not dr-lb's alone, and says how to remove it.
            r = lab.run("director", PY, "-m", "lb", "down", "--interface", "eth0", check=False)
            assert r.returncode == 1 and "not dr-lb's" in r.stderr, r.stderr

            # The fix: dr-lb up --replace takes the interface and owns the VIP at L2.
            start_director(lab, config, "--replace")
            assert arp_answers(lab, "client", VIP) == [lab.macs["director"]]
            findings, rc = live(lab, config)
            assert rc == 0, findings
            assert one(findings, "vip-arp-director")["what"].startswith(
                f"the director answers ARP for VIP {VIP} with {lab.macs['director']}")
        finally:
            forget_state(lab)


# ---- the healthy scene -----------------------------------------------------------------------

def test_a_healthy_lab_has_no_errors(scene):
    lab, config, _ = scene
    findings, rc = live(lab, config)
    assert rc == 0, findings
    assert codes(findings) == (["rs-ok"] * 3 + ["vip-arp-director", "icmp-redirects"]
                               + ["probe-ok"] * 6 + ["probe-udp-answered"] * 3)
    for h in lab.real_servers:
        assert f"real server {h.address} is at {lab.macs[h.name]} on eth0" in \
            [f["what"] for f in findings]
    assert arp_answers(lab, "client", VIP) == [lab.macs["director"]]


def test_dr_lb_check_live(scene):
    """`dr-lb check --live CONFIG`: the config's OK line, then the findings table."""
    lab, config, tmp = scene
    r = lab.run("director", PY, "-m", "lb", "check", "--live", str(config), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{config}: OK: 3 service(s)")
    assert lines[1].startswith("conn_table_size = ") and "of kernel memory" in lines[1]
    assert lines[2].split() == ["SEVERITY", "CHECK", "WHAT"]
    assert lines[-1].startswith("0 error(s), 1 warning(s)")
    # An error makes the exit status 1.
    wrong = tmp / "cli-wrong.toml"
    wrong.write_text(tcp_config(lab, 80, ["10.99.0.5"]))
    r = lab.run("director", PY, "-m", "lb", "check", "--live", str(wrong), check=False)
    assert r.returncode == 1 and "rs-off-segment" in r.stdout, r.stdout + r.stderr


# ---- a real server answers ARP for the VIP (seeds 001, 004) ----------------------------------

def test_a_real_server_with_arp_ignore_0_answers_for_the_vip(scene):
    lab, config, _ = scene
    sysctl(lab, "rs2", "net.ipv4.conf.all.arp_ignore", 0)
    try:
        assert sorted(arp_answers(lab, "client", VIP)) == sorted(
            [lab.macs["director"], lab.macs["rs2"]]), "the client should get two answers"
        findings, rc = live(lab, config)
        assert rc == 1
        assert errors(findings) == ["vip-arp-other"]
        f = one(findings, "vip-arp-other")
        assert f["what"] == (f"{lab.macs['rs2']} (real server {RIP['rs2']}) answers ARP "
                             f"for VIP {VIP}")
        assert f["fix"].startswith(f"on {RIP['rs2']}: dr-lb realserver up {VIP}")
        # The fix, on the real server it names.
        r = py_rs(lab, "rs2", "up", VIP, check=True)
        assert "set net.ipv4.conf.all.arp_ignore = 1" in r.stdout
        assert arp_answers(lab, "client", VIP) == [lab.macs["director"]]
        assert live(lab, config)[1] == 0
    finally:
        sysctl(lab, "rs2", "net.ipv4.conf.all.arp_ignore", 1)


# ---- the service port through the DR path ----------------------------------------------------

def test_a_udp_service_probed_through_the_dr_path(scene):
    """An empty datagram to VIP:port from the director, to each real server's MAC: rs1
    answers from the VIP (right), rs2 has nothing bound for it (ICMP port unreachable),
    rs3 answers from its own address (bound to 0.0.0.0: clients drop that); a server
    that ignores the datagram is silent, which is only information."""
    lab, _, tmp = scene
    config = tmp / "udp5400.toml"
    config.write_text(tcp_config(lab, 5400, [RIP["rs1"], RIP["rs2"], RIP["rs3"]])
                      .replace('protocol = "tcp"', 'protocol = "udp"'))
    procs = [udp_echo(lab, "rs1", VIP, 5400), udp_echo(lab, "rs3", "0.0.0.0", 5400)]
    try:
        findings, rc = live(lab, config)
        assert rc == 1
        probes = {f["what"].split()[0]: f for f in findings
                  if f["code"].startswith("probe-udp-")}
        assert {rip: f["code"] for rip, f in probes.items()} == {
            RIP["rs1"]: "probe-udp-answered", RIP["rs2"]: "probe-udp-closed",
            RIP["rs3"]: "probe-udp-wrong-source"}
        assert probes[RIP["rs3"]]["what"] == \
            f"{RIP['rs3']} answers {VIP}:5400/udp from {RIP['rs3']}, not from {VIP}"
        assert probes[RIP["rs2"]]["fix"] == \
            f"on {RIP['rs2']}: dr-lb realserver check {VIP} --udp-port 5400"
        # The fix on rs3 (bound to the VIP instead), and a server bound to the VIP that
        # ignores the datagram on rs2.
        procs.pop().kill()
        procs += [udp_echo(lab, "rs3", VIP, 5400), bind_udp(lab, "rs2", VIP, 5400)]
        findings, rc = live(lab, config)
        assert rc == 0, findings
        assert codes(findings)[-3:] == ["probe-udp-answered", "probe-udp-silent",
                                        "probe-udp-answered"]
        assert one(findings, "probe-udp-silent")["severity"] == "info"
    finally:
        for p in procs:
            p.kill()
            p.wait()

def test_a_real_server_not_listening_on_the_port(scene):
    lab, _, tmp = scene
    config = tmp / "port9000.toml"
    config.write_text(tcp_config(lab, 9000, [RIP["rs1"], RIP["rs2"], RIP["rs3"]]))
    procs = [listen(lab, "rs1", "0.0.0.0", 9000),
             listen(lab, "rs2", RIP["rs2"], 9000)]     # the real address only
    try:
        findings, rc = live(lab, config)
        assert rc == 1
        probes = {f["what"].split()[0]: f["code"] for f in findings
                  if f["code"].startswith("probe-")}
        assert probes == {RIP["rs1"]: "probe-ok", RIP["rs2"]: "probe-refused",
                          RIP["rs3"]: "probe-refused"}
        f = [f for f in findings if f["code"] == "probe-refused"][-1]
        assert f["what"] == f"{RIP['rs3']} refuses {VIP}:9000/tcp (RST)"
        assert f["fix"] == f"on {RIP['rs3']}: dr-lb realserver check {VIP} --port 9000"
        # What that command says on rs3, and the cure.
        r = py_rs(lab, "rs3", "check", VIP, "--port", "9000", "--json")
        assert "port-closed" in codes(json.loads(r.stdout)["findings"])
        procs.append(listen(lab, "rs3", "0.0.0.0", 9000))
        findings, _ = live(lab, config)
        assert f"{RIP['rs3']} accepts {VIP}:9000/tcp through the DR path (SYN-ACK)" in \
            [f["what"] for f in findings]
    finally:
        for p in procs:
            p.terminate()
            p.wait()


@pytest.mark.parametrize("breakage", ["vip-missing", "seed-000"])
def test_a_real_server_that_drops_the_vip(scene, breakage):
    """Without the VIP rs3 drops what the director sends it; with the VIP as a /24 on
    lo its replies loop back into lo (seed 000). The probe gets no answer either way."""
    lab, config, _ = scene
    if breakage == "vip-missing":
        ip(lab, "rs3", "addr", "del", f"{VIP}/32", "dev", "lo")
    else:
        ip(lab, "rs3", "addr", "del", f"{VIP}/32", "dev", "lo")
        ip(lab, "rs3", "addr", "add", f"{VIP}/24", "dev", "lo", "label", "lo:0")
        assert lab.run("director", "ping", "-c", "1", "-W", "1", RIP["rs3"],
                       check=False).returncode != 0, "seed 000's symptom did not reproduce"
    try:
        findings, rc = live(lab, config)
        assert rc == 1
        silent = [f for f in findings if f["code"] == "probe-silent"]
        assert [f["what"] for f in silent] == [
            f"{RIP['rs3']} does not answer a SYN to {VIP}:{port}/tcp" for port in (80, 8080)]
        assert silent[0]["fix"] == f"on {RIP['rs3']}: dr-lb realserver up {VIP}"
        py_rs(lab, "rs3", "up", VIP, check=True)
        assert live(lab, config)[1] == 0
    finally:
        py_rs(lab, "rs3", "up", VIP, check=True)


def test_a_forwarding_real_server_without_the_vip_does_not_pass_the_probe(scene):
    """rs3 lacks the VIP but routes (ip_forward=1, a Docker host say): the probe must not
    travel on through it to whoever owns the VIP and come back looking 'open'."""
    lab, config, _ = scene
    ip(lab, "rs3", "addr", "del", f"{VIP}/32", "dev", "lo")
    sysctl(lab, "rs3", "net.ipv4.ip_forward", 1)
    try:
        findings, rc = live(lab, config)
        assert rc == 1
        assert [f["what"] for f in findings if f["code"] == "probe-silent"] == [
            f"{RIP['rs3']} does not answer a SYN to {VIP}:{port}/tcp" for port in (80, 8080)]
        # Nor the UDP probe: the datagram dies at rs3 (TTL 1), unanswered.
        assert [f["code"] for f in findings if f["code"].startswith("probe-udp-")] == \
            ["probe-udp-answered"] * 2 + ["probe-udp-silent"]
    finally:
        sysctl(lab, "rs3", "net.ipv4.ip_forward", 0)
        py_rs(lab, "rs3", "up", VIP, check=True)


# ---- the director's own settings, and the config against the network -----------------------

def test_icmp_redirects_on_the_director(scene):
    lab, config, _ = scene
    f = one(live(lab, config)[0], "icmp-redirects")
    assert f["severity"] == "warning" and "seed 003" in f["why"]
    sysctl(lab, "director", "net.ipv4.conf.all.forwarding", 1)
    try:
        f = one(live(lab, config)[0], "icmp-redirects")
        assert f["severity"] == "error", "redirects while forwarding are an error"
        assert f["fix"] == ("sysctl -w net.ipv4.conf.all.send_redirects=0 "
                            "net.ipv4.conf.eth0.send_redirects=0")
        lab.run("director", "sh", "-c", f["fix"])
        findings, rc = live(lab, config)
        assert rc == 0 and "icmp-redirects-ok" in codes(findings)
    finally:
        sysctl(lab, "director", "net.ipv4.conf.all.forwarding", 0)
        for dev in ("all", "eth0"):
            sysctl(lab, "director", f"net.ipv4.conf.{dev}.send_redirects", 1)


def test_off_segment_and_wrong_mac(scene):
    lab, _, tmp = scene
    config = tmp / "wrong.toml"
    config.write_text(tcp_config(lab, 80, [RIP["rs1"], "10.99.0.5"],
                                 extra='mac = "02:00:00:00:00:99"\n'))
    findings, rc = live(lab, config)
    assert rc == 1
    assert errors(findings) == ["rs-mac-mismatch", "rs-off-segment"]
    assert one(findings, "rs-mac-mismatch")["what"] == (
        f"real server {RIP['rs1']} answers ARP with {lab.macs['rs1']}, but {config} says "
        "mac = 02:00:00:00:00:99")
    assert one(findings, "rs-off-segment")["what"] == \
        "real server 10.99.0.5 is not in eth0's subnets (198.18.0.0/24)"
