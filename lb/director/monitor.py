"""What `status` shows without making it wait: connection counts and rates, kept fresh by
two background threads; and the correction of the data plane's own connection counts.

- Connection counts (ActiveConn/InActConn): reading 1,000,000 entries takes about 0.6 s
  (one batched copy out of the kernel, counted with numpy), too long for every `status`.
  A sweeper reads the table again and again, resting 8 times as long as a read took
  (at least 0.2 s), so a small table is at most ~0.2 s old and a full one a few seconds;
  `status` counts afresh when a read is cheap (under CHEAP_SWEEP_S: tens of thousands
  of entries), and otherwise shows the counts of the last complete read and its age.
- Rates, as `ipvsadm -Ln --rate`: the per-service and per-real-server counters are
  sampled every RATE_SAMPLE_S, and a rate is the difference over the last RATE_WINDOW_S.
  Ids stay put across reloads, so a reload does not disturb a rate; `zero` (or anything
  that makes a counter go back) starts the window again.
- The data plane's connection counts (lc, wlc, sed, nq and thresholds read them): the
  program counts +1/-1 as it creates, replaces and moves connections between ESTABLISHED
  and the other states, but cannot see an entry expire or the LRU evict it. After each
  sweep, each real server's correction becomes the exact count of live entries less
  what the program counted (read right after the table, so that connections made since
  are counted once): the counts are off by what expired or was evicted since the last
  sweep, and by what was created during the sweep's read, never by more (conn_fixes()).
"""
from __future__ import annotations

import collections
import threading
import time

RATE_SAMPLE_S = 0.5
RATE_WINDOW_S = 2.0
SWEEP_REST_FACTOR = 8
SWEEP_MIN_REST_S = 0.2
CHEAP_SWEEP_S = 0.05


class Monitor:
    def __init__(self, dataplane, ids) -> None:
        """`ids()` returns ([svc_id...], [real_id...]) to sample."""
        self.dp = dataplane
        self.ids = ids
        self.counts = None              # the last ConnCounts
        self.kept = 0                   # entries the table held when counting started
        self.counted_at = 0.0           # monotonic time that read started
        self.sweep_s = 0.0
        self._samples: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True, name=n)
                         for f, n in ((self._sweep, "dr-lb-sweep"), (self._sample, "dr-lb-rate"))]

    def start(self) -> "Monitor":
        # The first read pays for importing numpy and sizing buffers; time the second, or
        # an empty table looks expensive and `status` would wait for the sweeper.
        self.sweep_once()
        self.sweep_once()
        # Entries a restarted program found (kept from its predecessor) are not inserts of
        # this run: evictions = inserts + kept - entries.
        self.kept = max(0, self.counts.entries - self.counts.inserts)
        self.counts.kept = self.kept
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    # ---- connection counts -------------------------------------------------------------
    def sweep_once(self) -> None:
        start = time.monotonic()
        inserts = self.dp.counters()["conn_table_insert"]   # before: evictions >= 0
        counts = self.dp.conn_counts()
        counts.kept, counts.inserts = self.kept, inserts
        self.dp.write_conn_fix(conn_fixes(counts.per_real, self.dp.counted_conns()))
        with self._lock:
            self.counts, self.counted_at = counts, start
            self.sweep_s = time.monotonic() - start

    def _sweep(self) -> None:
        while not self._stop.wait(max(SWEEP_MIN_REST_S, SWEEP_REST_FACTOR * self.sweep_s)):
            try:
                self.sweep_once()
            except Exception as e:   # keep going; the next sweep tries again
                print(f"dr-lb: warning: counting connections: {e}", flush=True)

    def conn_counts(self):
        """The counts and their age: counted now when that is cheap (a table read in
        under CHEAP_SWEEP_S), else from the last sweep."""
        if self.sweep_s < CHEAP_SWEEP_S:
            self.sweep_once()
        with self._lock:
            return self.counts, time.monotonic() - self.counted_at

    def last_counts(self):
        """The counts of the last complete sweep and their age, never counting now: what
        /metrics shows, so that a scrape costs the same at any table size (the sweeper
        keeps a small table's counts ~0.2 s fresh)."""
        with self._lock:
            return self.counts, time.monotonic() - self.counted_at

    # ---- rates -------------------------------------------------------------------------
    def _read(self) -> dict:
        svc_ids, real_ids = self.ids()
        out = {("svc", i): self.dp.service_stats(i) for i in svc_ids}
        out.update({("real", i): self.dp.real_stats(i) for i in real_ids})
        return out

    def _sample(self) -> None:
        while not self._stop.wait(RATE_SAMPLE_S):
            try:
                now, stats = time.monotonic(), self._read()
            except Exception:
                continue
            with self._lock:
                if self._samples and any(
                        s.packets < old.packets or s.conns < old.conns
                        for k, s in stats.items()
                        if (old := self._samples[-1][1].get(k)) is not None):
                    self._samples.clear()      # counters went back: zeroed
                self._samples.append((now, stats))
                while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
                    self._samples.popleft()

    def reset(self) -> None:
        with self._lock:
            self._samples.clear()

    def rates(self) -> dict:
        """(kind, id) -> {"cps", "inpps", "inbps"} over the last window (zeros until two
        samples exist)."""
        with self._lock:
            if len(self._samples) < 2:
                return {}
            (t0, old), (t1, new) = self._samples[0], self._samples[-1]
        dt = t1 - t0
        return {k: {"cps": round((s.conns - old[k].conns) / dt),
                    "inpps": round((s.packets - old[k].packets) / dt),
                    "inbps": round((s.bytes - old[k].bytes) / dt)}
                for k, s in new.items() if k in old}


def conn_fixes(exact: dict[int, tuple[int, int]],
               counted: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """real_id -> (active, inactive) to add to the program's counts so that they equal
    the exact counts of live connections; real servers needing none left out."""
    fixes = {}
    for real_id in set(exact) | set(counted):
        ea, ei = exact.get(real_id, (0, 0))
        ca, ci = counted.get(real_id, (0, 0))
        if (ea - ca, ei - ci) != (0, 0):
            fixes[real_id] = (ea - ca, ei - ci)
    return fixes
