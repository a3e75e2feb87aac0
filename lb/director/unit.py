"""`dr-lb systemd-unit`: the director as a systemd service (Type=notify).

The capabilities are the measured minimum for what `up` does (tests/test_unit_caps.py runs
`up --replace` in the lab with exactly this bounding set, and checks that one fewer fails):
- CAP_SYS_ADMIN: bcc opens a pinned map (the kept state) by its id after finding it by
  path (BPF_MAP_GET_FD_BY_ID), which only CAP_SYS_ADMIN may do. It implies CAP_BPF and
  CAP_PERFMON (maps, loading a trusted program), so those are not listed: measured,
  `up --replace` works without them when CAP_SYS_ADMIN is there. (The running program is
  taken over through its pin; by id, that too would need CAP_SYS_ADMIN.)
- CAP_NET_ADMIN: load an XDP program (a networking program type) and attach it (netlink);
- CAP_NET_RAW: the gratuitous ARP (AF_PACKET) and the ICMP probes that make the kernel
  resolve real servers' MACs (SOCK_RAW).
ExecStart runs with --replace, so that a restart after a crash takes over the leftover.
Not needed: CAP_SYS_RESOURCE (since 5.11 BPF memory is charged to the cgroup, not to
RLIMIT_MEMLOCK; LimitMEMLOCK=infinity covers older kernels), CAP_DAC_* (root owns every
file it touches). Mounting the bpffs needs CAP_SYS_ADMIN in the host's mount namespace:
ExecStartPre does it with full privileges ("+"), since a mount made inside the service's
own namespace (ProtectSystem=) would vanish with it, and the kept state with it.

bcc compiles at start: it reads kernel headers under /lib/modules and /usr/src and writes
nothing outside /tmp (private here). So no ProtectKernelModules= (it hides /lib/modules).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from lb.director.kept import BPFFS
from lb.director.instances import RUN_DIR

UNIT_PATH = Path("/etc/systemd/system/dr-lb.service")
CAPABILITIES = ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_NET_RAW")


def dr_lb_command() -> str:
    """How systemd should start this dr-lb: its launcher if there is one, else this
    interpreter with -m lb (a checkout on PYTHONPATH)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "dr-lb" and argv0.exists():
        return str(argv0.resolve().parent / "dr-lb") if not argv0.is_absolute() else str(argv0)
    found = shutil.which("dr-lb")
    if found:
        return found
    return f"{sys.executable} -m lb"


def runtime_directory() -> str:
    """RuntimeDirectory= lines for RUN_DIR: systemd creates it before it builds the unit's
    namespace, which fails on a path of ReadWritePaths= that does not exist (a fresh
    boot: /run is empty), and keeps it when the service stops (the kept state's bpffs is
    mounted there). Nothing for a RUN_DIR outside /run (DR_LB_RUN_DIR)."""
    try:
        rel = RUN_DIR.relative_to("/run")
    except ValueError:
        return ""
    return f"RuntimeDirectory={rel}\nRuntimeDirectoryPreserve=yes\n"


def unit_text(config_path: str, command: str) -> str:
    config = os.path.abspath(config_path)
    mount = (f"/bin/sh -c 'mkdir -p {BPFFS} && {{ mountpoint -q {BPFFS} || "
             f"mount -t bpf bpf {BPFFS}; }}'")
    return f"""\
# Written by `dr-lb systemd-unit`; `dr-lb systemd-unit --config PATH --install` rewrites it.
[Unit]
Description=dr-lb LVS-DR load balancer (XDP) for {config}
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
Environment=PYTHONUNBUFFERED=1
# The kept connection state lives on a bpffs under {RUN_DIR}, mounted in the host's
# namespace ("+": without this unit's sandbox) so that it outlives the service.
{runtime_directory()}ExecStartPre=+{mount}
# --replace: after a crash, take over the program the dead process left attached, in
# one step; connections continue from the kept state.
ExecStart={command} up --replace {config}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
# bcc compiles the program at start (seconds; a slow VM takes longer).
TimeoutStartSec=180
TimeoutStopSec=30

User=root
CapabilityBoundingSet={' '.join(CAPABILITIES)}
NoNewPrivileges=yes
LimitMEMLOCK=infinity

ProtectSystem=strict
ReadWritePaths={RUN_DIR} {os.path.dirname(config)}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_PACKET AF_INET AF_INET6
SystemCallArchitectures=native
UMask=0077

[Install]
WantedBy=multi-user.target
"""


def install(text: str) -> list[str]:
    UNIT_PATH.write_text(text)
    done = [f"wrote {UNIT_PATH}"]
    if shutil.which("systemctl") is None:
        return done + ["systemctl not found: enable it with `systemctl enable dr-lb` where "
                       "systemd runs"]
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "dr-lb.service"]):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            return done + [f"`{' '.join(argv)}` failed: {(r.stderr or r.stdout).strip()}"]
    return done + ["enabled dr-lb.service; start it with `systemctl start dr-lb`"]
