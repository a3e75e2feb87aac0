"""`dr-lb up`'s journal (stdout and stderr, read by systemd and by the tests) in whole lines.

The daemon's threads (the main loop, health checks, the sweeper, the control socket) all
print. `print()` writes the text and its newline as two writes, so two threads printing
at once can splice one line into another: "dr-lb: health: … is updr-lb: ready on …".
`lines()` puts both streams behind one lock that passes on only complete lines, each in
one write; a thread's unfinished line waits in that thread's own buffer.
"""
from __future__ import annotations

import sys
import threading

_lock = threading.Lock()


class LineAtomic:
    """A text stream that forwards only complete lines, one write per line."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._local = threading.local()

    def write(self, text: str) -> int:
        pending = getattr(self._local, "pending", "") + text
        head, sep, rest = pending.rpartition("\n")
        self._local.pending = rest
        if sep:
            with _lock:
                self._stream.write(head + sep)
                self._stream.flush()
        return len(text)

    def flush(self) -> None:
        with _lock:
            self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def lines() -> None:
    """Make sys.stdout and sys.stderr line-atomic (idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, LineAtomic):
            setattr(sys, name, LineAtomic(stream))


def say(line: str) -> None:
    """One journal line (whole even before lines() was called: one write under the lock)."""
    with _lock:
        stream = sys.stdout._stream if isinstance(sys.stdout, LineAtomic) else sys.stdout
        stream.write(line + "\n")
        stream.flush()
