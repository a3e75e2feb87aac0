"""The TOML configuration: parsing and every check that needs no kernel.

All problems are collected and reported together; each message names the file, the
entry at fault and the fix, in the style of
`config.toml: service 192.168.0.21:80/tcp, real server 192.168.0.12:8080: DR cannot
change ports; use port 80`.
"""
from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lb import abi
from lb.director.scheduler import sched_table_slots, wrr_length

PROTOCOLS = ("tcp", "udp")
# The one list of schedulers (lb/director/ipvsadm.py imports what is here), with IPVS's
# names: weighted round robin, round robin, source hashing, Maglev hashing, least
# connections, weighted least connections, shortest expected delay, never queue.
SCHEDULERS = ("wrr", "rr", "sh", "mh", "lc", "wlc", "sed", "nq")
# ipvsadm -b: the flags each scheduler takes.
SCHEDULER_FLAGS = {"sh": ("sh-fallback", "sh-port"), "mh": ("mh-fallback", "mh-port")}
# Schedulers that count each real server's connections for every new one (a bounded loop
# over the service's real servers in the data plane).
LEAST_CONNECTION = ("lc", "wlc", "sed", "nq")
THRESHOLD_MAX = 2**31 - 1
XDP_MODES = ("auto", "native", "generic")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

DIRECTOR_KEYS = {"interface", "xdp_mode", "icmp_echo", "conn_table_size", "vrrp"}
ANNOUNCE_KEYS = {"daemon", "snippet", "control_socket", "protocol", "linger"}
ANNOUNCE_DAEMONS = ("bird",)
SLOPPY_SCHEDULERS = ("mh", "sh")
BIRD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
TIMEOUT_KEYS = {"tcp", "tcpfin", "udp"}
SERVICE_KEYS = {"vip", "port", "protocol", "scheduler", "scheduler_flags", "ops",
                "persistent", "persistent_netmask", "real_server", "health", "sorry_server",
                "sloppy"}
REAL_SERVER_KEYS = {"address", "port", "weight", "mac", "drained", "upper", "lower", "health"}
HEALTH_TYPES = ("tcp", "http", "none")
ON_FAILURE = ("keep", "reschedule")
HEALTH_KEYS = {"type", "interval", "timeout", "rise", "fall", "port", "path", "expect",
               "host", "on_failure"}
HTTP_ONLY_KEYS = ("path", "expect", "host")
HEALTH_INTERVAL_S = (0.1, 3600)
HEALTH_COUNT = (1, 100)
URL_PATH_RE = re.compile(r"^/[\x21-\x7e]*$")
HOST_RE = re.compile(r"^[\x21-\x7e]+$")
METRICS_KEYS = {"listen"}
TOP_KEYS = {"director", "timeouts", "service", "announce", "metrics"}


