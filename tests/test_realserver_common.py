"""Helpers shared by the real-server, real-server check and live-check tests (no tests
here).

Everything runs inside network namespaces built by lb.lab.Lab with the prefixes
"drlb-rs", "drlb-dr" and "drlb-lc", which the other test files do not use.

lb/realserver/realserver.sh is the one implementation of `realserver up/down/check`; it
has two entry points, and the tests run both: the CLI (`python -m lb realserver ...`,
which runs the file with /bin/sh) and the standalone copy `dr-lb realserver script`
prints, run with `sh` as a real server without Python runs it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

from pathlib import Path

import pytest
from click.testing import CliRunner

from lb import cli
from lb.lab import HOSTS, VIP, Lab

PY = sys.executable
from tests.conftest import needs_netns  # noqa: E402  (markers root, netns)

VIP2 = "198.18.0.22"
RIP = {h.name: h.address for h in HOSTS}
RS_SH = Path(__file__).resolve().parent.parent / "lb" / "realserver" / "realserver.sh"
# Where `up` records what it changed, for the namespace the shell runs in.
STATE_FILE_SH = "/run/dr-lb/realserver/net-$(stat -L -c %i /proc/self/ns/net)"

# Run inside a namespace: its IPv4 addresses, routes, lo's flags and every readable
# file under /proc/sys/net/ipv4/conf, as JSON.
SNAPSHOT = r"""
import json, os
from pyroute2 import IPRoute
out = {"addrs": [], "routes": [], "sysctl": {}}
with IPRoute() as ipr:
    names = {l["index"]: l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}
    out["lo_flags"] = [l["flags"] for l in ipr.get_links() if l.get_attr("IFLA_IFNAME") == "lo"]
    for a in ipr.get_addr(family=2):
        out["addrs"].append([names[a["index"]], a.get_attr("IFA_ADDRESS"), a["prefixlen"],
                             a.get_attr("IFA_LABEL"), a["scope"]])
    for r in ipr.get_routes(family=2, table=0):
        out["routes"].append([r.get_attr("RTA_TABLE"), r["type"], r.get_attr("RTA_DST"),
                              r["dst_len"], names.get(r.get_attr("RTA_OIF")),
                              r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_PREFSRC")])
base = "/proc/sys/net/ipv4/conf"
for dev in sorted(os.listdir(base)):
    for key in sorted(os.listdir(os.path.join(base, dev))):
        try:
            with open(os.path.join(base, dev, key)) as f:
                out["sysctl"][dev + "/" + key] = f.read().strip()
        except OSError:
            pass
out["addrs"].sort(); out["routes"].sort(key=repr)
print(json.dumps(out))
"""


def small_lab(prefix: str, n_real: int = 2) -> Lab:
    """client, director and n_real real servers."""
    return Lab(prefix=prefix, hosts=HOSTS[:2 + n_real])


def forget_state(lab: Lab) -> None:
    """Remove the sysctl records `up` left in /run for the lab's real servers (a lab torn
    down without `down` would leave them behind)."""
    for h in lab.real_servers:
        lab.run(h.name, "sh", "-c", f"rm -f {STATE_FILE_SH}", check=False)


def state_file_of(lab: Lab, host: str) -> str:
    return lab.run(host, "sh", "-c", f"echo {STATE_FILE_SH}").stdout.strip()


def snapshot(lab: Lab, host: str) -> dict:
    return json.loads(lab.run(host, PY, "-c", SNAPSHOT).stdout)


def py_rs(lab: Lab, host: str, *args: str, check: bool = False, **kw):
    """`python -m lb realserver ARGS` in host. `down` and `up --persist` read and write
    the --persist files: a test must give them a scratch --root, never this machine's /etc."""
    if args and (args[0] == "down" or "--persist" in args) and "--root" not in args:
        raise AssertionError(f"realserver {' '.join(args)}: pass --root SCRATCH_DIR")
    return lab.run(host, PY, "-m", "lb", "realserver", *args, check=check, **kw)


def write_script(path, vips: list[str], port: int | None = None,
                 director: str | None = None) -> str:
    """What `dr-lb realserver script VIPS [--port] [--director]` prints, as a file."""
    args = ["realserver", "script", *vips]
    args += [] if port is None else ["--port", str(port)]
    args += [] if director is None else ["--director", director]
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 0, r.output
    path.write_text(r.output)
    return str(path)


def sh_rs(lab: Lab, host: str, script: str, *args: str, check: bool = False, **kw):
    """A script (the printed one, or lb/realserver/realserver.sh), run with sh (dash on
    Debian) in host. As py_rs: with VIPs, `down` and `up --persist` need a scratch --root."""
    if (args and ((args[0] == "down" and len(args) > 1) or "--persist" in args)
            and "--root" not in args):
        raise AssertionError(f"sh {script} {' '.join(args)}: pass --root SCRATCH_DIR")
    return lab.run(host, "sh", script, *args, check=check, **kw)


def sysctl(lab: Lab, host: str, key: str, value) -> None:
    lab.sysctl(host, key, str(value))


def ip(lab: Lab, host: str, *args: str) -> None:
    lab.run(host, "ip", *args)


# ---- check's outputs ----------------------------------------------------------------------

ROW = re.compile(r"^(error|warning|info|ok)\s+(\S+)\s+(.*)$")


def parse_table(text: str) -> list[dict]:
    """Findings from the table `realserver check` or the script prints (why may be
    wrapped)."""
    out: list[dict] = []
    field = None
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            out.append({"severity": m[1], "code": m[2], "what": m[3], "why": "", "fix": ""})
            field = None
            continue
        stripped = line.strip()
        if not out or not line.startswith(" "):
            field = None
            continue
        if stripped.startswith("why: "):
            field, stripped = "why", stripped[5:]
        elif stripped.startswith("fix: "):
            field, stripped = "fix", stripped[5:]
        if field:
            out[-1][field] = (out[-1][field] + " " + stripped).strip()
    return out


def normalise(findings: list[dict]) -> list[dict]:
    return [{k: " ".join(str(v).split()) for k, v in f.items()} for f in findings]


def check_both(lab: Lab, host: str, script: str, vips: list[str], *opts: str,
               table: bool = False):
    """Run `realserver check --json` (the CLI) and the printed script's check on the same
    host; require the same findings and exit status; return (findings, exit status)."""
    py = py_rs(lab, host, "check", *vips, *opts, "--json")
    assert py.returncode in (0, 1), py.stderr
    findings = json.loads(py.stdout)["findings"]
    sh = sh_rs(lab, host, script, "check", *opts)
    assert sh.returncode == py.returncode, (py.stdout, sh.stdout, sh.stderr)
    assert not sh.stderr, sh.stderr
    assert normalise(parse_table(sh.stdout)) == normalise(findings), \
        f"CLI and script disagree:\n{json.dumps(findings, indent=1)}\n---\n{sh.stdout}"
    if table:   # the CLI's table says the same as its JSON
        text = py_rs(lab, host, "check", *vips, *opts)
        assert normalise(parse_table(text.stdout)) == normalise(findings)
    return findings, py.returncode


def codes(findings: list[dict], severity: str | None = None) -> list[str]:
    return [f["code"] for f in findings if severity is None or f["severity"] == severity]


def one(findings: list[dict], code: str) -> dict:
    found = [f for f in findings if f["code"] == code]
    assert len(found) == 1, f"expected one {code}, got {findings}"
    return found[0]


def arp_answers(lab: Lab, host: str, target: str, wait_s: float = 1.0) -> list[str]:
    """Every MAC that answers host's ARP who-has target (two rounds of wait_s).

    "Nobody answers" is only concluded when, in the same listen, a control address that
    must answer (another host's own address) did: the listener was up and frames flowed."""
    control = next(h.address for h in lab.hosts if h.name != host and h.role != "real")
    code = ("import json, sys; from lb.director.arp import who_has; "
            f"print(json.dumps(who_has('eth0', ['{target}', '{control}'], {wait_s}, "
            "rounds=2)))")
    found = json.loads(lab.run(host, PY, "-c", code).stdout)
    assert found[control], (f"{control} did not answer ARP from {host} either: the listen "
                            f"for {target} proves nothing")
    return found[target]


def can_ping(lab: Lab, src: str, dst: str) -> bool:
    lab.run(src, "ip", "neigh", "flush", "all")
    return lab.run(src, "ping", "-c", "1", "-W", "1", dst, check=False).returncode == 0


__all__ = ["PY", "VIP", "VIP2", "RIP", "RS_SH", "needs_netns", "small_lab", "forget_state",
           "state_file_of", "snapshot", "py_rs", "write_script", "sh_rs", "sysctl", "ip",
           "parse_table", "normalise", "check_both", "codes", "one", "arp_answers", "can_ping",
           "listen", "bind_udp", "udp_echo", "fake_bin", "with_path"]


LISTEN = ("import socket, sys, time; s = socket.socket(); "
          "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
          "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print('listening', flush=True); "
          "time.sleep(600)")


def listen(lab, host, address, port):
    """A TCP listener on address:port in `host`, up when this returns (killed with the lab)."""
    p = lab.popen(host, PY, "-c", LISTEN, address, str(port), stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "listening"
    return p


BIND_UDP = ("import socket, sys, time; "
            "family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET; "
            "s = socket.socket(family, socket.SOCK_DGRAM); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            "family == socket.AF_INET6 and s.setsockopt(socket.IPPROTO_IPV6, "
            "socket.IPV6_V6ONLY, int(sys.argv[3])); "
            "s.bind((sys.argv[1], int(sys.argv[2]))); print('bound', flush=True); "
            "time.sleep(600)")


def bind_udp(lab, host, address, port, v6only=0):
    """A UDP socket bound to address:port in `host` (for "::", IPV6_V6ONLY as given),
    bound when this returns (killed with the lab)."""
    p = lab.popen(host, PY, "-c", BIND_UDP, address, str(port), str(v6only),
                  stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "bound"
    return p


UDP_ECHO = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.bind((sys.argv[1], int(sys.argv[2]))); print('bound', flush=True)\n"
            "while True:\n    data, peer = s.recvfrom(2048); s.sendto(data, peer)")


def udp_echo(lab, host, address, port):
    """A UDP echo bound to address:port in `host`, bound when this returns (killed with
    the lab): what it answers leaves from the address it is bound to."""
    p = lab.popen(host, PY, "-c", UDP_ECHO, address, str(port), stdout=subprocess.PIPE,
                  text=True)
    assert p.stdout.readline().strip() == "bound"
    return p


def fake_bin(tmp_path, **scripts: str) -> Path:
    """A directory of stand-in commands (name=sh body) to put first in PATH: the script
    keeps the caller's PATH ahead of the standard directories."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (d / name).write_text("#!/bin/sh\n" + body)
        (d / name).chmod(0o755)
    return d


def with_path(directory: Path, **env: str) -> dict:
    return dict(os.environ, PATH=f"{directory}:{os.environ['PATH']}", **env)
