"""The README's first command, `dr-lb lab demo`, as a newcomer sees it."""
from __future__ import annotations

import os
import re
import tempfile

from lb.lab import demo
from tests.conftest import needs_netns

pytestmark = needs_netns


def test_demo_answers_by_weight_and_its_status_counts_every_connection(capsys):
    tmp = tempfile.gettempdir()
    before = set(os.listdir(tmp))
    assert demo.run(prefix="drlb-dmt") == 0
    out = capsys.readouterr().out
    assert "answers: rs1 6, rs2 3, rs3 3" in out, out
    # Printed right after the last curl: the 12 closed connections are all there
    # (InActConn), not the counts of a sweep from before the traffic.
    assert "Connection table: 1000000 slots, 12 entries, 12 inserts, 0 evicted" in out, out
    rows = re.findall(r"^  -> 198\.18\.0\.1\d:80 +Route +(\d+) +(\d+) +(\d+) +(\d+)", out, re.M)
    assert [(int(w), int(a) + int(i), int(c)) for w, a, i, c in rows] == \
        [(2, 6, 6), (1, 3, 3), (1, 3, 3)], out
    assert "dr-lb: detached from eth0" in out
    # The director's config file went with the lab (it used to stay in /tmp, one
    # directory per director a test started).
    assert [n for n in set(os.listdir(tmp)) - before if "lb" in n] == []
