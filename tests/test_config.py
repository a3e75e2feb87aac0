"""Layer 1: config validation, pure Python. Every error names the entry at fault and the fix.

The system checks (interface exists and is Ethernet, VIP is not the director's address,
real servers are not the director) read a scratch network namespace with a dummy
interface (root), so nothing of the host's is read or touched.
"""
from __future__ import annotations

import pytest

from lb import abi
from lb.director import config
from lb.director.config import ConfigError
from tests.conftest import SCRATCH_ADDRESS, SCRATCH_IFACE, SCRATCH_MAC

SOURCE = "config.toml"
DIRECTOR = '[director]\ninterface = "eth0"\n'
VIP_SERVICE = 'vip = "192.168.0.21"\nport = 80'
RS12 = 'address = "192.168.0.12"'
RS13 = 'address = "192.168.0.13"'

# The issue's example, comments and all.
ISSUE_EXAMPLE = '''
[director]
interface = "eth0"           # required: where XDP attaches and where ARP for the VIPs is answered
xdp_mode = "auto"            # "native" | "generic" | "auto" (try native, fall back to generic)

[timeouts]                   # seconds, as `ipvsadm --set tcp tcpfin udp`; these are the defaults
tcp = 900
tcpfin = 120
udp = 300

[[service]]
vip = "192.168.0.21"
port = 80
protocol = "tcp"             # "tcp" | "udp"
scheduler = "wrr"            # "wrr" | "rr"
persistent = 0               # seconds, as `ipvsadm -p`; 0 = off
persistent_netmask = "255.255.255.255"   # as `ipvsadm -M`

[[service.real_server]]
address = "192.168.0.12"
weight = 2                   # 0..65535, default 1; 0 = quiesced: no new connections, existing ones go on
# port: optional, defaults to the service port; any other value is rejected (DR cannot change ports)
# mac:  optional; otherwise resolved through the kernel's neighbour table

[[service.real_server]]
address = "192.168.0.13"
weight = 1

[[service.real_server]]
address = "192.168.0.14"
weight = 1
'''


def service(body: str = VIP_SERVICE, *reals: str) -> str:
    """A [[service]] table with one [[service.real_server]] per entry of `reals`."""
    reals = reals or (RS12,)
    return (f"[[service]]\n{body}\n"
            + "".join(f"[[service.real_server]]\n{r}\n" for r in reals))


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(text, source=SOURCE)
    problems = info.value.problems
    assert problems, "ConfigError raised without any problem"
    for p in problems:
        assert p.startswith(f"{SOURCE}: "), f"problem does not name the file first: {p!r}"
        assert "\n" not in p, f"a problem must be one line: {p!r}"
    return problems


def only_problem(text: str) -> str:
    problems = problems_of(text)
    assert len(problems) == 1, ("one mistake should give one problem, not a cascade; got:\n"
                                + "\n".join(problems))
    return problems[0]


# --- what a good file gives ------------------------------------------------------------

def test_issue_example_parses_with_its_values():
    cfg = config.parse(ISSUE_EXAMPLE, source=SOURCE)
    assert cfg.director.interface == "eth0"
    assert cfg.director.xdp_mode == "auto"
    assert cfg.director.icmp_echo is True, "icmp_echo should default to on"
    assert (cfg.timeouts.tcp, cfg.timeouts.tcpfin, cfg.timeouts.udp) == (900, 120, 300)
    assert len(cfg.services) == 1
    svc = cfg.services[0]
    assert (svc.vip, svc.port, svc.protocol, svc.scheduler) == ("192.168.0.21", 80, "tcp", "wrr")
    assert (svc.persistent, svc.persistent_netmask) == (0, "255.255.255.255")
    assert [(r.address, r.port, r.weight, r.mac) for r in svc.real_servers] == [
        ("192.168.0.12", 80, 2, None), ("192.168.0.13", 80, 1, None),
        ("192.168.0.14", 80, 1, None)]
    assert svc.name == "192.168.0.21:80/tcp"
    assert cfg.vips == ["192.168.0.21"]
    assert cfg.source == SOURCE


def test_defaults_when_left_out():
    cfg = config.parse(DIRECTOR + service('vip = "192.168.0.21"\nport = 8080', RS12))
    assert (cfg.timeouts.tcp, cfg.timeouts.tcpfin, cfg.timeouts.udp) == (900, 120, 300), \
        "timeouts must default to ipvsadm's 900/120/300"
    svc = cfg.services[0]
    assert (svc.protocol, svc.scheduler, svc.persistent, svc.persistent_netmask) == \
        ("tcp", "wrr", 0, "255.255.255.255")
    rs = svc.real_servers[0]
    assert rs.weight == 1, "weight must default to 1"
    assert rs.port == 8080, "a real server's port must default to the service port"
    assert cfg.director.xdp_mode == "auto"


