"""Real-server prep and check: lb/realserver/realserver.sh, a POSIX sh file, does all of
it (up, down, --persist, check and the standalone copy `script` prints). Real servers
without Python run that file; `dr-lb realserver ...` runs it with /bin/sh, streams what
up/down print, and turns what `check --machine` prints into findings.
"""
from __future__ import annotations

import contextlib
import importlib.resources
import subprocess
from typing import Callable, Iterator

from lb.errors import UserError
from lb.findings import Finding

SH = "/bin/sh"


@contextlib.contextmanager
def script_path() -> Iterator[str]:
    """realserver.sh as a file on disk, for as long as the block runs."""
    ref = importlib.resources.files("lb.realserver") / "realserver.sh"
    with importlib.resources.as_file(ref) as path:
        yield str(path)


def _options(port: int | None = None, director: str | None = None,
             root: str | None = None, udp_port: int | None = None) -> list[str]:
    out = [] if port is None else ["--port", str(port)]
    out += [] if udp_port is None else ["--udp-port", str(udp_port)]
    out += [] if director is None else ["--director", director]
    return out + ([] if root in (None, "/") else ["--root", str(root)])


def run(args: list[str], echo: Callable[[str], None] = print) -> int:
    """Run realserver.sh ARGS, passing each line it prints to `echo` as soon as it is
    printed (a failure midway still shows what was done); its errors go to stderr.
    Returns its exit status."""
    with script_path() as path, subprocess.Popen([SH, path, *args], stdout=subprocess.PIPE,
                                                 text=True) as p:
        for line in p.stdout:
            echo(line.rstrip("\n"))
    return p.returncode


def _output(args: list[str]) -> str:
    """What realserver.sh ARGS prints; its error as a UserError."""
    with script_path() as path:
        r = subprocess.run([SH, path, *args], capture_output=True, text=True)
    if r.returncode:
        raise UserError(r.stderr.strip().removeprefix("dr-lb: ")
                        or f"realserver.sh {args[0]} exited with {r.returncode}",
                        exit_code=r.returncode)
    return r.stdout


def up(vips: list[str], persist: bool = False, root: str = "/",
       echo: Callable[[str], None] = print) -> int:
    return run(["up", *(["--persist"] if persist else []), *_options(root=root), *vips], echo)


def down(vips: list[str], root: str = "/", echo: Callable[[str], None] = print) -> int:
    return run(["down", *_options(root=root), *vips], echo)


def parse_findings(text: str) -> list[Finding]:
    """`check --machine`: one finding a line, severity, code, what, why, fix by tabs."""
    out = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 5:
            raise UserError(f"realserver.sh check printed an unexpected line: {line!r}")
        out.append(Finding(*fields))
    return out


def check(vips: list[str], port: int | None = None, director: str | None = None,
          udp_port: int | None = None) -> list[Finding]:
    return parse_findings(_output(["check", "--machine",
                                   *_options(port, director, udp_port=udp_port), *vips]))


def script(vips: list[str], port: int | None = None, director: str | None = None,
           udp_port: int | None = None) -> str:
    """realserver.sh with these VIPs, ports and director as its defaults."""
    return _output(["script", *_options(port, director, udp_port=udp_port), *vips])
