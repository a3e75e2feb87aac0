"""`dr-lb lab demo`: seed 002's scene, end to end, in network namespaces."""
from __future__ import annotations

import collections
import subprocess
from pathlib import Path

from lb import lab as lab_mod
from lb.lab import Lab, wait_ready  # noqa: F401 (wait_ready: tests import it from here)


def launch_director(lab: Lab, config: Path, *options: str, host: str = "director",
                    wait: bool = True) -> subprocess.Popen:
    """`dr-lb up [OPTIONS] CONFIG` in the namespace of `host` (a lab with two directors
    runs one in each), once it is ready (or at once, without `wait`: then call
    wait_ready())."""
    proc = lab.popen(host, *lab_mod.python_cmd("lb", "up", *options, str(config)),
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc.config_path = config   # for tests that edit it and reload
    if wait:
        wait_ready(proc)
    return proc


def start_director(lab: Lab, config_text: str, *options: str, host: str = "director",
                   wait: bool = True) -> subprocess.Popen:
    """launch_director() with `config_text` written to a file of its own."""
    cfg = lab.scratch_dir() / "lab.toml"
    cfg.write_text(config_text)
    return launch_director(lab, cfg, *options, host=host, wait=wait)


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


def run_ha(flows: int = 8, prefix: str = "drlb-demo-ha") -> int:
    """The second demo: two directors behind a router (lb/lab/ha.py). Long-lived
    connections cross a director's death (SIGKILL of dr-lb and its BIRD) and its return
    with the real server they started on; exit 1 if any broke."""
    import json
    import time

    from lb.lab.ha import CLIENT_IP, DIRECTORS, HaLab

    with HaLab(prefix=prefix) as lab:
        print(f"lab: client {CLIENT_IP} -> router (BIRD, ECMP) -> directors "
              + ", ".join(f"{d.name} {d.address}" for d in lab.directors)
              + f" -> real servers {', '.join(h.name for h in lab.real_servers)}; "
              f"VIP {lab_mod.VIP}, mh with sloppy pickup")
        lab.prepare_real_servers()
        lab.start_servers()
        lab.start_bird("router")
        for d in DIRECTORS:
            lab.start_bird(d)
            lab.start_director(d)
            print(f"{d}: dr-lb up and BIRD; dr-lb wrote {lab.snippet(d)}")
        lab.wait_next_hops([d.address for d in lab.directors])
        print("router: " + lab.run("router", "ip", "route", "show", f"{lab_mod.VIP}/32")
              .stdout.strip().replace("\n", "\n        "))
        client = lab.popen("client", *lab_mod.python_cmd(
            "lb.lab.flows", lab_mod.VIP, str(lab_mod.HTTP_PORT), str(flows), "120"),
            stdout=subprocess.PIPE, text=True)
        client.stdout.readline()
        time.sleep(1)
        for d in DIRECTORS:
            print(f"{d} carries:\n" + lab.run(d, *lab_mod.python_cmd(
                "lb", "status", "--conns")).stdout.rstrip())
        print(f"\nSIGKILL of dr-lb and BIRD on dir1, {flows} connections open ...")
        lab.kill("dir1", "dr-lb")
        lab.kill("dir1", "bird")
        took = lab.wait_next_hops([lab.host("dir2").address])
        print(f"router: the route leaves dir1 after {took:.3f} s")
        time.sleep(2)
        print("dir2 carries:\n" + lab.run("dir2", *lab_mod.python_cmd(
            "lb", "status", "--conns")).stdout.rstrip())
        print("\ndir1 comes back (BIRD, dr-lb up --replace) ...")
        lab.start_bird("dir1")
        lab.start_director("dir1", None, "--replace")
        lab.wait_next_hops([d.address for d in lab.directors])
        time.sleep(2)
        client.terminate()
        results = json.loads(client.stdout.readline())
        client.wait(timeout=30)
        broken = 0
        for r in results:
            ok = not r["errors"] and len(r["names"]) == 1
            broken += not ok
            print(f"connection from port {r['sport']}: {r['answers']} answers from "
                  f"{' then '.join(r['names'])}, longest pause {r['max_gap_s']:.3f} s"
                  + ("" if ok else f", BROKEN: {'; '.join(r['errors'])}"))
        print(f"{len(results) - broken} of {len(results)} connections unbroken, each on one "
              "real server")
        for d in DIRECTORS:
            print(lab.run(d, *lab_mod.python_cmd("lb", "status")).stdout.rstrip())
        return 1 if broken else 0
