"""The unit's CapabilityBoundingSet is what `up` needs and no more: in the lab, `up --replace`
(what the unit runs) taking over a running director succeeds with exactly that bounding set
(and no ambient or inheritable capabilities, as root under systemd), and fails with any
one of them left out. Generic XDP only: capabilities don't depend on the mode."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lb.director import netif, unit
from lb.lab import HTTP_PORT, VIP, Lab
from lb.lab.demo import start_director, wait_ready
from tests.conftest import needs_netns

pytestmark = needs_netns


def setpriv(caps) -> list[str]:
    return ["setpriv", "--inh-caps=-all", "--ambient-caps=-all",
            "--bounding-set=-all," + ",".join("+" + c.removeprefix("CAP_").lower()
                                              for c in caps)]


@pytest.fixture(scope="module")
def lab():
    with Lab(prefix="drlb-svc", xdp_mode="generic") as lab:
        lab.prepare_real_servers()
        lab.start_servers()
        yield lab


def attached_program(lab: Lab) -> int | None:
    with lab.inside("director"):
        return netif.interface("eth0").xdp_prog_id


class Running:
    """The `dr-lb up` the tests try to take over from, and the id of the XDP program it
    attached; kept for the next test only while it runs and that program is still the
    one attached (a takeover that failed may have stopped it or replaced its program)."""
    proc: subprocess.Popen | None = None
    program: int | None = None


@pytest.fixture(scope="module")
def running():
    return Running()


@pytest.fixture
def first(lab, running):
    """A running `dr-lb up` with the lab's config, left by the test before if it is
    intact, else started."""
    r = running
    if r.proc is None or r.proc.poll() is not None or attached_program(lab) != r.program:
        if r.proc is not None and r.proc.poll() is None:
            r.proc.terminate()
            r.proc.wait(timeout=30)
        r.proc = start_director(lab, lab.director_config())
        r.program = attached_program(lab)
    return r.proc


def up_replace(lab: Lab, config, caps) -> subprocess.Popen:
    return lab.popen("director", *setpriv(caps), sys.executable, "-m", "lb", "up",
                     "--replace", str(config), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True)


def test_up_replace_runs_with_exactly_the_units_capabilities(lab, first):
    second = up_replace(lab, first.config_path, unit.CAPABILITIES)
    wait_ready(second)
    assert first.wait(timeout=30) == 0
    assert lab.curl(f"http://{VIP}:{HTTP_PORT}/") in {h.name for h in lab.real_servers}
    second.terminate()
    assert second.wait(timeout=30) == 0


@pytest.mark.parametrize("missing", unit.CAPABILITIES)
def test_up_replace_fails_without_any_one_of_them(lab, first, missing):
    p = up_replace(lab, first.config_path, [c for c in unit.CAPABILITIES if c != missing])
    out, _ = p.communicate(timeout=180)
    assert p.returncode != 0 and "dr-lb: ready" not in out, \
        f"up --replace worked without {missing}:\n{out}"
    assert "Traceback" not in out, out
