"""Watching and changing a running director as ipvsadm users do (`status --rate`,
`--conns`, `--timeout`, `zero`, `weight`, `drain`, `undrain`), end to end in the lab."""
from __future__ import annotations

import collections
import json
import socket
import subprocess

import pytest

from lb.lab import HTTP_PORT, UDP_PORT, VIP, Lab, python_cmd
from lb.lab.demo import start_director
from tests.conftest import needs_netns

pytestmark = needs_netns

COMMENT = "# weights as in seed 002"


@pytest.fixture(scope="module")
def scene():
    with Lab(prefix="drlb-op", xdp_mode="generic") as lab:
        lab.prepare_real_servers()
        lab.start_servers()
        text = lab.director_config().replace("[[service]]", f"{COMMENT}\n[[service]]", 1)
        director = start_director(lab, text)
        yield lab, director


def dr_lb(lab: Lab, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return lab.run("director", *python_cmd("lb", *args), check=check)


def status(lab: Lab, *args: str) -> dict:
    return json.loads(dr_lb(lab, "status", "--json", *args).stdout)


def real(data: dict, address: str, port: int = HTTP_PORT) -> dict:
    svc = next(s for s in data["services"] if s["port"] == port and s["protocol"] == "tcp")
    return next(r for r in svc["real_servers"] if r["address"] == address)


def hold(lab: Lab, n: int) -> tuple[subprocess.Popen, set[str]]:
    """`n` TCP connections from the client to the VIP, held open until the client reads a
    line; returns the client process and the connections' source ports."""
    code = ("import socket, sys\n"
            f"c = [socket.create_connection(('{VIP}', {HTTP_PORT}), 3) for _ in range({n})]\n"
            "print(' '.join(str(s.getsockname()[1]) for s in c), flush=True)\n"
            "sys.stdin.readline()\n")
    holder = lab.popen("client", "python3", "-c", code, stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True)
    ports = set(holder.stdout.readline().split())
    assert len(ports) == n, ports
    return holder, ports


def test_timeout_is_printed_as_ipvsadm_does(scene):
    lab, _ = scene
    assert dr_lb(lab, "status", "--timeout").stdout.strip() == \
        "Timeout (tcp tcpfin udp): 900 120 300"
    assert status(lab, "--timeout") == {"timeouts": {"tcp": 900, "tcpfin": 120, "udp": 300}}


def test_rate_is_within_20_percent_of_what_the_client_sends(scene):
    lab, _ = scene
    # 100 datagrams a second to the UDP service, for up to 20 s (ended once measured); the
    # sender says when it has sent 1.5 s and 4 s worth: no guessing how long it starts.
    sender = lab.popen("client", "python3", "-c", (
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "t = time.monotonic()\n"
        "for i in range(2000):\n"
        f"    s.sendto(b'x' * 100, ('{VIP}', {UDP_PORT}))\n"
        "    if i + 1 in (150, 400): print(i + 1, flush=True)\n"
        "    time.sleep(max(0, t + (i + 1) / 100 - time.monotonic()))\n"),
        stdout=subprocess.PIPE, text=True)
    try:
        assert sender.stdout.readline().strip() == "150"
        dr_lb(lab, "reload")           # the rate must stay right across a reload
        assert sender.stdout.readline().strip() == "400"
        data = status(lab, "--rate")   # over the 2 s before it
    finally:
        sender.kill()
        sender.wait(timeout=10)
    svc = next(s for s in data["services"] if s["port"] == UDP_PORT)
    assert 80 <= svc["rate"]["inpps"] <= 120, svc["rate"]
    # 100 bytes of payload + 8 UDP + 20 IP = 128 bytes each, as the counters count them.
    assert 0.8 * 12800 <= svc["rate"]["inbps"] <= 1.2 * 12800, svc["rate"]
    table = dr_lb(lab, "status", "--rate").stdout
    assert "CPS" in table and "InPPS" in table and "InBPS" in table, table


def test_conns_lists_exactly_the_clients_connections_with_their_states(scene):
    lab, _ = scene
    holder, ports = hold(lab, 3)
    try:
        data = status(lab, "--conns", "--vip", f"{VIP}:{HTTP_PORT}")
        mine = [c for c in data["connections"]
                if c["source"].split(":")[1] in ports]
        assert len(mine) == 3, data
        assert {c["state"] for c in mine} == {"ESTABLISHED"}, mine
        assert all(c["virtual"] == f"{VIP}:{HTTP_PORT}" for c in mine)
        assert all(c["source"].startswith(lab.host("client").address + ":") for c in mine)
        assert all(0 < c["expire_s"] <= 900 for c in mine)
        rips = {h.address for h in lab.real_servers}
        assert all(c["destination"].split(":")[0] in rips for c in mine)
        table = dr_lb(lab, "status", "--conns", "--limit", "1").stdout.splitlines()
        assert table[0].split() == ["pro", "expire", "state", "source", "virtual",
                                    "destination"]
        assert "more" in table[-1], table
    finally:
        holder.communicate("\n", timeout=10)


def test_counts_are_fresh_right_after_connections_open(scene):
    # The demo's scenario: curl, then status at once. The counts must already include
    # the new connections, not those of the last background sweep.
    lab, _ = scene
    holder, ports = hold(lab, 3)
    try:
        svc = next(s for s in status(lab)["services"]
                   if s["port"] == HTTP_PORT and s["protocol"] == "tcp")
        assert sum(r["active_conns"] for r in svc["real_servers"]) == 3, svc
    finally:
        holder.communicate("\n", timeout=10)


def test_zero_resets_the_counters_and_connections_go_on(scene):
    lab, _ = scene
    for _ in range(4):
        lab.curl(f"http://{VIP}:{HTTP_PORT}/")
    assert any(s["counters"]["in_packets"] for s in status(lab)["services"])
    dr_lb(lab, "zero")
    after = status(lab)
    assert all(s["counters"] == {"conns": 0, "in_packets": 0, "in_bytes": 0}
               for s in after["services"]), after["services"]
    assert all(r["conns"] == r["in_packets"] == 0 for s in after["services"]
               for r in s["real_servers"])
    assert lab.curl(f"http://{VIP}:{HTTP_PORT}/") in {"rs1", "rs2", "rs3"}
    svc = next(s for s in status(lab)["services"] if s["port"] == HTTP_PORT)
    assert svc["counters"]["conns"] == 1


def test_weight_change_takes_effect_and_is_in_the_file_with_comments(scene):
    lab, director = scene
    rs1, rs2, rs3 = (h.address for h in lab.real_servers)
    try:
        out = dr_lb(lab, "weight", f"{VIP}:{HTTP_PORT}", rs2, "0").stdout
        assert "saved" in out, out
        text = director.config_path.read_text()
        assert COMMENT in text, "the file must keep its comments"
        assert real(status(lab), rs2)["weight"] == 0
        answers = collections.Counter(lab.curl(f"http://{VIP}:{HTTP_PORT}/") for _ in range(9))
        assert "rs2" not in answers, answers
        # The change is in the file: a reload keeps it.
        dr_lb(lab, "reload")
        assert real(status(lab), rs2)["weight"] == 0
    finally:
        dr_lb(lab, "weight", f"{VIP}:{HTTP_PORT}", rs2, "1")
    assert real(status(lab), rs2)["weight"] == 1


def test_bad_arguments_get_one_line_and_change_nothing(scene):
    lab, director = scene
    before = director.config_path.read_text()
    rs1 = lab.real_servers[0].address
    for args, word in ((("weight", f"198.18.0.99:{HTTP_PORT}", rs1, "3"), "no service"),
                       (("weight", f"{VIP}:{HTTP_PORT}", "198.18.0.99", "3"),
                        "not a real server"),
                       (("weight", f"{VIP}:{HTTP_PORT}", rs1, "-1"), "-1"),
                       (("drain", "198.18.0.99"), "not a real server")):
        r = dr_lb(lab, *args, check=False)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert word in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert director.config_path.read_text() == before
    assert real(status(lab), rs1)["weight"] == 2


def test_two_changes_at_the_same_moment_are_both_kept(scene):
    lab, director = scene
    rs = [h.address for h in lab.real_servers]
    try:
        procs = [lab.popen("director", *python_cmd("lb", "weight", f"{VIP}:{HTTP_PORT}",
                                                   address, str(7 + i)),
                           stdout=subprocess.DEVNULL)
                 for i, address in enumerate(rs)]
        assert [p.wait(timeout=30) for p in procs] == [0, 0, 0]
        data = status(lab)
        assert [real(data, a)["weight"] for a in rs] == [7, 8, 9]
        text = director.config_path.read_text()
        for w in (7, 8, 9):
            assert f"weight = {w}" in text, text
    finally:
        for address, w in zip(rs, (2, 1, 1)):
            dr_lb(lab, "weight", f"{VIP}:{HTTP_PORT}", address, str(w))


def test_drain_wait_returns_after_the_last_active_connection_closes(scene):
    lab, director = scene
    rs1 = lab.real_servers[0].address
    # A connection to rs1 held open: find one with --conns.
    holder, ports = hold(lab, 4)
    try:
        held = [c for c in status(lab, "--conns", "--real", rs1)["connections"]
                if c["state"] == "ESTABLISHED"]
        assert real(status(lab), rs1)["active_conns"] == len(held) >= 1, held
        waiter = lab.popen("director", *python_cmd("lb", "drain", rs1, "--wait",
                                                   "--timeout", "30"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        while not any("active connection(s) left" in line for line in seen):
            line = waiter.stdout.readline()
            assert line, f"drain --wait ended before reporting rs1's connections: {seen}"
            seen.append(line)
        assert waiter.poll() is None, "drain --wait returned while rs1 still had connections"
        answers = collections.Counter(lab.curl(f"http://{VIP}:{HTTP_PORT}/") for _ in range(6))
        assert "rs1" not in answers, f"new connections must avoid the drained server: {answers}"
        assert "drained = true" in director.config_path.read_text()
        holder.communicate("\n", timeout=10)     # the client closes its connections
        out, _ = waiter.communicate(timeout=30)
        out = "".join(seen) + out
        assert waiter.returncode == 0, out
        assert "active connection(s) left" in out and "no active connection left" in out, out
    finally:
        if holder.poll() is None:
            holder.kill()
        dr_lb(lab, "undrain", rs1)
    assert "drained" not in director.config_path.read_text()
    assert real(status(lab), rs1)["weight"] == 2


def test_drain_wait_times_out_and_says_how_many_remain(scene):
    lab, _ = scene
    rs1 = lab.real_servers[0].address
    holder, ports = hold(lab, 4)
    try:
        r = dr_lb(lab, "drain", rs1, "--no-save", "--wait", "--timeout", "1", check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "still has" in r.stderr and "active connection(s)" in r.stderr, r.stderr
    finally:
        holder.communicate("\n", timeout=10)
        dr_lb(lab, "undrain", rs1, "--no-save")
