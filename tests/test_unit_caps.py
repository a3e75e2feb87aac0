"""The unit's CapabilityBoundingSet is what `up` needs and no more: in the lab, `up --replace`
(what the unit runs) taking over a running director succeeds with exactly that bounding set
(and no ambient or inheritable capabilities, as root under systemd), and fails with any
one of them left out. Generic XDP only: capabilities don't depend on the mode."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lb.director import unit
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


def up_replace(lab: Lab, config, caps) -> subprocess.Popen:
    return lab.popen("director", *setpriv(caps), sys.executable, "-m", "lb", "up",
                     "--replace", str(config), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True)


def test_up_replace_runs_with_exactly_the_units_capabilities(lab):
    first = start_director(lab, lab.director_config())
    second = up_replace(lab, first.config_path, unit.CAPABILITIES)
    wait_ready(second)
    assert first.wait(timeout=30) == 0
    assert lab.curl(f"http://{VIP}:{HTTP_PORT}/") in {h.name for h in lab.real_servers}
    second.terminate()
    assert second.wait(timeout=30) == 0


@pytest.mark.parametrize("missing", unit.CAPABILITIES)
def test_up_replace_fails_without_any_one_of_them(lab, missing):
    first = start_director(lab, lab.director_config())
    try:
        p = up_replace(lab, first.config_path, [c for c in unit.CAPABILITIES if c != missing])
        out, _ = p.communicate(timeout=180)
        assert p.returncode != 0 and "dr-lb: ready" not in out, \
            f"up --replace worked without {missing}:\n{out}"
        assert "Traceback" not in out, out
    finally:
        first.terminate()
        first.wait(timeout=30)
