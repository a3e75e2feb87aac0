"""Several directors, end to end (lb/lab/ha.py): BIRD on a router spreading the VIP over
two directors by ECMP, each announcing it through its own BIRD from dr-lb's [announce];
mh with sloppy pickup so that a connection keeps its real server whichever director
carries it; and keepalived's VRRP for active/backup. Long-lived keep-alive connections
(lb/lab/flows.py) are the judge: no reset, no change of real server. The pauses a
failover causes are measured; set DR_LB_HA_TIMES to a JSON file to append them to."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from lb.director import announce
from lb.lab import VIP, python_cmd
from lb.lab.ha import DIRECTORS, HaLab
from tests.conftest import needs_netns

pytestmark = needs_netns

MEASURED = os.environ.get("DR_LB_HA_TIMES")
FLOWS = 16
BOTH = ["198.18.0.11", "198.18.0.12"]
DIR2_ONLY = ["198.18.0.12"]


def record(what: str, seconds: float) -> None:
    print(f"\nmeasured: {what}: {seconds:.3f} s")
    if MEASURED:
        with open(MEASURED, "a") as f:
            f.write(json.dumps({"what": what, "seconds": round(seconds, 3)}) + "\n")


@pytest.fixture(scope="module")
def bgp():
    with HaLab(prefix="drlb-ha") as lab:
        lab.prepare_real_servers()
        lab.start_servers()
        lab.start_bird("router")
        for d in DIRECTORS:
            lab.start_bird(d)
        start_directors(lab, {d: None for d in DIRECTORS})
        lab.wait_next_hops(BOTH)
        yield lab


def start_directors(lab: HaLab, configs: dict[str, str | None]) -> None:
    """lab.start_director() on several directors at once (each waits until its dr-lb
    is ready; they compile their programs side by side)."""
    with ThreadPoolExecutor(len(configs)) as pool:
        for f in [pool.submit(lab.start_director, d, text) for d, text in configs.items()]:
            f.result()


class Flows(list):
    """The connections' results (filled in at the end); `ports`: their source ports."""
    ports: set[int]


@contextmanager
def flows(lab: HaLab, seconds: float, n: int = FLOWS):
    """n long-lived connections for `seconds`; yields a list that gets their results."""
    p = lab.popen("client", *python_cmd("lb.lab.flows", VIP, "80", str(n), str(seconds)),
                  stdout=subprocess.PIPE, text=True)
    word, _, ports = p.stdout.readline().partition(" ")
    assert word == "ready", "the client could not open its connections"
    results = Flows()
    results.ports = set(json.loads(ports))
    yield results
    p.send_signal(signal.SIGTERM)
    results.extend(json.loads(p.stdout.readline()))
    p.wait(timeout=30)


def names_by_address(lab: HaLab) -> dict[str, str]:
    return {h.address: h.name for h in lab.real_servers}


def conns(lab: HaLab, director: str, ports: set[int]) -> dict[int, str]:
    """Client source port -> real server's name, from the director's connection table,
    for the connections from `ports` (earlier tests' closed ones may linger there)."""
    r = lab.run(director, *python_cmd("lb", "status", "--conns", "--json"))
    names = names_by_address(lab)
    out = {int(c["source"].rsplit(":", 1)[1]): names[c["destination"].rsplit(":", 1)[0]]
           for c in json.loads(r.stdout)["connections"] if c["virtual"] == f"{VIP}:80"}
    return {port: name for port, name in out.items() if port in ports}


def counters(lab: HaLab, director: str) -> dict[str, int]:
    r = lab.run(director, *python_cmd("lb", "status", "--json"))
    return json.loads(r.stdout)["counters"]


def counter(lab: HaLab, director: str, name: str) -> int:
    return counters(lab, director)[name]


def assert_unbroken(results: list[dict]) -> None:
    assert len(results) == FLOWS
    for r in results:
        assert not r["errors"], f"connection from port {r['sport']} broke: {r['errors']}"
        assert len(r["names"]) == 1, (
            f"connection from port {r['sport']} changed real server: {r['names']}")
        assert r["answers"] > 10


