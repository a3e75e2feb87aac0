"""Health checks without a kernel: the config keys and their validation, the up/down
state machine, the layout a health state gives, and how status shows it."""
from __future__ import annotations

import re

import pytest

from lb import abi
from lb.director import config, health, layout, status
from lb.director.config import Health

DIRECTOR = '[director]\ninterface = "eth0"\n'
VIP = "192.168.0.21"
MACS = {"192.168.0.12": "52:54:00:00:00:12", "192.168.0.13": "52:54:00:00:00:13",
        "192.168.0.15": "52:54:00:00:00:15"}


def service(head: str = "", health_table: str = "", rs12: str = "", rs13: str = "",
            port: int = 80, protocol: str = "tcp") -> str:
    return (f'[[service]]\nvip = "{VIP}"\nport = {port}\nprotocol = "{protocol}"\n{head}'
            + (f"[service.health]\n{health_table}" if health_table else "")
            + f'[[service.real_server]]\naddress = "192.168.0.12"\n'
            + (f"[service.real_server.health]\n{rs12}" if rs12 else "")
            + f'[[service.real_server]]\naddress = "192.168.0.13"\n'
            + (f"[service.real_server.health]\n{rs13}" if rs13 else ""))


def parse(text: str) -> config.Config:
    return config.parse(DIRECTOR + text, source="config.toml")


def problems(text: str) -> list[str]:
    with pytest.raises(config.ConfigError) as e:
        parse(text)
    return e.value.problems


# ---- config: what a file means ----------------------------------------------------------

def test_without_a_health_table_nothing_is_checked():
    svc = parse(service()).services[0]
    assert svc.health == Health() and not svc.health.checked
    assert all(not rs.health.checked for rs in svc.real_servers)
    assert svc.sorry_server is None


def test_a_health_table_without_type_means_tcp_with_keepalived_like_defaults():
    svc = parse(service(health_table="fall = 3\n")).services[0]
    h = svc.real_servers[0].health
    assert (h.type, h.interval, h.timeout, h.rise, h.fall, h.port, h.on_failure) == \
        ("tcp", 6.0, 3.0, 1, 3, None, "keep")


def test_a_real_server_overrides_each_key_and_inherits_the_rest():
    svc = parse(service(health_table='type = "http"\ninterval = 2\npath = "/healthz"\n'
                                     'expect = [200, 204]\nhost = "www.example.com"\n',
                        rs12='type = "tcp"\nport = 8081\non_failure = "reschedule"\n'
                             'interval = 1\n')).services[0]
    rs12, rs13 = (rs.health for rs in svc.real_servers)
    assert (rs12.type, rs12.port, rs12.on_failure, rs12.interval, rs12.path) == \
        ("tcp", 8081, "reschedule", 1.0, "/healthz")
    assert rs12.timeout == 1.0, "the default timeout is cut to a shorter interval"
    assert (rs13.type, rs13.interval, rs13.timeout, rs13.expect, rs13.host) == \
        ("http", 2.0, 2.0, (200, 204), "www.example.com")
    assert svc.health.type == "http"


def test_a_real_server_table_alone_checks_that_server_only():
    svc = parse(service(rs12="interval = 2\n")).services[0]
    assert svc.real_servers[0].health.type == "tcp"
    assert svc.real_servers[1].health.type == "none"


def test_a_real_server_can_opt_out():
    svc = parse(service(health_table='type = "tcp"\n', rs13='type = "none"\n')).services[0]
    assert [rs.health.checked for rs in svc.real_servers] == [True, False]


def test_expect_takes_a_code_or_a_list_and_defaults_to_any_2xx():
    h = parse(service(health_table='type = "http"\nexpect = 301\n')).services[0].health
    assert h.expect == (301,) and h.accepts(301) and not h.accepts(200)
    h = parse(service(health_table='type = "http"\n')).services[0].health
    assert h.expect == () and h.accepts(204) and not h.accepts(301) and not h.accepts(500)


def test_sorry_server_is_kept():
    assert parse(service('sorry_server = "192.168.0.15"\n')).services[0].sorry_server == \
        "192.168.0.15"