class ConfigError(Exception):
    """One or more problems in a configuration; str() gives one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Health:
    """How a real server is checked: [service.health], each key of which a real server
    can override in [service.real_server.health].

    Without any health table a server is not checked (type "none"), as before health
    checks existed and as keepalived does with no checker; a table without `type` means
    "tcp". The timings are keepalived's usual ones: its sample config's delay_loop 6 and
    connect_timeout 3; `fall = 2` is its default `retry 1` (a failure and one more);
    `rise = 1` is keepalived's single success that brings a server back.
    """
    type: str = "none"                  # "tcp" | "http" | "none"
    interval: float = 6.0               # seconds from the start of a check to the next
    timeout: float = 3.0                # a check that has not succeeded by then failed
    rise: int = 1                       # consecutive successes that bring a server back
    fall: int = 2                       # consecutive failures that take it out
    port: int | None = None             # own-address check port; None: the server's
    path: str = "/"                     # http only
    expect: tuple[int, ...] = ()        # http only: accepted status codes; (): any 2xx
    host: str | None = None             # http only: Host header; None: the address
    on_failure: str = "keep"            # "keep" | "reschedule" its connections

    @property
    def checked(self) -> bool:
        return self.type != "none"

    def accepts(self, status: int) -> bool:
        return status in self.expect if self.expect else 200 <= status <= 299


@dataclass(frozen=True)
class RealServer:
    address: str
    port: int
    weight: int = 1
    mac: str | None = None
    drained: bool = False     # `dr-lb drain`: no new connections, weight kept for undrain
    upper: int = 0            # connection thresholds, as ipvsadm -x / -y; 0: none
    lower: int = 0
    health: Health = Health()   # the service's [service.health] with this server's overrides

    @property
    def effective_weight(self) -> int:
        return 0 if self.drained else self.weight

    @property
    def effective_lower(self) -> int:
        """Below this many connections an overloaded server takes new ones again: lower,
        or when it is 0, IPVS's 3/4 of upper (it clears OVERLOAD once conns * 4 <
        upper * 3, i.e. conns < ceil(3 * upper / 4))."""
        return self.lower or (3 * self.upper + 3) // 4


@dataclass(frozen=True)
class Service:
    vip: str
    port: int
    protocol: str = "tcp"
    scheduler: str = "wrr"
    persistent: int = 0
    persistent_netmask: str = "255.255.255.255"
    real_servers: tuple[RealServer, ...] = ()
    scheduler_flags: tuple[str, ...] = ()   # ipvsadm -b: sh-fallback, sh-port, mh-...
    ops: bool = False                       # ipvsadm -o: one-packet scheduling (UDP)
    health: Health = Health()           # [service.health] as written (defaults filled in)
    sorry_server: str | None = None     # takes new connections when no real server can
    sloppy: bool = False                # a TCP non-SYN without a connection is scheduled

    @property
    def name(self) -> str:
        return f"{self.vip}:{self.port}/{self.protocol}"

    def scheduling_weights(self) -> list[int]:
        """Weights as the scheduler sees them: rr is wrr with every live weight 1."""
        if self.scheduler == "rr":
            return [1 if rs.effective_weight > 0 else 0 for rs in self.real_servers]
        return [rs.effective_weight for rs in self.real_servers]

    @property
    def round_robin(self) -> bool:
        """wrr or rr: scheduled by the WRR cycle in wrr_seq."""
        return self.scheduler in ("wrr", "rr")

    @property
    def fallback(self) -> bool:
        return f"{self.scheduler}-fallback" in self.scheduler_flags

    @property
    def hash_port(self) -> bool:
        return f"{self.scheduler}-port" in self.scheduler_flags

    @property
    def thresholds(self) -> bool:
        return any(rs.upper for rs in self.real_servers)

    def seq_slots(self) -> int:
        """Slots of wrr_seq this service needs: its WRR cycle (wrr and rr), and one for
        the sorry server, which any scheduler hands over to while no server can take."""
        cycle = wrr_length(self.scheduling_weights()) if self.round_robin else 0
        return max(cycle, 1 if self.sorry_server else 0)

    def sched_slots(self) -> int:
        """Slots of sched_table this service needs."""
        return sched_table_slots(self.scheduler, len(self.real_servers), self.fallback)

    def loops_over_reals(self) -> str | None:
        """Why a new connection makes the data plane look at each real server in turn
        (bounded by MAX_REALS_PER_SERVICE), or None."""
        if self.scheduler in LEAST_CONNECTION:
            return f'scheduler "{self.scheduler}" compares every real server'
        if self.fallback:
            return f'{self.scheduler}-fallback may try every real server'
        if self.thresholds:
            return "connection thresholds (upper) may pass over every real server"
        return None


@dataclass(frozen=True)
class Timeouts:
    tcp: int = 900
    tcpfin: int = 120
    udp: int = 300


def syn_table_size(conn_table_size: int) -> int:
    """Half-open TCP connections are kept apart from conn_table, so that a SYN flood
    evicts only its own kind: a quarter of conn_table_size, at least 1024. An entry waits
    there only for the client's ACK, one round trip in the common case."""
    return max(1024, conn_table_size // 4)


def possible_cpus() -> int:
    """CPUs the kernel may bring up (per-CPU LRU lists and headroom count these)."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        return sum(int(b) - int(a) + 1 if "-" in r else 1
                   for r in text.split(",") for a, _, b in [r.partition("-")])
    except (OSError, ValueError):
        import os
        return os.cpu_count() or 1


def _lru_hash_bytes(entries: int, key: int, value: int) -> int:
    """Kernel memory of a preallocated BPF hash of `entries` (kernel/bpf/hashtab.c):
    one struct htab_elem (48 bytes before the key) plus the key and the value, each
    rounded up to 8 bytes, per entry; 16 bytes per bucket, a power of two of them."""
    def r8(n: int) -> int:
        return (n + 7) // 8 * 8
    buckets = 1 << max(0, entries - 1).bit_length()
    return entries * (48 + r8(key) + r8(value)) + buckets * 16


def syn_table_sets(conn_table_size: int) -> int:
    """syn_table's sets (SYN_TABLE_WAYS half-open connections each): room for
    syn_table_size(), a power of two of them."""
    want = -(-syn_table_size(conn_table_size) // abi.CONST["SYN_TABLE_WAYS"])
    return 1 << (want - 1).bit_length()


def table_slots(conn_table_size: int, cpus: int | None = None) -> dict[str, int]:
    """The entries (max_entries) of conn_table, syn_table, syn_spill and udp_table for
    `conn_table_size`: syn_table's are sets (syn_table_sets). The LRU keeps some free
    slots on each CPU's list and may evict before it is full, so each LRU table gets
    headroom: conn_table then holds at least conn_table_size connections."""
    headroom = (cpus or possible_cpus()) * abi.CONST["LRU_HEADROOM_PER_CPU"]
    return {"conn_table": conn_table_size + headroom,
            "syn_table": syn_table_sets(conn_table_size),
            "syn_spill": syn_table_size(conn_table_size) + headroom,
            "udp_table": udp_table_size(conn_table_size) + headroom}


def flow_cache_shape(conn_table_size: int, cpus: int | None = None) -> tuple[int, int]:
    """(CPUs, log2 of the sets per CPU) of flow_cache, each CPU's cache of the connections
    it forwards: with flows spread over the CPUs, ways for about a quarter of
    conn_table_size's share of each (a power of two of sets of FLOW_CACHE_WAYS, one cache
    line each, 2^10 to 2^17: 64 KiB to 8 MiB a CPU; at least 2^10 so that a way's check
    bits and the set tell the client's address and port exactly: bpf/dr_lb_consts.h).
    A quarter, not more: a key whose home set is full takes its alternate set, so the
    ways fill to ~90 % without losing flows, and a cache that outgrows the CPU's own
    (2 MiB of L2 a core here) pays a cold line per packet: 1,000,000 connections on 2
    CPUs make 2^14 sets, 1 MiB a CPU, 131,072 flows (bench/HISTORY.md, tenth round)."""
    cpus = cpus or possible_cpus()
    want = -(-conn_table_size // (4 * cpus * abi.CONST["FLOW_CACHE_WAYS"]))
    return cpus, min(17, max(10, (want - 1).bit_length()))


def table_memory_bytes(conn_table_size: int, cpus: int | None = None) -> int:
    """What conn_table, syn_table, udp_table and flow_cache take in kernel memory for
    `conn_table_size` (table_slots and flow_cache_shape: the sizes the program is compiled
    with). Checked against the kernel's own figure (fdinfo memlock) in
    tests/test_harden_packets.py."""
    key, value = abi.ffi.sizeof("struct conn_key"), abi.ffi.sizeof("struct conn_value")
    n_cpus, log2 = flow_cache_shape(conn_table_size, cpus)
    slots = table_slots(conn_table_size, cpus)
    return sum(_lru_hash_bytes(slots[n], key, value)
               for n in ("conn_table", "syn_spill", "udp_table")) + \
        slots["syn_table"] * abi.ffi.sizeof("struct syn_set") + \
        (n_cpus << log2) * abi.ffi.sizeof("struct flow_set")


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n < 10 * 2**30 else f"{n / 2**30:,.1f} GiB"


def udp_table_size(conn_table_size: int) -> int:
    """UDP flows are kept apart from the TCP tables, so that a UDP flood (spoofed
    datagrams need no handshake) evicts only UDP flows: a quarter of conn_table_size, at
    least 1024."""
    return max(1024, conn_table_size // 4)


@dataclass(frozen=True)
class Director:
    interface: str
    xdp_mode: str = "auto"
    icmp_echo: bool = True
    conn_table_size: int = abi.CONST["CONN_TABLE_SIZE"]
    vrrp: bool = False        # answer ARP for the VIPs only while keepalived says MASTER


@dataclass(frozen=True)
class Announce:
    """[announce]: the VIPs dr-lb announces through BIRD 2 (lb/director/announce.py).
    dr-lb owns `snippet` (a static protocol named `protocol` with a /32 per announced
    VIP); the operator's bird.conf includes it and exports it to the BGP neighbours."""
    daemon: str = "bird"
    snippet: str = "/etc/bird/dr-lb.conf"
    control_socket: str = "/run/bird/bird.ctl"
    protocol: str = "dr_lb_vips"
    linger: float = 1.0       # seconds the program still forwards after the withdrawal


@dataclass(frozen=True)
class Metrics:
    listen: tuple[str, int]     # where `up` serves Prometheus' /metrics


@dataclass(frozen=True)
class Config:
    director: Director
    timeouts: Timeouts = field(default_factory=Timeouts)
    services: tuple[Service, ...] = ()
    source: str = "config"
    metrics: Metrics | None = None   # [metrics]; None: no /metrics
    announce: Announce | None = None

    @property
    def vips(self) -> list[str]:
        return sorted({s.vip for s in self.services}, key=ipaddress.IPv4Address)


def limit_problems(n_services: int, n_reals: int, seq_slots: int,
                   sched_slots: int = 0) -> list[str]:
    """Every size limit of the maps, checked here only (validation and reload)."""
    problems = []
    if n_services > abi.CONST["MAX_SERVICES"]:
        problems.append(f"{n_services} services; at most {abi.CONST['MAX_SERVICES']} "
                        "are supported")
    if n_reals > abi.CONST["MAX_REALS"]:
        problems.append(f"{n_reals} real servers in all; at most {abi.CONST['MAX_REALS']} "
                        "are supported")
    if seq_slots > abi.SEQ_HALF:
        problems.append(f"the weights need a round-robin sequence of {seq_slots} slots, "
                        f"more than {abi.SEQ_HALF}; use smaller weights with the same "
                        "ratio (e.g. 2:1 instead of 2000:1000)")
    if sched_slots > abi.SCHED_HALF:
        problems.append(f"the sh/mh tables and real-server lists need {sched_slots} slots, "
                        f"more than {abi.SCHED_HALF} (each mh service takes "
                        f"{abi.CONST['MH_TABLE_SIZE']}); use fewer mh services")
    return problems


def load(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path.name}: not UTF-8 (byte {e.object[e.start]:#04x} at offset "
                           f"{e.start}); TOML files are UTF-8: save it as UTF-8"]) from None
    return parse(text, source=path.name)


def parse(text: str, source: str = "config") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: not valid TOML: {e}; fix the syntax there"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: arrays or tables nested too deep to read; a dr-lb "
                           "config nests at most three levels"]) from None
    return from_dict(data, source)


