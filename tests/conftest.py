"""Shared fixtures. The BPF program is compiled once per test session."""
from __future__ import annotations

import os
import shutil

import pytest

from lb.director import config as config_mod
from lb.director import layout as layout_mod

IS_ROOT = os.geteuid() == 0


def bcc_available() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return True


# The layers, selectable with -m: `pytest -m "not root"` runs the pure layer in seconds.
needs_root = [pytest.mark.root,
              pytest.mark.skipif(not IS_ROOT, reason="needs root (XDP, bcc, namespaces)")]
needs_netns = [pytest.mark.root, pytest.mark.netns,
               pytest.mark.skipif(not IS_ROOT or shutil.which("ip") is None,
                                  reason="needs root and iproute2 for network namespaces")]


def pytest_collection_modifyitems(items):
    """A test that loads the program is a root test, wherever it is."""
    for item in items:
        if "dataplane" in item.fixturenames and not item.get_closest_marker("root"):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def dataplane():
    """The real program, compiled and loaded once, never attached: packet tests feed it
    through bpf_prog_test_run_opts."""
    if not IS_ROOT:
        pytest.skip("packet tests need root")
    if not bcc_available():
        pytest.fail("bcc is missing: run scripts/setup.sh (python3-bpfcc)")
    from lb.director.dataplane import Dataplane
    dp = Dataplane()   # the default conn_table_size, 1,000,000: the capacity test needs it
    yield dp
    dp.close()


class Programmed:
    """A config written into the session's maps through the real control-plane code."""

    def __init__(self, dp, cfg: config_mod.Config, macs: dict[str, str | None],
                 interface_mac: str):
        self.dp = dp
        self.config = cfg
        self.interface_mac = interface_mac
        self.ids = layout_mod.Ids()   # kept across reprogram(), as the director keeps them
        self.layout = layout_mod.build(cfg, macs, interface_mac, self.ids)
        dp.write(self.layout)

    def reprogram(self, cfg: config_mod.Config, macs: dict[str, str | None],
                  health: dict | None = None) -> None:
        self.config = cfg
        self.layout = layout_mod.build(cfg, macs, self.interface_mac, self.ids, self.layout,
                                       health=health)
        self.dp.write(self.layout)


@pytest.fixture
def program(dataplane):
    """program(toml_text, macs) -> Programmed, starting from empty connection tables
    and zeroed counters."""
    def _program(text: str, macs: dict[str, str | None], interface_mac: str) -> Programmed:
        dataplane.clear_state()
        cfg = config_mod.parse(text, source="test.toml")
        return Programmed(dataplane, cfg, macs, interface_mac)
    return _program
