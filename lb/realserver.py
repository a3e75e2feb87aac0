"""Real-server preparation for LVS-DR: the VIP on lo as a /32, and the ARP sysctls.

Seed 000: a VIP on lo with a /24 makes the whole subnet local and the host stops
answering ARP for its own address, so it is always /32 (labels lo:0, lo:1, ... as the
seeds do). Seeds 001/004: arp_ignore=1 and arp_announce=2 for all, default and lo; for a
real interface the kernel uses max(all, interface), so an interface whose own value
would still win is set too.

`up` records the sysctl values it changes in /run/dr-lb/realserver/net-<netns inode>
(one file per network namespace; /run is shared by every `ip netns exec`), and `down`
puts them back once no VIP is left on lo. `--persist` writes a sysctl.d file, the
generated shell script (lb/rs_script.py) and a systemd unit that runs it at boot.

The shell script's `up` and `down` do the same steps and print the same MESSAGES;
tests/test_realserver_script.py checks that the two give the same result.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

from lb import doctor
from lb.errors import UserError

ARP_SYSCTLS = {"arp_ignore": str(doctor.ARP_IGNORE_TARGET),
               "arp_announce": str(doctor.ARP_ANNOUNCE_TARGET)}
SYSCTL_SCOPES = ("all", "default", "lo")
PROC_CONF = Path("/proc/sys/net/ipv4/conf")
STATE_DIR = Path("/run/dr-lb/realserver")

# Where --persist writes, relative to the root ("/" except in tests).
PERSIST_SYSCTL = Path("etc/sysctl.d/90-dr-lb-realserver.conf")
PERSIST_SCRIPT = Path("etc/dr-lb/realserver.sh")
PERSIST_UNIT = Path("etc/systemd/system/dr-lb-realserver.service")
UNIT_NAME = "dr-lb-realserver.service"

# What up/down print; the shell script prints the same lines (lb/rs_script.py).
MESSAGES = {
    "lo-up": "brought lo up",
    "added": "added {vip}/32 on lo as {label}",
    "replaced": "replaced {vip}/{prefix} on lo with {vip}/32 as {label} (seed 000)",
    "set": "set {name} = {value}",
    "removed": "removed {vip}/{prefix} from lo",
    "not-on-lo": "{vip} is not on lo: nothing to remove",
    "kept": "left the ARP sysctls as they are: lo still has {others}",
    "restored": "restored {name} = {value}",
    "no-record": "no record of the ARP sysctls from before `realserver up`: left as they are",
    "on-other": "{vip} is on {dev} (/{prefix}); a real server must have it only on lo, "
                "or it answers ARP for it. Remove it first: ip addr del {vip}/{prefix} dev {dev}",
}


def msg(key: str, **values) -> str:
    return MESSAGES[key].format(**values)


# ---- state ---------------------------------------------------------------------------

def netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def state_path() -> Path:
    return STATE_DIR / f"net-{netns_inode()}"


def read_state() -> list[tuple[str, str]]:
    """[(\"all/arp_ignore\", \"0\"), ...]: the values from before `up`, in write order."""
    try:
        text = state_path().read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def write_state(entries: list[tuple[str, str]]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{k}={v}\n" for k, v in entries)
    state_path().write_text("# sysctl values before `dr-lb realserver up`\n" + body)


def _read(key: str) -> str | None:
    try:
        return (PROC_CONF / key).read_text().strip()
    except OSError:
        return None


def _name(key: str) -> str:
    dev, _, param = key.rpartition("/")
    return doctor.sysctl_name(dev, param)


# ---- addresses -----------------------------------------------------------------------

def _lo_addrs(ipr, lo: int) -> list[tuple[str, int, str]]:
    """(address, prefix, label) of every IPv4 address on lo."""
    return [(a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"), a["prefixlen"],
             a.get_attr("IFA_LABEL") or "lo")
            for a in ipr.get_addr(index=lo, family=2)]


def _other_vips(addrs: list[tuple[str, int, str]]) -> list[str]:
    """Addresses on lo other than 127.0.0.0/8: VIPs that still need the sysctls."""
    return [a for a, _, _ in addrs
            if not ipaddress.IPv4Address(a) in ipaddress.IPv4Network("127.0.0.0/8")]


def _free_label(labels: set[str]) -> str:
    n = 0
    while f"lo:{n}" in labels:
        n += 1
    return f"lo:{n}"


def _sysctl_writes() -> list[tuple[str, str]]:
    """(key, value) the real server needs: all/default/lo, plus any interface whose own
    value would win over `all` in max(all, interface) and still be wrong."""
    writes = [(f"{scope}/{k}", v) for scope in SYSCTL_SCOPES for k, v in ARP_SYSCTLS.items()]
    for dev in doctor.arp_interfaces():
        for k, v in ARP_SYSCTLS.items():
            cur = doctor.read_sysctl(dev, k)
            if cur is not None and [(s, t) for s, t in doctor.arp_fix(k, int(v), cur, dev)
                                    if s == dev]:
                writes.append((f"{dev}/{k}", v))
    return writes


def up(vips: list[str], persist: bool = False, root: str | Path = "/") -> list[str]:
    """Prepare this host for the VIPs; returns what was done, one line each."""
    from pyroute2 import IPRoute
    vips = [str(ipaddress.IPv4Address(v)) for v in vips]
    done = []
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=2):
            addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            if addr in vips and a["index"] != lo:
                raise UserError(msg("on-other", vip=addr, dev=names.get(a["index"]),
                                    prefix=a["prefixlen"]))

        writes = _sysctl_writes()
        _remember(writes)
        if not ipr.get_links(lo)[0]["flags"] & 1:
            ipr.link("set", index=lo, state="up")
            done.append(msg("lo-up"))
        # The sysctls before the VIPs: a VIP on lo while arp_ignore is 0 gets announced.
        for key, value in writes:
            if _read(key) != value:
                (PROC_CONF / key).write_text(value)
                done.append(msg("set", name=_name(key), value=value))

        for vip in vips:
            present = {a: (p, label) for a, p, label in _lo_addrs(ipr, lo)}
            if vip in present and present[vip][0] == 32:
                continue
            replaced = vip in present
            if replaced:
                ipr.addr("del", index=lo, address=vip, prefixlen=present[vip][0])
            label = _free_label({label for _, _, label in _lo_addrs(ipr, lo)})
            ipr.addr("add", index=lo, address=vip, prefixlen=32, label=label)
            done.append(msg("replaced", vip=vip, prefix=present[vip][0], label=label)
                        if replaced else msg("added", vip=vip, label=label))
    if persist:
        done += persist_up(vips, Path(root))
    return done


def _remember(writes: list[tuple[str, str]]) -> None:
    """Record the current values of the keys `writes` changes, keeping an earlier record.

    An earlier record is kept while every key in it still holds the value `up` wrote;
    if not (someone changed it since, or it belongs to an earlier namespace with the
    same inode), the current values are the ones to restore and replace it."""
    changes = [(k, cur) for k, v in writes if (cur := _read(k)) is not None and cur != v]
    if not changes:
        return
    old = read_state()
    consistent = all(_read(k) in (None, ARP_SYSCTLS.get(k.rpartition("/")[2]))
                     for k, _ in old)
    if old and consistent:
        known = {k for k, _ in old}
        extra = [(k, v) for k, v in changes if k not in known]
        if extra:
            write_state(old + extra)
    else:
        write_state(changes)


def down(vips: list[str], root: str | Path = "/") -> list[str]:
    """Undo `up` for these VIPs (and what --persist wrote for them). The sysctls go back
    to their values from before `up` only when no other VIP is left on lo."""
    from pyroute2 import IPRoute
    vips = [str(ipaddress.IPv4Address(v)) for v in vips]
    done = []
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for vip in vips:
            present = {a: p for a, p, _ in _lo_addrs(ipr, lo)}
            if vip in present:
                ipr.addr("del", index=lo, address=vip, prefixlen=present[vip])
                done.append(msg("removed", vip=vip, prefix=present[vip]))
            else:
                done.append(msg("not-on-lo", vip=vip))
        others = _other_vips(_lo_addrs(ipr, lo))
    done += persist_down(vips, Path(root))
    if others:
        done.append(msg("kept", others=" ".join(others)))
        return done
    state = read_state()
    if not state:
        done.append(msg("no-record"))
        return done
    for key, value in state:
        if (PROC_CONF / key).exists():
            (PROC_CONF / key).write_text(value)
            done.append(msg("restored", name=_name(key), value=value))
    state_path().unlink(missing_ok=True)
    return done


# ---- --persist -----------------------------------------------------------------------

def sysctl_conf() -> str:
    lines = ["# Written by `dr-lb realserver up --persist`; removed by `dr-lb realserver down`.",
             "# LVS-DR real server: answer ARP only for addresses on the receiving interface",
             "# (not for the VIPs on lo), and announce only the interface's own address.",
             "# For a real interface the kernel uses max(all, interface) (seed 004)."]
    for scope in SYSCTL_SCOPES:
        for key, value in ARP_SYSCTLS.items():
            lines.append(f"{doctor.sysctl_name(scope, key)} = {value}")
    return "\n".join(lines) + "\n"


def unit_file() -> str:
    script = "/" + str(PERSIST_SCRIPT)
    return f"""# Written by `dr-lb realserver up --persist`; removed by `dr-lb realserver down`.
[Unit]
Description=dr-lb LVS-DR real server: VIPs on lo as /32 and the ARP sysctls
DefaultDependencies=no
After=local-fs.target systemd-sysctl.service
Wants=network-pre.target
Before=network-pre.target shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh {script} up
ExecStop=/bin/sh {script} down

[Install]
WantedBy=multi-user.target
"""


def persisted_vips(root: str | Path = "/") -> list[str]:
    try:
        text = (Path(root) / PERSIST_SCRIPT).read_text()
    except OSError:
        return []
    m = re.search(r'^VIPS="([^"]*)"', text, re.M)
    return m.group(1).split() if m else []


def _systemd(root: Path) -> bool:
    return (root.resolve() == Path("/") and Path("/run/systemd/system").is_dir()
            and shutil.which("systemctl") is not None)


def _systemctl(*args: str) -> str:
    r = subprocess.run(["systemctl", *args], capture_output=True, text=True)
    if r.returncode:
        raise UserError(f"`systemctl {' '.join(args)}` failed: {r.stderr.strip()}")
    return f"ran systemctl {' '.join(args)}"


def persist_up(vips: list[str], root: Path) -> list[str]:
    from lb import rs_script
    all_vips = persisted_vips(root)
    all_vips += [v for v in vips if v not in all_vips]
    done = []
    for rel, text, mode, what in (
            (PERSIST_SYSCTL, sysctl_conf(), 0o644, "the ARP sysctls, applied at boot"),
            (PERSIST_SCRIPT, rs_script.generate(all_vips), 0o755,
             f"puts {' '.join(all_vips)} on lo at boot"),
            (PERSIST_UNIT, unit_file(), 0o644, "runs that script at boot")):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        done.append(f"wrote {'/' + str(rel)} ({what})")
    if _systemd(root):
        done.append(_systemctl("daemon-reload"))
        done.append(_systemctl("enable", UNIT_NAME))
    else:
        done.append(f"systemd is not running here: on a systemd host run `systemctl "
                    f"enable {UNIT_NAME}`; elsewhere run `/bin/sh /{PERSIST_SCRIPT} up` at "
                    "boot (e.g. from /etc/rc.local)")
    return done


def persist_down(vips: list[str], root: Path) -> list[str]:
    from lb import rs_script
    before = persisted_vips(root)
    if not before or not set(vips) & set(before):
        return []
    left = [v for v in before if v not in vips]
    if left:
        (root / PERSIST_SCRIPT).write_text(rs_script.generate(left))
        return [f"wrote /{PERSIST_SCRIPT} (puts {' '.join(left)} on lo at boot)"]
    done = []
    if _systemd(root):
        done.append(_systemctl("disable", UNIT_NAME))
    for rel in (PERSIST_UNIT, PERSIST_SCRIPT, PERSIST_SYSCTL):
        if (root / rel).exists():
            (root / rel).unlink()
            done.append(f"removed /{rel}")
    try:
        (root / PERSIST_SCRIPT).parent.rmdir()
    except OSError:
        pass
    if _systemd(root):
        done.append(_systemctl("daemon-reload"))
    return done