def test_udp_service_checked_on_an_explicit_tcp_port():
    svc = parse(service(health_table='type = "tcp"\nport = 53\n', port=53,
                        protocol="udp")).services[0]
    assert svc.real_servers[0].health.port == 53


# ---- config: every mistake named, with the fix ----------------------------------------------

SVC = "service 192.168.0.21:80/tcp"
SVC_H = f"{SVC}, [service.health]"
RS_H = f"{SVC}, real server 192.168.0.12:80, [service.real_server.health]"

BAD = [
    (service(health_table='type = "icmp"\n'),
     [SVC_H, "type = 'icmp' is not known", '"tcp", "http", "none"'], "type-unknown"),
    (service(health_table="type = 1\n"), [SVC_H, "type = 1 is not known"], "type-a-number"),
    (service(health_table="interval = 0\n"),
     [SVC_H, "interval = 0 is out of range", "use 0.1 to 3600"], "interval-zero"),
    (service(health_table="interval = 7200\n"),
     [SVC_H, "interval = 7200 is out of range"], "interval-too-long"),
    (service(health_table='interval = "5s"\n'),
     [SVC_H, "interval = '5s' must be a number of seconds"], "interval-a-string"),
    (service(health_table="interval = true\n"),
     [SVC_H, "interval = True must be a number"], "interval-a-bool"),
    (service(health_table="timeout = -1\n"),
     [SVC_H, "timeout = -1 is out of range"], "timeout-negative"),
    (service(health_table="interval = 2\ntimeout = 5\n"),
     [SVC_H, "timeout = 5 is longer than interval = 2", "make timeout at most interval"],
     "timeout-longer-than-interval"),
    (service(health_table="rise = 0\n"),
     [SVC_H, "rise = 0 is out of range; use 1 to 100"], "rise-zero"),
    (service(health_table="fall = 1.5\n"),
     [SVC_H, "fall = 1.5 must be a whole number"], "fall-a-fraction"),
    (service(health_table="fall = 1000\n"), [SVC_H, "fall = 1000 is out of range"],
     "fall-too-big"),
    (service(health_table="port = 0\n"), [SVC_H, "port = 0 is out of range; use 1 to 65535"],
     "port-zero"),
    (service(health_table='port = "http"\n'), [SVC_H, "port = 'http' must be a whole number"],
     "port-a-string"),
    (service(health_table='on_failure = "drop"\n'),
     [SVC_H, "on_failure = 'drop' is not known", '"keep", "reschedule"'], "on-failure-unknown"),
    (service(health_table='type = "http"\npath = "healthz"\n'),
     [SVC_H, "path = 'healthz' is not a URL path", 'path = "/healthz"'], "path-no-slash"),
    (service(health_table='type = "http"\npath = "/a b"\n'),
     [SVC_H, "path = '/a b' is not a URL path"], "path-with-space"),
    (service(health_table='type = "http"\nexpect = 999\n'),
     [SVC_H, "expect = 999 is not an HTTP status code", "expect = [200, 301]"],
     "expect-out-of-range"),
    (service(health_table='type = "http"\nexpect = []\n'),
     [SVC_H, "expect = [] is not an HTTP status code"], "expect-empty"),
    (service(health_table='type = "http"\nexpect = "200"\n'),
     [SVC_H, "expect = '200' is not an HTTP status code"], "expect-a-string"),
    (service(health_table='type = "http"\nhost = "a b"\n'),
     [SVC_H, "host = 'a b' is not a host name", 'host = "www.example.com"'], "host-with-space"),
    (service(health_table='type = "tcp"\npath = "/healthz"\n'),
     [SVC_H, 'path is only used by type = "http" checks (here type = "tcp")',
      'remove path or set type = "http"'], "path-on-tcp"),
    (service(health_table='expect = 200\n'),
     [SVC_H, 'expect is only used by type = "http" checks'], "expect-on-default-tcp"),
    (service(health_table='type = "none"\nhost = "x"\n'),
     [SVC_H, 'host is only used by type = "http" checks (here type = "none")'], "host-on-none"),
    (service(health_table='type = "http"\n', rs12='type = "tcp"\npath = "/x"\n'),
     [RS_H, 'path is only used by type = "http" checks (here type = "tcp")'],
     "path-on-tcp-override"),
    (service(health_table="intervall = 5\n"),
     [SVC_H, "unknown key 'intervall' (a typo?)", "known keys: expect, fall, host, interval"],
     "unknown-key"),
    (service(rs12="retry = 3\n"), [RS_H, "unknown key 'retry'"], "unknown-key-real-server"),
    (service(rs12="interval = 0.01\n"), [RS_H, "interval = 0.01 is out of range"],
     "real-server-interval"),
    (service(health_table="timeout = 2\n", rs12="interval = 1\ntimeout = 2\n"),
     [RS_H, "timeout = 2 is longer than interval = 1"], "real-server-timeout"),
    (service('health = "tcp"\n'),
     [SVC, "health = 'tcp' must be a table", "write [service.health]"], "health-not-a-table"),
    (service(health_table='type = "tcp"\n', port=53, protocol="udp"),
     ["service 192.168.0.21:53/udp, [service.health]", 'type = "tcp" checks a UDP service',
      "give the TCP port to check, e.g. port = 53"], "udp-without-port"),
    (service('sorry_server = "192.168.0.21"\n'),
     [SVC, "sorry_server = 192.168.0.21 is the VIP"], "sorry-is-the-vip"),
    (service('sorry_server = "192.168.0.12"\n'),
     [SVC, "sorry_server = 192.168.0.12 is a real server of this service",
      "give another host's address"], "sorry-is-a-real-server"),
    (service('sorry_server = "192.168.0"\n'),
     [SVC, "sorry_server = '192.168.0' is not an IPv4 address"], "sorry-not-an-address"),
    (service('sorry_server = "255.255.255.255"\n'),
     [SVC, "sorry_server = 255.255.255.255 cannot be used"], "sorry-broadcast"),
    (service("sorry_server = 15\n"), [SVC, "sorry_server = 15 is not an IPv4 address"],
     "sorry-a-number"),
]