def test_real_server_may_repeat_the_service_port():
    cfg = config.parse(DIRECTOR + service(VIP_SERVICE, RS12 + "\nport = 80"))
    assert cfg.services[0].real_servers[0].port == 80


@pytest.mark.parametrize("weight", [0, 65535])
def test_weight_bounds_are_accepted(weight):
    cfg = config.parse(DIRECTOR + service(VIP_SERVICE, RS12 + f"\nweight = {weight}"))
    assert cfg.services[0].real_servers[0].weight == weight


def test_same_vip_and_port_with_another_protocol_is_another_service():
    text = DIRECTOR + service(VIP_SERVICE) + service(VIP_SERVICE + '\nprotocol = "udp"')
    cfg = config.parse(text)
    assert [s.name for s in cfg.services] == ["192.168.0.21:80/tcp", "192.168.0.21:80/udp"]


def test_same_real_server_in_two_services_is_fine():
    text = DIRECTOR + service(VIP_SERVICE, RS12) + service('vip = "192.168.0.21"\nport = 443',
                                                           RS12)
    assert len(config.parse(text).services) == 2


def test_mac_is_kept_in_lower_case():
    cfg = config.parse(DIRECTOR + service(VIP_SERVICE, RS12 + '\nmac = "52:54:00:AB:CD:EF"'))
    assert cfg.services[0].real_servers[0].mac == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize("written, netmask", [
    ("255.255.255.255", "255.255.255.255"),
    ("255.255.255.0", "255.255.255.0"),
    ("255.255.0.0", "255.255.0.0"),
    ("0.0.0.0", "0.0.0.0"),
])
def test_good_persistent_netmask(written, netmask):
    cfg = config.parse(DIRECTOR + service(VIP_SERVICE + "\npersistent = 300\n"
                                          f'persistent_netmask = "{written}"'))
    assert cfg.services[0].persistent_netmask == netmask
    assert cfg.services[0].persistent == 300


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(ISSUE_EXAMPLE)
    cfg = config.load(path)
    assert cfg.services[0].vip == "192.168.0.21"
    assert cfg.source == "config.toml"


def test_load_names_the_file_in_its_errors(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text(DIRECTOR + service('vip = "192.168.0.21"\nport = 0'))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.problems[0].startswith("lab.toml: "), info.value.problems


def test_load_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "nope.toml")
    assert len(info.value.problems) == 1
    assert "nope.toml" in info.value.problems[0] and "cannot read" in info.value.problems[0]


# --- every error the issue lists: (config text, what the message must say) ------------
# Each message must name the entry at fault (the first strings) and say how to fix it
# (the last string).

BAD_ADDRESS = [
    pytest.param(DIRECTOR + service('vip = "192.168.0.300"\nport = 80'),
                 ["service entry 1", "vip = '192.168.0.300'", 'write it as "192.168.0.21"'],
                 id="vip-not-an-address"),
    pytest.param(DIRECTOR + service('vip = "fe80::1"\nport = 80'),
                 ["service entry 1", "vip = 'fe80::1'", "not an IPv4 address"],
                 id="vip-ipv6"),
    pytest.param(DIRECTOR + service("vip = 1\nport = 80"),
                 ["service entry 1", "vip = 1", 'write it as "192.168.0.21"'],
                 id="vip-an-integer"),
    pytest.param(DIRECTOR + service('vip = "224.0.0.1"\nport = 80'),
                 ["service entry 1", "vip = 224.0.0.1", "give a unicast address"],
                 id="vip-multicast"),
    pytest.param(DIRECTOR + service('vip = "0.0.0.0"\nport = 80'),
                 ["service entry 1", "vip = 0.0.0.0", "give a unicast address"],
                 id="vip-unspecified"),
    pytest.param(DIRECTOR + service('vip = "0.1.2.3"\nport = 80'),
                 ["service entry 1", "vip = 0.1.2.3", "give a unicast address"],
                 id="vip-this-network"),
    pytest.param(DIRECTOR + service('vip = "240.0.0.1"\nport = 80'),
                 ["service entry 1", "vip = 240.0.0.1", "give a unicast address"],
                 id="vip-reserved"),
    pytest.param(DIRECTOR + service('vip = "255.255.255.255"\nport = 80'),
                 ["service entry 1", "vip = 255.255.255.255", "give a unicast address"],
                 id="vip-broadcast"),
    pytest.param(DIRECTOR + service("port = 80"),
                 ["service entry 1", "vip is required", '"192.168.0.21"'],
                 id="vip-missing"),
    pytest.param(DIRECTOR + service(VIP_SERVICE, 'address = "192.168.0"'),
                 ["service 192.168.0.21:80/tcp, real server entry 1", "address = '192.168.0'",
                  'write it as "192.168.0.21"'],
                 id="real-server-not-an-address"),
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12, 'address = "192.168.0.13 "'),
                 ["service 192.168.0.21:80/tcp, real server entry 2", "address = '192.168.0.13 '",
                  'write it as "192.168.0.21"'],
                 id="second-real-server-not-an-address"),
    pytest.param(DIRECTOR + service(VIP_SERVICE, "weight = 2"),
                 ["service 192.168.0.21:80/tcp, real server entry 1", "address is required",
                  '"192.168.0.21"'],
                 id="real-server-address-missing"),
    pytest.param(DIRECTOR + service(VIP_SERVICE, 'address = "192.168.0.21"'),
                 ["service 192.168.0.21:80/tcp, real server 192.168.0.21:80",
                  "cannot have the VIP", "real server's own address"],
                 id="real-server-is-the-vip"),
]

