"""The `dr-lb` command line. Commands parse their arguments and call into lb/."""
from __future__ import annotations

import json
import sys

import click
from pyroute2.netlink.exceptions import NetlinkError

from lb.cli.bench import bench
from lb.cli.ipvsadm import ipvsadm_group
from lb.cli.operate import drain, undrain, vrrp, weight, zero
from lb.cli.realserver import realserver_group
from lb.cli.types import IPV4, SERVICE_OR_VIP
from lb.director import config as config_mod
from lb.errors import UserError


class Group(click.Group):
    """Turns the errors a user can hit into one line and an exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except config_mod.ConfigError as e:
            for problem in e.problems:
                click.echo(f"dr-lb: {problem}", err=True)
            ctx.exit(2)
        except UserError as e:
            click.echo(f"dr-lb: {e}", err=True)
            ctx.exit(e.exit_code)
        except PermissionError as e:
            click.echo(f"dr-lb: permission denied ({e.strerror}): run as root (sudo)",
                       err=True)
            ctx.exit(1)
        except NetlinkError as e:
            click.echo(f"dr-lb: the kernel refused a netlink request: {e}", err=True)
            ctx.exit(1)
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            click.echo(f"dr-lb: {e.strerror or e}{where}", err=True)
            ctx.exit(1)


@click.group(cls=Group)
@click.version_option(package_name="dr-lb")
def main() -> None:
    """dr-lb: an LVS-DR load balancer whose data plane runs in XDP."""


def load_config(path: str, system: bool = True) -> config_mod.Config:
    cfg = config_mod.load(path)
    if system:
        from lb.director import netif
        problems = netif.config_problems(cfg)
        if problems:
            raise config_mod.ConfigError(problems)
    return cfg


@main.command()
@click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--replace", is_flag=True,
              help="Take over from the running (or a crashed) instance: the new program "
                   "goes in place of the old one in one step, then the old process stops; "
                   "connections continue.")
@click.option("--exit-on-link-loss", is_flag=True,
              help="Exit (status 3) when the interface is deleted, instead of waiting for "
                   "an interface of that name and attaching to it again.")
def up(config_file: str, replace: bool, exit_on_link_loss: bool) -> None:
    """Validate CONFIG, attach XDP and balance until SIGINT/SIGTERM. Connections, persistence
    templates and WRR positions kept by a previous instance are reused."""
    from lb.director import daemon, instances
    instances.require_root()
    cfg = load_config(config_file)
    daemon.run(cfg, config_path=config_file, replace=replace,
               exit_on_link_loss=exit_on_link_loss)


INTERFACE = click.option("--interface", "-i",
                         help="The instance's interface (needed if several run).")
JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@main.command()
@INTERFACE
@JSON
@click.option("--rate", is_flag=True, help="Connections, packets and bytes per second "
              "(ipvsadm -Ln --rate).")
@click.option("--conns", is_flag=True, help="The connection table (ipvsadm -Lnc).")
@click.option("--vip", type=SERVICE_OR_VIP, help="With --conns: only this VIP[:PORT].")
@click.option("--real", type=IPV4, metavar="RIP", help="With --conns: only this real server.")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True,
              help="With --conns: show at most this many.")
@click.option("--timeout", is_flag=True, help="The timeouts (ipvsadm -L --timeout).")
def status(interface, as_json, rate, conns, vip, real, limit, timeout) -> None:
    """Show the running instance like `ipvsadm -Ln --stats`."""
    from lb.director import instances, status as status_mod
    if (vip or real) and not conns:
        raise click.UsageError("--vip and --real go with --conns")
    if conns:
        data = instances.request(interface, "conns", vip=vip and vip["vip"],
                                 port=vip and vip["port"], real=real, limit=limit)
        click.echo(json.dumps(data, indent=2) if as_json else status_mod.format_conns(data))
        return
    data = instances.request(interface, "status")
    if as_json:
        click.echo(json.dumps({"timeouts": data["timeouts"]} if timeout else data, indent=2))
    elif timeout:
        click.echo(status_mod.format_timeout(data))
    elif rate:
        click.echo(status_mod.format_rate(data))
    else:
        click.echo(status_mod.format_table(data))


@main.command()
@INTERFACE
def reload(interface: str | None) -> None:
    """Re-read the running instance's config; connections stay (also on SIGHUP)."""
    from lb.director import instances
    result = instances.request(interface, "reload")
    if not result["ok"]:
        for problem in result["problems"]:
            click.echo(f"dr-lb: reload refused: {problem}", err=True)
        sys.exit(2)
    click.echo(f"dr-lb: {result['message']}")