class _Checker:
    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{self.source}: {where}: {message}" if where
                             else f"{self.source}: {message}")

    def unknown_keys(self, where: str, table: dict, allowed: set[str]) -> None:
        for key in sorted(set(table) - allowed):
            self.fail(where, f"unknown key '{key}' (a typo?); known keys: "
                             + ", ".join(sorted(allowed)))

    def number(self, where: str, table: dict, key: str, default: float,
               lo: float, hi: float) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(where, f"{key} = {value!r} must be a number of seconds from {lo:g} "
                             f"to {hi:g}")
            return default
        if not lo <= value <= hi:
            self.fail(where, f"{key} = {value:g} is out of range; use {lo:g} to {hi:g} "
                             "(seconds)")
            return default
        return float(value)

    def integer(self, where: str, table: dict, key: str, default: int | None,
                lo: int, hi: int) -> int | None:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"{key} = {value!r} must be a whole number from {lo} to {hi}")
            return default
        if not lo <= value <= hi:
            self.fail(where, f"{key} = {value} is out of range; use {lo} to {hi}")
            return default
        return value

    def choice(self, where: str, table: dict, key: str, default: str,
               choices: tuple[str, ...]) -> str:
        value = table.get(key, default)
        if value not in choices:
            self.fail(where, f"{key} = {value!r} is not known; use one of "
                             + ", ".join(f'"{c}"' for c in choices))
            return default
        return value

    def ipv4(self, where: str, table: dict, key: str) -> str | None:
        value = table.get(key)
        if value is None:
            self.fail(where, f"{key} is required (an IPv4 address such as \"192.168.0.21\")")
            return None
        try:
            if not isinstance(value, str):   # IPv4Address(1) would be 0.0.0.1
                raise ValueError
            addr = ipaddress.IPv4Address(value)
        except ValueError:
            self.fail(where, f"{key} = {value!r} is not an IPv4 address; "
                             "write it as \"192.168.0.21\"")
            return None
        if (addr.is_multicast or addr.is_unspecified or addr.is_reserved
                or addr in ipaddress.IPv4Network("0.0.0.0/8")):
            self.fail(where, f"{key} = {value} cannot be used; give a unicast address")
            return None
        if addr.is_loopback:
            self.fail(where, f"{key} = {value} is a loopback address (127.0.0.0/8), which "
                             "never leaves a host; give an address on the director's segment")
            return None
        return str(addr)

    def table(self, where: str, data: dict, key: str) -> dict:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.fail(where, f"{key} = {value!r} must be a table; write [{key}] on a line "
                             "of its own with its keys below it")
            return {}
        return value