BAD_PORT = [
    pytest.param(DIRECTOR + service('vip = "192.168.0.21"\nport = 0'),
                 ["service 192.168.0.21:0/tcp", "port = 0", "use 1 to 65535"], id="port-0"),
    pytest.param(DIRECTOR + service('vip = "192.168.0.21"\nport = 65536'),
                 ["service 192.168.0.21:65536/tcp", "port = 65536", "use 1 to 65535"],
                 id="port-65536"),
    pytest.param(DIRECTOR + service('vip = "192.168.0.21"\nport = -80'),
                 ["service 192.168.0.21:-80/tcp", "port = -80", "use 1 to 65535"],
                 id="port-negative"),
    pytest.param(DIRECTOR + service('vip = "192.168.0.21"\nport = "80"'),
                 ["service 192.168.0.21:80/tcp", "port = '80'", "whole number from 1 to 65535"],
                 id="port-a-string"),
    pytest.param(DIRECTOR + service('vip = "192.168.0.21"'),
                 ["service 192.168.0.21:?/tcp", "port is required", "1-65535"],
                 id="port-missing"),
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12 + "\nport = 70000"),
                 ["service 192.168.0.21:80/tcp, real server 192.168.0.12:70000", "port = 70000",
                  "use 1 to 65535"],
                 id="real-server-port-70000"),
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12 + "\nport = 8080"),
                 ["service 192.168.0.21:80/tcp, real server 192.168.0.12:8080",
                  "DR cannot change ports", "use port 80"],
                 id="real-server-port-differs"),
]

DUPLICATES = [
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12) + service(VIP_SERVICE, RS13),
                 ["service 192.168.0.21:80/tcp", "defined twice (entries 1 and 2)",
                  "merge them into one [[service]]"],
                 id="duplicate-service"),
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12, RS13, RS12 + "\nweight = 3"),
                 ["service 192.168.0.21:80/tcp, real server 192.168.0.12:80", "listed twice",
                  "keep one entry"],
                 id="duplicate-real-server"),
]

BAD_WEIGHT = [
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12 + f"\nweight = {w}"),
                 ["service 192.168.0.21:80/tcp, real server 192.168.0.12:80", f"weight = {w}",
                  "use 0 to 65535"],
                 id=f"weight-{w}")
    for w in (-1, 65536)
] + [
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12 + "\nweight = 1.5"),
                 ["real server 192.168.0.12:80", "weight = 1.5", "whole number from 0 to 65535"],
                 id="weight-a-float"),
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12 + "\nweight = true"),
                 ["real server 192.168.0.12:80", "weight = True", "whole number from 0 to 65535"],
                 id="weight-a-bool"),
]

