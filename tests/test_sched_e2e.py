"""The schedulers end to end: the lab in network namespaces, `dr-lb up` with mh, wlc, an
ops UDP service and connection thresholds, real clients (curl, held TCP connections, a
UDP client) as the judge, and IPVS's algorithms (tests/ipvs_reference.py) saying where
each new connection must go. mh runs on two directors at once: the same flows reach the
same real servers through either."""
from __future__ import annotations

import ipaddress
import subprocess
import sys
import textwrap
import time

import pytest

from lb.director import instances
from lb.lab import DIRECTOR2, HOSTS, UDP_PORT, VIP, Lab, python_cmd
from lb.lab.demo import start_director, wait_ready
from tests import ipvs_reference as ref
from tests.conftest import SUITE_XDP_MODES, needs_netns

pytestmark = needs_netns

VIP2 = "198.18.0.22"          # lc with thresholds
MH_PORT = 80                  # VIP:80 mh, on both directors
WLC_PORT = 8080               # VIP:8080 wlc
REALS = [h for h in HOSTS if h.role == "real"]
NAMES = [h.name for h in REALS]
WEIGHTS = [h.weight for h in REALS]          # 2:1:1
SOURCES = [f"198.18.0.{100 + i}" for i in range(40)]   # the client's extra addresses
UPPER = 2                                    # rs1's upper threshold on VIP2 (lower: 3/4)

HOLD = textwrap.dedent("""
    import socket, sys
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)
    print("connected", flush=True)
    sys.stdin.readline()
    c.close()
""")

UDP_CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    for i in range(int(sys.argv[3])):
        s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
        print(s.recvfrom(2048)[0].decode().split()[0], flush=True)
