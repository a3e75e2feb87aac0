"""Issue 11, end to end in namespaces: nothing the network does makes dr-lb forward
wrongly or lose its connections. Each test builds its own lab (prefix drlb-hd*)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from lb.lab import HOSTS, HTTP_PORT, VIP, Host, Lab, python_cmd
from lb.lab.demo import start_director, wait_ready
from tests.conftest import needs_netns

pytestmark = needs_netns

DIRECTOR2 = Host("director", "director2", "198.18.0.15")


def status(lab: Lab, host: str = "director") -> dict:
    return json.loads(lab.run(host, *python_cmd("lb", "status", "--json")).stdout)


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
            counts = [status(lab, h)["counters"] for h in ("director", "director2")]
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
