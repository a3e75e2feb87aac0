"""Health checks end to end: the lab in network namespaces, `dr-lb up` with health checks,
real servers broken the ways they break (a web server that stops, a VIP gone from lo),
and a client's curl as the judge. The times to go out and come back are measured."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lb.director import instances
from lb.lab import HOSTS, VIP, Host, Lab, python_cmd
from lb.lab.demo import start_director
from tests.conftest import SUITE_XDP_MODES, needs_netns

pytestmark = needs_netns

CHECKED_PORT = 8000       # service A: the test's own web servers, which it stops and starts
SORRY_PORT = 80           # service B: a sorry server (the lab's servers answer on 80)
RESCHEDULE_PORT = 8080    # service C: on_failure = "reschedule", checked on CHECKED_PORT
INTERVAL, TIMEOUT, RISE, FALL = 1.0, 0.5, 2, 2
OUT_WITHIN = INTERVAL * FALL + 1          # the promise: out within interval x fall + 1 s
BACK_WITHIN = INTERVAL * RISE + 1
SORRY = Host("real", "sorry", "198.18.0.15")
MEASURED = os.environ.get("DR_LB_HEALTH_TIMES")   # a JSON file to append timings to

WEB = textwrap.dedent("""
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    name, port = sys.argv[1], int(sys.argv[2])
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = (name + "\\n").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    ThreadingHTTPServer(("", port), Handler).serve_forever()   # 0.0.0.0: RIP and VIP
""")


def reals(weight_line: str = "") -> str:
    return "".join(f'\n[[service.real_server]]\naddress = "{h.address}"\n{weight_line}'
                   for h in HOSTS if h.role == "real")


def health(**keys) -> str:
    base = {"interval": INTERVAL, "timeout": TIMEOUT, "rise": RISE, "fall": FALL}
    base.update(keys)
    return "[service.health]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in base.items() if v is not None)


def config(sorry: bool = True, sorry_check_port: int | None = 9,
           xdp_mode: str = "generic") -> str:
    """A: http checks of the test's web servers; B: every real server checked on a port
    where nothing listens (so all are down) with a sorry server; C: reschedule."""
    return (
        f'[director]\ninterface = "eth0"\nxdp_mode = "{xdp_mode}"\n\n'
        f'[[service]]\nvip = "{VIP}"\nport = {CHECKED_PORT}\n'
        + health(type="http", path="/") + reals()
        + f'\n[[service]]\nvip = "{VIP}"\nport = {SORRY_PORT}\n'
        + (f'sorry_server = "{SORRY.address}"\n' if sorry else "")
        + health(type="tcp", port=sorry_check_port) + reals()
        + f'\n[[service]]\nvip = "{VIP}"\nport = {RESCHEDULE_PORT}\n'
        + health(type="http", port=CHECKED_PORT, on_failure="reschedule") + reals())


class Scene:
    def __init__(self, lab: Lab, director: subprocess.Popen):
        self.lab, self.director = lab, director
        self.journal: list[str] = []
        self.web: dict[str, subprocess.Popen] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.director.stdout:
            self.journal.append(line.rstrip())

    # ---- the test's web servers --------------------------------------------------------
    def start_web(self, name: str) -> None:
        self.web[name] = self.lab.popen(name, sys.executable, "-c", WEB, name,
                                        str(CHECKED_PORT))
        self.lab.wait_port(name, CHECKED_PORT)

    def stop_web(self, name: str) -> None:
        p = self.web.pop(name)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)

    # ---- the director ------------------------------------------------------------------
    def status(self) -> dict:
        """Over the control socket, in this process: no interpreter start-up in timings."""
        with self.lab.inside("director"):
            return instances.request("eth0", "status")

    def server(self, port: int, name: str, data: dict | None = None) -> dict:
        data = data or self.status()
        svc = next(s for s in data["services"] if s["port"] == port)
        return next(r for r in svc["real_servers"]
                    if r["address"] == self.lab.host(name).address)

    def wait_state(self, port: int, name: str, state: str, within: float) -> float:
        """Seconds until `name` in service `port` is in `state`; fails after `within`."""
        start = time.monotonic()
        while (h := self.server(port, name)["health"])["state"] != state:
            assert time.monotonic() - start < within, \
                f"{name} in :{port} still {h} after {within} s (wanted {state})"
            time.sleep(0.02)
        return time.monotonic() - start

    def curl(self, port: int, max_time: float = 2) -> tuple[int, str]:
        r = self.lab.run("client", "curl", "-sS", "--max-time", str(max_time),
                         f"http://{VIP}:{port}/", check=False, timeout=max_time + 5)
        return r.returncode, r.stdout.strip()

    def dr_lb(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.lab.run("director", *python_cmd("lb", *args), check=check)

    def config(self, **kw) -> str:
        return config(xdp_mode=self.lab.xdp_mode, **kw)

    def reload(self, text: str) -> None:
        self.director.config_path.write_text(text)
        self.dr_lb("reload")

    def lines(self, name: str, port: int) -> list[str]:
        who = f"{self.lab.host(name).address}:{port} in {VIP}:{port}/tcp"
        return [line for line in self.journal if f"health: {who} is" in line]


def record_time(what: str, seconds: float) -> None:
    if not MEASURED:
        return
    path = Path(MEASURED)
    times = json.loads(path.read_text()) if path.exists() else {}
    times.setdefault(what, []).append(round(seconds, 3))
    path.write_text(json.dumps(times, indent=1))


@pytest.fixture(scope="module", params=SUITE_XDP_MODES)
def scene(request):
    with Lab(prefix=f"drlb-hc{request.param[0]}", xdp_mode=request.param,
             hosts=HOSTS + (SORRY,)) as lab:
        lab.prepare_real_servers()
        lab.start_servers()
        web = {}
        for h in lab.real_servers:
            if h is not SORRY:
                web[h.name] = lab.popen(h.name, sys.executable, "-c", WEB, h.name,
                                        str(CHECKED_PORT))
                lab.wait_port(h.name, CHECKED_PORT)
        director = start_director(lab, config(xdp_mode=lab.xdp_mode))
        s = Scene(lab, director)
        s.web = web
        for name in web:
            s.wait_state(CHECKED_PORT, name, "up", 5)
        yield s


def test_a_stopped_web_server_is_out_in_time_and_back_after_rise(scene):
    mark = len(scene.journal)
    before = collections.Counter(scene.curl(CHECKED_PORT)[1] for _ in range(6))
    assert before == {"rs1": 2, "rs2": 2, "rs3": 2}, before

    scene.stop_web("rs1")
    out = scene.wait_state(CHECKED_PORT, "rs1", "down", OUT_WITHIN + 2)
    record_time(f"out_stopped_web_server_{scene.lab.xdp_mode}", out)
    assert out <= OUT_WITHIN, f"rs1 went out after {out:.2f} s, later than {OUT_WITHIN} s"
    h = scene.server(CHECKED_PORT, "rs1")
    assert not h["schedulable"] and "refused" in h["health"]["last"], h
    # No client waits for a dead server any more: every request is answered, fast.
    results = [scene.curl(CHECKED_PORT) for _ in range(8)]
    assert all(rc == 0 for rc, _ in results), results
    assert collections.Counter(body for _, body in results) == {"rs2": 4, "rs3": 4}, results

    scene.start_web("rs1")
    back = scene.wait_state(CHECKED_PORT, "rs1", "up", BACK_WITHIN + 2)
    record_time(f"back_after_restart_{scene.lab.xdp_mode}", back)
    assert back <= BACK_WITHIN, f"rs1 came back after {back:.2f} s, later than {BACK_WITHIN}"
    assert "rs1" in {scene.curl(CHECKED_PORT)[1] for _ in range(6)}
    time.sleep(0.2)
    lines = [line for line in scene.lines("rs1", CHECKED_PORT)
             if line in scene.journal[mark:]]
    assert len(lines) == 2 and " is down (was up): " in lines[0] \
        and " is up (was down): " in lines[1], lines


def test_a_vip_gone_from_lo_is_caught_by_the_dr_path_check(scene):
    """Seed 000/003: the real server lost its VIP; its own address still answers (the web
    server listens on 0.0.0.0), so only the DR-path probe can tell."""
    lab = scene.lab
    rs2 = lab.host("rs2").address
    lab.run("rs2", "ip", "addr", "del", f"{VIP}/32", "dev", "lo")
    try:
        r = lab.run("director", "curl", "-sS", "--max-time", "2",
                    f"http://{rs2}:{CHECKED_PORT}/")
        assert r.stdout.strip() == "rs2", "its own address must still answer"
        out = scene.wait_state(CHECKED_PORT, "rs2", "down", OUT_WITHIN + 2)
        record_time(f"out_vip_removed_{scene.lab.xdp_mode}", out)
        assert out <= OUT_WITHIN, f"rs2 went out after {out:.2f} s"
        last = scene.server(CHECKED_PORT, "rs2")["health"]["last"]
        assert last.startswith("DR path: no answer to a SYN for") and "lo" in last, last
        results = [scene.curl(CHECKED_PORT) for _ in range(8)]
        assert all(rc == 0 for rc, _ in results), f"a client hung: {results}"
        assert "rs2" not in {body for _, body in results}
    finally:
        lab.run("rs2", "ip", "addr", "replace", f"{VIP}/32", "dev", "lo")
    scene.wait_state(CHECKED_PORT, "rs2", "up", BACK_WITHIN + 2)


def test_every_server_down_sends_new_connections_to_the_sorry_server(scene):
    for name in ("rs1", "rs2", "rs3"):
        assert scene.server(SORRY_PORT, name)["health"]["state"] == "down"
    svc = next(s for s in scene.status()["services"] if s["port"] == SORRY_PORT)
    assert svc["sorry_server"]["in_use"] and svc["sorry_server"]["address"] == SORRY.address
    assert {scene.curl(SORRY_PORT)[1] for _ in range(4)} == {"sorry"}
    assert "sorry server, in use" in scene.dr_lb("status").stdout


def test_without_a_sorry_server_new_connections_are_dropped_and_counted(scene):
    try:
        scene.reload(scene.config(sorry=False))
        before = scene.status()["counters"]["drop_no_real_server"]
        rc, _ = scene.curl(SORRY_PORT, max_time=1)
        assert rc == 28, "the SYN must be dropped (curl times out)"
        assert scene.status()["counters"]["drop_no_real_server"] > before
    finally:
        scene.reload(scene.config())


def test_reload_with_a_working_check_brings_the_servers_back(scene):
    try:
        scene.reload(scene.config(sorry_check_port=None))
        for name in ("rs1", "rs2", "rs3"):
            scene.wait_state(SORRY_PORT, name, "up", INTERVAL + 2)
        assert {scene.curl(SORRY_PORT)[1] for _ in range(6)} == {"rs1", "rs2", "rs3"}
        svc = next(s for s in scene.status()["services"] if s["port"] == SORRY_PORT)
        assert not svc["sorry_server"]["in_use"]
    finally:
        scene.reload(scene.config())
    scene.wait_state(SORRY_PORT, "rs1", "down", OUT_WITHIN + 2)


HOLD = textwrap.dedent("""
    import socket, sys
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)
    print(c.getsockname()[1], flush=True)
    sys.stdin.readline()
    c.settimeout(3)
    try:
        c.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        data = b""
        while chunk := c.recv(4096):
            data += chunk
        print("answer", data.decode().split()[-1], flush=True)
    except ConnectionResetError:
        print("reset", flush=True)
    except socket.timeout:
        print("timeout", flush=True)
