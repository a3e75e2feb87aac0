"""Issue 11, end to end in namespaces: nothing the network does makes dr-lb forward
wrongly or lose its connections. A test that changes the lab for good (other hosts, a
flooding bridge, the director's eth0 deleted) builds its own (prefix drlb-hd*); the others
share one (drlb-hd), and those that only need `dr-lb up` with the default config share its
director too."""
from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from lb.lab import HOSTS, HTTP_PORT, VIP, Host, Lab, python_cmd
from lb.lab.demo import start_director, wait_ready
from tests.conftest import needs_netns

pytestmark = needs_netns

DIRECTOR2 = Host("director", "director2", "198.18.0.15")


def status(lab: Lab, host: str = "director") -> dict:
    return json.loads(lab.run(host, *python_cmd("lb", "status", "--json")).stdout)


class Shared:
    """The module's lab (the default hosts, prepared and serving), and the shared
    `dr-lb up` with the default config (None while stopped)."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.director: subprocess.Popen | None = None


@pytest.fixture(scope="module")
def shared():
    with Lab(prefix="drlb-hd") as lab:
        lab.prepare_real_servers()
        lab.start_servers()
        yield Shared(lab)
        # Lab.destroy() (the with-exit) stops whatever `up` a test left running.


@pytest.fixture
def running(shared):
    """The shared lab with the shared `dr-lb up` running: started again if it is not, so
    that no test depends on the order they run in. Tests using it leave the lab as they
    found it."""
    s = shared
    if s.director is None or s.director.poll() is not None:
        s.director = start_director(s.lab, s.lab.director_config())
    return s.lab, s.director


@pytest.fixture
def idle_lab(shared):
    """The shared lab with no `dr-lb up` running (the shared one stopped if it ran). What
    the test started in it and left running (after a failure) is stopped after it, so that
    the next test finds the lab as this one did."""
    s = shared
    if s.director is not None and s.director.poll() is None:
        s.director.send_signal(signal.SIGTERM)
        s.director.wait(timeout=20)
    s.director = None
    with s.lab.processes_stopped_after(wait_s=20):
        yield s.lab


def test_two_directors_on_a_flooding_segment_do_not_loop():
    """Both directors see every frame (the bridge floods): each balances only what is
    sent to its own MAC, so one curl costs a bounded number of frames, for good."""
    with Lab(prefix="drlb-hdl", hosts=HOSTS + (DIRECTOR2,), flooding=True) as lab:
        lab.prepare_real_servers()
        lab.start_servers()
        directors = [start_director(lab, lab.director_config(), host=h, wait=False)
                     for h in ("director", "director2")]
        for d in directors:
            wait_ready(d)

        def sent() -> tuple[int, int]:
            from lb.director import instances   # the control socket: no interpreter start-up
            counts = []
            for h in ("director", "director2"):
                with lab.inside(h):
                    counts.append(instances.request("eth0", "status")["counters"])
            return (sum(c["tx_service"] for c in counts),
                    sum(c.get("pass_not_our_mac", 0) for c in counts))

        before, _ = sent()
        answer = lab.run("client", "curl", "-sS", "--max-time", "5",
                         f"http://{VIP}:{HTTP_PORT}/", check=False).stdout.strip()
        time.sleep(1)
        settled, refused = sent()
        time.sleep(3)
        later, _ = sent()
        print(f"frames sent to real servers by both directors: {settled - before} in the "
              f"first second after one curl, {later - settled} in the 3 s after; "
              f"{refused} refused as not addressed to the director")
        assert answer in ("rs1", "rs2", "rs3")
        assert later == settled, (f"the directors kept sending frames to each other: "
                                  f"{later - settled} more in 3 s after one curl")
        assert settled - before <= 20, \
            f"one curl cost {settled - before} forwarded frames; a handful is expected"
        assert refused > 0, "the flooded copies must be counted as not_our_mac"


# ---- SYN flood -------------------------------------------------------------------------------

ATTACKER = Host("attacker", "attacker", "198.18.0.66")
FLOOD_TABLE_SIZE = 1024          # conn_table_size, the smallest allowed
HELD = 40                        # established connections held through the flood
IDLE = 10                        # ... of which these send nothing during the flood

HOLDER = textwrap.dedent("""
    import http.client, json, sys, time
    vip, n, idle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    conns = [http.client.HTTPConnection(vip, 80, timeout=3) for _ in range(n)]

    def get(c):
        try:
            c.request("GET", "/")
            return c.getresponse().read().decode().strip(), c.sock.getsockname()[1]
        except Exception as e:
            return f"failed: {type(e).__name__}", None

    first = [get(c) for c in conns]
    print(json.dumps(first), flush=True)
    # The busy ones talk every 0.2 s until told the flood is over; the idle ones wait.
    import select
    while not select.select([sys.stdin], [], [], 0.2)[0]:
        for c in conns[idle:]:
            get(c)
    sys.stdin.readline()
    print(json.dumps([get(c) for c in conns]), flush=True)
