"""Layer 3: the lab in network namespaces, `dr-lb up` in the director, real clients
(curl, a UDP client, ARP, ping) as the judge. Runs in generic and in native XDP mode."""
from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from pyroute2 import IPRoute

from lb.director import instances, netif
from lb.lab.demo import start_director, wait_ready
from lb.lab import HTTP_PORT, PERSISTENT_PORT, UDP_PORT, VIP, Lab, python_cmd
from tests.conftest import needs_netns
from tests.test_realserver_common import udp_echo

pytestmark = needs_netns

UDP_TIMEOUT = 2


class Scene:
    """The lab, and the shared `dr-lb up` (None while stopped)."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.director: subprocess.Popen | None = None


@pytest.fixture(scope="module", params=["generic", "native"])
def lab_scene(request):
    """The lab with real servers prepared and serving."""
    with Lab(prefix=f"drlb-e2e{request.param[0]}", xdp_mode=request.param) as lab:
        lab.prepare_real_servers()
        lab.start_servers()
        yield Scene(lab)
        # Lab.destroy() (the with-exit) kills `up` if a test left it running.


@pytest.fixture
def scene(lab_scene):
    """The lab with the shared `dr-lb up` running: started again if a test stopped it,
    so that no test depends on the order they run in."""
    s = lab_scene
    if s.director is None or s.director.poll() is not None:
        s.director = start_director(s.lab, s.lab.director_config(udp_timeout=UDP_TIMEOUT))
    return s.lab, s.director


@pytest.fixture
def idle_lab(lab_scene):
    """The lab with no `dr-lb up` running (the shared one stopped if it ran)."""
    s = lab_scene
    if s.director is not None and s.director.poll() is None:
        s.director.send_signal(signal.SIGTERM)
        s.director.wait(timeout=20)
    s.director = None
    return s.lab


def status(lab: Lab) -> dict:
    """`dr-lb status --json`, from its own `ip netns exec`, separate from `up`'s."""
    return json.loads(lab.run("director", *python_cmd("lb", "status", "--json")).stdout)


def reals_of(data: dict, port: int, protocol: str = "tcp") -> dict[str, dict]:
    svc = next(s for s in data["services"] if s["port"] == port and s["protocol"] == protocol)
    return {r["address"]: r for r in svc["real_servers"]}


def client_tcp_segments(lab: Lab) -> int:
    """Segments the client's TCP stack has sent (OutSegs + RetransSegs)."""
    text = lab.run("client", "cat", "/proc/net/snmp").stdout.splitlines()
    names, values = [l.split()[1:] for l in text if l.startswith("Tcp:")]
    row = dict(zip(names, map(int, values)))
    return row["OutSegs"] + row["RetransSegs"]


def test_40_requests_split_20_10_10_and_status_counts_match(scene):
    lab, _ = scene
    before = status(lab)
    segments_before = client_tcp_segments(lab)
    answers = collections.Counter(lab.curl(f"http://{VIP}:{HTTP_PORT}/") for _ in range(40))
    segments = client_tcp_segments(lab) - segments_before
    assert answers == {"rs1": 20, "rs2": 10, "rs3": 10}, f"weights 2:1:1 gave {dict(answers)}"

    after = status(lab)
    b, a = reals_of(before, HTTP_PORT), reals_of(after, HTTP_PORT)
    conns = {lab.real_servers[i].name: a[h.address]["conns"] - b[h.address]["conns"]
             for i, h in enumerate(lab.real_servers)}
    assert conns == {"rs1": 20, "rs2": 10, "rs3": 10}, f"status conns differ: {conns}"
    packets = sum(a[h.address]["in_packets"] - b[h.address]["in_packets"]
                  for h in lab.real_servers)
    assert packets == segments, (f"status counted {packets} packets in, the client sent "
                                 f"{segments} TCP segments to the VIP")
    svc_packets = (next(s for s in after["services"] if s["port"] == HTTP_PORT)
                   ["counters"]["in_packets"]
                   - next(s for s in before["services"] if s["port"] == HTTP_PORT)
                   ["counters"]["in_packets"])
    assert svc_packets == segments
    # Finished connections wait in FIN_WAIT (tcpfin): inactive, as ipvsadm shows them.
    inactive = {lab.real_servers[i].name: a[h.address]["inactive_conns"]
                - b[h.address]["inactive_conns"] for i, h in enumerate(lab.real_servers)}
    assert inactive == {"rs1": 20, "rs2": 10, "rs3": 10}, inactive
    assert all(r["active_conns"] == 0 for r in a.values()), a
    assert after["xdp_mode"] == lab.xdp_mode
    assert after["timeouts"] == {"tcp": 900, "tcpfin": 120, "udp": UDP_TIMEOUT}


