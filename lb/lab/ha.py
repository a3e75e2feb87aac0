"""The HA lab: two directors behind a router, defined once (demo, tests).

    client 198.19.0.10 --[br1]-- router 198.19.0.1 | 198.18.0.1 --[br0]-- dir1 .11, dir2 .12
                                                                      rs1 .13, rs2 .14, rs3 .15

The router runs BIRD 2 with BGP sessions (and BFD) to both directors and installs the
VIP's routes with multipath (ECMP, hashing the ports too); each director runs `dr-lb up`
and its own BIRD, to which dr-lb announces the VIP ([announce]). The real servers sit
on the directors' segment with the VIP on lo and the router as their default gateway, so
they answer the client across the routed hop (true DR). The same scene, without BGP,
runs keepalived's VRRP on the directors (active/backup): the router then reaches the
VIP, which is in the segment's subnet, by ARP, and only the MASTER answers it.

The lab plays the operator: it writes the routers' and directors' bird.conf and the
keepalived.conf; dr-lb writes only its snippet.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from lb import lab as lab_mod
from lb.lab import VIP, Host, Lab, wait_ready

ROUTER_IP = "198.18.0.1"
ROUTER_CLIENT_IP = "198.19.0.1"
CLIENT_IP = "198.19.0.10"
ROUTER_AS, DIRECTOR_AS = 65000, 65001
DIRECTORS = ("dir1", "dir2")
VRID = 21
LAB_RUN_DIR = Path("/run/dr-lb-lab")

HA_HOSTS = (
    Host("client", "client", CLIENT_IP, bridge="br1", gateway=ROUTER_CLIENT_IP),
    Host("router", "router", ROUTER_IP, more=(("eth1", "br1", ROUTER_CLIENT_IP),)),
    Host("director", "dir1", "198.18.0.11", gateway=ROUTER_IP),
    Host("director", "dir2", "198.18.0.12", gateway=ROUTER_IP),
    Host("real", "rs1", "198.18.0.13", weight=2, gateway=ROUTER_IP),
    Host("real", "rs2", "198.18.0.14", weight=1, gateway=ROUTER_IP),
    Host("real", "rs3", "198.18.0.15", weight=1, gateway=ROUTER_IP),
)

# BFD: a dead neighbour is noticed after 3 missed packets 100 ms apart. The BGP timers
# are the lab's, short so that a director that comes back is in again within seconds.
BFD = {"interval_ms": 100, "multiplier": 3}


def bfd_block(interface: str = "eth0") -> str:
    return (f"protocol bfd {{\n\tinterface \"{interface}\" {{\n"
            f"\t\tmin rx interval {BFD['interval_ms']} ms;\n"
            f"\t\tmin tx interval {BFD['interval_ms']} ms;\n"
            f"\t\tmultiplier {BFD['multiplier']};\n\t}};\n}}\n")


def bgp_timers(hold: int) -> str:
    return (f"\thold time {hold};\n\tkeepalive time {max(1, hold // 3)};\n"
            "\tconnect delay time 1;\n\tconnect retry time 2;\n"
            "\terror wait time 1, 5;\n\terror forget time 10;\n")


class HaLab(Lab):
    """The HA scene; `bfd=False` leaves failure detection to the BGP hold timer."""

    def __init__(self, prefix: str = "drlb-ha", bfd: bool = True, hold: int = 3):
        super().__init__(prefix=prefix, xdp_mode="generic", hosts=HA_HOSTS)
        self.bfd = bfd
        self.hold = hold
        # Under /run (root's alone): keepalived runs notify scripts only from paths no
        # other user can write to (enable_script_security), which /tmp is not.
        LAB_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=LAB_RUN_DIR))
        self.workdir.chmod(0o755)
        self.procs: dict[str, dict[str, subprocess.Popen]] = {}

    @property
    def directors(self) -> list[Host]:
        return [h for h in self.hosts if h.role == "director"]

    def dir(self, host: str) -> Path:
        d = self.workdir / host
        d.mkdir(parents=True, exist_ok=True)
        return d

    def create(self) -> None:
        super().create()
        self.sysctl("router", "net.ipv4.ip_forward", "1")
        # ECMP over the directors by the 5-tuple, so that one client's flows spread.
        self.sysctl("router", "net.ipv4.fib_multipath_hash_policy", "1")
        # A NIC drops frames for other MACs before XDP sees them; a veth does not. So
        # that a director whose link is down does not have its frames flooded to the
        # other one (which would forward them, hiding the failover), the switch does not
        # flood unknown unicast to the directors' ports.
        for d in self.directors:
            self.run(None, "bridge", "link", "set", "dev", self.port(d.name), "flood", "off")

    def destroy(self) -> None:
        # The VRRP state dr-lb keeps in /run is named by the namespace's inode, which a
        # later namespace may get again: forget it with the lab.
        from pyroute2 import netns

        from lb.director import instances
        existing = set(netns.listnetns())
        paths = []
        for d in self.directors:
            if self.ns(d.name) in existing:
                with self.inside(d.name):
                    paths.append(instances.vrrp_path("eth0"))
        super().destroy()
        for path in paths:   # after keepalived is gone: its last notify may write it again
            path.unlink(missing_ok=True)
        self.procs.clear()
        shutil.rmtree(getattr(self, "workdir", "/nonexistent"), ignore_errors=True)

    # ---- BIRD ---------------------------------------------------------------------------
    def bird_socket(self, host: str) -> str:
        return str(self.dir(host) / "bird.ctl")

    def snippet(self, host: str) -> str:
        return str(self.dir(host) / "dr-lb-vips.conf")

    def router_bird_conf(self) -> str:
        bfd = "\tbfd on;\n" if self.bfd else ""
        neighbours = "".join(
            f"protocol bgp {d.name} from directors {{\n"
            f"\tneighbor {d.address} as {DIRECTOR_AS};\n}}\n" for d in self.directors)
        return (f"log \"{self.dir('router')}/bird.log\" all;\n"
                f"router id {ROUTER_IP};\n"
                "protocol device {}\n"
                "protocol kernel {\n\tipv4 { import none; export all; };\n"
                "\tmerge paths on;\t# ECMP: a route over every director announcing it\n}\n"
                + (bfd_block() if self.bfd else "")
                + "template bgp directors {\n"
                f"\tlocal {ROUTER_IP} as {ROUTER_AS};\n{bfd}{bgp_timers(self.hold)}"
                "\tipv4 { import all; export none; };\n}\n" + neighbours)

    def director_bird_conf(self, host: str) -> str:
        """What the operator writes on a director: the BGP session to the router and
        the include of the snippet dr-lb owns."""
        h = self.host(host)
        bfd = "\tbfd on;\n" if self.bfd else ""
        return (f"log \"{self.dir(host)}/bird.log\" all;\n"
                f"router id {h.address};\n"
                "protocol device {}\n"
                f"include \"{self.dir(host)}/dr-lb-vips*.conf\";\t# written by dr-lb\n"
                + (bfd_block() if self.bfd else "")
                + "protocol bgp uplink {\n"
                f"\tlocal {h.address} as {DIRECTOR_AS};\n"
                f"\tneighbor {ROUTER_IP} as {ROUTER_AS};\n{bfd}{bgp_timers(self.hold)}"
                "\tipv4 { import none; export where proto = \"dr_lb_vips\"; };\n}\n")

    def bird_conf_path(self, host: str) -> Path:
        return self.dir(host) / "bird.conf"

    def start_bird(self, host: str) -> subprocess.Popen:
        conf = self.bird_conf_path(host)
        conf.write_text(self.router_bird_conf() if host == "router"
                        else self.director_bird_conf(host))
        check = self.run(host, "bird", "-p", "-c", str(conf), check=False)   # BIRD's own
        if check.returncode:
            raise RuntimeError(f"lab: bird -p {conf}: {check.stderr.strip()}")
        sock = self.bird_socket(host)
        p = self.popen(host, "bird", "-f", "-c", str(conf), "-s", sock,
                       "-P", str(self.dir(host) / "bird.pid"),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.setdefault(host, {})["bird"] = p
        deadline = time.monotonic() + 10
        while not Path(sock).exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lab: bird did not start in {host}: "
                                   + (self.dir(host) / "bird.log").read_text(errors="replace")
                                   if (self.dir(host) / "bird.log").exists() else "")
            time.sleep(0.05)
        return p

    def birdc(self, host: str, *command: str) -> str:
        return self.run(host, "birdc", "-s", self.bird_socket(host), *command).stdout

    def vip_next_hops(self) -> list[str]:
        """The router's kernel next hops for the VIP (the directors it spreads over)."""
        out = self.run("router", "ip", "-4", "route", "show", f"{VIP}/32").stdout
        return sorted(w[1] for line in out.splitlines()
                      for w in [line.split()[i:i + 2] for i in range(len(line.split()))]
                      if w[:1] == ["via"])

    def wait_next_hops(self, want: list[str], timeout: float = 30) -> float:
        """Wait until the router's VIP route goes over exactly `want`; seconds taken."""
        start = time.monotonic()
        want = sorted(want)
        while True:
            got = self.vip_next_hops()
            if got == want:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"lab: the router's route to {VIP} goes via {got}, "
                                   f"not {want}")
            time.sleep(0.02)

    # ---- dr-lb on the directors -------------------------------------------------------
    def director_config(self, host: str, *, announce: bool = True, vrrp: bool = False,
                        scheduler: str = "mh", sloppy: bool = True,
                        linger: float = 1.0) -> str:
        """HTTP on VIP:80 over rs1..rs3: mh hashing the source port too (so that one
        client's flows spread over the real servers), sloppy pickup, TCP health checks."""
        reals = "".join(f"\n[[service.real_server]]\naddress = \"{h.address}\"\n"
                        f"weight = {h.weight}\n" for h in self.real_servers)
        flags = "scheduler_flags = [\"mh-port\"]\n" if scheduler == "mh" else ""
        return (f"[director]\ninterface = \"eth0\"\nxdp_mode = \"{self.xdp_mode}\"\n"
                + ("vrrp = true\n" if vrrp else "")
                + (f"\n[announce]\nsnippet = \"{self.snippet(host)}\"\n"
                   f"control_socket = \"{self.bird_socket(host)}\"\nlinger = {linger}\n"
                   if announce else "")
                + f"\n[[service]]\nvip = \"{VIP}\"\nport = {lab_mod.HTTP_PORT}\n"
                f"scheduler = \"{scheduler}\"\n{flags}"
                + ("sloppy = true\n" if sloppy else "")
                + "[service.health]\ntype = \"tcp\"\ninterval = 1\ntimeout = 0.5\n"
                + reals)

    def start_director(self, host: str, config_text: str | None = None,
                       *options: str) -> subprocess.Popen:
        cfg = self.dir(host) / "lb.toml"
        cfg.write_text(config_text if config_text is not None else self.director_config(host))
        p = self.popen(host, *lab_mod.python_cmd("lb", "up", *options, str(cfg)),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_ready(p)
        self.procs.setdefault(host, {})["dr-lb"] = p
        return p

    def kill(self, host: str, what: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[host].pop(what)
        p.send_signal(sig)
        p.wait(timeout=15)

    def link(self, host: str, state: str) -> None:
        self.run(host, "ip", "link", "set", "eth0", state)

    # ---- keepalived --------------------------------------------------------------------
    def vrrp_notify_script(self, host: str) -> Path:
        """`dr-lb vrrp STATE --interface eth0` as one executable file (keepalived runs a
        notify script with no arguments of ours and from /), here from this checkout."""
        path = self.dir(host) / "dr-lb-vrrp"
        root = Path(lab_mod.__file__).resolve().parent.parent.parent
        path.write_text(f"#!/bin/sh\ncd {root} && exec {' '.join(lab_mod.python_cmd('lb'))} "
                        f"vrrp \"$1\" --interface eth0 >>{self.dir(host)}/notify.log 2>&1\n")
        path.chmod(0o755)
        return path

    def vrrp_notify(self, host: str, state: str) -> str:
        """The notify line for `state`. notify_stop runs in a session of its own (setsid
        -f): keepalived ends the scripts it started as it stops, before Python is up."""
        script = f"{self.vrrp_notify_script(host)} {state}"
        return f"/usr/bin/setsid -f {script}" if state == "stop" else script

    def keepalived_conf(self, host: str, priority: int) -> str:
        """VRRP between the directors. The VIP must never be on a director's interface,
        but `keepalived -t` refuses an instance without a virtual_ipaddress: it gets a
        marker address that is no VIP (169.254.0.VRID on lo, host scope), which also
        shows the MASTER in `ip addr`. The notify scripts tell dr-lb who answers ARP."""
        h = self.host(host)
        peers = "".join(f"\t\t{d.address}\n" for d in self.directors if d.name != host)
        return ("global_defs {\n\trouter_id " + host + "\n\tscript_user root\n"
                "\tenable_script_security\n}\n"
                f"vrrp_instance VI_{VRID} {{\n\tstate BACKUP\n\tinterface eth0\n"
                f"\tvirtual_router_id {VRID}\n\tpriority {priority}\n\tadvert_int 1\n"
                f"\tunicast_src_ip {h.address}\n\tunicast_peer {{\n{peers}\t}}\n"
                f"\tvirtual_ipaddress {{\n\t\t169.254.0.{VRID}/32 dev lo scope host\n\t}}\n"
                + "".join(f"\tnotify_{state} \"{self.vrrp_notify(host, state)}\"\n"
                          for state in ("master", "backup", "fault", "stop")) + "}\n")

    def keepalived_args(self, host: str) -> list[str]:
        d = self.dir(host)
        return ["keepalived", "--dont-fork", "--log-console", "--vrrp",
                "-f", str(d / "keepalived.conf"), "-p", str(d / "keepalived.pid"),
                "-r", str(d / "vrrp.pid")]

    def start_keepalived(self, host: str, priority: int) -> subprocess.Popen:
        conf = self.dir(host) / "keepalived.conf"
        conf.write_text(self.keepalived_conf(host, priority))
        check = self.run(host, "keepalived", "-t", "-f", str(conf), check=False)
        if check.returncode:
            raise RuntimeError(f"lab: keepalived -t {conf}: {check.stderr.strip()}")
        p = self.popen(host, *self.keepalived_args(host), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        self.procs.setdefault(host, {})["keepalived"] = p
        return p

    def arp_answers(self, address: str = VIP, host: str = "router") -> list[str]:
        """MACs that answer who-has `address` on the segment, asked from `host`."""
        import json
        r = self.run(host, *lab_mod.python_cmd("lb.director.arp", "eth0", address, "1"))
        return sorted(json.loads(r.stdout))
