"""Long-lived TCP connections for the HA lab: `python -m lb.lab.flows VIP PORT N SECONDS`.

Opens N HTTP/1.1 keep-alive connections to VIP:PORT (each its own source port, so that
the router's ECMP hash spreads them) and asks for / on every one of them every
`--every` seconds until SECONDS have passed or SIGTERM comes. Prints one JSON document: per connection
its source port, the real servers that answered in order of first answer, every error
(a reset, an end, a timeout) and the longest time between two answers (the pause a
failover caused). Each connection runs in a thread of its own.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import threading
import time


def read_response(sock: socket.socket, buf: bytearray) -> str:
    """One HTTP response's body (the real server's name); raises on EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the connection ended")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the connection ended")
        rest += chunk
    buf[:] = rest[length:]
    return rest[:length].decode().strip()


STOP = threading.Event()     # SIGTERM: every connection stops after its current request


def flow(vip: str, port: int, until: float, every: float, timeout: float,
         out: dict, started: threading.Barrier) -> None:
    names: list[str] = []
    errors: list[str] = []
    answers = 0
    max_gap = 0.0
    try:
        sock = socket.create_connection((vip, port), timeout=timeout)
    except OSError as e:
        out.update(sport=0, names=[], errors=[f"connect: {e}"], answers=0, max_gap_s=0)
        started.wait()
        return
    out["sport"] = sock.getsockname()[1]
    started.wait()
    buf = bytearray()
    last = time.monotonic()
    try:
        while time.monotonic() < until and not STOP.is_set():
            try:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {vip}\r\n\r\n".encode())
                name = read_response(sock, buf)
            except (OSError, ConnectionError) as e:
                errors.append(f"{time.monotonic() - last:.3f} s after the last answer: "
                              f"{type(e).__name__}: {e}")
                break
            now = time.monotonic()
            max_gap = max(max_gap, now - last)
            last = now
            answers += 1
            if name not in names:
                names.append(name)
            STOP.wait(every)
    finally:
        sock.close()
    out.update(names=names, errors=errors, answers=answers, max_gap_s=round(max_gap, 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vip")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--every", type=float, default=0.05)
    ap.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    results = [{} for _ in range(a.n)]
    started = threading.Barrier(a.n + 1)
    until = time.monotonic() + a.seconds
    threads = [threading.Thread(target=flow, args=(a.vip, a.port, until, a.every, a.timeout,
                                                   results[i], started), daemon=True)
               for i in range(a.n)]
    for t in threads:
        t.start()
    started.wait()
    # Every connection is open: their source ports.
    print("ready " + json.dumps([r.get("sport", 0) for r in results]), flush=True)
    for t in threads:
        t.join()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
