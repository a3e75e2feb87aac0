"""Layer 1: `dr-lb status` as an ipvsadm-like table, from a hand-made status document."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from lb import abi
from lb.director import config, layout, status

VIP = "192.168.0.21"


def real(address, weight, mac, active=0, inactive=0, conns=0, packets=0, nbytes=0, port=80):
    return {"address": address, "port": port, "weight": weight, "mac": mac,
            "schedulable": bool(mac and weight), "active_conns": active,
            "inactive_conns": inactive, "conns": conns, "in_packets": packets,
            "in_bytes": nbytes}


def service(vip, port, protocol, scheduler, reals, persistent=0, netmask="255.255.255.255",
            conns=0, packets=0, nbytes=0):
    return {"vip": vip, "port": port, "protocol": protocol, "scheduler": scheduler,
            "persistent": persistent, "persistent_netmask": netmask,
            "counters": {"conns": conns, "in_packets": packets, "in_bytes": nbytes},
            "real_servers": reals}


def document(services, counters=None):
    return {
        "interface": "eth0", "xdp_mode": "native",
        "timeouts": {"tcp": 900, "tcpfin": 120, "udp": 300},
        "services": services,
        "counters": counters if counters is not None else dict.fromkeys(abi.COUNTERS, 0),
        "conn_table": {"size": 1_000_000, "entries": 40, "inserts": 40, "evicted": 0},
    }


@pytest.fixture
def seed_status():
    """The seed's 2:1:1 service after 40 requests, plus a persistent UDP service with large
    numbers, one unresolved MAC and one quiesced server."""
    counters = dict.fromkeys(abi.COUNTERS, 0)
    counters.update(tx_service=400, tx_arp_reply=3, pass_tcp_no_conn=2)
    return document([
        service(VIP, 80, "tcp", "wrr", [
            real("192.168.0.12", 2, "52:54:00:00:00:12", 1, 19, 20, 200, 15000),
            real("192.168.0.13", 1, "52:54:00:00:00:13", 0, 10, 10, 100, 7500),
            real("192.168.0.14", 1, "52:54:00:00:00:14", 0, 10, 10, 100, 7500),
        ], conns=40, packets=400, nbytes=30000),
        service(VIP, 53, "udp", "rr", [
            real("192.168.0.112", 65535, None, port=53),
            real("192.168.0.13", 0, "52:54:00:00:00:13", 0, 3, 1234567, 98765432,
                 123456789012, port=53),
        ], persistent=3600, netmask="255.255.255.0",
            conns=1234567, packets=98765432, nbytes=123456789012),
    ], counters)


def lines_of(text: str) -> list[str]:
    return text.splitlines()


def test_header_gives_interface_mode_and_timeouts(seed_status):
    first = lines_of(status.format_table(seed_status))[0]
    assert first == "dr-lb on eth0 (xdp native), timeouts tcp 900 tcpfin 120 udp 300"


def test_service_lines_read_like_ipvsadm(seed_status):
    out = status.format_table(seed_status)
    assert re.search(rf"^TCP  {re.escape(VIP)}:80 +wrr +40 +400 +30000$", out, re.M), \
        f"no `TCP  {VIP}:80 wrr` line with its counters in:\n{out}"
    assert re.search(rf"^UDP  {re.escape(VIP)}:53 +rr +1234567 +98765432 +123456789012 +"
                     r"persistent 3600 mask 255\.255\.255\.0$", out, re.M), \
        f"no UDP service line with counters and persistence flags in:\n{out}"


@pytest.mark.parametrize("address, rest", [
    ("192.168.0.12:80", r"Route +2 +1 +19 +20 +200 +15000 +52:54:00:00:00:12"),
    ("192.168.0.13:80", r"Route +1 +0 +10 +10 +100 +7500 +52:54:00:00:00:13"),
    ("192.168.0.14:80", r"Route +1 +0 +10 +10 +100 +7500 +52:54:00:00:00:14"),
    ("192.168.0.112:53", r"Route +65535 +0 +0 +0 +0 +0 +unresolved"),
    ("192.168.0.13:53", r"Route +0 +0 +3 +1234567 +98765432 +123456789012 +52:54:00:00:00:13"),
])
def test_real_server_lines(seed_status, address, rest):
    out = status.format_table(seed_status)
    assert re.search(rf"^  -> {re.escape(address)} +{rest}$", out, re.M), \
        f"no real-server line `-> {address} {rest}` (Route, weight, ActiveConn, InActConn, " \
        f"conns, packets, bytes, MAC) in:\n{out}"


def test_real_servers_follow_their_service(seed_status):
    lines = lines_of(status.format_table(seed_status))
    tcp = next(i for i, line in enumerate(lines) if line.startswith("TCP "))
    udp = next(i for i, line in enumerate(lines) if line.startswith("UDP "))
    assert [line.split()[1] for line in lines[tcp + 1:tcp + 4]] == \
        ["192.168.0.12:80", "192.168.0.13:80", "192.168.0.14:80"]
    assert [line.split()[1] for line in lines[udp + 1:udp + 3]] == \
        ["192.168.0.112:53", "192.168.0.13:53"]


def column_ends(header: str) -> dict[str, int]:
    return {m.group(): m.end() for m in re.finditer(r"\S+", header)}


def test_columns_line_up_even_with_persistence_flags_and_large_numbers(seed_status):
    lines = lines_of(status.format_table(seed_status))
    header = next(line for line in lines if "RemoteAddress:Port" in line)
    ends = column_ends(header)
    for name in ("Weight", "ActiveConn", "InActConn", "Conns", "InPkts", "InBytes", "MAC"):
        assert name in ends, f"column {name} missing from the header: {header!r}"
    number_ends = {ends[n] for n in ("Weight", "ActiveConn", "InActConn", "Conns", "InPkts",
                                     "InBytes")}
    tail_start = header.index("MAC")
    rows = [line for line in lines if line.startswith(("TCP ", "UDP ", "  -> ")) and
            line is not header]
    assert len(rows) == 7
    for row in rows:
        numbers = [m for m in re.finditer(r"(?<= )\d+(?= |$)", row[:tail_start])]
        assert numbers, f"no numbers in {row!r}"
        for m in numbers:
            assert m.end() in number_ends, \
                f"{m.group()!r} in {row!r} ends at column {m.end()}, not under a header " \
                f"(right edges {sorted(number_ends)})\n" + "\n".join(lines)
        tail = row[tail_start:]
        assert tail == "" or not tail.startswith(" "), \
            f"MAC/flags should start under MAC in {row!r}"
        if len(row) > tail_start:
            assert row[tail_start - 1] == " ", f"the column before MAC runs into it: {row!r}"
    # The counters of a service sit under Conns, InPkts, InBytes.
    tcp = next(row for row in rows if row.startswith("TCP "))
    assert [m.end() for m in re.finditer(r"\d+(?= |$)", tcp[:tail_start])][-3:] == \
        [ends["Conns"], ends["InPkts"], ends["InBytes"]]


def test_same_columns_for_every_real_server(seed_status):
    lines = [line for line in lines_of(status.format_table(seed_status))
             if line.startswith("  -> ") and "RemoteAddress" not in line]
    assert len(lines) == 5
    starts = {line.index("Route") for line in lines}
    assert len(starts) == 1, "Route starts at different columns:\n" + "\n".join(lines)


def test_no_trailing_spaces(seed_status):
    for line in lines_of(status.format_table(seed_status)):
        assert line == line.rstrip(), f"trailing spaces in {line!r}"


def test_packet_counters_and_connection_table(seed_status):
    lines = lines_of(status.format_table(seed_status))
    assert "Packets by outcome: tx_service 400, tx_arp_reply 3, pass_tcp_no_conn 2" in lines, \
        "the nonzero counters, and only those, should be listed in map order"
    assert lines[-1] == "Connection table: 1000000 slots, 40 entries, 40 inserts, 0 evicted"


def test_no_services_and_no_traffic():
    out = status.format_table(document([]))
    assert "Packets by outcome" not in out, "zero counters should not be listed"
    assert "RemoteAddress:Port" in out
    assert out.splitlines()[-1].startswith("Connection table:")


def test_collect_gives_what_format_table_reads():
    """collect() on a fake data plane: the public --json keys and a table from them."""
    cfg = config.parse(f'[director]\ninterface = "eth0"\n[[service]]\nvip = "{VIP}"\nport = 80\n'
                       'persistent = 60\npersistent_netmask = "255.255.255.0"\n'
                       '[[service.real_server]]\naddress = "192.168.0.12"\nweight = 2\n'
                       '[[service.real_server]]\naddress = "192.168.0.13"\n',
                       source="config.toml")
    t = layout.build(cfg, {"192.168.0.12": "52:54:00:00:00:12"}, "02:00:00:00:00:0b")
    fake = SimpleNamespace(
        counters=lambda: dict(dict.fromkeys(abi.COUNTERS, 0), conn_table_insert=7),
        service_stats=lambda _i: SimpleNamespace(conns=7, packets=70, bytes=7000),
        real_stats=lambda i: SimpleNamespace(conns=7 - i * 7, packets=70 - i * 70,
                                             bytes=7000 - i * 7000),
    )
    data = status.collect(cfg, t, fake, "eth0", "generic",
                          SimpleNamespace(per_real={0: (3, 4)}, entries=7))
    json.dumps(data)   # --json must be able to print it
    assert (data["interface"], data["xdp_mode"], data["timeouts"]) == \
        ("eth0", "generic", {"tcp": 900, "tcpfin": 120, "udp": 300})
    assert data["counters"] == dict(dict.fromkeys(abi.COUNTERS, 0), conn_table_insert=7)
    assert (data["conn_table"]["entries"], data["conn_table"]["inserts"]) == (7, 7)
    svc, = data["services"]
    want = {"vip": VIP, "port": 80, "protocol": "tcp", "scheduler": "wrr", "persistent": 60,
            "persistent_netmask": "255.255.255.0",
            "counters": {"conns": 7, "in_packets": 70, "in_bytes": 7000}}
    assert {k: svc[k] for k in want} == want
    want_reals = [
        {"address": "192.168.0.12", "port": 80, "weight": 2, "mac": "52:54:00:00:00:12",
         "schedulable": True, "active_conns": 3, "inactive_conns": 4, "conns": 7,
         "in_packets": 70, "in_bytes": 7000},
        {"address": "192.168.0.13", "port": 80, "weight": 1, "mac": None,
         "schedulable": False, "active_conns": 0, "inactive_conns": 0, "conns": 0,
         "in_packets": 0, "in_bytes": 0}]
    assert [{k: r[k] for k in w} for r, w in zip(svc["real_servers"], want_reals)] == want_reals
    assert len(svc["real_servers"]) == 2
    out = status.format_table(data)
    assert re.search(rf"^TCP  {re.escape(VIP)}:80 +wrr +7 +70 +7000 +persistent 60 mask "
                     r"255\.255\.255\.0$", out, re.M), out
    assert re.search(r"^  -> 192\.168\.0\.12:80 +Route +2 +3 +4 +7 +70 +7000 +"
                     r"52:54:00:00:00:12$", out, re.M), out
    assert re.search(r"^  -> 192\.168\.0\.13:80 +Route +1 +0 +0 +0 +0 +0 +unresolved$",
                     out, re.M), out


def test_scheduler_flags_ops_and_thresholds_read_like_ipvsadm():
    svc = service(VIP, 53, "udp", "mh", [
        dict(real("192.168.0.12", 1, "52:54:00:00:00:12", port=53), upper=100, lower=0),
        dict(real("192.168.0.13", 1, "52:54:00:00:00:13", port=53), upper=0, lower=0)],
        persistent=60)
    svc.update(scheduler_flags=["mh-fallback", "mh-port"], ops=True)
    out = status.format_table(document([svc]))
    assert re.search(rf"^UDP  {re.escape(VIP)}:53 +mh +0 +0 +0 +\(mh-fallback,mh-port\) "
                     r"persistent 60 mask 255\.255\.255\.255 ops$", out, re.M), out
    assert re.search(r"-> 192\.168\.0\.12:53 .* 52:54:00:00:00:12  upper 100 lower auto", out), out
    assert re.search(r"-> 192\.168\.0\.13:53 .* 52:54:00:00:00:13$", out, re.M), out