BAD_CHOICE = [
    pytest.param(DIRECTOR + service(VIP_SERVICE + '\nscheduler = "dh"'),
                 ["service 192.168.0.21:80/tcp", "scheduler = 'dh'",
                  'use one of "wrr", "rr", "sh", "mh", "lc", "wlc", "sed", "nq"'],
                 id="unknown-scheduler"),
    pytest.param(DIRECTOR + service(VIP_SERVICE + '\nscheduler = "WRR"'),
                 ["service 192.168.0.21:80/tcp", "scheduler = 'WRR'", 'use one of "wrr", "rr"'],
                 id="scheduler-in-capitals"),
    pytest.param(DIRECTOR + service(VIP_SERVICE + '\nprotocol = "sctp"'),
                 ["service 192.168.0.21:80/sctp", "protocol = 'sctp'", 'use one of "tcp", "udp"'],
                 id="unknown-protocol"),
    pytest.param('[director]\ninterface = "eth0"\nxdp_mode = "offload"\n' + service(),
                 ["[director]", "xdp_mode = 'offload'", 'use one of "auto", "native", "generic"'],
                 id="unknown-xdp-mode"),
]

UNKNOWN_KEYS = [
    pytest.param(DIRECTOR + "[timeout]\ntcp = 900\n" + service(),
                 ["unknown key 'timeout'", "a typo?", "known keys: announce, director, metrics, service, timeouts"],
                 id="typo-top-level"),
    pytest.param('[director]\ninterface = "eth0"\nxdp_mod = "native"\n' + service(),
                 ["[director]", "unknown key 'xdp_mod'", "known keys:", "xdp_mode"],
                 id="typo-in-director"),
    pytest.param(DIRECTOR + "[timeouts]\ntcp_fin = 60\n" + service(),
                 ["[timeouts]", "unknown key 'tcp_fin'", "known keys: tcp, tcpfin, udp"],
                 id="typo-in-timeouts"),
    pytest.param(DIRECTOR + service(VIP_SERVICE + "\npersistant = 300"),
                 ["service 192.168.0.21:80/tcp", "unknown key 'persistant'", "known keys:",
                  "persistent"],
                 id="typo-in-service"),
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12 + "\nwieght = 2"),
                 ["service 192.168.0.21:80/tcp, real server 192.168.0.12:80",
                  "unknown key 'wieght'",
                  "known keys: address, drained, health, lower, mac, port, upper, weight"],
                 id="typo-in-real-server"),
]

BAD_NETMASK = [
    pytest.param(DIRECTOR + service(VIP_SERVICE + f"\npersistent = 60\npersistent_netmask = {m}"),
                 ["service 192.168.0.21:80/tcp", f"persistent_netmask = {shown}",
                  'write it as "255.255.255.0"'],
                 id=f"netmask-{ident}")
    for m, shown, ident in [
        ('"255.0.255.0"', "'255.0.255.0'", "not-contiguous"),
        ('"0.0.0.255"', "'0.0.0.255'", "a-hostmask"),
        ('"255.255.255.256"', "'255.255.255.256'", "octet-256"),
        ('"/33"', "'/33'", "prefix-33"),
        ('"mask"', "'mask'", "a-word"),
        ("24", "24", "an-integer"),
    ]
]

BAD_MAC = [
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12 + f"\nmac = {m}"),
                 ["service 192.168.0.21:80/tcp, real server 192.168.0.12:80", f"mac = {shown}",
                  'write it as "52:54:00:12:34:56"'],
                 id=f"mac-{ident}")
    for m, shown, ident in [
        ('"52:54:00:12:34"', "'52:54:00:12:34'", "five-octets"),
        ('"52-54-00-12-34-56"', "'52-54-00-12-34-56'", "dashes"),
        ('"52:54:00:12:34:zz"', "'52:54:00:12:34:zz'", "not-hex"),
        ('"ff:ff:ff:ff:ff:ff"', "'ff:ff:ff:ff:ff:ff'", "broadcast"),
        ('"01:00:5e:00:00:01"', "'01:00:5e:00:00:01'", "multicast"),
        ('"00:00:00:00:00:00"', "'00:00:00:00:00:00'", "all-zero"),
        ("525400123456", "525400123456", "an-integer"),
    ]
]

