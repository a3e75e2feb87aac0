"""`dr-lb lab demo`: seed 002's scene, end to end, in network namespaces."""
from __future__ import annotations

import collections
import subprocess
import tempfile
import threading
from pathlib import Path

from lb import lab as lab_mod
from lb.lab import Lab


def wait_ready(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Read `dr-lb up`'s output until its ready line; raise with the output if it ends
    first or nothing is ready within `timeout` seconds (then the process is killed)."""
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("dr-lb: ready on "):
                ready.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if ready.is_set():
        return
    if reader.is_alive():
        proc.kill()
    proc.wait(timeout=30)
    raise RuntimeError(f"dr-lb up was not ready within {timeout} s:\n" + "\n".join(lines))


def launch_director(lab: Lab, config: Path, *options: str,
                    host: str = "director") -> subprocess.Popen:
    """`dr-lb up [OPTIONS] CONFIG` in the namespace of `host` (a lab with two directors
    runs one in each), once it is ready."""
    proc = lab.popen(host, *lab_mod.python_cmd("lb", "up", *options, str(config)),
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc.config_path = config   # for tests that edit it and reload
    wait_ready(proc)
    return proc


def start_director(lab: Lab, config_text: str, *options: str,
                   host: str = "director") -> subprocess.Popen:
    """launch_director() with `config_text` written to a file of its own."""
    cfg = Path(tempfile.mkdtemp(prefix="dr-lb-")) / "lab.toml"
    cfg.write_text(config_text)
    return launch_director(lab, cfg, *options, host=host)


def run(xdp_mode: str = "generic", requests: int = 12, prefix: str = "drlb-demo") -> int:
    with Lab(prefix=prefix, xdp_mode=xdp_mode) as lab:
        print(f"lab: client {lab_mod.CLIENT_IP}, director {lab_mod.DIRECTOR_IP}, "
              f"VIP {lab_mod.VIP}, real servers "
              + ", ".join(f"{h.name} {h.address} (weight {h.weight})" for h in lab.real_servers))
        lab.prepare_real_servers()
        lab.start_servers()
        director = start_director(lab, lab.director_config())
        print(f"director: dr-lb up is running in {lab.ns('director')} (xdp {xdp_mode})")
        seen = collections.Counter()
        for i in range(1, requests + 1):
            who = lab.curl(f"http://{lab_mod.VIP}:{lab_mod.HTTP_PORT}/")
            seen[who] += 1
            print(f"request {i:2}: answered by {who}")
        print("answers: " + ", ".join(f"{name} {n}" for name, n in sorted(seen.items())))
        print(lab.run("director", *lab_mod.python_cmd("lb", "status")).stdout)
        director.terminate()
        print(director.communicate(timeout=15)[0].strip())
        return 0 if director.returncode == 0 else 1
