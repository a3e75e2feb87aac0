"""`dr-lb lab demo`: seed 002's scene, end to end, in network namespaces."""
from __future__ import annotations

import collections
import subprocess
import tempfile
from pathlib import Path

from lb import lab as lab_mod
from lb.lab import Lab


def start_director(lab: Lab, config_text: str, timeout: float = 60) -> subprocess.Popen:
    """`dr-lb up` in the director's namespace; returns once it printed `ready`."""
    cfg = Path(tempfile.mkdtemp(prefix="dr-lb-")) / "lab.toml"
    cfg.write_text(config_text)
    proc = lab.popen("director", *lab_mod.python_cmd("lb", "up", str(cfg)),
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    proc.config_path = cfg   # for tests that edit it and reload
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("dr-lb: ready on "):
            return proc
    proc.wait(timeout=timeout)
    raise RuntimeError("dr-lb up did not become ready:\n" + "\n".join(lines))


def run(xdp_mode: str = "generic", requests: int = 12) -> int:
    with Lab(prefix="drlb-demo", xdp_mode=xdp_mode) as lab:
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