@pytest.mark.parametrize("text, expected", [pytest.param(t, e, id=i) for t, e, i in BAD])
def test_each_mistake_is_one_problem_naming_the_key_and_the_fix(text, expected):
    found = problems(text)
    assert len(found) == 1, found
    for part in expected:
        assert part in found[0], f"expected {part!r} in {found[0]!r}"


def test_http_keys_in_the_service_table_serve_a_real_server_with_an_http_check():
    svc = parse(service(health_table='type = "tcp"\npath = "/x"\n',
                        rs12='type = "http"\n')).services[0]
    assert svc.real_servers[0].health.path == "/x"


# ---- the state machine ---------------------------------------------------------------------

def run(results: str, rise: int = 2, fall: int = 3) -> list[str]:
    """States after each result ('+' success, '-' failure), from unchecked."""
    st, out = health.State(since=0.0), []
    for i, r in enumerate(results, 1):
        st = health.record(st, r == "+", f"result {i}", rise, fall, float(i))
        out.append(st.state)
    return out


def test_the_first_result_decides():
    assert run("+") == ["up"]
    assert run("-") == ["down"]


def test_fall_failures_in_a_row_take_a_server_down():
    assert run("+--+---") == ["up", "up", "up", "up", "up", "up", "down"]


def test_rise_successes_in_a_row_bring_it_back():
    assert run("-+-++") == ["down", "down", "down", "down", "up"]


def test_since_is_the_time_of_the_last_transition_and_last_the_latest_result():
    st = health.State(since=0.0)
    for i, ok in enumerate([True, False, False, False], 1):
        st = health.record(st, ok, f"result {i}", 1, 3, 100.0 + i)
    assert (st.state, st.since, st.last) == ("down", 104.0, "result 4")
    st = health.record(st, False, "result 5", 1, 3, 105.0)
    assert st.since == 104.0
    assert st.public() == {"state": "down", "last": "result 5", "since": 104.0}