def from_dict(data: dict, source: str = "config") -> Config:
    c = _Checker(source)
    c.unknown_keys("", data, TOP_KEYS)

    d = c.table("", data, "director")
    if "director" not in data:
        c.fail("[director]", "missing; add [director] with interface = \"eth0\"")
    c.unknown_keys("[director]", d, DIRECTOR_KEYS)
    interface = d.get("interface")
    if "interface" not in d:
        if isinstance(data.get("director"), dict):
            c.fail("[director]", "interface is required; give the name of the director's "
                                 "network interface, e.g. interface = \"eth0\"")
        interface = "?"
    elif not isinstance(interface, str) or not interface or len(interface) > 15 \
            or "/" in interface or any(ch.isspace() for ch in interface):
        c.fail("[director]", f"interface = {interface!r} is not an interface name; give the "
                             "name of the director's network interface, e.g. "
                             "interface = \"eth0\"")
        interface = "?"
    elif interface == "lo":
        c.fail("[director]", "interface = \"lo\" is the loopback interface, which has no "
                             "Ethernet address and no neighbours; give the Ethernet interface "
                             "on the real servers' segment, e.g. interface = \"eth0\"")
    icmp_echo = d.get("icmp_echo", True)
    if not isinstance(icmp_echo, bool):
        c.fail("[director]", f"icmp_echo = {icmp_echo!r} must be true or false")
        icmp_echo = True
    vrrp = d.get("vrrp", False)
    if not isinstance(vrrp, bool):
        c.fail("[director]", f"vrrp = {vrrp!r} must be true or false")
        vrrp = False
    director = Director(
        vrrp=vrrp,
        interface=interface,
        xdp_mode=c.choice("[director]", d, "xdp_mode", "auto", XDP_MODES),
        icmp_echo=icmp_echo,
        conn_table_size=c.integer("[director]", d, "conn_table_size",
                                  abi.CONST["CONN_TABLE_SIZE"], 1024, 100_000_000),
    )

    announce = _announce(c, data) if "announce" in data else None

    t = c.table("", data, "timeouts")
    c.unknown_keys("[timeouts]", t, TIMEOUT_KEYS)
    one_year = 365 * 24 * 3600
    timeouts = Timeouts(**{k: c.integer("[timeouts]", t, k, getattr(Timeouts, k), 1, one_year)
                           for k in ("tcp", "tcpfin", "udp")})

    metrics = None
    if "metrics" in data:
        m = c.table("", data, "metrics")
        c.unknown_keys("[metrics]", m, METRICS_KEYS)
        listen = _listen(m.get("listen"))
        if "listen" not in m:
            c.fail("[metrics]", "listen is missing: write listen = \"127.0.0.1:9469\" (where "
                                "to serve /metrics), or remove [metrics] to serve none")
        elif listen is None:
            c.fail("[metrics]", f"listen = {m.get('listen')!r} is not an address:port to "
                                "serve /metrics on; write it as listen = \"127.0.0.1:9469\" "
                                "(or remove [metrics] to serve none)")
        else:
            metrics = Metrics(listen=listen)

    raw_services = data.get("service", [])
    if not isinstance(raw_services, list):
        c.fail("", "service must be written as [[service]] tables")
        raw_services = []
    if not raw_services and "service" not in data:
        c.fail("", "no [[service]] defined; add at least one with vip, port and a "
                   "[[service.real_server]]")
    services: list[Service] = []
    seen_services: dict[tuple, int] = {}
    for n, s in enumerate(raw_services, 1):
        svc = _service(c, n, s)
        if svc is None:
            continue
        key = (svc.vip, svc.port, svc.protocol)
        if key in seen_services:
            c.fail(f"service {svc.name}", f"defined twice (entries {seen_services[key]} "
                                          f"and {n}); merge them into one [[service]]")
            continue
        seen_services[key] = n
        services.append(svc)

    _vips_that_are_real_servers(c, services)
    for problem in limit_problems(
            len(services), sum(len(s.real_servers) + bool(s.sorry_server) for s in services),
            sum(s.seq_slots() for s in services), sum(s.sched_slots() for s in services)):
        c.fail("", problem)

    if c.problems:
        raise ConfigError(c.problems)
    return Config(director=director, timeouts=timeouts, services=tuple(services),
                  source=source, announce=announce, metrics=metrics)