DIRECTOR_PROBLEMS = [
    pytest.param(service(),
                 ["[director]", "missing", 'add [director] with interface = "eth0"'],
                 id="director-missing"),
    pytest.param('[director]\nxdp_mode = "generic"\n' + service(),
                 ["[director]", "interface is required", 'interface = "eth0"'],
                 id="interface-missing"),
    pytest.param('[director]\ninterface = ""\n' + service(),
                 ["[director]", "interface = ''", 'interface = "eth0"'],
                 id="interface-empty"),
    pytest.param('[director]\ninterface = "a-name-longer-than-15"\n' + service(),
                 ["[director]", "interface = 'a-name-longer-than-15'", 'interface = "eth0"'],
                 id="interface-too-long"),
    pytest.param('[director]\ninterface = 2\n' + service(),
                 ["[director]", "interface = 2", 'interface = "eth0"'],
                 id="interface-a-number"),
    pytest.param('director = "eth0"\n' + service(),
                 ["director = 'eth0'", "must be a table", "write [director]"],
                 id="director-not-a-table"),
    pytest.param('[director]\ninterface = "eth0"\nicmp_echo = "no"\n' + service(),
                 ["[director]", "icmp_echo = 'no'", "true or false"],
                 id="icmp-echo-not-a-bool"),
    pytest.param('[director]\ninterface = "eth0"\nconn_table_size = 10\n' + service(),
                 ["[director]", "conn_table_size = 10", "out of range; use 1024"],
                 id="conn-table-too-small"),
]

OTHER = [
    pytest.param(DIRECTOR + "[timeouts]\ntcp = 0\n" + service(),
                 ["[timeouts]", "tcp = 0", "out of range; use 1"], id="timeout-zero"),
    pytest.param(DIRECTOR + '[timeouts]\nudp = "5m"\n' + service(),
                 ["[timeouts]", "udp = '5m'", "whole number"], id="timeout-a-string"),
    pytest.param(DIRECTOR + service(VIP_SERVICE + "\npersistent = -1"),
                 ["service 192.168.0.21:80/tcp", "persistent = -1", "out of range; use 0"],
                 id="persistent-negative"),
    pytest.param(DIRECTOR,
                 ["no [[service]] defined", "add at least one"], id="no-service"),
    pytest.param(DIRECTOR + "[[service]]\n" + VIP_SERVICE + "\n",
                 ["service 192.168.0.21:80/tcp", "has no real server",
                  "add a [[service.real_server]]"],
                 id="service-without-real-server"),
    pytest.param(DIRECTOR + "[service]\n" + VIP_SERVICE + "\n",
                 ["service must be written as [[service]] tables"], id="service-not-an-array"),
    pytest.param(DIRECTOR + '[director.x]\n' + service(),
                 ["[director]", "unknown key 'x'"], id="subtable-in-director"),
]


@pytest.mark.parametrize("text, expected", BAD_ADDRESS + BAD_PORT + DUPLICATES + BAD_WEIGHT
                         + BAD_CHOICE + UNKNOWN_KEYS + BAD_NETMASK + BAD_MAC
                         + DIRECTOR_PROBLEMS + OTHER)
def test_error_names_the_entry_and_the_fix(text, expected):
    problem = only_problem(text)
    for part in expected:
        assert part in problem, f"expected {part!r} in the message, got: {problem!r}"


def test_toml_syntax_error_gives_the_place_and_one_line():
    text = DIRECTOR + '[[service]]\nvip = "192.168.0.21\nport = 80\n'
    problem = only_problem(text)
    assert "not valid TOML" in problem, problem
    assert "line 4" in problem, f"the message should give the line at fault: {problem!r}"
    assert "fix the syntax" in problem, problem


def test_unclosed_table_header_is_a_syntax_error():
    problem = only_problem("[director\ninterface = \"eth0\"\n")
    assert "not valid TOML" in problem and "line 1" in problem, problem


def test_config_error_str_is_one_line_per_problem():
    text = DIRECTOR + service('vip = "192.168.0.21"\nport = 0', RS12 + "\nweight = -1")
    with pytest.raises(ConfigError) as info:
        config.parse(text, source=SOURCE)
    assert str(info.value).splitlines() == info.value.problems


# --- problems are collected, not stopped at the first -----------------------------------

def test_several_problems_are_all_reported_in_file_order():
    text = (
        '[director]\ninterface = "eth0"\nxdp_mode = "fast"\n'
        "[timeouts]\ntcpfin = 0\n"
        + service('vip = "192.168.0.21"\nport = 80\nscheduler = "dh"',
                  RS12 + "\nweight = 70000", RS13 + "\nport = 81", RS12)
        + service('vip = "192.168.0.2x"\nport = 443', RS12)
        + service(VIP_SERVICE, RS13)
    )
    problems = problems_of(text)
    expected = [
        ("[director]", "xdp_mode = 'fast'"),
        ("[timeouts]", "tcpfin = 0"),
        ("service 192.168.0.21:80/tcp", "scheduler = 'dh'"),
        ("real server 192.168.0.12:80", "weight = 70000"),
        ("real server 192.168.0.13:81", "DR cannot change ports"),
        ("real server 192.168.0.12:80", "listed twice"),
        ("service entry 2", "vip = '192.168.0.2x'"),
        ("service 192.168.0.21:80/tcp", "defined twice (entries 1 and 3)"),
    ]
    assert len(problems) == len(expected), \
        "expected {} problems, got:\n{}".format(len(expected), "\n".join(problems))
    for problem, (entry, what) in zip(problems, expected):
        assert entry in problem and what in problem, \
            f"expected a problem about {entry!r} ({what!r}), got: {problem!r}"