SNIFF = textwrap.dedent("""
    import json, socket, struct, subprocess, sys
    vip, port = sys.argv[1], int(sys.argv[2])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind(("eth0", 0)); s.settimeout(0.2)
    body = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://{vip}:{port}/"],
                          capture_output=True, text=True).stdout.strip()
    macs = set()
    while True:
        try:
            data, addr = s.recvfrom(2048)
        except socket.timeout:
            break
        if addr[2] == socket.PACKET_OUTGOING or len(data) < 34:
            continue
        if socket.inet_ntoa(data[26:30]) == vip:
            macs.add(":".join(f"{b:02x}" for b in data[6:12]))
    print(json.dumps({"body": body, "macs": sorted(macs)}))
""")


def test_replies_come_from_the_real_server_not_the_director(scene):
    lab, _ = scene
    for _ in range(4):
        r = json.loads(lab.run("client", sys.executable, "-c", SNIFF, VIP, str(HTTP_PORT)).stdout)
        assert r["macs"] == [lab.macs[r["body"]]], (
            f"the reply from {r['body']} arrived from {r['macs']}; it must come straight "
            f"from {r['body']}'s MAC {lab.macs[r['body']]}, not through the director "
            f"({lab.macs['director']})")


def test_arp_for_vip_is_answered_by_the_director_only(scene):
    lab, _ = scene
    answers = json.loads(lab.run("client", *python_cmd("lb.director.arp", "eth0", VIP, "1")).stdout)
    assert answers == [lab.macs["director"]], (
        f"ARP who-has {VIP} was answered by {answers}; only the director "
        f"({lab.macs['director']}) may answer")


def test_ping_is_answered_for_the_vip_by_the_director_and_only_for_the_vip(scene):
    lab, _ = scene
    before = status(lab)["counters"]["tx_icmp_echo_reply"]
    r = lab.run("client", "ping", "-c", "3", "-i", "0.2", "-W", "2", VIP, check=False)
    assert r.returncode == 0 and "3 received" in r.stdout, r.stdout + r.stderr
    assert status(lab)["counters"]["tx_icmp_echo_reply"] - before == 3, \
        "the replies must come from the XDP program (the director has no VIP)"
    # An address on the segment that nobody has: the director must not answer for it.
    set_neighbour(lab, "client", "198.18.0.99", lab.macs["director"], netif.NUD_PERMANENT)
    r = lab.run("client", "ping", "-c", "2", "-i", "0.2", "-W", "1", "198.18.0.99",
                check=False)
    assert r.returncode != 0 and " 0 received" in r.stdout, r.stdout


UDP_CLIENT = textwrap.dedent("""
    import socket, sys, time
    vip, port, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    plan = sys.argv[4:]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", 0)); s.settimeout(3); s.connect((vip, port))
    for step in plan:
        if step.startswith("sleep"):
            time.sleep(float(step[5:])); continue
        s.send(step.encode())
        print(s.recv(2048).decode().split()[0], flush=True)
        time.sleep(pause)
""")


def test_udp_flow_sticks_while_talking_and_moves_after_idle(scene):
    lab, _ = scene
    # 8 datagrams 0.5 s apart: 4 s in all, longer than udp = 2, but never 2 s idle.
    plan = [f"d{i}" for i in range(8)] + [f"sleep{UDP_TIMEOUT + 1}", "after-idle"]
    out = lab.run("client", sys.executable, "-c", UDP_CLIENT, VIP, str(UDP_PORT), "0.5",
                  *plan).stdout.split()
    assert len(out) == 9, f"expected 9 answers, got {out}"
    assert len(set(out[:8])) == 1, f"a talking UDP flow changed server: {out[:8]}"
    assert out[8] != out[0], (f"after {UDP_TIMEOUT + 1} idle seconds the flow must be "
                              f"scheduled anew (rr moves it on); it stayed on {out[0]}")


