"""The network-namespace lab: seed 002's LVS-DR scene, defined once.

A client (.10), the director (.11) and real servers .12/.13/.14 (weights 2:1:1) sit on
one bridge; the VIP is .21. The demo, the end-to-end tests and bench/ all build it from
here. Addresses are from 198.18.0.0/15 (RFC 2544, reserved for benchmarking), so they
cannot be mistaken for any real network; nothing leaves the namespaces.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute, NetNS, netns

from lb import libbpf
from lb.director import instances, kept
from lb.lab.servers import ECHO_PORT

SUBNET_PREFIX = 24
# The kernel's own defaults of the IPv4 settings that dr-lb's checks read or that DR
# depends on, set on every lab host for all, default, lo and its interfaces. A new
# namespace copies init_net's all and default (and its devices take default), so the lab
# would otherwise run with the machine's: a director that forwards (libvirt and docker
# turn forwarding on) sends ICMP redirects, and a hardened machine's send_redirects=0,
# arp_ignore=1 or rp_filter=1 would hide what the doctor and the live check must find.
# Hosts that must forward (the HA router, the bench's kernel path) say so afterwards.
KERNEL_DEFAULTS = {"forwarding": 0, "send_redirects": 1, "accept_redirects": 1,
                   "arp_ignore": 0, "arp_announce": 0, "arp_filter": 0, "arp_accept": 0,
                   "rp_filter": 0, "accept_local": 0, "route_localnet": 0}
CLIENT_IP = "198.18.0.10"
DIRECTOR_IP = "198.18.0.11"
VIP = "198.18.0.21"
HTTP_PORT = 80
PERSISTENT_PORT = 8080
UDP_PORT = 5300


@dataclass(frozen=True)
class Host:
    role: str          # "client", "director", "real" or "router"
    name: str
    address: str       # on eth0, a /SUBNET_PREFIX
    weight: int = 0    # real servers only
    bridge: str = "br0"                  # the switch's bridge eth0 is on
    gateway: str | None = None           # the default route, if any
    more: tuple[tuple[str, str, str], ...] = ()   # more interfaces: (ifname, bridge, address)

    def interfaces(self) -> list[tuple[str, str, str]]:
        """(ifname, bridge, address) of each interface, eth0 first."""
        return [("eth0", self.bridge, self.address), *self.more]


HOSTS = (
    Host("client", "client", CLIENT_IP),
    Host("director", "director", DIRECTOR_IP),
    Host("real", "rs1", "198.18.0.12", weight=2),
    Host("real", "rs2", "198.18.0.13", weight=1),
    Host("real", "rs3", "198.18.0.14", weight=1),
)
# A second director for scenes with two (Lab(hosts=HOSTS + (DIRECTOR2,))): both answer
# ARP for the VIP, so the client is pointed at one with a static neighbour entry.
DIRECTOR2 = Host("director", "director2", "198.18.0.16")


def python_cmd(*args: str) -> list[str]:
    """This interpreter running a module of ours (works inside `ip netns exec`)."""
    return [sys.executable, "-m", *args]


def wait_ready(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Read `dr-lb up`'s output until its ready line; raise with the output if it ends
    first or nothing is ready within `timeout` seconds (then the process is killed)."""
    lines: list[str] = []
    proc.early_lines = lines   # what it said up to ready (tests read the notices)
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("dr-lb: ready on "):
                ready.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if ready.is_set():
        return
    if reader.is_alive():
        proc.kill()
    proc.wait(timeout=30)
    raise RuntimeError(f"dr-lb up was not ready within {timeout} s:\n" + "\n".join(lines))