def test_a_bad_service_port_does_not_blame_its_real_servers():
    problems = problems_of(DIRECTOR + service('vip = "192.168.0.21"\nport = 70000', RS12, RS13))
    assert len(problems) == 1, "only the service port is wrong, got:\n" + "\n".join(problems)


# --- what the data plane can hold ------------------------------------------------------

def test_weights_whose_cycle_does_not_fit_are_rejected_without_building_it(monkeypatch):
    from lb.director import scheduler
    monkeypatch.setattr(scheduler, "wrr_sequence", lambda weights: pytest.fail(
        "validation must size the cycle (wrr_length), not build it"))
    # 4000 servers at 65535 and 65534: a cycle of ~262 million slots, far over capacity.
    reals = [f'address = "10.{i // 250}.{i % 250}.1"\nweight = {65535 - i % 2}'
             for i in range(4000)]
    problem = only_problem(DIRECTOR + service(VIP_SERVICE, *reals))
    assert "round-robin sequence of" in problem and "use smaller weights with the same ratio" \
        in problem, problem


def test_too_many_real_servers():
    from lb import abi
    n = abi.CONST["MAX_REALS"] + 1
    reals = [f'address = "10.{i // 250}.{i % 250}.1"' for i in range(n)]
    problem = only_problem(DIRECTOR + service(VIP_SERVICE, *reals))
    assert f"{n} real servers in all" in problem and str(abi.CONST["MAX_REALS"]) in problem, \
        problem


# --- checks against this machine (lb/netif.py), in a scratch namespace -------------------

def scratch_config(vip: str, interface: str = SCRATCH_IFACE, *reals: str):
    return config.parse(f'[director]\ninterface = "{interface}"\n'
                        + service(f'vip = "{vip}"\nport = 80',
                                  *(reals or ('address = "192.0.2.12"',))),
                        source=SOURCE)


def test_system_check_passes_for_a_vip_the_director_does_not_own(scratch_netns):
    from lb.director import netif
    assert netif.config_problems(scratch_config("198.51.100.77")) == []


def test_system_check_rejects_a_vip_equal_to_the_directors_address(scratch_netns):
    from lb.director import netif
    problems = netif.config_problems(scratch_config(SCRATCH_ADDRESS))
    assert len(problems) == 1, problems
    problem = problems[0]
    assert problem.startswith(f"{SOURCE}: service {SCRATCH_ADDRESS}:80/tcp"), \
        f"the message should name the service: {problem!r}"
    assert "director's own address" in problem and SCRATCH_IFACE in problem, problem
    assert "give the VIP its own address" in problem, f"no fix given: {problem!r}"


def test_system_check_rejects_a_missing_interface_and_lists_existing_ones(scratch_netns):
    from lb.director import netif
    problems = netif.config_problems(scratch_config("198.51.100.77", interface="drlb-nosuch0"))
    assert len(problems) == 1, problems
    problem = problems[0]
    assert problem.startswith(f"{SOURCE}: [director]"), problem
    assert 'interface = "drlb-nosuch0" does not exist' in problem, problem
    assert "use one of:" in problem and SCRATCH_IFACE in problem.split("use one of:")[1], \
        f"the message should list the interfaces that exist: {problem!r}"


@pytest.mark.parametrize("name", ["lo", "tun0"])
def test_system_check_rejects_an_interface_without_an_ethernet_mac(scratch_netns, name):
    from lb.director import netif
    cfg = scratch_config("198.51.100.77")
    # "lo" is refused by the parser already; the machine check must refuse it too.
    cfg = config.Config(director=config.Director(interface=name), services=cfg.services,
                        source=SOURCE)
    (problem,) = netif.config_problems(cfg)
    assert f'interface = "{name}" has no Ethernet address' in problem, problem


@pytest.mark.parametrize("vip,which", [("198.51.100.0", "network"),
                                        ("198.51.100.255", "broadcast")])