def _announce(c: _Checker, data: dict) -> Announce:
    a = c.table("", data, "announce")
    c.unknown_keys("[announce]", a, ANNOUNCE_KEYS)
    values = {"daemon": c.choice("[announce]", a, "daemon", Announce.daemon,
                                 ANNOUNCE_DAEMONS)}
    for key in ("snippet", "control_socket"):
        value = a.get(key, getattr(Announce, key))
        if not isinstance(value, str) or not value.startswith("/") or "\0" in value \
                or '"' in value:
            c.fail("[announce]", f"{key} = {value!r} must be an absolute path, e.g. "
                                 f"{key} = \"{getattr(Announce, key)}\"")
        else:
            values[key] = value
    protocol = a.get("protocol", Announce.protocol)
    if not isinstance(protocol, str) or not BIRD_NAME_RE.match(protocol):
        c.fail("[announce]", f"protocol = {protocol!r} is not a BIRD protocol name; use "
                             "letters, digits and _, e.g. protocol = \"dr_lb_vips\"")
    else:
        values["protocol"] = protocol
    values["linger"] = c.number("[announce]", a, "linger", Announce.linger, 0, 60)
    return Announce(**values)


def _vips_that_are_real_servers(c: _Checker, services: list[Service]) -> None:
    """The director answers ARP for every VIP, so a VIP that is also a real server's
    address would pull that server's traffic (and its health) to the director."""
    vips = {s.vip for s in services}
    reported = set()
    for svc in services:
        for rs in svc.real_servers:
            if rs.address in vips and rs.address != svc.vip \
                    and (svc.name, rs.address) not in reported:
                reported.add((svc.name, rs.address))
                users = ", ".join(s.name for s in services if s.vip == rs.address)
                c.fail(f"service {svc.name}, real server {rs.address}:{rs.port}",
                       f"this address is also a VIP ({users}): the director answers ARP for "
                       "every VIP, so its frames would come to the director instead of the "
                       "real server; give the VIP or the real server another address")