def eventually(condition, what: str, timeout: float = 20):
    """Poll `condition()` every 0.1 s until it gives something true, and return that; the
    timeout is far above the expected time, only so that a broken path fails."""
    deadline = time.monotonic() + timeout
    while not (got := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return got


def restart_director(lab: HaLab, d: str) -> None:
    """Bring a killed director back: its BIRD and `dr-lb up --replace` (the killed
    process left its XDP program attached)."""
    if "bird" not in lab.procs.get(d, {}):
        lab.start_bird(d)
    lab.start_director(d, None, "--replace")


# ---- the configs, by the daemons' own checkers ----------------------------------------

def test_configs_pass_the_daemons_own_checkers(bgp):
    snippet = open(bgp.snippet("dir1")).read()
    assert f"route {VIP}/32 blackhole;" in snippet, f"dr-lb announces nothing: {snippet}"
    for host in ("router", *DIRECTORS):
        r = bgp.run(host, "bird", "-p", "-c", str(bgp.bird_conf_path(host)), check=False)
        assert r.returncode == 0, f"bird -p on {host}'s config (with dr-lb's snippet): {r.stderr}"
    # The snippet both ways, empty (all withdrawn) and with several VIPs.
    conf = bgp.dir("dir1") / "check.conf"
    for vips in ([], [VIP, "198.18.0.22", "203.0.113.7"]):
        (bgp.dir("dir1") / "snippet-check.conf").write_text(announce.render(vips, "dr_lb_vips"))
        conf.write_text(f"router id 198.18.0.11;\ninclude \"{bgp.dir('dir1')}/snippet-check.conf\";\n")
        r = bgp.run("dir1", "bird", "-p", "-c", str(conf), check=False)
        assert r.returncode == 0, f"bird -p with {vips}: {r.stderr}"
    # keepalived's config for the same two directors.
    for d, prio in zip(DIRECTORS, (150, 100)):
        path = bgp.dir(d) / "keepalived.conf"
        path.write_text(bgp.keepalived_conf(d, prio))
        r = bgp.run(d, "keepalived", "-t", "-f", str(path), check=False)
        assert r.returncode == 0, f"keepalived -t on {d}: {r.stdout}{r.stderr}"
    assert VIP not in bgp.keepalived_conf("dir1", 150), "the VIP must never be a VRRP address"


# ---- active/active ------------------------------------------------------------------------

def bgp_sessions(lab: HaLab) -> list[str]:
    """The router's BGP sessions as BIRD lists them (state and since when): a flap shows."""
    return [line for line in lab.birdc("router", "show", "protocols").splitlines()
            if " BGP " in line]


def test_both_directors_carry_traffic_and_agree_on_the_real_server(bgp):
    assert bgp.vip_next_hops() == BOTH
    before = bgp_sessions(bgp)
    with flows(bgp, 60) as results:
        time.sleep(1)
        on = {d: conns(bgp, d, results.ports) for d in DIRECTORS}
    # On a starved machine BFD (3 x 100 ms) may drop a session for a moment: the router
    # then moves flows to the other director and back, which sloppy pickup survives.
    # Each flow is then on both, and both must still send it to the same real server.
    flapped = bgp_sessions(bgp) != before
    assert_unbroken(results)
    assert on["dir1"] and on["dir2"], f"the router should spread {FLOWS} flows: {on}"
    for r in results:
        carried = [d for d in DIRECTORS if r["sport"] in on[d]]
        assert len(carried) == 1 or (flapped and carried), \
            f"port {r['sport']} is on {carried} (BGP sessions {before} -> {bgp_sessions(bgp)})"
        for d in carried:
            assert on[d][r["sport"]] == r["names"][0], (
                f"{d} sends port {r['sport']} to {on[d][r['sport']]} but "
                f"{r['names'][0]} answers")
    assert len({r["names"][0] for r in results}) > 1, "mh-port should spread the flows"


@pytest.mark.parametrize("how", ["sigkill", "link-down"])
def test_a_director_fails_and_comes_back_without_breaking_connections(bgp, how):
    """Every connection on the failed director goes on through the other with the same
    real server (sloppy pickup of mh), and comes back to it the same way."""
    broken = False   # dir1 is down and not yet brought back
    try:
        with flows(bgp, 60) as results:
            time.sleep(1)
            moved = conns(bgp, "dir1", results.ports)
            assert moved, "no connection on dir1 to move"
            # A flow dir2 already holds (a BFD flap on a starved machine moves flows for a
            # moment) is followed there, not picked up again.
            already = conns(bgp, "dir2", results.ports)
            pickups = counter(bgp, "dir2", "conn_sloppy_pickup")
            start = time.monotonic()
            broken = True
            if how == "sigkill":       # the director's processes die: dr-lb and its BIRD
                bgp.kill("dir1", "dr-lb")
                bgp.kill("dir1", "bird")
            else:
                bgp.link("dir1", "down")
            gone = bgp.wait_next_hops(DIR2_ONLY)
            record(f"{how}: the router's route leaves dir1", gone)
            # Until every moved connection has been through dir2 (their next request).
            picked = eventually(lambda: (p := conns(bgp, "dir2", results.ports))
                                .keys() >= moved.keys() and p,
                                "dir1's connections in dir2's table")
            for sport, name in moved.items():
                assert picked.get(sport) == name, (
                    f"port {sport} was on dir1 to {name}, on dir2 it goes to {picked.get(sport)}")
            new_to_dir2 = set(moved) - set(already)
            assert counter(bgp, "dir2", "conn_sloppy_pickup") - pickups >= len(new_to_dir2), \
                "dir2 never saw these connections: each must have been picked up"
            if how == "sigkill":
                restart_director(bgp, "dir1")
            else:
                bgp.link("dir1", "up")
            broken = False
            back = time.monotonic()
            bgp.wait_next_hops(BOTH)
            record(f"{how}: dir1 back in the route after its return", time.monotonic() - back)
            before = counters(bgp, "dir1")
            try:
                eventually(lambda: counter(bgp, "dir1", "tx_service") > before["tx_service"],
                           "a flow coming back to dir1")
            except AssertionError as e:   # say where dir1's frames went instead
                after = counters(bgp, "dir1")
                moved_on = {k: n - before.get(k, 0) for k, n in after.items()
                            if n != before.get(k, 0)}
                raise AssertionError(f"{e}; dir1's counters meanwhile: {moved_on}") from None
            # After SIGKILL the restarted dr-lb reuses the table it kept (restarts keep
            # connections), so returning flows find their entries; dir2 above had none and
            # picked them up (sloppy). Either way: unbroken, on the same real server (below).
    finally:
        if broken:   # a failure above: leave the scene whole for the next tests
            if how == "sigkill":
                restart_director(bgp, "dir1")
            else:
                bgp.link("dir1", "up")
            bgp.wait_next_hops(BOTH)
    assert_unbroken(results)
    pause = max(r["max_gap_s"] for r in results if r["sport"] in moved)
    record(f"{how}: longest pause of a moved connection (requests every 50 ms)", pause)
    assert time.monotonic() - start < 60


def test_withdrawn_without_real_servers_and_on_down(bgp):
    for h in bgp.real_servers:
        bgp.run("dir1", *python_cmd("lb", "drain", h.address, "--no-save"))
    bgp.wait_next_hops(DIR2_ONLY, timeout=10)
    assert f"route {VIP}/32" not in open(bgp.snippet("dir1")).read()
    for h in bgp.real_servers:
        bgp.run("dir1", *python_cmd("lb", "undrain", h.address, "--no-save"))
    bgp.wait_next_hops(BOTH, timeout=10)
    # `dr-lb down`: withdrawn, forwarding goes on for `linger`, and nothing breaks.
    with flows(bgp, 60) as results:
        time.sleep(1)
        bgp.run("dir1", *python_cmd("lb", "down"))
        bgp.wait_next_hops(DIR2_ONLY, timeout=5)
        bgp.procs["dir1"].pop("dr-lb").wait(timeout=15)
    assert_unbroken(results)
    assert f"route {VIP}/32" not in open(bgp.snippet("dir1")).read()
    restart_director(bgp, "dir1")
    bgp.wait_next_hops(BOTH)


def test_sigterm_withdraws(bgp):
    bgp.kill("dir2", "dr-lb", signal.SIGTERM)
    assert bgp.vip_next_hops() == ["198.18.0.11"], "withdrawn before dr-lb exits"
    restart_director(bgp, "dir2")
    bgp.wait_next_hops(BOTH)


# ---- active/backup --------------------------------------------------------------------------

def wait_arp(lab: HaLab, want: list[str], timeout: float = 20) -> float:
    """Wait until exactly `want` answer ARP for the VIP; seconds taken. Polled with short
    who-has rounds (in-process, 0.2 s); a match is then confirmed by lab.arp_answers()
    (listening 1 s, as lab.arp_answers()), so that a late second answer is still caught."""
    from lb.director import arp
    start = time.monotonic()
    while True:
        with lab.inside("router"):
            got = sorted(arp.who_has("eth0", [VIP], wait_s=0.2, rounds=1)[VIP])
        if got == want:
            took = time.monotonic() - start
            with lab.inside("router"):   # as lab.arp_answers() asks, without a new process
                got = sorted(arp.who_has("eth0", [VIP], wait_s=1.0, rounds=1)[VIP])
            if got == want:
                return took
        assert time.monotonic() - start < timeout, f"ARP for {VIP} answered by {got}, not {want}"
        time.sleep(0.05)


def test_keepalived_moves_the_arp_answer_and_connections_continue():
    with HaLab(prefix="drlb-ha2") as lab:
        lab.prepare_real_servers()
        lab.start_servers()
        start_directors(lab, {d: lab.director_config(d, announce=False, vrrp=True)
                              for d in DIRECTORS})
        assert lab.arp_answers() == [], "a director without keepalived's word is a backup"
        lab.start_keepalived("dir1", 150)
        lab.start_keepalived("dir2", 100)
        dir1, dir2 = [lab.macs["dir1"]], [lab.macs["dir2"]]
        wait_arp(lab, dir1)
        with flows(lab, 60) as results:
            time.sleep(1)
            lab.link("dir1", "down")           # the MASTER fails: dir2 takes over
            record("vrrp: the ARP answer moves to dir2 (advert_int 1)", wait_arp(lab, dir2))
            neigh = lab.run("router", "ip", "neigh", "show", VIP).stdout
            assert lab.macs["dir2"] in neigh, f"gratuitous ARP did not reach the router: {neigh}"
            lab.link("dir1", "up")             # preempts back
            record("vrrp: the ARP answer back on dir1", wait_arp(lab, dir1))
            time.sleep(1)
            # A MASTER stopped cleanly (notify_stop) hands over as well.
            lab.kill("dir1", "keepalived", signal.SIGTERM)
            wait_arp(lab, dir2)
        assert_unbroken(results)
        record("vrrp: longest pause of a connection",
               max(r["max_gap_s"] for r in results))
        assert counter(lab, "dir2", "conn_sloppy_pickup") > 0


# ---- the second demo ------------------------------------------------------------------------

def test_demo_ha(capsys):
    from lb.lab import demo
    assert demo.run_ha(prefix="drlb-ha3") == 0
    out = capsys.readouterr().out
    assert "nexthop via 198.18.0.11" in out and "nexthop via 198.18.0.12" in out, out
    assert "router: the route leaves dir1 after" in out
    assert "8 of 8 connections unbroken, each on one real server" in out, out
    assert "conn_sloppy_pickup" in out, "dir2 picked up dir1's connections"
