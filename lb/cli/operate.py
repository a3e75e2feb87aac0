"""Changing a running director, as ipvsadm users do: `zero`, `weight`, `drain`, `undrain`.

Each change takes effect at once and, unless --no-save, is also written into the config
file in place (comments and layout kept), so that a reload or a restart keeps it.
"""
from __future__ import annotations

import sys
import time

import click

from lb.cli.types import IPV4, SERVICE
from lb.errors import UserError

INTERFACE = click.option("--interface", "-i",
                         help="The instance's interface (needed if several run).")
NO_SAVE = click.option("--no-save", is_flag=True,
                       help="Change only the running instance, not the config file.")


def _ask(interface: str | None, cmd: str, **args) -> None:
    from lb.director import instances
    result = instances.request(interface, cmd, **args)
    if not result["ok"]:
        for problem in result["problems"]:
            click.echo(f"dr-lb: {problem}", err=True)
        sys.exit(2)
    click.echo(f"dr-lb: {result['message']}")


@click.command()
@click.option("--service", type=SERVICE, help="Only this VIP:PORT and its real servers.")
@INTERFACE
def zero(service: dict | None, interface: str | None) -> None:
    """Reset packet, byte and connection counters (ipvsadm -Z); connections stay."""
    _ask(interface, "zero", service=service)


@click.command()
@click.argument("service", type=SERVICE)
@click.argument("rip", type=IPV4)
@click.argument("new_weight", metavar="N", type=click.IntRange(0, 65535))
@NO_SAVE
@INTERFACE
def weight(service: dict, rip: str, new_weight: int, no_save: bool,
           interface: str | None) -> None:
    """Set the weight of real server RIP in SERVICE (VIP:PORT) to N (0-65535)."""
    _ask(interface, "weight", service=service, rip=rip, weight=new_weight, save=not no_save)


@click.command()
@click.argument("rip", type=IPV4)
@click.option("--service", type=SERVICE, help="Only in this VIP:PORT (default: in all).")
@click.option("--wait", is_flag=True,
              help="Return once RIP has no active connection left, printing progress.")
@click.option("--timeout", type=click.FloatRange(0), default=300, show_default=True,
              metavar="S", help="With --wait: give up after S seconds.")
@NO_SAVE
@INTERFACE
def drain(rip: str, service: dict | None, wait: bool, timeout: float, no_save: bool,
          interface: str | None) -> None:
    """Give RIP no new connections (weight 0); existing ones go on."""
    _ask(interface, "drain", rip=rip, service=service, save=not no_save)
    if wait:
        wait_drained(interface, rip, service, timeout)


@click.command()
@click.argument("rip", type=IPV4)
@click.option("--service", type=SERVICE, help="Only in this VIP:PORT (default: in all).")
@NO_SAVE
@INTERFACE
def undrain(rip: str, service: dict | None, no_save: bool, interface: str | None) -> None:
    """Give RIP back the weight the config gives it."""
    _ask(interface, "undrain", rip=rip, service=service, save=not no_save)


def active_conns(status: dict, rip: str, service: dict | None) -> int:
    return sum(r["active_conns"] for s in status["services"]
               if service is None or ((s["vip"], s["port"]) == (service["vip"], service["port"])
                                      and service["protocol"] in (None, s["protocol"]))
               for r in s["real_servers"] if r["address"] == rip)


def wait_drained(interface: str | None, rip: str, service: dict | None, timeout: float,
                 poll_s: float = 0.5) -> None:
    from lb.director import instances
    deadline = time.monotonic() + timeout
    last = None
    while True:
        left = active_conns(instances.request(interface, "status"), rip, service)
        if left == 0:
            click.echo(f"dr-lb: {rip} has no active connection left")
            return
        if left != last:
            click.echo(f"dr-lb: {rip}: {left} active connection(s) left")
            last = left
        if time.monotonic() >= deadline:
            raise UserError(f"{rip} still has {left} active connection(s) after {timeout:g} s")
        time.sleep(poll_s)


@click.command()
@click.argument("state", type=click.Choice(("master", "backup", "fault", "stop"),
                                           case_sensitive=False))
@INTERFACE
def vrrp(state: str, interface: str | None) -> None:
    """keepalived's notify: only the MASTER answers ARP for the VIPs ([director] vrrp).

    STATE is master (answer ARP and send gratuitous ARP at once), or backup, fault or
    stop (leave ARP to the MASTER). The state is also remembered in /run, so that a dr-lb
    started later begins in it."""
    from lb.director import instances
    instances.require_root()
    state = state.lower()
    if interface is None:
        interface = instances.pick_interface(None)
    instances.write_vrrp_state(interface, state)
    if instances.find(interface) is None:
        click.echo(f"dr-lb: not running on {interface}; VRRP state {state} remembered for "
                   "when it starts")
        return
    _ask(interface, "vrrp", state=state)