@dataclass
class Lab:
    """Namespaces `<prefix>-sw` (the bridge) and `<prefix>-<host>` for every host.

    Use as a context manager: everything is removed on exit, even after a failure.
    """
    prefix: str = "drlb"
    xdp_mode: str = "generic"
    hosts: tuple[Host, ...] = HOSTS
    flooding: bool = False   # the bridge learns no MAC (ageing time 0): a hub
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _dirs: list[Path] = field(default_factory=list)
    macs: dict[str, str] = field(default_factory=dict)

    # ---- names -----------------------------------------------------------------
    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @staticmethod
    def port(host: str, ifname: str = "eth0") -> str:
        """The switch's end of a host's veth."""
        return f"p-{host}" if ifname == "eth0" else f"p-{host}-{ifname}"

    @property
    def switch(self) -> str:
        return self.ns("sw")

    @property
    def real_servers(self) -> list[Host]:
        return [h for h in self.hosts if h.role == "real"]

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def namespaces(self) -> list[str]:
        return [self.switch] + [self.ns(h.name) for h in self.hosts]

    # ---- life cycle ------------------------------------------------------------
    def __enter__(self) -> "Lab":
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def create(self) -> None:
        self.destroy()
        # dr-lb up keeps its state on a bpffs under /run; mounted here, in this (the host's)
        # mount namespace, it is seen by every `ip netns exec` (KERNEL-NOTES).
        kept.ensure_bpffs()
        for name in self.namespaces():
            netns.create(name)
        bridges = sorted({b for h in self.hosts for _, b, _ in h.interfaces()})
        with NetNS(self.switch) as sw:
            for bridge in bridges:
                sw.link("add", ifname=bridge, kind="bridge", br_forward_delay=0,
                        **({"br_ageing_time": 0} if self.flooding else {}))
                sw.link("set", index=sw.link_lookup(ifname=bridge)[0], state="up")
            for h in self.hosts:
                for ifname, bridge, _ in h.interfaces():
                    port = self.port(h.name, ifname)
                    sw.link("add", ifname=port, kind="veth",
                            peer={"ifname": ifname, "net_ns_fd": self.ns(h.name)})
                    idx = sw.link_lookup(ifname=port)[0]
                    sw.link("set", index=idx, master=sw.link_lookup(ifname=bridge)[0],
                            state="up")
        for h in self.hosts:
            scopes = ["all", "default", "lo", *(ifname for ifname, _, _ in h.interfaces())]
            self.sysctl(h.name, "net.ipv6.conf.all.disable_ipv6", "1",
                        *(f"net.ipv4.conf.{scope}.{key}={value}" for scope in scopes
                          for key, value in KERNEL_DEFAULTS.items()))
            with NetNS(self.ns(h.name)) as ns:
                lo = ns.link_lookup(ifname="lo")[0]
                ns.link("set", index=lo, state="up")
                for ifname, _, address in h.interfaces():
                    eth = ns.link_lookup(ifname=ifname)[0]
                    ns.addr("add", index=eth, address=address, prefixlen=SUBNET_PREFIX)
                    ns.link("set", index=eth, state="up")
                    mac = ns.get_links(eth)[0].get_attr("IFLA_ADDRESS")
                    self.macs[h.name if ifname == "eth0" else f"{h.name}-{ifname}"] = mac
                if h.gateway:
                    ns.route("add", dst="0.0.0.0/0", gateway=h.gateway)
        if self.xdp_mode == "native":
            self._prepare_native()

    def _prepare_native(self) -> None:
        """What native XDP_TX on veth needs (KERNEL-NOTES): a program on the peer of the
        director's veth, and complete checksums from the client's local TCP stack."""
        for h in self.hosts:
            if h.role == "director":
                self.set_peer_program(h.name, libbpf.XDP_PASS)
        self.run("client", "ethtool", "-K", "eth0", "tx", "off")

    def link(self, a: str, b: str, ifname: str) -> tuple[int, int]:
        """A direct veth pair `ifname` between hosts a and b (no bridge in between: the
        benchmark's wire), up and without addresses; returns the two ifindexes and
        records the MACs as macs["a/ifname"], macs["b/ifname"]."""
        with NetNS(self.ns(a)) as ns:
            ns.link("add", ifname=ifname, kind="veth",
                    peer={"ifname": ifname, "net_ns_fd": self.ns(b)})
        out = []
        for host in (a, b):
            with NetNS(self.ns(host)) as ns:
                idx = ns.link_lookup(ifname=ifname)[0]
                ns.link("set", index=idx, state="up")
                self.macs[f"{host}/{ifname}"] = ns.get_links(idx)[0].get_attr("IFLA_ADDRESS")
                out.append(idx)
        return out[0], out[1]

    def set_peer_program(self, host: str, action: int) -> None:
        """Put a one-verdict XDP program (native) on the switch side of `host`'s veth."""
        fd = libbpf.load_xdp_return(action)
        try:
            with self.inside(None):
                with IPRoute() as ipr:
                    idx = ipr.link_lookup(ifname=f"p-{host}")[0]
                try:
                    libbpf.xdp_detach(idx, "native")
                except OSError:
                    pass
                libbpf.xdp_attach(idx, fd, "native")
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def inside(self, host: str | None):
        """Run this thread's netlink and bpf calls in `host`'s namespace (None: the
        switch's)."""
        netns.pushns(self.ns(host) if host else self.switch)
        try:
            yield
        finally:
            netns.popns()

    def stop_processes(self, since: int = 0, wait_s: float = 5) -> None:
        """Stop the processes started in the lab from the `since`-th on (SIGTERM to each
        one's group, SIGKILL after `wait_s`), and forget them."""
        procs = self._procs[since:]
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in procs:
            try:
                p.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        del self._procs[since:]

    @contextlib.contextmanager
    def processes_stopped_after(self, wait_s: float = 5):
        """What is started in the lab inside the block is stopped when it ends."""
        since = len(self._procs)
        try:
            yield
        finally:
            self.stop_processes(since, wait_s)

    def scratch_dir(self) -> Path:
        """A directory of the lab's own under /tmp (a director's config file), removed
        by destroy()."""
        d = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self._dirs.append(d)
        return d

    def destroy(self) -> None:
        self.stop_processes()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._dirs.clear()
        existing = set(netns.listnetns())
        for h in self.hosts:
            if h.role == "director" and self.ns(h.name) in existing:
                with self.inside(h.name):   # a later namespace may get the same id
                    kept.forget("eth0")
                    if instances.lock_holder("eth0") is None:   # its `up` has ended
                        instances.lock_path("eth0").unlink(missing_ok=True)
        # `realserver down` forgets what `realserver up` remembered in /run (failures
        # ignored: a host it never prepared has nothing to undo).
        down = python_cmd("lb", "realserver", "down", VIP)
        downs = [subprocess.Popen(self.argv(h.name, *down), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
                 for h in self.real_servers if self.ns(h.name) in existing]
        for p in downs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for name in self.namespaces():
            if name in existing:
                netns.remove(name)

    # ---- running things inside ---------------------------------------------------
    def argv(self, host: str | None, *argv: str) -> list[str]:
        """`argv` run in `host`'s namespace (None: the switch's)."""
        return ["ip", "netns", "exec", self.ns(host) if host else self.switch, *argv]

    def run(self, host: str, *argv: str, check: bool = True, timeout: float = 60,
            **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.argv(host, *argv), check=check, timeout=timeout, **kw)

    def popen(self, host: str, *argv: str, **kw) -> subprocess.Popen:
        """A background process in `host`, killed (with its group) by destroy()."""
        p = subprocess.Popen(self.argv(host, *argv), start_new_session=True, **kw)
        self._procs.append(p)
        return p

    def sysctl(self, host: str, key: str, value: str, *more: str) -> None:
        """KEY=VALUE in `host`, and each of `more` (as KEY=VALUE), in one sysctl call."""
        self.run(host, "sysctl", "-q", "-w", f"{key}={value}", *more)

    # ---- the scene -------------------------------------------------------------
    def prepare_real_servers(self) -> None:
        """VIP on lo as /32 and the ARP sysctls, done by dr-lb's own real-server code."""
        for h in self.real_servers:
            self.run(h.name, *python_cmd("lb", "realserver", "up", VIP))

    def start_servers(self) -> None:
        """On every real server: HTTP on the service ports answering with the host's
        name, and a UDP responder on the VIP."""
        for h in self.real_servers:
            self.popen(h.name, *python_cmd("lb.lab.servers", h.name, VIP,
                                           str(HTTP_PORT), str(PERSISTENT_PORT),
                                           str(UDP_PORT)),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for h in self.real_servers:
            self.wait_port(h.name, HTTP_PORT)

    def wait_port(self, host: str, port: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.run(host, sys.executable, "-c", "import socket; socket.create_connection("
                         f"('127.0.0.1', {port}), 1)", check=False)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"lab: {host} does not listen on port {port}")

    def director_config(self, *, udp_timeout: int = 300, persistent: int = 60,
                        weights: dict[str, int] | None = None,
                        extra_director: str = "", extra_vips: tuple[str, ...] = (),
                        echo: bool = False, extra: str = "") -> str:
        """The director's TOML for the lab: HTTP on 80 (wrr), HTTP on 8080 with
        persistence (/24), and UDP on 5300 (rr, so that a rescheduled flow moves);
        `extra_vips` get an HTTP service each; `echo` adds the TCP line echo (wrr);
        `extra` is appended as it is (a [metrics] table, say)."""
        weights = weights or {h.name: h.weight for h in self.real_servers}

        def reals() -> str:
            return "".join(f"\n[[service.real_server]]\naddress = \"{h.address}\"\n"
                           f"weight = {weights[h.name]}\n" for h in self.real_servers)
        return (
            f"[director]\ninterface = \"eth0\"\nxdp_mode = \"{self.xdp_mode}\"\n"
            f"{extra_director}\n"
            f"[timeouts]\ntcp = 900\ntcpfin = 120\nudp = {udp_timeout}\n\n"
            f"[[service]]\nvip = \"{VIP}\"\nport = {HTTP_PORT}\nprotocol = \"tcp\"\n"
            f"scheduler = \"wrr\"\n{reals()}\n"
            f"[[service]]\nvip = \"{VIP}\"\nport = {PERSISTENT_PORT}\nprotocol = \"tcp\"\n"
            f"persistent = {persistent}\npersistent_netmask = \"255.255.255.0\"\n{reals()}\n"
            f"[[service]]\nvip = \"{VIP}\"\nport = {UDP_PORT}\nprotocol = \"udp\"\n"
            f"scheduler = \"rr\"\n{reals()}"
            + "".join(f"\n[[service]]\nvip = \"{vip}\"\nport = {HTTP_PORT}\n{reals()}"
                      for vip in extra_vips)
            + (f"\n[[service]]\nvip = \"{VIP}\"\nport = {ECHO_PORT}\nprotocol = \"tcp\"\n"
               f"{reals()}" if echo else "")
            + (f"\n{extra}\n" if extra else "")
        )

    def curl(self, url: str, timeout: float = 5) -> str:
        r = self.run("client", "curl", "-sS", "--max-time", str(timeout), url,
                     timeout=timeout + 5)
        return r.stdout.strip()
