"""`dr-lb up`'s journal: one line at a time on stdout, whole even when the health
checker, the announcer and the main loop write at the same moment (print() writes the
text and its newline separately, so two threads' lines could interleave)."""
from __future__ import annotations

import sys
import threading

_lock = threading.Lock()


def say(line: str) -> None:
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