def _service(c: _Checker, n: int, s) -> Service | None:
    if not isinstance(s, dict):
        c.fail(f"service entry {n}", "must be a [[service]] table")
        return None
    vip = c.ipv4(f"service entry {n}", s, "vip")
    # Until they are checked, name the service by what was written.
    where0 = f"service {vip or '?'}:{s.get('port', '?')}/{s.get('protocol', 'tcp')}"
    c.unknown_keys(where0, s, SERVICE_KEYS)
    port = None
    if "port" not in s:
        c.fail(where0, "port is required (1-65535)")
    else:
        port = c.integer(where0, s, "port", None, 1, 65535)
    protocol = c.choice(where0, s, "protocol", "tcp", PROTOCOLS)
    scheduler = c.choice(where0, s, "scheduler", "wrr", SCHEDULERS)
    flags = _scheduler_flags(c, where0, s, scheduler)
    ops = s.get("ops", False)
    if not isinstance(ops, bool):
        c.fail(where0, f"ops = {ops!r} must be true or false")
        ops = False
    elif ops and protocol != "udp":
        c.fail(where0, "ops = true (one-packet scheduling, ipvsadm -o) is for UDP services "
                       "only: each packet of a TCP connection must follow its connection "
                       "entry; remove ops, or use protocol = \"udp\"")
        ops = False
    persistent = c.integer(where0, s, "persistent", 0, 0, 365 * 24 * 3600)
    netmask = _netmask(s.get("persistent_netmask", "255.255.255.255"))
    if netmask is None:
        c.fail(where0, f"persistent_netmask = {s['persistent_netmask']!r} is not a netmask; "
                       "write it as \"255.255.255.0\"")
        netmask = "255.255.255.255"
    where = (f"service {vip or '?'}:{port if port is not None else s.get('port', '?')}"
             f"/{s.get('protocol', 'tcp')}")
    raw_health = s.get("health")
    health = _health(c, f"{where}, [service.health]", raw_health, Health(),
                     "tcp" if raw_health is not None else "none", "[service.health]")
    sorry = c.ipv4(where, s, "sorry_server") if "sorry_server" in s else None

    raw_reals = s.get("real_server", [])
    if not isinstance(raw_reals, list) or not raw_reals:
        c.fail(where, "has no real server; add a [[service.real_server]] with an address")
        raw_reals = [] if not isinstance(raw_reals, list) else raw_reals
    reals: list[RealServer] = []
    seen: set[str] = set()
    for m, r in enumerate(raw_reals, 1):
        if not isinstance(r, dict):
            c.fail(where, f"real server entry {m} must be a [[service.real_server]] table")
            continue
        addr = c.ipv4(f"{where}, real server entry {m}", r, "address")
        rport_label = r.get("port", port if port is not None else "?")
        rwhere = f"{where}, real server {addr or '?'}:{rport_label}"
        c.unknown_keys(rwhere, r, REAL_SERVER_KEYS)
        if "port" in r:
            rport = c.integer(rwhere, r, "port", None, 1, 65535)
            if rport is not None and port is not None and rport != port:
                c.fail(rwhere, f"DR cannot change ports; use port {port} (or leave port out)")
        weight = c.integer(rwhere, r, "weight", 1, 0, 65535)
        upper = c.integer(rwhere, r, "upper", 0, 0, THRESHOLD_MAX)
        lower = c.integer(rwhere, r, "lower", 0, 0, THRESHOLD_MAX)
        if lower > upper:
            c.fail(rwhere, f"lower = {lower} is above upper = {upper}: a server stops taking "
                           "connections at upper and resumes below lower (ipvsadm -x/-y); "
                           "set lower to at most upper, or 0 for 3/4 of upper")
            lower = 0
        drained = r.get("drained", False)
        if not isinstance(drained, bool):
            c.fail(rwhere, f"drained = {drained!r} must be true or false")
            drained = False
        mac = r.get("mac")
        if mac is not None and not _unicast_mac(mac):
            c.fail(rwhere, f"mac = {mac!r} is not a unicast MAC address; write it as "
                           "\"52:54:00:12:34:56\" or leave it out to use the neighbour table")
            mac = None
        rs_raw_health = r.get("health")
        rs_health = health
        if rs_raw_health is not None:
            rs_health = _health(c, f"{rwhere}, [service.real_server.health]", rs_raw_health,
                                health, health.type if raw_health is not None else "tcp",
                                "[service.real_server.health]")
        if (protocol == "udp" and rs_health.checked and rs_health.port is None
                and isinstance(rs_raw_health, dict)
                and ("type" in rs_raw_health or raw_health is None)):
            c.fail(f"{rwhere}, [service.real_server.health]", _UDP_NEEDS_PORT.format(
                type=rs_health.type))
        if addr is None:
            continue
        if addr == vip:
            c.fail(rwhere, "a real server cannot have the VIP as its address; give the "
                           "real server's own address (RIP)")
        if addr in seen:
            c.fail(rwhere, "listed twice in this service; keep one entry")
            continue
        seen.add(addr)
        reals.append(RealServer(address=addr, port=port or 0, weight=weight,
                                mac=mac.lower() if mac else None, drained=drained,
                                upper=upper, lower=lower, health=rs_health))
    if isinstance(raw_health, dict):
        hwhere = f"{where}, [service.health]"
        if protocol == "udp" and health.checked and health.port is None and \
                any(rs.health is health for rs in reals):
            c.fail(hwhere, _UDP_NEEDS_PORT.format(type=health.type))
        # An http-only key here is used if some real server's check is http.
        if health.type != "http" and not any(rs.health.type == "http" for rs in reals):
            for key in HTTP_ONLY_KEYS:
                if key in raw_health:
                    c.fail(hwhere, f"{key} is only used by type = \"http\" checks (here type "
                                   f"= \"{health.type}\"); remove {key} or set type = \"http\"")
    if sorry is not None:
        if sorry == vip:
            c.fail(where, f"sorry_server = {sorry} is the VIP; give the address of a host on "
                          "the segment that serves the VIP (prepared like a real server)")
        elif sorry in seen:
            c.fail(where, f"sorry_server = {sorry} is a real server of this service; the "
                          "sorry server takes connections when no real server can, so give "
                          "another host's address")
    sloppy = s.get("sloppy", False)
    if not isinstance(sloppy, bool):
        c.fail(where, f"sloppy = {sloppy!r} must be true or false")
        sloppy = False
    elif sloppy and protocol != "tcp":
        c.fail(where, "sloppy = true concerns TCP only (a UDP datagram without a flow is "
                      "always scheduled); remove sloppy")
        sloppy = False
    elif sloppy and scheduler not in SLOPPY_SCHEDULERS:
        c.fail(where, f"sloppy = true needs scheduler = \"mh\" or \"sh\" (here "
                      f"\"{scheduler}\"): a connection picked up by another director keeps "
                      "its real server only if every director hashes it to the same one; "
                      "with wrr or rr its new server would reset it")
        sloppy = False
    if vip is None or port is None:
        return None
    svc = Service(vip=vip, port=port, protocol=protocol, scheduler=scheduler, sloppy=sloppy,
                  persistent=persistent, persistent_netmask=netmask,
                  real_servers=tuple(reals), scheduler_flags=flags, ops=ops,
                  health=health, sorry_server=sorry)
    most = abi.CONST["MAX_REALS_PER_SERVICE"]
    why = svc.loops_over_reals()
    if why and len(reals) > most:
        c.fail(where, f"{len(reals)} real servers, but {why} for each new connection, and "
                      f"then at most {most} are supported; split the service, or use "
                      "wrr or mh (without fallback or thresholds)")
    return svc


