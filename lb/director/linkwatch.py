"""Notices at once when the director's interface is deleted or comes back, from netlink
link events (RTM_DELLINK / RTM_NEWLINK), rather than from a failing poll.

The kernel detaches the XDP program with the interface, so a deleted interface means a
director that balances nothing; `dr-lb up` reports it, and attaches again when an
interface of that name appears (or exits, with --exit-on-link-loss).
"""
from __future__ import annotations

import select
import threading
import time
from dataclasses import dataclass
from typing import Callable

from pyroute2 import IPRoute

RTMGRP_LINK = 1   # include/uapi/linux/rtnetlink.h


@dataclass(frozen=True)
class LinkEvent:
    kind: str          # "gone" or "back"
    index: int         # the interface's index: the old one when gone, the new one when back
    at: float          # time.monotonic() when the event was read


class LinkWatch:
    """A thread reading link events for the interface `name`; `on_event(event)` is called
    from that thread for each change (it should only hand the event over)."""

    def __init__(self, name: str, index: int, on_event: Callable[[LinkEvent], None]):
        self.name = name
        self.index = index          # None while the interface is gone
        self.on_event = on_event
        self._stop = threading.Event()
        self.ipr = IPRoute()
        self.ipr.bind(groups=RTMGRP_LINK)
        self.thread = threading.Thread(target=self._run, name="linkwatch", daemon=True)

    def start(self) -> "LinkWatch":
        # A change between the caller's lookup and bind() sent no event: look once more,
        # on a socket of its own (the bound one is read by the thread alone; its events
        # since bind() wait in its queue).
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.name)
        self.thread.start()
        if not found:
            self._changed("gone", self.index)
        elif found[0] != self.index:
            self._changed("back", found[0])
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.ipr.close()

    def _changed(self, kind: str, index: int) -> None:
        if kind == "gone":
            if self.index is None:
                return
            self.index = None
        else:
            if self.index == index:
                return
            self.index = index
        self.on_event(LinkEvent(kind, index, time.monotonic()))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.ipr], [], [], 0.5)
                if not ready:
                    continue
                messages = self.ipr.get()
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                raise
            for msg in messages:
                event = msg.get("event")
                name = msg.get_attr("IFLA_IFNAME")
                if event == "RTM_DELLINK" and msg["index"] == self.index:
                    self._changed("gone", msg["index"])
                elif event == "RTM_NEWLINK" and msg["index"] == self.index \
                        and name and name != self.name:
                    self._changed("gone", msg["index"])          # renamed away
                elif event == "RTM_NEWLINK" and name == self.name:
                    self._changed("back", msg["index"])
