"""layout.build: the complete contents of every map, from the config (no kernel)."""
from __future__ import annotations

from lb import abi
from lb.director import config, layout

DIRECTOR_MAC = "02:00:00:00:00:0b"

MACS = {"192.168.0.12": "52:54:00:00:00:12", "192.168.0.13": "52:54:00:00:00:13",
        "192.168.0.14": "52:54:00:00:00:14", "192.168.0.15": "52:54:00:00:00:15"}


def make_config(*services: tuple[str, list[tuple[str, int]]]) -> config.Config:
    """services: (header lines, [(address, weight), ...]) each."""
    text = '[director]\ninterface = "eth0"\n'
    for header, reals in services:
        text += f"[[service]]\n{header}\n"
        for address, weight in reals:
            text += f'[[service.real_server]]\naddress = "{address}"\nweight = {weight}\n'
    return config.parse(text, source="config.toml")


SEED_SERVICE = ('vip = "192.168.0.21"\nport = 80',
                [("192.168.0.12", 2), ("192.168.0.13", 1), ("192.168.0.14", 1)])


def addresses(entry: layout.ServiceEntry) -> list[str]:
    by_id = {r.real_id: r.server.address for r in entry.reals}
    return [by_id[i] for i in entry.sequence]


def test_build_seed_service():
    t = layout.build(make_config(SEED_SERVICE), MACS, DIRECTOR_MAC)
    (svc,) = t.services
    assert addresses(svc) == ["192.168.0.12", "192.168.0.12", "192.168.0.13", "192.168.0.14"]
    assert [r.real_id for r in svc.reals] == [0, 1, 2]
    assert all(r.flags == abi.REAL_F_MAC_KNOWN | abi.REAL_F_SCHEDULABLE for r in svc.reals)
    assert t.vips == {"192.168.0.21": 1}


def test_server_with_unknown_mac_is_left_out_and_never_chosen():
    macs = dict(MACS, **{"192.168.0.13": None})
    (svc,) = layout.build(make_config(SEED_SERVICE), macs, DIRECTOR_MAC).services
    assert "192.168.0.13" not in addresses(svc), \
        f"a server without a MAC must not be in the sequence: {addresses(svc)}"
    assert addresses(svc) == ["192.168.0.12", "192.168.0.12", "192.168.0.14"]
    unknown = next(r for r in svc.reals if r.server.address == "192.168.0.13")
    assert unknown.mac is None and unknown.flags == 0, "unknown MAC must leave the flags clear"


def test_missing_from_the_neighbour_table_counts_as_unknown():
    macs = {k: v for k, v in MACS.items() if k != "192.168.0.14"}
    (svc,) = layout.build(make_config(SEED_SERVICE), macs, DIRECTOR_MAC).services
    assert addresses(svc) == ["192.168.0.12", "192.168.0.12", "192.168.0.13"]


def test_mac_from_the_config_wins_over_the_neighbour_table():
    cfg = config.parse('[director]\ninterface = "eth0"\n[[service]]\nvip = "192.168.0.21"\n'
                       'port = 80\n[[service.real_server]]\naddress = "192.168.0.12"\n'
                       'mac = "02:00:00:00:00:12"\n', source="config.toml")
    (svc,) = layout.build(cfg, {}, DIRECTOR_MAC).services
    assert svc.reals[0].mac == "02:00:00:00:00:12"
    assert addresses(svc) == ["192.168.0.12"]


def test_weight_0_is_left_out_but_keeps_its_mac():
    cfg = make_config(('vip = "192.168.0.21"\nport = 80',
                       [("192.168.0.12", 2), ("192.168.0.13", 0), ("192.168.0.14", 1)]))
    (svc,) = layout.build(cfg, MACS, DIRECTOR_MAC).services
    assert addresses(svc) == ["192.168.0.12", "192.168.0.12", "192.168.0.14"]
    quiesced = svc.reals[1]
    assert quiesced.flags == abi.REAL_F_MAC_KNOWN, \
        "a weight-0 server keeps its MAC (existing connections go on) but is not schedulable"


