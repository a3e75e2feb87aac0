"""`dr-lb realserver ...`: prepare a real server for LVS-DR, and check it."""
from __future__ import annotations

import click

from lb import realserver
from lb.cli_types import IPV4


@click.group("realserver")
def realserver_group() -> None:
    """Prepare this host as an LVS-DR real server (VIP on lo, ARP sysctls)."""


@realserver_group.command("up")
@click.argument("vips", nargs=-1, required=True, type=IPV4)
def up(vips: tuple[str, ...]) -> None:
    """Put each VIP on lo as a /32 and set arp_ignore=1, arp_announce=2."""
    for line in realserver.up(list(vips)) or ["nothing to do: already prepared"]:
        click.echo(line)


@realserver_group.command("down")
@click.argument("vips", nargs=-1, required=True, type=IPV4)
def down(vips: tuple[str, ...]) -> None:
    """Remove the VIPs from lo."""
    for line in realserver.down(list(vips)) or ["nothing to do"]:
        click.echo(line)
