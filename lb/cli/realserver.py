"""`dr-lb realserver ...`: prepare a real server for LVS-DR, and check it."""
from __future__ import annotations

import os
import sys

import click

from lb import findings, realserver
from lb.cli.types import IPV4
from lb.errors import UserError

ROOT_OPTION = click.option("--root", default="/", hidden=True,
                           help="Write --persist files under this directory (tests).")


def _require_root(command: str, vips: tuple[str, ...]) -> None:
    if os.geteuid() != 0:
        raise UserError(f"realserver {command} changes lo's addresses and the ARP sysctls: "
                        f"run it as root (sudo dr-lb realserver {command} {' '.join(vips)})")


def _exit(status: int) -> None:
    if status:
        sys.exit(status)


@click.group("realserver")
def realserver_group() -> None:
    """Prepare this host as an LVS-DR real server (VIP on lo, ARP sysctls), check it,
    or print the same as a shell script for hosts without Python."""


@realserver_group.command("up")
@click.argument("vips", nargs=-1, required=True, type=IPV4)
@click.option("--persist", is_flag=True,
              help="Also survive a reboot: /etc/sysctl.d, the shell script and a "
                   "systemd unit; says what it wrote.")
@ROOT_OPTION
def up(vips: tuple[str, ...], persist: bool, root: str) -> None:
    """Put each VIP on lo as a /32 (lo:0, lo:1, ...) and set arp_ignore=1,
    arp_announce=2 for all, default and lo."""
    _require_root("up", vips)
    # Each step is printed as it is done: a failure midway still shows what changed.
    _exit(realserver.up(list(vips), persist=persist, root=root, echo=click.echo))


@realserver_group.command("down")
@click.argument("vips", nargs=-1, required=True, type=IPV4)
@ROOT_OPTION
def down(vips: tuple[str, ...], root: str) -> None:
    """Remove the VIPs from lo and what --persist wrote for them; put the ARP sysctls
    back once none of the VIPs `up` put on lo is left there."""
    _require_root("down", vips)
    _exit(realserver.down(list(vips), root=root, echo=click.echo))


@realserver_group.command("check")
@click.argument("vips", nargs=-1, required=True, type=IPV4)
@click.option("--port", type=click.IntRange(1, 65535),
              help="Also check that a TCP service listens on this port for the VIPs.")
@click.option("--udp-port", type=click.IntRange(1, 65535),
              help="Also check that a UDP service is bound to the VIPs on this port "
                   "(its replies must leave from the VIP).")
@click.option("--director", type=IPV4, metavar="ADDR",
              help="The director's address: the default route must not go through it.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(vips: tuple[str, ...], port: int | None, udp_port: int | None,
          director: str | None, as_json: bool) -> None:
    """Find every LVS-DR pitfall on this real server; exit 1 if any is an error."""
    found = realserver.check(list(vips), port=port, director=director, udp_port=udp_port)
    click.echo(findings.format_json(found) if as_json else findings.format_table(found))
    _exit(1 if findings.has_errors(found) else 0)


@realserver_group.command("script")
@click.argument("vips", nargs=-1, required=True, type=IPV4)
@click.option("--port", type=click.IntRange(1, 65535),
              help="The default for the script's `check --port`.")
@click.option("--udp-port", type=click.IntRange(1, 65535),
              help="The default for the script's `check --udp-port`.")
@click.option("--director", type=IPV4, metavar="ADDR",
              help="The default for the script's `check --director`.")
def script(vips: tuple[str, ...], port: int | None, udp_port: int | None,
           director: str | None) -> None:
    """Print a POSIX sh script doing up, down and check for these VIPs
    (`sh script.sh up|down|check`), for real servers without Python."""
    click.echo(realserver.script(list(vips), port=port, director=director,
                                 udp_port=udp_port), nl=False)