def test_a_changed_check_starts_unchecked_and_an_unchanged_one_keeps_its_state():
    cfg = parse(service(health_table="interval = 2\n"))
    checker = health.HealthChecker(None, lambda a: None, lambda: None, log=lambda line: None)
    checker.update(cfg)
    key = layout.real_key(cfg.services[0], "192.168.0.12")
    checker._states[key] = health.State("down", "refused", 1.0)
    # A weight change keeps the state; a new interval starts the server unchecked.
    checker.update(parse(service(health_table="interval = 2\n",
                                 rs12="").replace('"192.168.0.12"\n',
                                                  '"192.168.0.12"\nweight = 3\n')))
    assert checker.states()[key] == "down"
    checker.update(parse(service(health_table="interval = 3\n")))
    assert checker.states()[key] == "unchecked"
    checker.update(parse(service()))
    assert checker.states() == {}
    report = checker.report(parse(service()))
    assert report[key]["state"] == "unchecked" and "off" in report[key]["last"]


# ---- the layout ------------------------------------------------------------------------------

def build(text: str, states: dict[str, str], macs=MACS):
    cfg = parse(text)
    svc = cfg.services[0]
    return layout.build(cfg, macs, "02:00:00:00:00:0b",
                        health={layout.real_key(svc, a): s for a, s in states.items()})


def addresses(entry) -> list[str]:
    by_id = {r.real_id: r.server.address for r in entry.reals + (entry.sorry,) if r}
    return [by_id[i] for i in entry.sequence]


def test_a_down_server_leaves_the_cycle_but_keeps_its_mac():
    t = build(service(health_table="\n"), {"192.168.0.12": "down", "192.168.0.13": "up"})
    (svc,) = t.services
    assert addresses(svc) == ["192.168.0.13"]
    assert svc.reals[0].flags == abi.REAL_F_MAC_KNOWN
    assert svc.reals[1].flags == abi.REAL_F_MAC_KNOWN | abi.REAL_F_SCHEDULABLE


def test_unchecked_and_up_servers_are_scheduled():
    (svc,) = build(service(), {"192.168.0.12": "unchecked"}).services
    assert addresses(svc) == ["192.168.0.12", "192.168.0.13"]


def test_reschedule_sets_the_flag_only_while_down():
    text = service(health_table='on_failure = "reschedule"\n')
    (svc,) = build(text, {"192.168.0.12": "down"}).services
    assert svc.reals[0].flags == abi.REAL_F_MAC_KNOWN | abi.REAL_F_RESCHEDULE
    assert svc.reals[1].flags == abi.REAL_F_MAC_KNOWN | abi.REAL_F_SCHEDULABLE
    (svc,) = build(text, {"192.168.0.12": "up"}).services
    assert not svc.reals[0].flags & abi.REAL_F_RESCHEDULE


def test_a_drained_server_stays_out_whatever_its_health():
    text = service(health_table="\n").replace('"192.168.0.12"\n', '"192.168.0.12"\n'
                                               "drained = true\n")
    (svc,) = build(text, {"192.168.0.12": "up"}).services
    assert addresses(svc) == ["192.168.0.13"]


def test_sorry_server_is_the_whole_cycle_only_when_nobody_else_can_take_connections():
    text = service('sorry_server = "192.168.0.15"\n', health_table="\n")
    (svc,) = build(text, {"192.168.0.12": "down"}).services
    assert addresses(svc) == ["192.168.0.13"]
    assert svc.sorry.flags == abi.REAL_F_MAC_KNOWN, "on standby: not schedulable"
    (svc,) = build(text, {"192.168.0.12": "down", "192.168.0.13": "down"}).services
    assert addresses(svc) == ["192.168.0.15"]
    assert svc.sorry.flags == abi.REAL_F_MAC_KNOWN | abi.REAL_F_SCHEDULABLE
    # Its MAC unknown: nobody takes the connection.
    (svc,) = build(text, {"192.168.0.12": "down", "192.168.0.13": "down"},
                   {k: v for k, v in MACS.items() if k != "192.168.0.15"}).services
    assert svc.sequence == ()


