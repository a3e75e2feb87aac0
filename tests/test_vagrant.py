"""vagrant/: seed 002's scene on VMs must stay the namespace lab's scene.

vagrant/scene.json is the Vagrantfile's single source of addresses, names and weights;
these tests hold it to lb/lab.py and director.toml to it, require the real servers to run
lb/realserver/realserver.sh from the synced repository (nothing under vagrant/ copies a
file of lb/), and run `vagrant validate` where vagrant is installed. No VM is started and
no traffic is sent.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lb import lab
from lb.director import config as config_mod

REPO = Path(__file__).resolve().parent.parent
VAGRANT_DIR = REPO / "vagrant"
SCENE = json.loads((VAGRANT_DIR / "scene.json").read_text())
NETWORK = ipaddress.IPv4Network(SCENE["network"])


def last_octet(address: str) -> int:
    return int(ipaddress.IPv4Address(address)) & 0xFF


def scene_host(role: str) -> dict:
    (host,) = [h for h in SCENE["hosts"] if h["role"] == role]
    return host


def scene_reals() -> list[tuple[str, int]]:
    return [(h["address"], h["weight"]) for h in SCENE["hosts"] if h["role"] == "real"]


def test_scene_is_the_labs_scene():
    """Same hosts in the same order: role, name, last octet and weight; same VIP octet,
    prefix length and HTTP port."""
    got = [(h["role"], h["name"], last_octet(h["address"]), h.get("weight", 0))
           for h in SCENE["hosts"]]
    want = [(h.role, h.name, last_octet(h.address), h.weight) for h in lab.HOSTS]
    assert got == want
    assert last_octet(SCENE["vip"]) == last_octet(lab.VIP)
    assert NETWORK.prefixlen == lab.SUBNET_PREFIX
    assert SCENE["port"] == lab.HTTP_PORT


def test_scene_addresses_fit_the_private_network():
    assert NETWORK.is_private
    addresses = [h["address"] for h in SCENE["hosts"]] + [SCENE["vip"]]
    assert len(set(addresses)) == len(addresses)
    for a in addresses:
        ip = ipaddress.IPv4Address(a)
        assert ip in NETWORK and ip not in (NETWORK.network_address, NETWORK.broadcast_address)


def test_director_toml_validates_and_matches_the_scene():
    cfg = config_mod.load(VAGRANT_DIR / "director.toml")
    assert cfg.director.interface == "eth1"
    svc, *iperf = cfg.services
    assert (svc.vip, svc.port, svc.protocol, svc.scheduler, svc.persistent) == \
        (SCENE["vip"], SCENE["port"], "tcp", "wrr", 0)
    assert [(rs.address, rs.weight) for rs in svc.real_servers] == scene_reals()
    # iperf3 (vagrant/bench.sh): control (TCP) and data (UDP) on one real server
    assert [(s.vip, s.port, s.protocol) for s in iperf] == \
        [(SCENE["vip"], 5201, "tcp"), (SCENE["vip"], 5201, "udp")]
    assert all([rs.address for rs in s.real_servers] == [scene_reals()[0][0]] for s in iperf)
    # the provisioning finds the interface line with this sed expression
    lines = [ln for ln in (VAGRANT_DIR / "director.toml").read_text().splitlines()
             if re.match(r'^interface *= *"[^"]*"', ln)]
    assert len(lines) == 1


def test_real_servers_run_realserver_sh_from_the_synced_repository():
    """The VMs run the very file `dr-lb realserver ...` runs, and its own `up --persist`
    writes the boot-time unit."""
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    real = text[text.index('when "real"'):text.index('when "client"')]
    assert re.search(r'm\.vm\.synced_folder "\.\.", "/dr-lb", type: "rsync"', real)
    assert 'args: [h["name"], VIP, PORT, DIRECTOR_IP]' in real
    provision = (VAGRANT_DIR / "provision-realserver.sh").read_text()
    assert '/bin/sh /dr-lb/lb/realserver/realserver.sh up --persist "$VIP"' in provision
    assert (REPO / "lb/realserver/realserver.sh").is_file()
    # the copy `up --persist` writes, with the VIP as its default
    assert 'sh /etc/dr-lb/realserver.sh check --port "$PORT" --director "$DIRECTOR"' \
        in provision


def test_nothing_under_vagrant_copies_a_file_of_lb():
    lb_texts = {p.read_bytes() for p in (REPO / "lb").rglob("*") if p.is_file()}
    for path in VAGRANT_DIR.rglob("*"):
        if not path.is_file() or ".vagrant" in path.parts:
            continue
        assert path.read_bytes() not in lb_texts, f"{path} is a copy of a file of lb/"
        assert path.suffix != ".service", f"{path}: `realserver up --persist` writes the unit"
        text = path.read_text(errors="replace")
        assert not re.search(r"^DEFAULT_VIPS=", text, re.M), \
            f"{path} is a copy of what `dr-lb realserver script` prints"


def test_vagrantfile_takes_the_scene_from_scene_json():
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    assert 'File.join(HERE, "scene.json")' in text
    code = "\n".join(ln.split("#", 1)[0] for ln in text.splitlines())
    assert not re.search(r"\b\d{1,3}(\.\d{1,3}){3}\b", code), \
        "the Vagrantfile must take every address from scene.json"
    for script in ("provision-director.sh", "provision-realserver.sh",
                   "provision-client.sh"):
        assert f'"{script}"' in text
        assert (VAGRANT_DIR / script).is_file()


@pytest.mark.parametrize("script,shell", [
    ("bench.sh", "bash"),
    ("provision-director.sh", "bash"),
    ("provision-realserver.sh", "sh"),
    ("provision-client.sh", "sh"),
    ("build-box.sh", "bash"),
])
def test_provisioning_scripts_parse(script, shell):
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} is not installed")
    r = subprocess.run([path, "-n", str(VAGRANT_DIR / script)], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", ["bench.sh", "provision-director.sh",
                                    "provision-realserver.sh", "provision-client.sh",
                                    "build-box.sh"])
def test_scripts_pass_shellcheck(script):
    path = shutil.which("shellcheck")
    if path is None:
        pytest.skip("shellcheck is not installed")
    r = subprocess.run([path, str(VAGRANT_DIR / script)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout


def test_bench_sh_loads_the_exported_rules_into_ipvs():
    """The side-by-side run feeds IPVS what `dr-lb ipvsadm export` prints, and puts dr-lb
    back afterwards, whatever happened."""
    text = (VAGRANT_DIR / "bench.sh").read_text()
    assert "dr-lb ipvsadm export $config | sudo ipvsadm -R" in text
    assert re.search(r"trap '.*ipvsadm -C.*systemctl start dr-lb\.service", text)
    assert "wrk " in text and "iperf3 -c" in text and "dr-lb bench --quick" in text
    assert "ipvsadm" in (VAGRANT_DIR / "provision-director.sh").read_text()
    client = (VAGRANT_DIR / "provision-client.sh").read_text()
    assert "wrk" in client and "iperf3" in client
    # a UDP server on the wildcard answers from the real server's own address, and the
    # client, which sent to the VIP, drops the answer: iperf3 binds to the VIP (found
    # running the scene; vagrant/README.md)
    real = (VAGRANT_DIR / "provision-realserver.sh").read_text()
    assert "ExecStart=/usr/bin/iperf3 -s -B $VIP" in real
    assert "After=network.target dr-lb-realserver.service" in real


@pytest.mark.slow
def test_vagrant_validate(tmp_path):
    vagrant = shutil.which("vagrant")
    if vagrant is None:   # scripts/setup.sh installs it (Debian's vagrant)
        pytest.fail("vagrant is not installed: run scripts/setup.sh "
                    "(or `apt-get install vagrant vagrant-libvirt`)")
    env = dict(os.environ,
               VAGRANT_CHECKPOINT_DISABLE="1",           # no version check over the network
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dotfile"),   # no vagrant/.vagrant
               VAGRANT_NO_COLOR="1",
               # validate the libvirt blocks too: scripts/setup.sh installs the plugin (no
               # daemon), and without a usable provider `vagrant validate` fails before it
               # reads the file (a fresh CI machine has none)
               VAGRANT_DEFAULT_PROVIDER="libvirt")
    r = subprocess.run([vagrant, "validate"], cwd=VAGRANT_DIR, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