@main.command()
@INTERFACE
@click.option("--forget", is_flag=True,
              help="Also remove the kept state (connections, persistence templates, WRR "
                   "positions, ids), so that the next up starts empty.")
def down(interface: str | None, forget: bool) -> None:
    """Stop the running instance, or remove a leftover XDP program. The connection state
    is kept for the next `up` (a restart keeps connections) unless --forget."""
    from lb.director import instances
    instances.require_root()
    if forget:
        interface = instances.pick_interface(
            interface, "dr-lb is not running in this network namespace; to forget the "
                       "kept state of an interface give --interface")
    for line in instances.down(interface):
        click.echo(line)
    if forget:
        from lb.director import kept
        for line in kept.forget(interface) or [f"no kept state for {interface}"]:
            click.echo(line)


@main.command("systemd-unit")
@click.option("--config", "config_file", default="/etc/dr-lb/director.toml",
              show_default=True, type=click.Path(dir_okay=False),
              help="The config the service runs.")
@click.option("--install", is_flag=True,
              help="Write /etc/systemd/system/dr-lb.service, reload systemd and enable it.")
def systemd_unit(config_file: str, install: bool) -> None:
    """Print (or install and enable) a systemd unit for the director."""
    from lb.director import unit
    text = unit.unit_text(config_file, unit.dr_lb_command())
    if not install:
        click.echo(text, nl=False)
        return
    from lb.director import instances
    instances.require_root()
    for line in unit.install(text):
        click.echo(line)


@main.command()
@click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--offline", is_flag=True,
              help="Only check the file, not this machine's interfaces.")
@click.option("--live", is_flag=True,
              help="Also check the running network from the director (root): who answers "
                   "ARP for each VIP, the real servers' MACs, ICMP redirects, and a "
                   "DR-path probe of each TCP service on each real server.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(config_file: str, offline: bool, live: bool, as_json: bool) -> None:
    """Validate CONFIG without touching anything."""
    if live and offline:
        raise click.UsageError("--live looks at this machine's network; drop --offline")
    cfg = load_config(config_file, system=not offline)
    n_reals = sum(len(s.real_servers) for s in cfg.services)
    memory = config_mod.table_memory_bytes(cfg.director.conn_table_size)
    if not as_json:
        click.echo(f"{config_file}: OK: {len(cfg.services)} service(s), {n_reals} real "
                   f"server(s) on {cfg.director.interface}")
        click.echo(f"conn_table_size = {cfg.director.conn_table_size}: the connection tables "
                   f"take about {config_mod.mib(memory)} of kernel memory")
    if live:
        from lb.director import live_check
        sys.exit(live_check.report(cfg, config_file, as_json=as_json))
    if as_json:
        click.echo(json.dumps({"config": config_file, "ok": True,
                               "services": len(cfg.services), "real_servers": n_reals,
                               "interface": cfg.director.interface,
                               "table_memory_bytes": memory}))


@main.group()
def lab() -> None:
    """The built-in network-namespace lab (seed 002's scene)."""


@lab.command()
@click.option("--xdp-mode", type=click.Choice(["generic", "native"]), default="generic",
              show_default=True)
@click.option("--requests", "-n", default=12, show_default=True)
@click.option("--ha", is_flag=True, help="The second demo: two directors behind a router "
              "(BIRD, ECMP), one killed and brought back under long-lived connections.")
def demo(xdp_mode: str, requests: int, ha: bool) -> None:
    """Build the lab, balance 12 curl requests 2:1:1, show status, tear down."""
    from lb.director import instances
    from lb.lab import demo as demo_mod
    instances.require_root()
    if ha:
        sys.exit(demo_mod.run_ha())
    sys.exit(demo_mod.run(xdp_mode=xdp_mode, requests=requests))


main.add_command(realserver_group)
main.add_command(ipvsadm_group)
for command in (zero, weight, drain, undrain, vrrp, bench):
    main.add_command(command)