""")


def test_reschedule_sends_a_held_connection_to_another_server(scene):
    lab = scene.lab
    holder = lab.popen("client", sys.executable, "-c", HOLD, VIP, str(RESCHEDULE_PORT),
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stopped = None
    try:
        sport = holder.stdout.readline().strip()
        with lab.inside("director"):
            conns = instances.request("eth0", "conns", vip=VIP, port=RESCHEDULE_PORT)
        (conn,) = [c for c in conns["connections"] if c["source"].endswith(f":{sport}")]
        assert conn["state"] == "ESTABLISHED"
        first = conn["destination"].split(":")[0]
        stopped = next(h.name for h in lab.real_servers if h.address == first)
        before = scene.status()["counters"]
        scene.stop_web(stopped)     # its check (port 8000) fails; its service on 8080 runs on
        scene.wait_state(RESCHEDULE_PORT, stopped, "down", OUT_WITHIN + 2)
        out, _ = holder.communicate("\n", timeout=10)
        assert out.strip() == "reset", \
            f"the connection's next packet must reach another server, which resets it: {out}"
        after = scene.status()["counters"]
        assert after["conn_rescheduled"] - before["conn_rescheduled"] >= 1
        with lab.inside("director"):
            conns = instances.request("eth0", "conns", vip=VIP, port=RESCHEDULE_PORT)
        (moved,) = [c for c in conns["connections"] if c["source"].endswith(f":{sport}")]
        assert moved["destination"].split(":")[0] != first, moved
        assert moved["state"] == "CLOSE", moved
    finally:
        if holder.poll() is None:
            holder.kill()
        if stopped:
            scene.start_web(stopped)
            scene.wait_state(RESCHEDULE_PORT, stopped, "up", BACK_WITHIN + 2)


def test_keep_leaves_a_held_connection_with_its_down_server(scene):
    lab = scene.lab
    holder = lab.popen("client", sys.executable, "-c", HOLD, VIP, str(CHECKED_PORT),
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stopped = None
    try:
        sport = holder.stdout.readline().strip()
        with lab.inside("director"):
            conns = instances.request("eth0", "conns", vip=VIP, port=CHECKED_PORT)
        (conn,) = [c for c in conns["connections"] if c["source"].endswith(f":{sport}")]
        first = conn["destination"].split(":")[0]
        stopped = next(h.name for h in lab.real_servers if h.address == first)
        # Make it fail its check while its web server keeps the connection: the VIP goes.
        lab.run(stopped, "ip", "addr", "del", f"{VIP}/32", "dev", "lo")
        scene.wait_state(CHECKED_PORT, stopped, "down", OUT_WITHIN + 2)
        lab.run(stopped, "ip", "addr", "replace", f"{VIP}/32", "dev", "lo")
        out, _ = holder.communicate("\n", timeout=10)
        assert out.strip() == f"answer {stopped}", out
    finally:
        if holder.poll() is None:
            holder.kill()
        if stopped:
            scene.wait_state(CHECKED_PORT, stopped, "up", BACK_WITHIN + 3)


def test_drain_and_weight_changes_keep_the_health_state(scene):
    try:
        scene.dr_lb("drain", "--no-save", scene.lab.host("rs3").address)
        rs3 = scene.server(CHECKED_PORT, "rs3")
        assert rs3["health"]["state"] == "up" and not rs3["schedulable"], \
            "a drained server stays drained whatever its health"
        scene.stop_web("rs1")
        scene.wait_state(CHECKED_PORT, "rs1", "down", OUT_WITHIN + 2)
        since = scene.server(CHECKED_PORT, "rs1")["health"]["since"]
        scene.dr_lb("weight", "--no-save", f"{VIP}:{CHECKED_PORT}",
                    scene.lab.host("rs1").address, "5")
        rs1 = scene.server(CHECKED_PORT, "rs1")
        assert rs1["weight"] == 5 and rs1["health"]["state"] == "down" \
            and rs1["health"]["since"] == since and not rs1["schedulable"], rs1
        assert {scene.curl(CHECKED_PORT)[1] for _ in range(4)} == {"rs2"}
        scene.start_web("rs1")
        scene.wait_state(CHECKED_PORT, "rs1", "up", BACK_WITHIN + 2)
        answers = collections.Counter(scene.curl(CHECKED_PORT)[1] for _ in range(6))
        assert answers == {"rs1": 5, "rs2": 1}, answers
    finally:
        if "rs1" not in scene.web:
            scene.start_web("rs1")
        scene.dr_lb("undrain", "--no-save", scene.lab.host("rs3").address)
        scene.dr_lb("weight", "--no-save", f"{VIP}:{CHECKED_PORT}",
                    scene.lab.host("rs1").address, "1")
    assert scene.server(CHECKED_PORT, "rs3")["schedulable"]


def test_status_json_and_table_show_health(scene):
    data = scene.status()
    h = scene.server(CHECKED_PORT, "rs2", data)["health"]
    assert set(h) == {"state", "last", "since"} and h["state"] == "up"
    assert h["last"].startswith(f"http://{scene.lab.host('rs2').address}:{CHECKED_PORT}/ "
                                "answered 200; SYN-ACK"), h
    assert 0 < h["since"] <= time.time()
    table = scene.dr_lb("status").stdout
    assert "DOWN: " in table and "refused the connection" in table, table