def test_sorry_server_gets_a_slot_even_when_every_weight_is_0():
    text = (service('sorry_server = "192.168.0.15"\n').replace(
        'address = "192.168.0.12"\n', 'address = "192.168.0.12"\nweight = 0\n').replace(
        'address = "192.168.0.13"\n', 'address = "192.168.0.13"\nweight = 0\n')
        + service().replace("port = 80", "port = 81"))
    t = build(text, {})
    first, second = t.services
    assert addresses(first) == ["192.168.0.15"]
    assert second.seq_offset >= first.seq_offset + 1, "the sorry slot overlaps the next cycle"
    rows = dict(t.wrr_rows())
    assert rows[first.seq_offset] == first.sorry.real_id


def test_sorry_server_ids_stay_put_and_a_removed_one_keeps_its_connections():
    ids = layout.Ids()
    text = service('sorry_server = "192.168.0.15"\n')
    cfg = parse(text)
    first = layout.build(cfg, MACS, "02:00:00:00:00:0b", ids)
    again = layout.build(cfg, MACS, "02:00:00:00:00:0b", ids, first)
    assert first.services[0].sorry.real_id == again.services[0].sorry.real_id == 2
    gone = layout.build(parse(service()), MACS, "02:00:00:00:00:0b", ids, again)
    assert [r.server.address for r in gone.removed_reals] == ["192.168.0.15"]
    assert {row[0] for row in gone.real_rows()} == {0, 1, 2}


# ---- status ----------------------------------------------------------------------------------

class FakeDataplane:
    def counters(self):
        return dict.fromkeys(abi.COUNTERS, 0)

    def service_stats(self, _i):
        return type("S", (), {"conns": 0, "packets": 0, "bytes": 0})

    real_stats = service_stats


def test_status_shows_health_and_the_sorry_server():
    text = service('sorry_server = "192.168.0.15"\n', health_table="\n")
    cfg = parse(text)
    svc = cfg.services[0]
    states = {layout.real_key(svc, "192.168.0.12"): "down",
              layout.real_key(svc, "192.168.0.13"): "down"}
    t = layout.build(cfg, MACS, "02:00:00:00:00:0b", health=states)
    report = {layout.real_key(svc, "192.168.0.12"):
              {"state": "down", "last": "192.168.0.12:80 refused the connection",
               "since": 1700000000.0},
              layout.real_key(svc, "192.168.0.13"):
              {"state": "up", "last": "ok", "since": 1700000000.0}}
    data = status.collect(cfg, t, FakeDataplane(), "eth0", "generic",
                          type("C", (), {"per_real": {}, "entries": 0}), health=report)
    reals = data["services"][0]["real_servers"]
    assert reals[0]["health"] == report[layout.real_key(svc, "192.168.0.12")]
    assert not reals[0]["schedulable"]
    sorry = data["services"][0]["sorry_server"]
    assert (sorry["address"], sorry["in_use"], sorry["weight"]) == ("192.168.0.15", True, 1)
    out = status.format_table(data)
    assert re.search(r"^  -> 192\.168\.0\.12:80 .* 52:54:00:00:00:12  DOWN: 192\.168\.0\.12:80 "
                     r"refused the connection$", out, re.M), out
    assert re.search(r"^  -> 192\.168\.0\.13:80 .* 52:54:00:00:00:13  up$", out, re.M), out
    assert re.search(r"^  -> 192\.168\.0\.15:80 +Route +1 .* 52:54:00:00:00:15  sorry server, "
                     r"in use$", out, re.M), out


def test_runtime_edits_keep_a_real_servers_health_table_valid():
    """`dr-lb weight` and `drain` edit the file with tomlkit: the new keys must land in
    the real server's table, not in its [service.real_server.health] subtable."""
    from lb.director import edits
    text = DIRECTOR + service(health_table='type = "tcp"\n', rs12='type = "http"\n')
    text = edits.set_weight(text, edits.ServiceSpec(VIP, 80), "192.168.0.12", 5)
    text = edits.set_drained(text, "192.168.0.12", None, True)
    rs12, rs13 = config.parse(text).services[0].real_servers
    assert (rs12.weight, rs12.drained, rs12.health.type) == (5, True, "http")
    assert (rs13.weight, rs13.drained, rs13.health.type) == (1, False, "tcp")
