"""dr-lb as a user gets it: a wheel built from this tree, installed into a fresh venv
outside the checkout, run from outside the checkout.

The wheel must carry the C sources (bpf/ of the repository, as lb/bpf/) and every
package, and the installed dr-lb must find them there, not in a checkout. The venv is
made like scripts/setup.sh makes .venv (`--system-site-packages`, so that it sees
Debian's bcc, click, pyroute2 and cffi); nothing is downloaded.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT

REPO = Path(__file__).resolve().parent.parent
BASE_PYTHON = Path("/usr/bin/python3")   # Debian's: its dist-packages hold bcc

VIP = "10.0.0.21"
CLIENT_MAC = "02:00:00:00:00:0a"
CLIENT_IP = "10.0.0.10"
DIRECTOR_MAC = "02:00:00:00:00:0b"
RS_MAC = "02:00:00:00:00:12"
CONFIG = f"""
[director]
interface = "eth0"

[[service]]
vip = "{VIP}"
port = 80
[[service.real_server]]
address = "10.0.0.12"
"""

# Run by the installed venv's python: compile the program from the installed sources,
# program one service and answer an ARP who-has for its VIP.
PACKET_SNIPPET = """
import sys
from pathlib import Path
from lb import abi
from lb.director import config, layout
from lb.director.dataplane import Dataplane

cfg = config.parse(Path(sys.argv[1]).read_text(), source=sys.argv[1])
dp = Dataplane(conn_table_size=4096)
try:
    dp.write(layout.build(cfg, {"10.0.0.12": sys.argv[3]}, sys.argv[4]))
    result = dp.test_run(bytes.fromhex(sys.argv[2]))
finally:
    dp.close()
print(abi.PROGRAM)
print(result.action)
print(result.data.hex())
"""

# Left out of the copy the wheel is built from: what a build or a run leaves behind.
IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                "__pycache__", ".pytest_cache", ".vagrant")


def clean_env() -> dict[str, str]:
    """The environment without whatever would import lb from the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(cmd: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


pytestmark = pytest.mark.slow   # builds a wheel and a venv


@pytest.fixture(scope="module")
def outside():
    """A scratch directory outside the checkout, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="dr-lb-install-") as tmp:
        path = Path(tmp).resolve()
        assert not path.is_relative_to(REPO)
        yield path


@pytest.fixture(scope="module")
def wheel(outside) -> Path:
    """The wheel of this tree, built by the test venv's pip (`pip wheel --no-deps
    --no-build-isolation`) from a copy of the working tree, so that the build leaves no
    build/ or egg-info in the checkout and no stale build/lib of an earlier build can
    slip into the wheel."""
    src = outside / "src"
    shutil.copytree(REPO, src, ignore=IGNORE, symlinks=True)
    dist = outside / "dist"
    run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "-q", "-w", dist], cwd=outside, timeout=180)
    wheels = list(dist.glob("dr_lb-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(outside, wheel) -> Path:
    """A fresh `--system-site-packages` venv with the wheel installed (no dependencies:
    Debian's click, pyroute2 and cffi are visible, as in scripts/setup.sh)."""
    if not BASE_PYTHON.exists():
        pytest.fail(f"{BASE_PYTHON} (Debian's python, which sees bcc) is missing: "
                    "run scripts/setup.sh")
    path = outside / "venv"
    run([BASE_PYTHON, "-m", "venv", "--system-site-packages", path], cwd=outside)
    run([path / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         wheel], cwd=outside)
    return path


def wheel_packages_expected() -> list[str]:
    """Every package directory of the checkout under lb/ and bench/, as a path."""
    found = []
    for top in ("lb", "bench"):
        for init in sorted((REPO / top).rglob("__init__.py")):
            if "__pycache__" not in init.parts:
                found.append(init.parent.relative_to(REPO).as_posix())
    return found


def test_wheel_carries_every_package_and_the_c_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f"{pkg}/__init__.py" for pkg in wheel_packages_expected()
               if f"{pkg}/__init__.py" not in names]
    assert not missing, (f"packages missing from the wheel: {missing}; add them to "
                         "[tool.setuptools] packages in pyproject.toml")
    sources = sorted(p.name for p in (REPO / "bpf").iterdir() if p.suffix in (".c", ".h"))
    assert "dr_lb.c" in sources and "dr_lb_consts.h" in sources
    missing = [f"lb/bpf/{name}" for name in sources if f"lb/bpf/{name}" not in names]
    assert not missing, f"C sources missing from the wheel: {missing}"
    assert "bench/reflector.c" in names
    assert not [n for n in names if n.startswith("bpf/")], "bpf/ must not be a top-level package"


def test_installed_dr_lb_checks_a_config_from_outside_the_checkout(outside, venv):
    work = outside / "work"
    work.mkdir(exist_ok=True)
    config = work / "lb.toml"
    config.write_text(CONFIG)

    result = run([venv / "bin" / "dr-lb", "check", "--offline", config], cwd=work)
    assert f"{config}: OK: 1 service(s), 1 real server(s) on eth0" in result.stdout

    # It runs the installed copy, C sources included, not the checkout's.
    where = run([venv / "bin" / "python", "-c",
                 "import lb, lb.abi, bench.measure as b; "
                 "print(lb.__file__); print(lb.abi.BPF_DIR); print(b.HERE)"], cwd=work)
    lb_file, bpf_dir, bench_dir = (Path(line) for line in where.stdout.split())
    site = lb_file.parent.parent
    assert site.is_relative_to(venv.resolve()), lb_file
    assert bpf_dir == site / "lb" / "bpf"
    assert (bpf_dir / "dr_lb.c").is_file() and (bpf_dir / "dr_lb_consts.h").is_file()
    assert (bench_dir / "reflector.c").is_file() and (bench_dir / "progs.c").is_file() \
        and bench_dir.is_relative_to(site)


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="needs root (bcc, bpf_prog_test_run)")
def test_installed_dr_lb_compiles_and_answers_arp(outside, venv):
    if run([venv / "bin" / "python", "-c",
            "import importlib.util as u; print(u.find_spec('bcc') is not None)"],
           cwd=outside).stdout.strip() != "True":
        pytest.fail("bcc is missing: run scripts/setup.sh (python3-bpfcc)")
    work = outside / "work"
    work.mkdir(exist_ok=True)
    config = work / "packet.toml"
    config.write_text(CONFIG)
    arp_who_has = (bytes.fromhex("ff" * 6) + bytes.fromhex(CLIENT_MAC.replace(":", ""))
                   + b"\x08\x06"                                  # ethertype ARP
                   + bytes.fromhex("0001 0800 06 04 0001")        # Ethernet/IPv4, request
                   + bytes.fromhex(CLIENT_MAC.replace(":", "")) + ip(CLIENT_IP)
                   + bytes(6) + ip(VIP))

    result = run([venv / "bin" / "python", "-c", PACKET_SNIPPET, config, arp_who_has.hex(),
                  RS_MAC, DIRECTOR_MAC], cwd=work, timeout=120)
    program, action, data = result.stdout.split()
    assert Path(program).is_relative_to(venv.resolve()), program
    assert int(action) == 3, f"XDP_TX expected, got action {action}"
    reply = bytes.fromhex(data)
    assert reply[20:22] == b"\x00\x02", "an ARP reply"
    assert reply[22:28] == bytes.fromhex(DIRECTOR_MAC.replace(":", ""))
    assert reply[28:32] == ip(VIP)


def ip(address: str) -> bytes:
    return bytes(int(part) for part in address.split("."))