def _scheduler_flags(c: _Checker, where: str, s: dict, scheduler: str) -> tuple[str, ...]:
    """ipvsadm -b: only the flags of the service's own scheduler."""
    flags = s.get("scheduler_flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        c.fail(where, f"scheduler_flags = {flags!r} must be a list of strings, e.g. "
                      "scheduler_flags = [\"mh-fallback\", \"mh-port\"]")
        return ()
    own = SCHEDULER_FLAGS.get(scheduler, ())
    known = {f: sched for sched, fs in SCHEDULER_FLAGS.items() for f in fs}
    good = []
    for flag in flags:
        if flag in own:
            if flag not in good:
                good.append(flag)
        elif flag in known:
            c.fail(where, f"scheduler_flags: \"{flag}\" is a flag of scheduler "
                          f"\"{known[flag]}\", not of \"{scheduler}\"; remove it, or set "
                          f"scheduler = \"{known[flag]}\"")
        else:
            takes = (f"scheduler \"{scheduler}\" takes "
                     + ", ".join(f'"{f}"' for f in own)) if own else \
                f"scheduler \"{scheduler}\" takes no flags"
            c.fail(where, f"scheduler_flags: \"{flag}\" is not known; {takes} "
                          "(sh takes sh-fallback, sh-port; mh takes mh-fallback, mh-port)")
    return tuple(f for f in own if f in good)   # a set: one order, as ipvsadm prints them


