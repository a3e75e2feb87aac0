"""Real-server preparation for LVS-DR: the VIP on lo as a /32, and the ARP sysctls.

Seed 000: a VIP on lo with a /24 makes the whole subnet local and the host stops
answering ARP for its own address, so it is always /32 (labels lo:0, lo:1, ... as the
seeds do). Seeds 001/004: arp_ignore=1 and arp_announce=2 for all, default and lo; for a
real interface the kernel uses max(all, interface), so an interface whose own value
would still win is set too.

`up` records the sysctl values it changes, and the VIPs it puts on lo, in
/run/dr-lb/realserver/net-<netns inode> (one file per network namespace; /run is shared
by every `ip netns exec`). `down` puts the sysctls back once none of those VIPs is left
on lo (other addresses on lo, an anycast /32 say, are not ours and do not count). A
record is trusted only while one of its VIPs is on lo and every sysctl in it still holds
what `up` wrote; otherwise it is stale (a namespace that died without `down`, whose
inode was reused) and is dropped. `--persist` writes a sysctl.d file, the generated shell
script (lb/rs_script.py) and a systemd unit that runs it at boot.

Each step is printed as it is done, so that a failure midway still shows what was
changed. The shell script's `up` and `down` do the same steps and print the same
MESSAGES; tests/test_realserver.py runs both on the same namespaces and compares.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

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
    "dropped": "removed {vip}/{prefix} from lo: a VIP on lo must be /32 (seed 000)",
    "set": "set {name} = {value}",
    "removed": "removed {vip}/{prefix} from lo",
    "not-on-lo": "{vip} is not on lo: nothing to remove",
    "kept": "left the ARP sysctls as they are: lo still has {others}",
    "restored": "restored {name} = {value}",
    "no-record": "no record of the ARP sysctls from before `realserver up`: left as they are",
    "stale-record": "dropped a stale record of the ARP sysctls (none of its VIPs was on lo, "
                    "or a sysctl has changed since `realserver up`): left them as they are",
    "on-other": "{vip} is on {dev} (/{prefix}); a real server must have it only on lo, "
                "or it answers ARP for it. Remove it first: "
                "{promote}ip addr del {vip}/{prefix} dev {dev}",
    "own-address": "{vip} is on {dev} (/{prefix}) and is {reason}: it looks like this "
                   "host's own address, not a VIP. Give the address the director serves; "
                   "do not remove {vip} from {dev}",
}


def msg(key: str, **values) -> str:
    return MESSAGES[key].format(**values)


class Steps(list):
    """The lines up/down report, each passed to `echo` as soon as it is added."""

    def __init__(self, echo: Callable[[str], None] | None = None):
        super().__init__()
        self.echo = echo

    def append(self, line: str) -> None:
        super().append(line)
        if self.echo is not None:
            self.echo(line)

    def extend(self, lines) -> None:
        for line in lines:
            self.append(line)

    def __iadd__(self, lines):
        self.extend(lines)
        return self


# ---- state ---------------------------------------------------------------------------

STATE_HEADER = "# dr-lb realserver up: the sysctl values from before it, and the VIPs it put on lo"


def netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def state_path() -> Path:
    return STATE_DIR / f"net-{netns_inode()}"


def read_state() -> tuple[list[tuple[str, str]], list[str]] | None:
    """([(\"all/arp_ignore\", \"0\"), ...], [VIP, ...]): the values from before `up`, in
    write order, and the VIPs it put on lo; None without a record."""
    try:
        text = state_path().read_text()
    except OSError:
        return None
    sysctls, vips = [], []
    for line in text.splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if key == "vip":
            vips.append(value)
        elif "/" in key:
            sysctls.append((key, value))
    return sysctls, vips


def write_state(sysctls: list[tuple[str, str]], vips: list[str]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{k}={v}\n" for k, v in sysctls) + "".join(f"vip={v}\n" for v in vips)
    state_path().write_text(STATE_HEADER + "\n" + body)


def record_valid(sysctls: list[tuple[str, str]], vips: list[str], on_lo: set[str]) -> bool:
    """A record is ours while one of its VIPs is on lo and each sysctl in it still holds
    what `up` wrote (a key that no longer exists does not count against it)."""
    return (any(v in on_lo for v in vips)
            and all(_read(k) in (None, ARP_SYSCTLS.get(k.rpartition("/")[2]))
                    for k, _ in sysctls))


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


def _refuse_other_interfaces(vips: list[str]) -> None:
    """A VIP on a real interface is answered at L2 here: refuse, with the command that
    removes it, unless it looks like this host's own address (then no such command)."""
    addrs = doctor.addresses()
    for vip in vips:
        for a in addrs:
            if a.addr != vip or a.dev == "lo":
                continue
            reason = doctor.own_address_reason(vip, addrs)
            if reason:
                raise UserError(msg("own-address", vip=vip, dev=a.dev, prefix=a.prefix,
                                    reason=reason))
            raise UserError(msg("on-other", vip=vip, dev=a.dev, prefix=a.prefix,
                                promote=doctor.promote_prefix(a, addrs)))


def up(vips: list[str], persist: bool = False, root: str | Path = "/",
       echo: Callable[[str], None] | None = None) -> list[str]:
    """Prepare this host for the VIPs; returns what was done, one line each (and passes
    each line to `echo` as soon as it is done)."""
    from pyroute2 import IPRoute
    vips = list(dict.fromkeys(str(ipaddress.IPv4Address(v)) for v in vips))
    done = Steps(echo)
    _refuse_other_interfaces(vips)
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        writes = _sysctl_writes()
        _remember(writes, vips, {a for a, _, _ in _lo_addrs(ipr, lo)})
        if not ipr.get_links(lo)[0]["flags"] & 1:
            ipr.link("set", index=lo, state="up")
            done.append(msg("lo-up"))
        # The sysctls before the VIPs: a VIP on lo while arp_ignore is 0 gets announced.
        for key, value in writes:
            if _read(key) != value:
                (PROC_CONF / key).write_text(value)
                done.append(msg("set", name=_name(key), value=value))

        for vip in vips:
            # Every copy that is not /32 goes (seed 000); the /32 is added if missing.
            prefixes = [p for a, p, _ in _lo_addrs(ipr, lo) if a == vip]
            for prefix in prefixes:
                if prefix != 32:
                    ipr.addr("del", index=lo, address=vip, prefixlen=prefix)
                    done.append(msg("dropped", vip=vip, prefix=prefix))
            if 32 not in prefixes:
                label = _free_label({label for _, _, label in _lo_addrs(ipr, lo)})
                ipr.addr("add", index=lo, address=vip, prefixlen=32, label=label)
                done.append(msg("added", vip=vip, label=label))
    if persist:
        persist_up(vips, Path(root), done)
    return done


def _remember(writes: list[tuple[str, str]], vips: list[str], on_lo: set[str]) -> None:
    """Record the current values of the keys `writes` changes, and the VIPs.

    An earlier record is kept (and extended) only while it is valid (record_valid);
    otherwise it is stale and replaced, even when nothing is about to change."""
    changes = [(k, cur) for k, v in writes if (cur := _read(k)) is not None and cur != v]
    old = read_state()
    if old is not None and record_valid(*old, on_lo):
        sysctls, recorded = old
        known = {k for k, _ in sysctls}
        sysctls = sysctls + [(k, v) for k, v in changes if k not in known]
        recorded = recorded + [v for v in vips if v not in recorded]
    else:
        sysctls, recorded = changes, list(vips)
    write_state(sysctls, recorded)


def down(vips: list[str], root: str | Path = "/",
         echo: Callable[[str], None] | None = None) -> list[str]:
    """Undo `up` for these VIPs (and what --persist wrote for them). The sysctls go back
    to their values from before `up` once none of the VIPs `up` put on lo is left."""
    from pyroute2 import IPRoute
    vips = list(dict.fromkeys(str(ipaddress.IPv4Address(v)) for v in vips))
    done = Steps(echo)
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        record = read_state()
        valid = record is not None and record_valid(
            *record, {a for a, _, _ in _lo_addrs(ipr, lo)})
        for vip in vips:
            prefixes = [p for a, p, _ in _lo_addrs(ipr, lo) if a == vip]
            for prefix in prefixes:
                ipr.addr("del", index=lo, address=vip, prefixlen=prefix)
                done.append(msg("removed", vip=vip, prefix=prefix))
            if not prefixes:
                done.append(msg("not-on-lo", vip=vip))
        on_lo = {a for a, _, _ in _lo_addrs(ipr, lo)}
    if record is None:
        done.append(msg("no-record"))
    elif not valid:
        state_path().unlink(missing_ok=True)
        done.append(msg("stale-record"))
    else:
        sysctls, recorded = record
        left = [v for v in recorded if v not in vips]
        others = [v for v in left if v in on_lo]
        if others:
            write_state(sysctls, left)
            done.append(msg("kept", others=" ".join(others)))
        elif not sysctls:
            state_path().unlink(missing_ok=True)
            done.append(msg("no-record"))
        else:
            for key, value in sysctls:
                if (PROC_CONF / key).exists():
                    (PROC_CONF / key).write_text(value)
                    done.append(msg("restored", name=_name(key), value=value))
            state_path().unlink(missing_ok=True)
    # Last: `systemctl disable --now` runs the unit's ExecStop (the script's `down`),
    # which then finds nothing left to undo.
    persist_down(vips, Path(root), done)
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


def persist_up(vips: list[str], root: Path, done: list[str] | None = None) -> list[str]:
    from lb import rs_script
    all_vips = persisted_vips(root)
    all_vips += [v for v in vips if v not in all_vips]
    done = Steps() if done is None else done
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


def persist_down(vips: list[str], root: Path, done: list[str] | None = None) -> list[str]:
    """Take these VIPs out of what --persist wrote; with none left, stop and disable the
    unit (its ExecStop runs the script's `down` while the script is still there) and
    remove the files."""
    from lb import rs_script
    done = Steps() if done is None else done
    before = persisted_vips(root)
    if not before or not set(vips) & set(before):
        return done
    left = [v for v in before if v not in vips]
    if left:
        (root / PERSIST_SCRIPT).write_text(rs_script.generate(left))
        done.append(f"wrote /{PERSIST_SCRIPT} (puts {' '.join(left)} on lo at boot)")
        return done
    if _systemd(root):
        done.append(_systemctl("disable", "--now", UNIT_NAME))
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