def test_system_check_rejects_a_vip_at_the_edge_of_a_connected_subnet(scratch_netns, vip,
                                                                     which):
    from lb.director import netif
    (problem,) = netif.config_problems(scratch_config(vip))
    assert f"the VIP is the {which} address of 198.51.100.0/24" in problem, problem


def test_system_check_rejects_a_real_server_that_is_the_director(scratch_netns):
    from lb.director import netif
    (problem,) = netif.config_problems(
        scratch_config("198.51.100.77", SCRATCH_IFACE, f'address = "{SCRATCH_ADDRESS}"'))
    assert f"real server {SCRATCH_ADDRESS}:80" in problem and \
        "the director's own address" in problem, problem


def test_system_check_rejects_a_real_server_mac_that_is_the_directors(scratch_netns):
    from lb.director import netif
    (problem,) = netif.config_problems(scratch_config(
        "198.51.100.77", SCRATCH_IFACE, f'address = "198.51.100.12"\nmac = "{SCRATCH_MAC}"'))
    assert f'mac = "{SCRATCH_MAC}" is the MAC of the director' in problem, problem


def test_system_check_advice_removes_the_address_with_its_own_prefix(scratch_netns):
    from pyroute2 import IPRoute
    from lb.director import netif
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="drlb1")[0]     # another interface of the director
        ipr.addr("add", index=idx, address="203.0.113.5", prefixlen=24)
    (problem,) = netif.config_problems(scratch_config("203.0.113.5"))
    assert "`ip addr del 203.0.113.5/24 dev drlb1`" in problem, problem


# --- addresses that can never work, pure ------------------------------------------------

def test_vip_that_is_another_services_real_server_is_rejected():
    text = (DIRECTOR + service(VIP_SERVICE, RS12)
            + service('vip = "192.168.0.12"\nport = 443', RS13))
    problem = only_problem(text)
    assert "service 192.168.0.21:80/tcp, real server 192.168.0.12:80" in problem, problem
    assert "also a VIP (192.168.0.12:443/tcp)" in problem and "answers ARP" in problem, problem


@pytest.mark.parametrize("key,value", [("vip", "127.0.0.1"), ("vip", "127.1.2.3"),
                                       ("address", "127.0.0.1")])
def test_loopback_addresses_are_rejected(key, value):
    body = VIP_SERVICE.replace("192.168.0.21", value) if key == "vip" else VIP_SERVICE
    real = f'address = "{value}"' if key == "address" else RS12
    problem = only_problem(DIRECTOR + service(body, real))
    assert f"{key} = {value} is a loopback address" in problem, problem


def test_lo_is_rejected_as_the_interface():
    problem = only_problem('[director]\ninterface = "lo"\n' + service())
    assert 'interface = "lo" is the loopback interface' in problem, problem


# --- schedulers, their flags, ops and thresholds (issue 9) ----------------------------------

@pytest.mark.parametrize("scheduler", config.SCHEDULERS)
def test_every_scheduler_is_accepted(scheduler):
    cfg = config.parse(DIRECTOR + service(VIP_SERVICE + f'\nscheduler = "{scheduler}"'))
    assert cfg.services[0].scheduler == scheduler


def test_schedulers_are_ipvs_names_in_one_list():
    assert config.SCHEDULERS == ("wrr", "rr", "sh", "mh", "lc", "wlc", "sed", "nq")


@pytest.mark.parametrize("scheduler, flags", [
    ("sh", ["sh-fallback"]), ("sh", ["sh-port"]), ("sh", ["sh-fallback", "sh-port"]),
    ("mh", ["mh-fallback", "mh-port"]), ("mh", []),
])
def test_scheduler_flags_of_the_scheduler_are_accepted(scheduler, flags):
    body = VIP_SERVICE + f'\nscheduler = "{scheduler}"\nscheduler_flags = {flags!r}'
    svc = config.parse(DIRECTOR + service(body.replace("'", '"'))).services[0]
    assert svc.scheduler_flags == tuple(flags)
    assert svc.fallback == (f"{scheduler}-fallback" in flags)
    assert svc.hash_port == (f"{scheduler}-port" in flags)