# Where a datagram to the VIP is answered from, seen by an unconnected socket (which
# takes any source); then what a connected one (as most clients are) gets.
UDP_ASK = textwrap.dedent("""
    import socket, sys
    vip, port = sys.argv[1], int(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(b"ping", (vip, port))
    print(s.recvfrom(2048)[1][0])
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(1)
    c.connect((vip, port))
    c.send(b"ping")
    try:
        print(c.recv(2048).decode())
    except OSError:
        print("nothing")
""")


def test_a_udp_server_on_a_wildcard_answers_from_its_own_address(scene):
    """DR's UDP pitfall: a server bound to 0.0.0.0 answers from the real server's own
    address, which the client drops. The doctor warns of it, and its fix cures it."""
    lab, director = scene
    original = director.config_path.read_text()
    rs1 = lab.host("rs1").address
    port = 5400
    echo = None

    def doctor() -> dict:
        r = lab.run("rs1", *python_cmd("lb", "realserver", "check", VIP, "--udp-port",
                                       str(port), "--json"), check=False)
        assert r.returncode == 0, r.stdout   # a warning, not an error
        return {f["code"]: f for f in json.loads(r.stdout)["findings"]}

    try:
        director.config_path.write_text(
            original + f'\n[[service]]\nvip = "{VIP}"\nport = {port}\nprotocol = "udp"\n'
                       f'\n[[service.real_server]]\naddress = "{rs1}"\n')
        reload(lab)
        echo = udp_echo(lab, "rs1", "0.0.0.0", port)
        source, connected = lab.run("client", sys.executable, "-c", UDP_ASK, VIP,
                                    str(port)).stdout.split()
        assert (source, connected) == (rs1, "nothing")
        found = doctor()
        assert found["udp-port-wildcard"]["severity"] == "warning"
        assert found["udp-port-wildcard"]["fix"].startswith(f"bind the service to {VIP}:{port}")
        echo.kill()
        echo.wait()
        echo = udp_echo(lab, "rs1", VIP, port)
        assert lab.run("client", sys.executable, "-c", UDP_ASK, VIP,
                       str(port)).stdout.split() == [VIP, "ping"]
        assert "udp-port-ok" in doctor()
    finally:
        if echo:
            echo.kill()
            echo.wait()
        director.config_path.write_text(original)
        reload(lab, check=False)


def test_persistence_keeps_a_client_on_one_server(scene):
    lab, _ = scene
    hits = status(lab)["counters"]["persist_hit"]
    answers = [lab.curl(f"http://{VIP}:{PERSISTENT_PORT}/") for _ in range(10)]
    assert len(set(answers)) == 1, f"persistent service spread one client over {answers}"
    assert status(lab)["counters"]["persist_hit"] - hits == 9, \
        "the first connection makes the template, which places the other 9"


def neighbour(lab: Lab, host: str, address: str) -> str | None:
    with lab.inside(host):
        iface = netif.interface("eth0")
        return netif.neighbours(iface.index).get(address, (0, None))[1]


def set_neighbour(lab: Lab, host: str, address: str, mac: str, state: int) -> None:
    with lab.inside(host):
        index = netif.interface("eth0").index
        with IPRoute() as ipr:
            ipr.neigh("replace", dst=address, lladdr=mac, ifindex=index, state=state)