def test_all_unknown_gives_an_empty_sequence():
    (svc,) = layout.build(make_config(SEED_SERVICE), {}, DIRECTOR_MAC).services
    assert svc.sequence == ()


def test_rr_treats_every_positive_weight_as_1():
    cfg = make_config(('vip = "192.168.0.21"\nport = 80\nscheduler = "rr"',
                       [("192.168.0.12", 5), ("192.168.0.13", 0), ("192.168.0.14", 1),
                        ("192.168.0.15", 300)]))
    (svc,) = layout.build(cfg, MACS, DIRECTOR_MAC).services
    assert addresses(svc) == ["192.168.0.12", "192.168.0.14", "192.168.0.15"], \
        "rr must give each live server one turn, and none to weight 0"


def test_offsets_and_ids_are_stable_when_a_mac_disappears():
    cfg = make_config(
        SEED_SERVICE,
        ('vip = "192.168.0.21"\nport = 443', [("192.168.0.12", 3), ("192.168.0.15", 1)]),
        ('vip = "192.168.0.22"\nport = 53\nprotocol = "udp"',
         [("192.168.0.13", 1), ("192.168.0.14", 1)]),
    )
    full = layout.build(cfg, MACS, DIRECTOR_MAC)
    for gone in MACS:
        partial = layout.build(cfg, dict(MACS, **{gone: None}), DIRECTOR_MAC)
        assert [s.seq_offset for s in partial.services] == \
            [s.seq_offset for s in full.services], f"offsets moved when {gone} lost its MAC"
        assert [r.real_id for r in partial.reals] == [r.real_id for r in full.reals]
    # Each service's slice is sized for its full cycle, so slices never overlap.
    ends = [s.seq_offset + len(s.sequence) for s in full.services]
    assert [s.seq_offset for s in full.services] == [0, 4, 8]
    assert ends == [4, 8, 10]
    assert [r.real_id for r in full.reals] == list(range(7)), "real ids must be dense"


# --- the rows written to each map ------------------------------------------------------------

