"""Issue 11, end to end in namespaces: nothing the network does makes dr-lb forward
wrongly or lose its connections. Each test builds its own lab (prefix drlb-hd*)."""
from __future__ import annotations

import json
import time

from lb.lab import HOSTS, HTTP_PORT, VIP, Host, Lab, python_cmd
from lb.lab.demo import start_director, wait_ready
from tests.conftest import needs_netns

pytestmark = needs_netns

DIRECTOR2 = Host("director", "director2", "198.18.0.15")


def status(lab: Lab, host: str = "director") -> dict:
    return json.loads(lab.run(host, *python_cmd("lb", "status", "--json")).stdout)


def test_two_directors_on_a_flooding_segment_do_not_loop():
    """Both directors see every frame (the bridge floods): each balances only what is
    sent to its own MAC, so one curl costs a bounded number of frames, for good."""
    with Lab(prefix="drlb-hdl", hosts=HOSTS + (DIRECTOR2,), flooding=True) as lab:
        lab.prepare_real_servers()
        lab.start_servers()
        directors = [start_director(lab, lab.director_config(), host=h, wait=False)
                     for h in ("director", "director2")]
        for d in directors:
            wait_ready(d)

        def sent() -> tuple[int, int]:
            counts = [status(lab, h)["counters"] for h in ("director", "director2")]
            return (sum(c["tx_service"] for c in counts),
                    sum(c.get("pass_not_our_mac", 0) for c in counts))

        before, _ = sent()
        answer = lab.run("client", "curl", "-sS", "--max-time", "5",
                         f"http://{VIP}:{HTTP_PORT}/", check=False).stdout.strip()
        time.sleep(1)
        settled, refused = sent()
        time.sleep(3)
        later, _ = sent()
        print(f"frames sent to real servers by both directors: {settled - before} in the "
              f"first second after one curl, {later - settled} in the 3 s after; "
              f"{refused} refused as not addressed to the director")
        assert answer in ("rs1", "rs2", "rs3")
        assert later == settled, (f"the directors kept sending frames to each other: "
                                  f"{later - settled} more in 3 s after one curl")
        assert settled - before <= 20, \
            f"one curl cost {settled - before} forwarded frames; a handful is expected"
        assert refused > 0, "the flooded copies must be counted as not_our_mac"