""")

FLOOD = textwrap.dedent("""
    import random, socket, struct, sys
    dst_mac, src_mac, vip = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3]
    n, repeat = int(sys.argv[4]), int(sys.argv[5])
    rng = random.Random(11)

    def csum(b):
        s = sum(struct.unpack("!10H", b))
        s = (s & 0xFFFF) + (s >> 16)
        return ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF

    frames = []
    for i in range(n):   # spoofed sources in 10.0.0.0/8, distinct (address, port) each
        src = struct.pack("!I", 0x0A000000 + rng.randrange(1 << 24))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0x4000, 64, 6, 0, src,
                         socket.inet_aton(vip))
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
        tcp = struct.pack("!HHIIBBHHH", 1024 + rng.randrange(60000), 80, rng.getrandbits(32),
                          0, 5 << 4, 0x02, 64240, 0, 0)
        frames.append(dst_mac + src_mac + b"\\x08\\x00" + ip + tcp)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    sent = 0
    for start in range(0, n, 256):       # each SYN twice, a burst apart
        burst = frames[start:start + 256]
        for _ in range(repeat):
            for f in burst:
                s.send(f)
                sent += 1
    print(sent)
""")


def test_syn_flood_keeps_every_established_connection():
    """Spoofed SYNs, 20 times the table and each sent twice (the LRU's second chance),
    from an attacker on the segment: every connection established before the flood keeps
    its real server, the busy ones and the idle ones."""
    with Lab(prefix="drlb-hds", hosts=HOSTS + (ATTACKER,)) as lab:
        lab.prepare_real_servers()
        lab.start_servers()
        start_director(lab, lab.director_config(
            extra_director=f"conn_table_size = {FLOOD_TABLE_SIZE}"))
        holder = lab.popen("client", sys.executable, "-c", HOLDER, VIP, str(HELD), str(IDLE),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = json.loads(holder.stdout.readline())
        assert all(port for _, port in first), f"could not establish: {first}"
        before = status(lab)
        spoofed = 20 * (FLOOD_TABLE_SIZE + 2 * 256)
        r = lab.run("attacker", sys.executable, "-c", FLOOD, lab.macs["director"].replace(":", ""),
                    lab.macs["attacker"].replace(":", ""), VIP, str(spoofed), "2", timeout=120)
        sent = int(r.stdout)
        time.sleep(0.5)
        holder.stdin.write("done\n")
        holder.stdin.flush()
        after_flood = json.loads(holder.stdout.readline())
        holder.wait(timeout=10)
        data = status(lab)
        tx = data["counters"]["tx_service"] - before["counters"]["tx_service"]
        kept = [i for i, (a, b) in enumerate(zip(first, after_flood)) if a == b]
        idle_kept = len([i for i in kept if i < IDLE])
        print(f"SYN flood: {sent} spoofed SYN frames ({spoofed} distinct, each twice) sent, "
              f"{tx} forwarded by the director; established connections kept: "
              f"{len(kept)} of {HELD} ({idle_kept} of {IDLE} idle ones); "
              f"counters {json.dumps({k: v for k, v in data['counters'].items() if v})}; "
              f"conn_table {json.dumps(data['conn_table'])}; "
              f"syn_table {json.dumps(data['syn_table'])}")
        lost = {i: (first[i], after_flood[i]) for i in range(HELD) if i not in kept}
        assert not lost, f"connections lost or moved under the flood: {lost}"


# ---- the interface deleted and recreated under `up` -----------------------------------------

class Output:
    """`dr-lb up`'s output lines as they come, with the time each was read."""

    def __init__(self, proc):
        self.lines: queue.Queue = queue.Queue()
        self.all: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.lines.put((time.monotonic(), line.rstrip()))

    def wait_for(self, text: str, timeout: float = 10) -> float:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                at, line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.all.append(line)
            if text in line:
                return at
        raise AssertionError(f"no line with {text!r} within {timeout} s; got {self.all}")


def delete_director_link(lab: Lab) -> float:
    """Delete the director's eth0; the time just before (an upper bound on the delay)."""
    before = time.monotonic()
    lab.run("director", "ip", "link", "del", "eth0")
    return before


def recreate_director_link(lab: Lab) -> float:
    """A new veth named eth0 (a new index and MAC) on the bridge, with the old address."""
    sw = ["ip", "netns", "exec", lab.switch]
    created = time.monotonic()
    subprocess.run(sw + ["ip", "link", "add", "p-director", "type", "veth", "peer", "name",
                         "eth0", "netns", lab.ns("director")], check=True)
    subprocess.run(sw + ["ip", "link", "set", "p-director", "master", "br0", "up"], check=True)
    lab.run("director", "ip", "addr", "add", f"{lab.host('director').address}/24",
            "dev", "eth0")
    lab.run("director", "ip", "link", "set", "eth0", "up")
    return created


def test_interface_deleted_and_recreated_is_noticed_and_attached_again():
    with Lab(prefix="drlb-hdi") as lab:
        lab.prepare_real_servers()
        lab.start_servers()
        director = start_director(lab, lab.director_config())
        out = Output(director)
        holder = lab.popen("client", sys.executable, "-c", HOLDER, VIP, "4", "4",
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = json.loads(holder.stdout.readline())
        assert lab.curl(f"http://{VIP}:{HTTP_PORT}/") in ("rs1", "rs2", "rs3")

        deleted = delete_director_link(lab)
        noticed = out.wait_for("is gone") - deleted
        data = status(lab)
        assert data["link"]["state"] == "gone", data["link"]
        table = lab.run("director", *python_cmd("lb", "status")).stdout
        assert "IS GONE" in table, table

        created = recreate_director_link(lab)
        attached = out.wait_for("is back") - created
        data = status(lab)
        assert data["link"]["state"] == "up" and data["link"]["mac"] != lab.macs["director"]
        assert lab.curl(f"http://{VIP}:{HTTP_PORT}/") in ("rs1", "rs2", "rs3"), \
            "the new interface must balance again"
        holder.stdin.write("done\n")
        holder.stdin.flush()
        after = json.loads(holder.stdout.readline())
        print(f"interface deleted: noticed within {noticed:.3f} s; recreated: attached "
              f"again within {attached:.3f} s; held connections kept: "
              f"{sum(a == b for a, b in zip(first, after))} of {len(first)}")
        assert noticed < 1, f"the deletion was noticed only after {noticed:.2f} s"
        assert after == first, f"the held connections must survive: {first} -> {after}"


def test_exit_on_link_loss_exits_3_at_once():
    with Lab(prefix="drlb-hdx") as lab:
        lab.prepare_real_servers()
        director = start_director(lab, lab.director_config(), "--exit-on-link-loss")
        deleted = delete_director_link(lab)
        out, _ = director.communicate(timeout=10)
        took = time.monotonic() - deleted
        assert director.returncode == 3, (director.returncode, out)
        assert "was deleted" in out and "Traceback" not in out, out
        print(f"--exit-on-link-loss: exited 3 {took:.3f} s after the deletion")
        assert not list(instances_files(lab)), "the state files must be removed"


def instances_files(lab: Lab):
    from lb.director import instances
    with lab.inside("director"):
        prefix = instances._prefix()
    # The lock file stays (removing it would let two processes lock two files of one name)
    return [p for p in instances.RUN_DIR.glob(f"{prefix}eth0.*") if p.suffix != ".lock"]


def test_interface_renamed_away_and_back(running):
    """Renamed away, the interface keeps no dr-lb program (it is not the one the config
    names); renamed back, it is attached again and balances."""
    lab, director = running
    out = Output(director)
    renamed_away = False
    try:
        assert lab.curl(f"http://{VIP}:{HTTP_PORT}/") in ("rs1", "rs2", "rs3")
        lab.run("director", "ip", "link", "set", "eth0", "down")
        renamed = time.monotonic()
        lab.run("director", "ip", "link", "set", "eth0", "name", "eth7")
        renamed_away = True
        noticed = out.wait_for("is gone") - renamed
        link = lab.run("director", "ip", "-d", "link", "show", "eth7").stdout
        assert "xdp" not in link.split("\n", 1)[0] and "prog/xdp" not in link, link
        assert status(lab)["link"]["state"] == "gone"
        lab.run("director", "ip", "link", "set", "eth7", "name", "eth0")
        renamed_away = False
        lab.run("director", "ip", "link", "set", "eth0", "up")
        out.wait_for("is back")
        assert status(lab)["link"]["state"] == "up"
        assert lab.curl(f"http://{VIP}:{HTTP_PORT}/") in ("rs1", "rs2", "rs3")
        print(f"interface renamed: noticed within {noticed:.3f} s")
        assert noticed < 1
    finally:   # the shared lab as it was, whatever failed (the next test restarts `up`)
        if renamed_away:
            lab.run("director", "ip", "link", "set", "eth7", "name", "eth0", check=False)
        lab.run("director", "ip", "link", "set", "eth0", "up", check=False)


# ---- a real server's MAC changes -------------------------------------------------------------

def test_a_real_servers_new_mac_is_used_within_2_s(running):
    """rs1 gets a new MAC (a new NIC, a failover) and says nothing: the director's active
    ARP finds it, and new connections reach rs1 at its new MAC."""
    new_mac = "02:aa:00:00:00:01"
    lab, _ = running
    rs1 = lab.host("rs1").address

    def mac_in_use() -> str:   # through the control socket: a quick poll
        from lb.director import instances
        with lab.inside("director"):
            svc = instances.request("eth0", "status")["services"][0]
        return next(r["mac"] for r in svc["real_servers"] if r["address"] == rs1)

    assert mac_in_use() == lab.macs["rs1"]
    try:
        changed = time.monotonic()
        lab.run("rs1", "ip", "link", "set", "dev", "eth0", "address", new_mac)
        took = None
        while time.monotonic() - changed < 10:
            if mac_in_use() == new_mac:
                took = time.monotonic() - changed
                break
            time.sleep(0.05)
        answers = [lab.curl(f"http://{VIP}:{HTTP_PORT}/", timeout=3) for _ in range(12)]
        print(f"a real server's new MAC in use {took} s after the change; answers {answers}")
        assert took is not None, "the director never learnt rs1's new MAC"
        assert took < 2, f"the new MAC took {took:.2f} s"
        assert "rs1" in answers
    finally:   # the shared lab as it was: rs1's own MAC, in the director's maps again
        lab.run("rs1", "ip", "link", "set", "dev", "eth0", "address", lab.macs["rs1"])
        deadline = time.monotonic() + 15
        while mac_in_use() != lab.macs["rs1"]:
            assert time.monotonic() < deadline, "rs1's own MAC never came back to the maps"
            time.sleep(0.05)


# ---- one owner per interface -----------------------------------------------------------------

def dr_lb(lab: Lab, *args: str):
    return lab.run("director", *python_cmd("lb", *args), check=False)


def state_file(lab: Lab):
    from lb.director import instances
    with lab.inside("director"):
        return instances.state_path("eth0")


def test_two_ups_at_once_one_owner_and_down_stops_the_real_one(idle_lab):
    lab = idle_lab
    config = lab.director_config()
    racers = [start_director(lab, config, wait=False) for _ in range(2)]
    outs = {}
    for i, p in enumerate(racers):   # each until its ready line, or its end
        lines = []
        for line in p.stdout:
            lines.append(line)
            if line.startswith("dr-lb: ready on "):
                break
        outs[i] = "".join(lines)
    winners = [i for i, text in outs.items() if "dr-lb: ready on " in text]
    losers = [i for i in outs if i not in winners]
    assert len(winners) == 1 and len(losers) == 1, outs
    loser, winner = racers[losers[0]], racers[winners[0]]
    loser.wait(timeout=10)
    assert loser.returncode != 0 and "already runs on eth0" in outs[losers[0]], outs
    assert "Traceback" not in outs[losers[0]]
    # The winner's files survived the loser.
    assert status(lab)["interface"] == "eth0"
    assert lab.curl(f"http://{VIP}:{HTTP_PORT}/") in ("rs1", "rs2", "rs3")
    r = dr_lb(lab, "down")
    assert r.returncode == 0, r.stdout + r.stderr
    winner.wait(timeout=10)
    assert winner.poll() is not None, "down must stop the instance that owns eth0"
    assert "xdp" not in lab.run("director", "ip", "link", "show", "eth0").stdout
    assert not state_file(lab).exists()


def test_a_tampered_state_file_is_never_acted_on(idle_lab):
    lab = idle_lab
    sleeper = subprocess.Popen(["sleep", "600"])   # "another process's pid"
    try:
        director = start_director(lab, lab.director_config())
        path = state_file(lab)
        good = path.read_text()
        for text in ("[]", '{"pid": 1}', json.dumps({"pid": sleeper.pid,
                                                      "interface": "eth0"}), "{",
                     b"\xff\xfe"):
            if isinstance(text, bytes):
                path.write_bytes(text)
            else:
                path.write_text(text)
            for args in (("status",), ("status", "-i", "eth0")):
                r = dr_lb(lab, *args)
                assert "Traceback" not in r.stderr + r.stdout, (text, args, r.stderr)
                assert len((r.stderr or "").strip().splitlines()) <= 1, (text, r.stderr)
            assert director.poll() is None and sleeper.poll() is None
        path.write_text(json.dumps({"pid": sleeper.pid, "interface": "eth0"}))
        r = dr_lb(lab, "down", "-i", "eth0")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        director.wait(timeout=10)
        assert sleeper.poll() is None, "down must not signal a pid it cannot verify"
        assert "xdp" not in lab.run("director", "ip", "link", "show", "eth0").stdout
        # No instance, a stale file naming another process: down signals nothing.
        path.write_text(json.dumps({"pid": sleeper.pid, "interface": "eth0"}))
        r = dr_lb(lab, "down", "-i", "eth0")
        assert r.returncode == 0 and "stale state file" in r.stdout, r.stdout + r.stderr
        assert sleeper.poll() is None and not path.exists()
        del good
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- path-MTU discovery through the director ------------------------------------------------

FAR = "203.0.113.2"   # a client behind a router whose link to it has a small MTU
BIG_PORT = 8088


def test_fragmentation_needed_reaches_the_real_server_and_a_big_response_completes(tmp_path):
    """client namespace = a router; behind it, `far` on a link with MTU 1000 on the
    router's side. rs1's 1448-byte segments (DF) cannot pass: the router sends
    "fragmentation needed" to the VIP, which reaches the director. Forwarded to rs1, rs1
    lowers its path MTU and the 300 KB response completes; passed to the director's
    kernel (before), rs1 never learns, and the transfer black-holes."""
    big = tmp_path / "big"
    big.mkdir()
    (big / "file").write_bytes(b"0123456789abcdef" * 20000)   # 320,000 bytes
    with Lab(prefix="drlb-hdp") as lab:
        far = lab.ns("far")
        subprocess.run(["ip", "netns", "add", far], check=True)
        try:
            lab.run("client", "ip", "link", "add", "eth1", "mtu", "1000", "type", "veth",
                    "peer", "name", "eth0", "netns", far)
            lab.run("client", "ip", "addr", "add", "203.0.113.1/24", "dev", "eth1")
            lab.run("client", "ip", "link", "set", "eth1", "up")
            lab.sysctl("client", "net.ipv4.ip_forward", "1")
            fx = ["ip", "netns", "exec", far]
            subprocess.run(fx + ["ip", "addr", "add", f"{FAR}/24", "dev", "eth0"], check=True)
            subprocess.run(fx + ["ip", "link", "set", "lo", "up"], check=True)
            subprocess.run(fx + ["ip", "link", "set", "eth0", "up"], check=True)
            subprocess.run(fx + ["ip", "route", "add", "default", "via", "203.0.113.1"],
                           check=True)
            lab.prepare_real_servers()
            for h in lab.real_servers:
                lab.run(h.name, "ip", "route", "add", "203.0.113.0/24", "via",
                        lab.host("client").address)
            lab.popen("rs1", sys.executable, "-m", "http.server", str(BIG_PORT), "--bind",
                      "0.0.0.0", "--directory", str(big),
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lab.wait_port("rs1", BIG_PORT)
            config = lab.director_config() + (
                f"\n[[service]]\nvip = \"{VIP}\"\nport = {BIG_PORT}\n"
                f"[[service.real_server]]\naddress = \"{lab.host('rs1').address}\"\n")
            start_director(lab, config)
            before = status(lab)["counters"]
            r = subprocess.run(fx + ["curl", "-sS", "--max-time", "15", "-o", "/dev/null",
                                     "-w", "%{size_download}",
                                     f"http://{VIP}:{BIG_PORT}/file"],
                               capture_output=True, text=True, timeout=30)
            after = status(lab)["counters"]
            sent = after.get("tx_icmp_error", 0) - before.get("tx_icmp_error", 0)
            print(f"PMTU: far client got {r.stdout or 0} of 320000 bytes through a 1000-byte "
                  f"link; {sent} 'fragmentation needed' forwarded to rs1 ({r.stderr.strip()})")
            assert sent >= 1, "the router's ICMP error must be forwarded to the real server"
            assert r.returncode == 0 and r.stdout == "320000", (r.returncode, r.stdout,
                                                                 r.stderr)
        finally:
            subprocess.run(["ip", "netns", "del", far], check=False)