def test_settings_carry_the_timeouts_the_mac_and_icmp_echo():
    cfg = config.parse('[director]\ninterface = "eth0"\nicmp_echo = false\n'
                       '[timeouts]\ntcp = 901\ntcpfin = 121\nudp = 301\n'
                       '[[service]]\nvip = "192.168.0.21"\nport = 80\n'
                       '[[service.real_server]]\naddress = "192.168.0.12"\n', source="c.toml")
    row = layout.build(cfg, MACS, DIRECTOR_MAC).settings_row()
    assert row["mac"] == bytes.fromhex("02000000000b")
    assert row["flags"] == 0, "icmp_echo = false must clear SETTINGS_F_ICMP_ECHO"
    seconds = {state: ns // 1_000_000_000 for state, ns in enumerate(row["timeout_ns"])}
    assert len(row["timeout_ns"]) == abi.CONN_STATE_SLOTS
    assert seconds[abi.STATE["ESTABLISHED"]] == 901
    assert seconds[abi.STATE["FIN_WAIT"]] == 121
    assert seconds[abi.STATE["UDP"]] == 301
    assert seconds[abi.STATE["SYN_RECV"]] == abi.CONST["SYN_RECV_TIMEOUT_S"]
    assert seconds[abi.STATE["CLOSE"]] == abi.CONST["CLOSE_TIMEOUT_S"]
    assert seconds[abi.STATE["NONE"]] == 0
    on = layout.build(make_config(SEED_SERVICE), MACS, DIRECTOR_MAC).settings_row()
    assert on["flags"] == abi.SETTINGS_F_ICMP_ECHO, "icmp_echo defaults to on"


def test_service_rows_are_in_network_order_and_point_into_the_half_in_use():
    cfg = make_config(('vip = "192.168.0.21"\nport = 443\npersistent = 300\n'
                       'persistent_netmask = "255.255.255.0"', [("192.168.0.12", 1)]),
                      ('vip = "192.168.0.21"\nport = 53\nprotocol = "udp"',
                       [("192.168.0.13", 1)]))
    first = layout.build(cfg, MACS, DIRECTOR_MAC)
    (key, value), (key2, value2) = first.service_rows()
    assert key == {"vip": abi.ip_be32("192.168.0.21"), "port": abi.port_be16(443), "proto": 6}
    assert key2["proto"] == 17 and key2["port"] == abi.port_be16(53)
    assert value == {"id": 0, "seq_offset": 0, "seq_len": 1, "persist_timeout_s": 300,
                     "persist_mask": abi.ip_be32("255.255.255.0"), "sched": abi.SCHED["wrr"],
                     "flags": 0, "reals_offset": 0, "n_reals": 1, "table_offset": 2,
                     "table_len": 0, "order_len": 0}
    assert value2["persist_timeout_s"] == 0 and value2["seq_offset"] == 1
    assert value2["reals_offset"] == 2, "each service's list is laid out twice"
    second = layout.build(cfg, MACS, DIRECTOR_MAC, previous=first)
    assert second.half == 1 - first.half
    assert [v["seq_offset"] for _, v in second.service_rows()] == [abi.SEQ_HALF, abi.SEQ_HALF + 1]
    assert [v["reals_offset"] for _, v in second.service_rows()] == \
        [abi.SCHED_HALF, abi.SCHED_HALF + 2]
    assert second.sched_rows()[0] == (abi.SCHED_HALF, 0)
    assert second.wrr_rows() == [(abi.SEQ_HALF, 0), (abi.SEQ_HALF + 1, 1)], \
        "the next cycles go to the other half, so no service sees a half-written one"
    assert layout.build(cfg, MACS, DIRECTOR_MAC, previous=second).half == first.half


def test_vip_rows_count_services_per_vip():
    cfg = make_config(SEED_SERVICE, ('vip = "192.168.0.21"\nport = 443', [("192.168.0.12", 1)]),
                      ('vip = "192.168.0.22"\nport = 80', [("192.168.0.12", 1)]))
    rows = dict(layout.build(cfg, MACS, DIRECTOR_MAC).vip_rows())
    assert rows == {abi.ip_be32("192.168.0.21"): {"services": 2},
                    abi.ip_be32("192.168.0.22"): {"services": 1}}


def test_real_rows_carry_mac_flags_address_and_service():
    macs = dict(MACS, **{"192.168.0.13": None})
    rows = dict(layout.build(make_config(SEED_SERVICE), macs, DIRECTOR_MAC).real_rows())
    svc = {"vip": abi.ip_be32("192.168.0.21"), "port": abi.port_be16(80),
           "proto": abi.IPPROTO["tcp"]}
    assert rows[0] == {"mac": bytes.fromhex("525400000012"),
                       "flags": abi.REAL_F_MAC_KNOWN | abi.REAL_F_SCHEDULABLE,
                       "svc": svc,
                       "addr": abi.ip_be32("192.168.0.12"), "weight": 2, "upper": 0,
                       "lower": 0}
    assert rows[1] == {"mac": bytes(6), "flags": 0, "svc": svc,
                       "addr": abi.ip_be32("192.168.0.13"), "weight": 1, "upper": 0,
                       "lower": 0}


def test_a_removed_real_server_keeps_its_mac_but_is_never_schedulable():
    ids = layout.Ids()
    before = layout.build(make_config(SEED_SERVICE), MACS, DIRECTOR_MAC, ids)
    fewer = make_config(('vip = "192.168.0.21"\nport = 80',
                         [("192.168.0.12", 2), ("192.168.0.14", 1)]))
    after = layout.build(fewer, MACS, DIRECTOR_MAC, ids, before)
    rows = dict(after.real_rows())
    assert rows[1]["flags"] == abi.REAL_F_MAC_KNOWN, \
        "its connections go on (MAC known) but no template may send it new ones"
    assert rows[1]["addr"] == abi.ip_be32("192.168.0.13")
    assert rows[1]["svc"]["port"] == abi.port_be16(80), \
        "a removed server still names its service (flow_cache checks it)"
    assert [r.svc_id for r in after.removed_reals] == [0], "and counts for it"
    assert [r.real_id for r in after.reals] == [0, 2], "ids stay put across a reload"
    back = layout.build(make_config(SEED_SERVICE), MACS, DIRECTOR_MAC, ids, after)
    assert [r.real_id for r in back.reals] == [0, 1, 2] and not back.removed_reals


def test_each_limit_is_checked_in_one_place():
    assert config.limit_problems(abi.CONST["MAX_SERVICES"], abi.CONST["MAX_REALS"],
                                 abi.SEQ_HALF, abi.SCHED_HALF) == []
    problems = config.limit_problems(abi.CONST["MAX_SERVICES"] + 1,
                                     abi.CONST["MAX_REALS"] + 1, abi.SEQ_HALF + 1,
                                     abi.SCHED_HALF + 1)
    assert len(problems) == 4
    ids = layout.Ids()
    ids.services = {("10.0.0.1", p, "tcp"): p for p in range(abi.CONST["MAX_SERVICES"])}
    assert "restart dr-lb" in ids.room_for(make_config(SEED_SERVICE))


# --- the other schedulers' rows --------------------------------------------------------------

def service_row(t: layout.Layout, n: int = 0) -> dict:
    return t.service_rows()[n][1]


def slots(t: layout.Layout, start: int, length: int) -> list[int]:
    rows = dict(t.sched_rows())
    return [rows[start + i] for i in range(length)]


def test_sh_lays_out_its_buckets_after_the_list():
    cfg = make_config(('vip = "192.168.0.21"\nport = 80\nscheduler = "sh"',
                       [("192.168.0.12", 2), ("192.168.0.13", 1), ("192.168.0.14", 0)]))
    t = layout.build(cfg, MACS, DIRECTOR_MAC)
    row = service_row(t)
    assert row["sched"] == abi.SCHED["sh"] and row["flags"] == 0
    assert (row["reals_offset"], row["n_reals"]) == (0, 3)
    assert slots(t, 0, 6) == [0, 1, 2, 0, 1, 2], "the list, twice"
    assert (row["table_offset"], row["table_len"], row["order_len"]) == (6, 256, 0)
    assert slots(t, 6, 8) == [0, 0, 1, 2, 0, 0, 1, 2], \
        "ip_vs_sh_reassign: weight 2, 1, and one bucket for weight 0"


def test_sh_fallback_lays_out_each_buckets_order():
    cfg = make_config(('vip = "192.168.0.21"\nport = 80\nscheduler = "sh"\n'
                       'scheduler_flags = ["sh-fallback", "sh-port"]',
                       [("192.168.0.12", 1), ("192.168.0.13", 1), ("192.168.0.14", 1)]))
    t = layout.build(cfg, MACS, DIRECTOR_MAC)
    row = service_row(t)
    assert row["flags"] == abi.SVC_F["sched_fallback"] | abi.SVC_F["sched_port"]
    assert row["order_len"] == 3
    base = row["table_offset"] + 256
    assert slots(t, base, 3) == [0, 1, 2]
    assert slots(t, base + 3 * 3, 3) == [0, 1, 2] and slots(t, base + 3, 3) == [1, 2, 0]
    assert slots(t, base + 255 * 3, 3) == [0, 1, 2], \
        "bucket 255 is rs .12 (256 = 85 * 3 + 1), then round to bucket 0"
    assert len(t.sched_rows()) <= cfg.services[0].sched_slots()


def test_mh_table_is_the_same_whatever_the_macs_and_drain():
    cfg = make_config(('vip = "192.168.0.21"\nport = 80\nscheduler = "mh"\n'
                       'scheduler_flags = ["mh-fallback"]',
                       [("192.168.0.12", 2), ("192.168.0.13", 1), ("192.168.0.14", 1)]))
    full = layout.build(cfg, MACS, DIRECTOR_MAC)
    row = service_row(full)
    assert row["sched"] == abi.SCHED["mh"] and row["flags"] == abi.SVC_F["sched_fallback"]
    assert row["table_len"] == abi.CONST["MH_TABLE_SIZE"]
    (entry,) = full.services
    assert sorted(set(entry.table)) == [0, 1, 2]
    assert entry.table.count(0) == abi.CONST["MH_TABLE_SIZE"] // 2 + 1
    unknown = layout.build(cfg, dict(MACS, **{"192.168.0.13": None}), DIRECTOR_MAC)
    assert unknown.services[0].table == entry.table, \
        "an unreachable server keeps its entries; the data plane skips it"
    drained = config.parse(config_text_with(cfg, "drained"), source="c.toml")
    assert layout.build(drained, MACS, DIRECTOR_MAC).services[0].table == entry.table, \
        "a drained server keeps its entries (IPVS's last_weight)"


def config_text_with(cfg: config.Config, what: str) -> str:
    svc = cfg.services[0]
    text = (f'[director]\ninterface = "eth0"\n[[service]]\nvip = "{svc.vip}"\n'
            f'port = {svc.port}\nscheduler = "{svc.scheduler}"\n')
    for i, rs in enumerate(svc.real_servers):
        text += (f'[[service.real_server]]\naddress = "{rs.address}"\n'
                 f'weight = {rs.weight}\n')
        if i == 1 and what == "drained":
            text += "drained = true\n"
    return text


def test_least_connection_services_have_a_list_and_no_table():
    cfg = make_config(('vip = "192.168.0.21"\nport = 80\nscheduler = "wlc"',
                       [("192.168.0.12", 3), ("192.168.0.13", 1)]),
                      ('vip = "192.168.0.21"\nport = 81\nscheduler = "nq"',
                       [("192.168.0.14", 1)]))
    t = layout.build(cfg, MACS, DIRECTOR_MAC)
    first, second = service_row(t, 0), service_row(t, 1)
    assert first["sched"] == abi.SCHED["wlc"] and second["sched"] == abi.SCHED["nq"]
    assert (first["seq_len"], first["table_len"]) == (0, 0)
    assert second["reals_offset"] == 4
    assert slots(t, 0, 4) == [0, 1, 0, 1] and slots(t, 4, 2) == [2, 2]
    assert [r["weight"] for _, r in t.real_rows()] == [3, 1, 1]


def test_thresholds_ops_and_rr():
    text = ('[director]\ninterface = "eth0"\n[[service]]\nvip = "192.168.0.21"\n'
            'port = 53\nprotocol = "udp"\nops = true\nscheduler = "rr"\n'
            '[[service.real_server]]\naddress = "192.168.0.12"\nupper = 10\n'
            '[[service.real_server]]\naddress = "192.168.0.13"\nupper = 10\nlower = 2\n'
            '[[service.real_server]]\naddress = "192.168.0.14"\nupper = 7\n')
    t = layout.build(config.parse(text, source="c.toml"), MACS, DIRECTOR_MAC)
    row = service_row(t)
    assert row["sched"] == abi.SCHED["wrr"], "rr is wrr with weights of 1"
    assert row["flags"] == abi.SVC_F["ops"] | abi.SVC_F["thresholds"]
    reals = dict(t.real_rows())
    assert [(reals[i]["upper"], reals[i]["lower"]) for i in range(3)] == \
        [(10, 8), (10, 2), (7, 6)], "lower 0 means IPVS's 3/4 of upper, rounded up"
