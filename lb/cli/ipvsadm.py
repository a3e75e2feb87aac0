"""`dr-lb ipvsadm import|export`: ipvsadm rules to a dr-lb config and back."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from lb.director import config as config_mod
from lb.director import ipvsadm


@click.group("ipvsadm")
def ipvsadm_group() -> None:
    """Convert ipvsadm rules (ipvsadm-save -n, or a script of ipvsadm commands) to a
    dr-lb config, and a dr-lb config back to rules for ipvsadm -R."""


@ipvsadm_group.command("import")
@click.argument("rules", metavar="[FILE|-]", required=False)
@click.option("--interface", metavar="IF",
              help="The director's interface for [director] (default: eth0, marked "
                   "CHECK in the output).")
@click.option("-o", "out", metavar="OUT", type=click.Path(dir_okay=False),
              help="Write the config to OUT (atomically, replacing it) instead of stdout.")
@click.option("--skip-unsupported", is_flag=True,
              help="Import what dr-lb can do and list the rules left out on stderr.")
def import_(rules: str | None, interface: str | None, out: str | None,
            skip_unsupported: bool) -> None:
    """Print the dr-lb config for ipvsadm rules read from FILE (- or none: stdin).

    Reads `ipvsadm-save -n` output and shell scripts of ipvsadm commands. A rule dr-lb
    cannot honour (NAT, tunnelling, fwmark, IPv6, a scheduler it lacks, ...) stops the
    import with exit 2, one `LINE: RULE: why` each.
    """
    if rules is None and sys.stdin.isatty():
        raise click.UsageError("give the rules FILE, or - to read them from stdin")
    if rules in (None, "-"):
        text, source = click.get_text_stream("stdin").read(), "<stdin>"
    else:
        try:
            text = Path(rules).read_bytes().decode("utf-8", errors="replace")
        except OSError as e:
            raise config_mod.ConfigError([f"{rules}: cannot read: {e.strerror}"]) from None
        source = rules
    result = ipvsadm.import_rules(text, source=source, interface=interface,
                                  skip_unsupported=skip_unsupported)
    for note in result.notes:
        click.echo(f"dr-lb: {note}", err=True)
    if out is None:
        click.echo(result.toml, nl=False)
        return
    _write_atomically(Path(out), result.toml)
    n_reals = sum(len(s.real_servers) for s in result.config.services)
    click.echo(f"dr-lb: wrote {out}: {len(result.config.services)} service(s), "
               f"{n_reals} real server(s)", err=True)


@ipvsadm_group.command("export")
@click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False))
def export(config_file: str) -> None:
    """Print CONFIG as rules for `ipvsadm -R` (the format of ipvsadm-save -n, after a
    --set line for the timeouts)."""
    rules, notes = ipvsadm.export_rules(config_mod.load(config_file))
    for note in notes:
        click.echo(f"dr-lb: {note}", err=True)
    click.echo(rules, nl=False)


def _write_atomically(path: Path, text: str) -> None:
    """OUT is either the old file or the whole new one, never half written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