""")


def reals(extra: dict[str, str] | None = None) -> str:
    return "".join(f'\n[[service.real_server]]\naddress = "{h.address}"\nweight = {h.weight}\n'
                   + (extra or {}).get(h.name, "") for h in REALS)


def config(xdp_mode: str, tcpfin: int = 120) -> str:
    return (f'[director]\ninterface = "eth0"\nxdp_mode = "{xdp_mode}"\n'
            f'[timeouts]\ntcpfin = {tcpfin}\n\n'
            f'[[service]]\nvip = "{VIP}"\nport = {MH_PORT}\nscheduler = "mh"\n{reals()}\n'
            f'[[service]]\nvip = "{VIP}"\nport = {WLC_PORT}\nscheduler = "wlc"\n{reals()}\n'
            f'[[service]]\nvip = "{VIP}"\nport = {UDP_PORT}\nprotocol = "udp"\n'
            f'scheduler = "rr"\nops = true\n{reals()}\n'
            f'[[service]]\nvip = "{VIP2}"\nport = 80\nscheduler = "lc"\n'
            + reals({"rs1": f"upper = {UPPER}\n"}))


class Scene:
    def __init__(self, lab: Lab, directors: dict[str, subprocess.Popen]):
        self.lab, self.directors = lab, directors
        self.held: list[tuple[str, subprocess.Popen]] = []

    def status(self, director: str = "director") -> dict:
        with self.lab.inside(director):
            return instances.request("eth0", "status")

    def counts(self, vip: str, port: int, protocol: str = "tcp") -> list[tuple[int, int]]:
        svc = next(s for s in self.status()["services"]
                   if (s["vip"], s["port"], s["protocol"]) == (vip, port, protocol))
        by_address = {r["address"]: (r["active_conns"], r["inactive_conns"])
                      for r in svc["real_servers"]}
        return [by_address[h.address] for h in REALS]

    def use(self, director: str) -> None:
        """Point the client at one director: a static neighbour entry for the VIPs."""
        mac = self.lab.macs[director]
        for vip in (VIP, VIP2):
            self.lab.run("client", "ip", "neigh", "replace", vip, "lladdr", mac, "dev",
                         "eth0", "nud", "permanent")

    def curl(self, vip: str, port: int, source: str | None = None) -> str:
        argv = ["curl", "-sS", "--max-time", "3", f"http://{vip}:{port}/"]
        if source:
            argv[1:1] = ["--interface", source]
        return self.lab.run("client", *argv, timeout=10).stdout.strip()

    def hold(self, vip: str, port: int) -> str:
        """Open a connection and keep it open; returns the server it reached, as the
        director's count of active connections tells."""
        before = self.counts(vip, port)
        p = self.lab.popen("client", sys.executable, "-c", HOLD, vip, str(port),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "connected"
        deadline = time.monotonic() + 3
        while True:
            after = self.counts(vip, port)
            grew = [i for i, (a, b) in enumerate(zip(after, before)) if a[0] > b[0]]
            if grew:
                assert len(grew) == 1
                self.held.append((NAMES[grew[0]], p))
                return NAMES[grew[0]]
            assert time.monotonic() < deadline, "the held connection never became active"
            time.sleep(0.02)

    def release(self, name: str) -> None:
        i = next(i for i, (n, _) in enumerate(self.held) if n == name)
        _, p = self.held.pop(i)
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(timeout=5)

    def release_all(self) -> None:
        while self.held:
            self.release(self.held[0][0])

    def settle(self, vip: str, port: int, active: int) -> None:
        """Wait until the service's active connections are `active` (a closed one has
        left ESTABLISHED)."""
        deadline = time.monotonic() + 3
        while sum(a for a, _ in self.counts(vip, port)) != active:
            assert time.monotonic() < deadline, self.counts(vip, port)
            time.sleep(0.02)

    def reload(self, text: str) -> None:
        for name, proc in self.directors.items():
            proc.config_path.write_text(text)
            self.lab.run(name, *python_cmd("lb", "reload"))


@pytest.fixture(scope="module", params=SUITE_XDP_MODES)
def scene(request):
    with Lab(prefix=f"drlb-sc{request.param[0]}", xdp_mode=request.param,
             hosts=HOSTS + (DIRECTOR2,)) as lab:
        lab.prepare_real_servers()
        for h in REALS:
            lab.run(h.name, *python_cmd("lb", "realserver", "up", VIP2))
        lab.start_servers()
        for source in SOURCES:
            lab.run("client", "ip", "addr", "add", f"{source}/24", "dev", "eth0")
        text = config(lab.xdp_mode)
        # Both started at once (they compile their programs side by side), then each
        # waited for until ready; Lab's exit stops them whatever happens.
        directors = {name: start_director(lab, text, host=name, wait=False)
                     for name in ("director", "director2")}
        for proc in directors.values():
            wait_ready(proc)
        s = Scene(lab, directors)
        s.use("director")
        try:
            yield s
        finally:
            s.release_all()


def test_mh_two_directors_send_each_flow_to_the_same_server(scene):
    """Two independent `dr-lb up` with the same config: 40 clients (source addresses)
    reach the same real server through either director, the one IPVS's ip_vs_mh picks."""
    mh = ref.IpvsMh([ref.Dest(addr=int(ipaddress.IPv4Address(h.address)), port=MH_PORT,
                              weight=h.weight) for h in REALS], 65537, 8)
    want = [NAMES[mh.schedule(int(ipaddress.IPv4Address(s)), 0)] for s in SOURCES]
    through = {}
    for director in ("director", "director2"):
        scene.use(director)
        through[director] = [scene.curl(VIP, MH_PORT, source) for source in SOURCES]
    scene.use("director")
    assert through["director"] == through["director2"] == want
    assert set(want) == set(NAMES), "the 40 clients should reach every server"
    for director in ("director", "director2"):
        svc = next(s for s in scene.status(director)["services"] if s["port"] == MH_PORT)
        assert svc["scheduler"] == "mh" and svc["counters"]["conns"] == len(SOURCES)


def test_wlc_with_held_connections_and_curl_picks_what_ipvs_picks(scene):
    """Before each new connection the director's counts (status) given to IPVS's wlc say
    where it must go; held connections (active) and curl's finished ones (inactive)."""
    got, want = [], []
    for i in range(10):
        counts = scene.counts(VIP, WLC_PORT)
        choice = ref.wlc([ref.Dest(weight=w, activeconns=a, inactconns=ia)
                          for w, (a, ia) in zip(WEIGHTS, counts)])
        want.append(NAMES[choice])
        if i % 3 == 2:
            got.append(scene.curl(VIP, WLC_PORT))
            scene.settle(VIP, WLC_PORT, len(scene.held))
        else:
            got.append(scene.hold(VIP, WLC_PORT))
    assert got == want
    assert len(set(got)) == 3
    scene.release_all()


def test_ops_schedules_each_datagram_of_one_flow(scene):
    """One UDP socket, six datagrams: with ops each is scheduled on its own (rr goes
    round the servers) and no connection entry is made."""
    def udp_service(status):
        return next(s for s in status["services"] if s["port"] == UDP_PORT)

    status = scene.status()
    before, svc_before = status["counters"], udp_service(status)["counters"]
    out = scene.lab.run("client", sys.executable, "-c", UDP_CLIENT, VIP, str(UDP_PORT),
                        "6").stdout.split()
    assert len(out) == 6 and set(out) == set(NAMES), out
    assert out[:3] == out[3:], f"round robin, datagram by datagram: {out}"
    status = scene.status()
    after, svc = status["counters"], udp_service(status)
    assert after["udp_table_insert"] == before["udp_table_insert"]
    # The service's own counters: the global tx_service also counts a late segment of
    # an earlier test's TCP connection (seen once in a full run: 7 for 6).
    assert svc["counters"]["in_packets"] - svc_before["in_packets"] == 6
    assert svc["ops"] and svc["counters"]["conns"] - svc_before["conns"] == 6


def test_upper_threshold_stops_a_server_until_it_falls_below_lower(scene):
    """lc on VIP2 with rs1 at upper = 2 (lower: IPVS's 3/4 of it, 2): rs1 takes two,
    then nothing while it holds two, and comes back once one of them has gone (closed,
    and expired: tcpfin = 1 s here)."""
    scene.reload(config(scene.lab.xdp_mode, tcpfin=1))
    try:
        first = [scene.hold(VIP2, 80) for _ in range(6)]
        assert sorted(first) == sorted(NAMES * 2), first     # lc: two each
        more = [scene.hold(VIP2, 80) for _ in range(4)]
        assert "rs1" not in more, f"rs1 is at its upper threshold: {more}"
        data = scene.status()
        svc = next(s for s in data["services"] if s["vip"] == VIP2)
        assert next(r for r in svc["real_servers"] if r["address"] == REALS[0].address
                    )["upper"] == UPPER
        scene.release("rs1")
        time.sleep(2)      # tcpfin 1 s, and the monitor's next sweep corrects the count
        assert scene.hold(VIP2, 80) == "rs1", "below lower, rs1 takes connections again"
    finally:
        scene.release_all()
        scene.reload(config(scene.lab.xdp_mode))
