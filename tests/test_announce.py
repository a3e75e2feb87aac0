"""[announce], sloppy and vrrp in the config, the BIRD snippet, and what the layout says
is announceable. Pure: no root, no BIRD running (tests/test_ha_e2e.py runs the daemons)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from lb.director import announce, config as config_mod, layout

BASE = """
[director]
interface = "eth0"
{director}
{announce}
[[service]]
vip = "192.168.0.21"
port = 80
{service}
[[service.real_server]]
address = "192.168.0.12"
[[service.real_server]]
address = "192.168.0.13"

[[service]]
vip = "192.168.0.22"
port = 80
[[service.real_server]]
address = "192.168.0.14"
"""


def parse(director="", announce_="", service=""):
    return config_mod.parse(BASE.format(director=director, announce=announce_,
                                        service=service), source="lb.toml")


def problems(**kw) -> list[str]:
    with pytest.raises(config_mod.ConfigError) as e:
        parse(**kw)
    return e.value.problems


def test_announce_defaults_and_keys():
    cfg = parse(announce_="[announce]")
    assert cfg.announce == config_mod.Announce()
    assert parse().announce is None
    cfg = parse(announce_='[announce]\nsnippet = "/etc/bird/x.conf"\n'
                          'control_socket = "/run/b.ctl"\nprotocol = "vips"\nlinger = 0')
    assert (cfg.announce.snippet, cfg.announce.control_socket, cfg.announce.protocol,
            cfg.announce.linger) == ("/etc/bird/x.conf", "/run/b.ctl", "vips", 0)


@pytest.mark.parametrize("line, words", [
    ('daemon = "frr"', ["daemon = 'frr' is not known", '"bird"']),
    ('snippet = "dr-lb.conf"', ["snippet = 'dr-lb.conf' must be an absolute path"]),
    ('protocol = "dr-lb"', ["protocol = 'dr-lb' is not a BIRD protocol name"]),
    ("linger = 100", ["linger = 100 is out of range"]),
    ("peers = 1", ["[announce]: unknown key 'peers'"]),
])
def test_announce_mistakes_name_the_key(line, words):
    [problem] = problems(announce_=f"[announce]\n{line}")
    for w in words:
        assert w in problem, problem


def test_sloppy_only_with_mh_or_sh_and_tcp():
    assert parse(service='scheduler = "mh"\nsloppy = true').services[0].sloppy
    assert parse(service='scheduler = "sh"\nsloppy = true').services[0].sloppy
    [p] = problems(service="sloppy = true")
    assert "sloppy = true needs scheduler = \"mh\" or \"sh\" (here \"wrr\")" in p
    assert "reset" in p, "the reason: another director's server would reset it"
    [p] = problems(service='scheduler = "mh"\nprotocol = "udp"\nsloppy = true')
    assert "sloppy = true concerns TCP only" in p
    [p] = problems(service='scheduler = "mh"\nsloppy = "yes"')
    assert "sloppy = 'yes' must be true or false" in p


def test_sloppy_sets_the_service_flag():
    from lb import abi
    cfg = parse(service='scheduler = "mh"\nsloppy = true')
    lay = layout.build(cfg, {"192.168.0.12": "02:00:00:00:00:12"}, "02:00:00:00:00:01")
    flags = [v["flags"] for _, v in lay.service_rows()]
    assert flags[0] & abi.SVC_F["sloppy"] and not flags[1] & abi.SVC_F["sloppy"]


def test_vrrp_backup_leaves_arp_to_the_master():
    from lb import abi
    cfg = parse(director="vrrp = true")
    assert cfg.director.vrrp
    master = layout.build(cfg, {}, "02:00:00:00:00:01").settings_row()["flags"]
    backup = layout.build(cfg, {}, "02:00:00:00:00:01", answer_arp=False).settings_row()
    assert not master & abi.SETTINGS_F_ARP_BACKUP
    assert backup["flags"] & abi.SETTINGS_F_ARP_BACKUP
    [p] = problems(director='vrrp = "yes"')
    assert "vrrp = 'yes' must be true or false" in p


def test_a_vip_is_announceable_while_a_real_server_can_take_connections():
    cfg = parse()
    macs = {"192.168.0.12": "02:00:00:00:00:12", "192.168.0.13": "02:00:00:00:00:13",
            "192.168.0.14": "02:00:00:00:00:14"}
    mac = "02:00:00:00:00:01"
    assert layout.build(cfg, macs, mac).usable_vips == ["192.168.0.21", "192.168.0.22"]
    # .22's only server unresolved; .21 with one server down by health, one left.
    less = dict(macs, **{"192.168.0.14": None})
    down = {layout.real_key(cfg.services[0], "192.168.0.12"): "down"}
    assert layout.build(cfg, less, mac, health=down).usable_vips == ["192.168.0.21"]
    down[layout.real_key(cfg.services[0], "192.168.0.13")] = "down"
    assert layout.build(cfg, less, mac, health=down).usable_vips == []
    drained = config_mod.parse(BASE.format(director="", announce="", service="")
                               .replace('address = "192.168.0.14"',
                                        'address = "192.168.0.14"\ndrained = true'))
    assert layout.build(drained, macs, mac).usable_vips == ["192.168.0.21"]


def test_snippet_round_trip(tmp_path):
    text = announce.render(["192.168.0.21", "192.168.0.22"], "dr_lb_vips", owner="me")
    assert "protocol static dr_lb_vips {" in text
    assert "\troute 192.168.0.21/32 blackhole;\n\troute 192.168.0.22/32 blackhole;\n" in text
    path = tmp_path / "dr-lb.conf"
    announce.write_atomically(str(path), text)
    assert announce.announced_in(str(path)) == ["192.168.0.21", "192.168.0.22"]
    announce.write_atomically(str(path), announce.render([], "dr_lb_vips"))
    assert announce.announced_in(str(path)) == []
    assert announce.announced_in(str(tmp_path / "none")) == []


@pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird (Debian bird2)")
@pytest.mark.parametrize("vips", [[], ["192.168.0.21"], ["10.0.0.1", "203.0.113.9"]])
def test_bird_parses_the_snippet(tmp_path, vips):
    (tmp_path / "s.conf").write_text(announce.render(vips, "dr_lb_vips"))
    (tmp_path / "bird.conf").write_text(f'router id 10.0.0.1;\ninclude "{tmp_path}/s.conf";\n'
                                        "protocol bgp up {\n\tlocal 10.0.0.1 as 65001;\n"
                                        "\tneighbor 10.0.0.2 as 65000;\n\tipv4 { import none; "
                                        "export where proto = \"dr_lb_vips\"; };\n}\n")
    r = subprocess.run(["bird", "-p", "-c", str(tmp_path / "bird.conf")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_a_failed_reload_is_reported_and_tried_again(tmp_path):
    lines = []
    a = announce.Announcer(config_mod.Announce(snippet=str(tmp_path / "s.conf"),
                                               control_socket=str(tmp_path / "no.ctl")),
                           log=lines.append)
    assert not a.update(["192.168.0.21"])
    assert a.announced is None, "not reloaded: the next update tries again"
    assert lines and lines[0].startswith("dr-lb: announce: BIRD did not take"), lines
    assert announce.announced_in(str(tmp_path / "s.conf")) == ["192.168.0.21"]


def test_status_and_export_say_sloppy():
    from lb.director import ipvsadm
    from lb.director.status import service_flags
    assert service_flags({"scheduler_flags": ["mh-port"], "persistent": 0, "ops": False,
                          "sloppy": True}) == "(mh-port) sloppy"
    cfg = parse(service='scheduler = "mh"\nsloppy = true')
    rules, notes = ipvsadm.export_rules(cfg)
    assert "-s mh" in rules
    assert any("sloppy = true (1 service(s)) left out" in n and "sloppy_tcp" in n
               for n in notes), notes