SCHED_PROBLEMS = [
    pytest.param(DIRECTOR + service(VIP_SERVICE + '\nscheduler_flags = ["mh-port"]'),
                 ["service 192.168.0.21:80/tcp", 'scheduler_flags: "mh-port"',
                  'a flag of scheduler "mh", not of "wrr"', 'set scheduler = "mh"'],
                 id="flag-of-another-scheduler"),
    pytest.param(DIRECTOR + service(VIP_SERVICE + '\nscheduler = "sh"\n'
                                    'scheduler_flags = ["mh-fallback"]'),
                 ['"mh-fallback" is a flag of scheduler "mh", not of "sh"'],
                 id="mh-flag-on-sh"),
    pytest.param(DIRECTOR + service(VIP_SERVICE + '\nscheduler = "mh"\n'
                                    'scheduler_flags = ["fallback"]'),
                 ['scheduler_flags: "fallback" is not known',
                  'scheduler "mh" takes "mh-fallback", "mh-port"'],
                 id="unknown-flag"),
    pytest.param(DIRECTOR + service(VIP_SERVICE + '\nscheduler = "wlc"\n'
                                    'scheduler_flags = ["flag-1"]'),
                 ['"flag-1" is not known', 'scheduler "wlc" takes no flags'],
                 id="flags-on-wlc"),
    pytest.param(DIRECTOR + service(VIP_SERVICE + '\nscheduler = "mh"\n'
                                    'scheduler_flags = "mh-port"'),
                 ["scheduler_flags = 'mh-port' must be a list of strings",
                  'scheduler_flags = ["mh-fallback", "mh-port"]'],
                 id="flags-not-a-list"),
    pytest.param(DIRECTOR + service(VIP_SERVICE + "\nops = true"),
                 ["service 192.168.0.21:80/tcp", "ops = true", "for UDP services only",
                  'remove ops, or use protocol = "udp"'],
                 id="ops-on-tcp"),
    pytest.param(DIRECTOR + service(VIP_SERVICE + '\nprotocol = "udp"\nops = 1'),
                 ["ops = 1 must be true or false"],
                 id="ops-not-a-bool"),
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12 + "\nupper = 50\nlower = 80"),
                 ["real server 192.168.0.12:80", "lower = 80 is above upper = 50",
                  "set lower to at most upper"],
                 id="lower-above-upper"),
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12 + "\nlower = 5"),
                 ["lower = 5 is above upper = 0"],
                 id="lower-without-upper"),
    pytest.param(DIRECTOR + service(VIP_SERVICE, RS12 + "\nupper = -1"),
                 ["real server 192.168.0.12:80", "upper = -1 is out of range"],
                 id="negative-upper"),
    pytest.param(DIRECTOR + service(VIP_SERVICE + '\nscheduler = "wlc"',
                                    *[f'address = "10.1.{i // 250}.{i % 250 + 1}"'
                                      for i in range(abi.CONST["MAX_REALS_PER_SERVICE"] + 1)]),
                 ["service 192.168.0.21:80/tcp",
                  f"{abi.CONST['MAX_REALS_PER_SERVICE'] + 1} real servers",
                  'scheduler "wlc" compares every real server',
                  f"at most {abi.CONST['MAX_REALS_PER_SERVICE']}", "split the service"],
                 id="too-many-reals-for-wlc"),
]


@pytest.mark.parametrize("text, expected", SCHED_PROBLEMS)
def test_scheduler_problems_name_the_key_and_the_fix(text, expected):
    problem = only_problem(text)
    for part in expected:
        assert part in problem, f"expected {part!r} in the message, got: {problem!r}"


def test_many_reals_are_fine_for_wrr_and_mh():
    reals = [f'address = "10.1.{i // 250}.{i % 250 + 1}"'
             for i in range(abi.CONST["MAX_REALS_PER_SERVICE"] + 1)]
    for scheduler in ("wrr", "mh", "sh"):
        cfg = config.parse(DIRECTOR + service(VIP_SERVICE + f'\nscheduler = "{scheduler}"',
                                              *reals))
        assert len(cfg.services[0].real_servers) == len(reals)


def test_ops_and_thresholds_are_read():
    text = DIRECTOR + service(VIP_SERVICE + '\nprotocol = "udp"\nops = true',
                              RS12 + "\nupper = 100\nlower = 10", RS13 + "\nupper = 8")
    svc = config.parse(text).services[0]
    assert svc.ops is True and svc.thresholds
    assert [(r.upper, r.lower, r.effective_lower) for r in svc.real_servers] == \
        [(100, 10, 10), (8, 0, 6)]


def test_too_many_mh_services_is_one_clear_problem():
    n = abi.SCHED_HALF // abi.CONST["MH_TABLE_SIZE"] + 1
    text = DIRECTOR + "".join(service(f'vip = "192.168.0.21"\nport = {1000 + i}\n'
                                      'scheduler = "mh"') for i in range(n))
    problem = only_problem(text)
    assert "sh/mh tables" in problem and "use fewer mh services" in problem
