"""Shared fixtures. The BPF program is compiled once per test session."""
from __future__ import annotations

import os
import shutil
import subprocess

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


# The XDP modes of the service, health and scheduler end-to-end suites. tests/test_e2e.py
# runs the forwarding paths, --replace and the leftovers in both modes; these suites test
# what the mode does not change (restarts, health checks, schedulers), in native mode, the
# one real NICs use, unless DRLB_ALL_XDP_MODES=1 (generic too: the suite then takes ~4
# minutes more).
SUITE_XDP_MODES = (["generic", "native"] if os.environ.get("DRLB_ALL_XDP_MODES") == "1"
                   else ["native"])


def pytest_collection_modifyitems(items):
    """A test that loads the program is a root test, wherever it is."""
    for item in items:
        if "dataplane" in item.fixturenames and not item.get_closest_marker("root"):
            item.add_marker(pytest.mark.root)


SCRATCH_IFACE, SCRATCH_MAC, SCRATCH_ADDRESS = "drlb0", "02:00:00:00:aa:01", "198.51.100.1"


@pytest.fixture
def scratch_netns():
    """This thread in a fresh network namespace holding `drlb0`, an Ethernet
    interface (a veth: SCRATCH_MAC, 198.51.100.1/24), and `tun0`, a tun device (no MAC): the
    machine checks of `dr-lb check` run against them and touch nothing of the host's."""
    if not IS_ROOT:
        pytest.skip("needs root (a network namespace)")
    from pyroute2 import NetNS, netns
    name = f"drlb-hdcheck-{os.getpid()}"
    if name in netns.listnetns():
        netns.remove(name)
    netns.create(name)
    try:
        with NetNS(name) as ns:
            ns.link("add", ifname=SCRATCH_IFACE, kind="veth", address=SCRATCH_MAC,
                    peer={"ifname": "drlb1"})
            idx = ns.link_lookup(ifname=SCRATCH_IFACE)[0]
            ns.addr("add", index=idx, address=SCRATCH_ADDRESS, prefixlen=24)
            ns.link("set", index=idx, state="up")
        subprocess.run(["ip", "-n", name, "tuntap", "add", "mode", "tun", "name", "tun0"],
                       check=True)
        netns.pushns(name)
        try:
            yield name
        finally:
            netns.popns()
    finally:
        netns.remove(name)


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