_UDP_NEEDS_PORT = ("type = \"{type}\" checks a UDP service's real servers over TCP; give the "
                   "TCP port to check, e.g. port = 53 for a DNS server, or type = \"none\"")


def _health(c: _Checker, where: str, raw, base: Health, default_type: str,
            name: str) -> Health:
    """One health table checked and laid over `base` (the service's, for a real server);
    `default_type` applies when the table has no type."""
    if raw is None:
        return base
    if not isinstance(raw, dict):
        c.fail(where, f"health = {raw!r} must be a table; write {name} on a line of its own "
                      "with its keys (type, interval, ...) below it")
        return base
    c.unknown_keys(where, raw, HEALTH_KEYS)
    values = {
        "type": c.choice(where, raw, "type", default_type, HEALTH_TYPES),
        "interval": c.number(where, raw, "interval", base.interval, *HEALTH_INTERVAL_S),
        "timeout": c.number(where, raw, "timeout", base.timeout, *HEALTH_INTERVAL_S),
        "rise": c.integer(where, raw, "rise", base.rise, *HEALTH_COUNT),
        "fall": c.integer(where, raw, "fall", base.fall, *HEALTH_COUNT),
        "on_failure": c.choice(where, raw, "on_failure", base.on_failure, ON_FAILURE),
        "port": base.port, "path": base.path, "expect": base.expect, "host": base.host,
    }
    if "port" in raw:
        values["port"] = c.integer(where, raw, "port", base.port, 1, 65535)
    if values["timeout"] > values["interval"]:
        if "timeout" in raw:
            c.fail(where, f"timeout = {values['timeout']:g} is longer than interval = "
                          f"{values['interval']:g}; a check must end before the next one "
                          "starts: make timeout at most interval")
        else:   # a default or inherited timeout follows a shorter interval
            values["timeout"] = values["interval"]
    path = raw.get("path", base.path)
    if not isinstance(path, str) or not URL_PATH_RE.match(path):
        c.fail(where, f"path = {path!r} is not a URL path; write it as path = \"/healthz\" "
                      "(starting with /, no spaces)")
    else:
        values["path"] = path
    if "expect" in raw:
        expect = raw["expect"]
        codes = expect if isinstance(expect, list) else [expect]
        if not codes or any(isinstance(x, bool) or not isinstance(x, int)
                            or not 100 <= x <= 599 for x in codes):
            c.fail(where, f"expect = {expect!r} is not an HTTP status code or a list of them; "
                          "write expect = 200 or expect = [200, 301]")
        else:
            values["expect"] = tuple(sorted(set(codes)))
    if "host" in raw:
        host = raw["host"]
        if not isinstance(host, str) or not HOST_RE.match(host):
            c.fail(where, f"host = {host!r} is not a host name; write it as "
                          "host = \"www.example.com\" (the Host header the check sends)")
        else:
            values["host"] = host
    if values["type"] != "http":
        for key in HTTP_ONLY_KEYS:
            if key in raw and name != "[service.health]":
                c.fail(where, f"{key} is only used by type = \"http\" checks (here type = "
                              f"\"{values['type']}\"); remove {key} or set type = \"http\"")
    return Health(**values)


def _listen(value) -> tuple[str, int] | None:
    """"127.0.0.1:9469", "[::1]:9469" or ":9469" (every address) as (host, port)."""
    if not isinstance(value, str) or ":" not in value:
        return None
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None
    return host, int(port)


def _netmask(value) -> str | None:
    """A dotted netmask (or a prefix length) in dotted form; None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        mask = ipaddress.IPv4Network(f"0.0.0.0/{value}").netmask
    except ValueError:
        return None
    # ipaddress also reads a hostmask ("0.0.0.255" as /24); ipvsadm -M takes a netmask.
    if "." in value and str(mask) != value:
        return None
    return str(mask)


def _unicast_mac(value) -> bool:
    if not isinstance(value, str) or not MAC_RE.match(value):
        return False
    first = int(value[:2], 16)
    return not first & 1 and value.replace(":", "").strip("0") != ""