def wait_for(condition, what: str, limit_s: float = 15) -> None:
    """Poll until `condition()` holds; a limit far above the expected time (how fast is
    for the benchmarks), only so that a broken path fails instead of hanging."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {limit_s} s"
        time.sleep(0.02)


def test_neighbour_change_reaches_the_data_plane(scene):
    """rs3 gets a new MAC: the director's active ARP learns it (its kernel alone would
    keep the old one: it never talks to rs3) and the maps follow; then back. A faked
    neighbour entry would not do: the refresh asks rs3, which answers with its real MAC."""
    lab, _ = scene
    rs3 = lab.host("rs3")
    moved = "02:00:00:00:99:03"

    def mac_in_maps() -> str:
        # In-process over the control socket: no interpreter start-up in the timing.
        with lab.inside("director"):
            return reals_of(instances.request("eth0", "status"), HTTP_PORT)[rs3.address]["mac"]

    lab.run("rs3", "ip", "link", "set", "dev", "eth0", "address", moved)
    try:
        wait_for(lambda: mac_in_maps() == moved, "rs3's new MAC in the maps")
    finally:
        lab.run("rs3", "ip", "link", "set", "dev", "eth0", "address", lab.macs["rs3"])
    wait_for(lambda: mac_in_maps() == lab.macs["rs3"], "rs3's MAC back in the maps")


VIP2 = "198.18.0.22"


def reload(lab: Lab, check: bool = True):
    return lab.run("director", *python_cmd("lb", "reload"), check=check)


def test_reload_changes_weights_and_adds_a_vip_without_dropping_connections(scene):
    lab, director = scene
    original = director.config_path.read_text()
    for h in lab.real_servers:
        lab.run(h.name, *python_cmd("lb", "realserver", "up", VIP, VIP2))
    flow = subprocess.Popen(lab.argv("client", sys.executable, "-c", UDP_CLIENT, VIP,
                                     str(UDP_PORT), "0.4", *[f"d{i}" for i in range(8)]),
                            stdout=subprocess.PIPE, text=True)
    try:
        first = flow.stdout.readline().strip()   # the UDP flow has its server
        assert first in ("rs1", "rs2", "rs3"), first
        director.config_path.write_text(lab.director_config(
            udp_timeout=UDP_TIMEOUT, weights={"rs1": 0, "rs2": 1, "rs3": 1},
            extra_vips=(VIP2,)))
        r = reload(lab)
        assert f"announced {VIP2}" in r.stdout, r.stdout
        answers = collections.Counter(lab.curl(f"http://{VIP}:{HTTP_PORT}/") for _ in range(6))
        assert answers == {"rs2": 3, "rs3": 3}, f"rs1 was quiesced, yet: {dict(answers)}"
        assert lab.curl(f"http://{VIP2}:{HTTP_PORT}/") in ("rs2", "rs3")
        arp = json.loads(lab.run("client", *python_cmd("lb.director.arp", "eth0", VIP2, "1")).stdout)
        assert arp == [lab.macs["director"]], f"ARP for the added VIP: {arp}"
        out = [first] + flow.communicate(timeout=15)[0].split()
        assert len(out) == 8 and len(set(out)) == 1, \
            f"a UDP flow changed server across the reload: {out}"
        # A bad config changes nothing and says why.
        director.config_path.write_text(original.replace("weight = 2", "weight = -2"))
        r = reload(lab, check=False)
        assert r.returncode == 2 and "weight = -2" in r.stderr, r.stderr
        assert lab.curl(f"http://{VIP2}:{HTTP_PORT}/") in ("rs2", "rs3"), \
            "a refused reload must leave the running config alone"
    finally:
        if flow.poll() is None:
            flow.kill()
        director.config_path.write_text(original)
        reload(lab, check=False)
        for h in lab.real_servers:
            lab.run(h.name, *python_cmd("lb", "realserver", "down", VIP2), check=False)
    assert VIP2 not in [s["vip"] for s in status(lab)["services"]]


def test_second_up_on_same_interface_is_refused(scene):
    lab, _ = scene
    r = lab.run("director", *python_cmd("lb", "up", "/dev/null"), check=False)
    assert r.returncode == 2, "an empty config must be rejected before anything else"
    cfg = lab.scratch_dir() / "second.toml"   # removed with the lab
    cfg.write_text(lab.director_config())
    r = lab.run("director", *python_cmd("lb", "up", str(cfg)), check=False)
    assert r.returncode == 1
    # The interface's lock refuses it first, naming the instance that holds it.
    assert "already runs on eth0 (pid" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, f"want one line, got {r.stderr!r}"


def test_sigterm_detaches_and_leaves_nothing(scene):
    lab, director = scene
    time.sleep(1.2)   # a round or two of up's loop (every 0.5 s), checked for warnings below
    director.send_signal(signal.SIGTERM)
    out, _ = director.communicate(timeout=20)
    assert director.returncode == 0, f"dr-lb up exited {director.returncode}: {out}"
    assert "detached" in out
    # Its loop's rounds (neighbours, flow_cache's sweep, ...) went without a warning.
    assert "warning:" not in out, out
    with lab.inside("director"):
        iface = netif.interface("eth0")
        leftovers = [p for p in (instances.socket_path("eth0"), instances.state_path("eth0"))
                     if p.exists()]
    assert iface.xdp_mode is None, f"an XDP program ({iface.xdp_mode}) is still attached"
    assert leftovers == [], f"left behind: {leftovers}"
    r = lab.run("director", *python_cmd("lb", "status"), check=False)
    assert r.returncode == 1 and "not running" in r.stderr


def test_down_clears_a_leftover_after_sigkill(idle_lab):
    lab = idle_lab
    director = start_director(lab, lab.director_config())
    director.send_signal(signal.SIGKILL)
    director.wait(timeout=10)
    with lab.inside("director"):
        assert netif.interface("eth0").xdp_mode, "SIGKILL should leave the program behind"
    r = lab.run("director", *python_cmd("lb", "down"))
    assert "leftover" in r.stdout, r.stdout
    with lab.inside("director"):
        assert netif.interface("eth0").xdp_mode is None


def test_down_stops_a_running_instance_and_up_announces_the_vip(idle_lab):
    lab = idle_lab
    # A client that still believes the VIP is elsewhere: the gratuitous ARP of `up` fixes it.
    # The kernel ignores an ARP that would override an entry younger than its locktime (1 s
    # by default): the client's is 0 here, so that the entry need not age past it first.
    locktime = "net.ipv4.neigh.eth0.locktime"
    was = lab.run("client", "sysctl", "-n", locktime).stdout.strip()
    lab.sysctl("client", locktime, "0")
    try:
        set_neighbour(lab, "client", VIP, "02:00:00:00:99:21", netif.NUD_STALE)
        director = start_director(lab, lab.director_config())
        wait_for(lambda: neighbour(lab, "client", VIP) == lab.macs["director"],
                 f"after up, the client's neighbour entry for {VIP} moving to the director "
                 "(the gratuitous ARP of `up`)")
    finally:
        lab.sysctl("client", locktime, was)
    r = lab.run("director", *python_cmd("lb", "down", "--interface", "eth0"))
    assert "stopped" in r.stdout, r.stdout
    assert director.wait(timeout=10) == 0
    with lab.inside("director"):
        assert netif.interface("eth0").xdp_mode is None


def test_replace_takes_over_from_a_running_instance(idle_lab):
    lab = idle_lab
    first = start_director(lab, lab.director_config())
    second = lab.popen("director", *python_cmd("lb", "up", "--replace", str(first.config_path)),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The new program goes in place of the old one in one step, then the old process stops.
    replaced, stopped = second.stdout.readline(), second.stdout.readline()
    assert replaced.startswith("dr-lb: replaced the XDP program on eth0 (id ") and \
        replaced.rstrip().endswith(f"{lab.xdp_mode}) in one step"), replaced
    assert stopped.startswith(f"dr-lb: stopped dr-lb (pid {first.pid})"), stopped
    wait_ready(second)
    assert first.wait(timeout=10) == 0, "the replaced instance must stop cleanly"
    assert lab.curl(f"http://{VIP}:{HTTP_PORT}/") in ("rs1", "rs2", "rs3")
    assert status(lab)["xdp_mode"] == lab.xdp_mode, "the new instance must answer status"
    second.terminate()
    assert second.wait(timeout=20) == 0
    with lab.inside("director"):
        assert netif.interface("eth0").xdp_mode is None
