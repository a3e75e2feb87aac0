"""The DR-path probe: a SYN to VIP:port sent to one real server's MAC, exactly as the
director forwards a client's SYN. A SYN-ACK from that MAC proves that the real server
has the VIP and that something listens on the port for it (it is answered with an RST,
so the real server forgets it); an RST says nothing listens there; silence says the VIP
is missing from the real server (or a firewall drops it).

`dr-lb check --live` runs a batch of probes once (syn_probe); the health checks of
`dr-lb up` run them again and again, each on its own schedule (DrProber, on the health
checker's asyncio loop). Both use DrProber, so a probe is built and judged in one place.

Keeping the director's kernel out: the SYN leaves from the director's own address and a
source port in PROBE_PORT_MIN..PROBE_PORT_MAX (bpf/dr_lb_consts.h), above Linux's
ephemeral ports, so the answer comes back from the VIP to that port. The kernel never
opened that connection and would answer a SYN-ACK with an RST of its own. While dr-lb's
XDP program runs, it knows such a frame (TCP from a VIP to a probe port; nothing else
comes from a VIP to the director) and passes it with a destination MAC that is not the
interface's (counter pass_probe_reply): the kernel drops it before IP as another
host's frame, without a word, and packet sockets, which see every frame XDP passes,
still read it. No firewall rule, no extra address, no daemon. Without dr-lb running
(`check --live` on a director that is down) the kernel does answer with an RST, which
is harmless for a one-off check: the real server's half-open connection is reset
either way.

The SYN leaves with TTL 1 and only answers from the probed MAC count: a host that lacks
the VIP but forwards (ip_forward=1) must not pass the probe on to whoever owns the VIP
and get credit for its answer.

A UDP service has no handshake, so `check --live` sends each real server an empty
datagram to VIP:port the same way (udp_probe), from a probe port that a UDP socket of
the director holds meanwhile (so that its kernel takes an answer quietly). An answer
from the VIP proves the path and a server that answers from the right address; an
answer from another address is the wildcard-bound server whose replies clients drop;
an ICMP port unreachable quoting the datagram says the VIP reached the real server and
nothing is bound for it there; silence says little (a server that ignores an empty
datagram, a missing VIP, a firewall).
"""
from __future__ import annotations

import asyncio
import ctypes as ct
import random
import socket
from dataclasses import dataclass, field

from lb import abi
from lb.abi import mac_bytes
from lb.director.arp import source_for
from lb.director.netif import Interface
from lb import frames
from lb.frames import (ETH_P_IP, PACKET_OUTGOING, TCP_ACK, TCP_RST, TCP_SYN, parse_tcp,
                       tcp_frame)

PORT_MIN, PORT_MAX = abi.CONST["PROBE_PORT_MIN"], abi.CONST["PROBE_PORT_MAX"]
OPEN, REFUSED, SILENT = "open", "refused", "silent"
ANSWERED, WRONG_SOURCE, CLOSED = "answered", "wrong-source", "closed"   # and SILENT
UdpResult = tuple[str, str | None]      # one of those, and the answer's source address
SO_ATTACH_FILTER = 26


@dataclass(frozen=True)
class Probe:
    rip: str
    mac: str
    vip: str
    port: int


class _SockFilter(ct.Structure):
    _fields_ = [("code", ct.c_uint16), ("jt", ct.c_uint8), ("jf", ct.c_uint8),
                ("k", ct.c_uint32)]


class _SockFprog(ct.Structure):
    _fields_ = [("len", ct.c_uint16), ("filter", ct.POINTER(_SockFilter))]


def _probe_filter(protocol: int, icmp: bool = False) -> list[tuple[int, int, int, int]]:
    """A classic BPF socket filter: only unfragmented IPv4 `protocol` (TCP or UDP) to a
    probe port, and with `icmp` any IPv4 ICMP, reaches the socket, so that a busy
    director's other traffic never wakes the prober."""
    code = [
        (0x28, 0, 0, 12),                   # ldh [12]             ethertype
        (0x15, 0, "drop", ETH_P_IP),        # jne IPv4 -> drop
        (0x30, 0, 0, 23),                   # ldb [23]             IP protocol
        *([(0x15, "accept", 0, socket.IPPROTO_ICMP)] if icmp else []),
        (0x15, 0, "drop", protocol),        # jne protocol -> drop
        (0x28, 0, 0, 20),                   # ldh [20]             flags and fragment offset
        (0x45, "drop", 0, 0x1FFF),          # a fragment -> drop
        (0xB1, 0, 0, 14),                   # ldxb 4*([14]&0xf)    IP header length
        (0x48, 0, 0, 16),                   # ldh [x+16]           destination port
        (0x35, 0, "drop", PORT_MIN),        # jge PORT_MIN -> accept, else drop
        (0x06, 0, 0, 0x40000),              # accept
        (0x06, 0, 0, 0),                    # drop
    ]
    at = {"accept": len(code) - 2, "drop": len(code) - 1}
    return [(op, at[jt] - i - 1 if jt in at else jt, at[jf] - i - 1 if jf in at else jf, k)
            for i, (op, jt, jf, k) in enumerate(code)]


_FILTER = _probe_filter(socket.IPPROTO_TCP)
_UDP_FILTER = _probe_filter(socket.IPPROTO_UDP, icmp=True)


def attach_filter(sock: socket.socket, instructions=_FILTER) -> None:
    program = (_SockFilter * len(instructions))(*(_SockFilter(*i) for i in instructions))
    fprog = _SockFprog(len(instructions), ct.cast(program, ct.POINTER(_SockFilter)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


@dataclass
class _Pending:
    probe: Probe
    seq: int
    future: asyncio.Future = field(repr=False)


class DrProber:
    """One packet socket on the interface, shared by any number of concurrent probes
    (each waits only for its own answer). Create and use it on a running asyncio loop."""

    def __init__(self, iface: Interface):
        self.iface = iface
        self.loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        try:
            attach_filter(self.sock)
            self.sock.bind((iface.name, 0))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self._waiting: dict[int, _Pending] = {}
        self._next_port = random.randint(PORT_MIN, PORT_MAX)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    async def probe(self, p: Probe, timeout: float, resend_s: float | None = None) -> str:
        """OPEN, REFUSED or SILENT (no answer within `timeout`); the SYN is sent again
        every `resend_s` seconds while there is no answer."""
        sport = self._port()
        pending = _Pending(p, random.randint(0, 2**32 - 1), self.loop.create_future())
        self._waiting[sport] = pending
        syn = tcp_frame(self.iface.mac, p.mac, source_for(self.iface, p.rip), p.vip, sport,
                        p.port, pending.seq, TCP_SYN, ttl=1)
        deadline = self.loop.time() + timeout
        try:
            while (left := deadline - self.loop.time()) > 0:
                self._send(syn)
                try:
                    return await asyncio.wait_for(asyncio.shield(pending.future),
                                                  min(left, resend_s or left))
                except TimeoutError:
                    continue
            return SILENT
        finally:
            del self._waiting[sport]

    def _port(self) -> int:
        """The next probe port that no probe of ours is waiting on."""
        for _ in range(PORT_MAX - PORT_MIN + 1):
            port = self._next_port
            self._next_port = PORT_MIN if port >= PORT_MAX else port + 1
            if port not in self._waiting:
                return port
        raise RuntimeError("every probe port is in use")

    def _send(self, frame: bytes) -> None:
        try:
            self.sock.send(frame)
        except OSError:
            pass     # a full queue or a link going down: the probe times out

    def _readable(self) -> None:
        while True:
            try:
                frame, addr = self.sock.recvfrom(256)    # the headers are enough
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if addr[2] != PACKET_OUTGOING:
                self._receive(frame)

    def _receive(self, frame: bytes) -> None:
        t = parse_tcp(frame)
        if not t:
            return
        src_ip, dst_ip, sport, dport, _seq, ack, flags = t
        pending = self._waiting.get(dport)
        if pending is None or pending.future.done():
            return
        p = pending.probe
        # Only the probed MAC's answer to this very SYN counts.
        if src_ip != p.vip or sport != p.port or frame[6:12] != mac_bytes(p.mac) \
                or not flags & TCP_ACK or ack != (pending.seq + 1) & 0xFFFFFFFF:
            return
        if flags & TCP_SYN:
            pending.future.set_result(OPEN)
            self._send(tcp_frame(self.iface.mac, p.mac, dst_ip, p.vip, dport, p.port, ack,
                                 TCP_RST))
        elif flags & TCP_RST:
            pending.future.set_result(REFUSED)


def syn_probe(iface: Interface, probes: list[Probe], wait_s: float = 0.7,
              rounds: int = 2) -> dict[Probe, str]:
    """Probe each of `probes` once, all at the same time: OPEN, REFUSED or SILENT. A
    SYN without an answer is sent again after `wait_s`, up to `rounds` times."""
    async def run() -> list[str]:
        prober = DrProber(iface)
        try:
            return await asyncio.gather(*(prober.probe(p, wait_s * rounds, resend_s=wait_s)
                                          for p in probes))
        finally:
            prober.close()
    return dict(zip(probes, asyncio.run(run())))


def _hold_port(address: str, taken: set[int]) -> tuple[int, socket.socket]:
    """A probe port on `address`, held by a UDP socket of ours until it is closed."""
    start = random.randint(PORT_MIN, PORT_MAX)
    for i in range(PORT_MAX - PORT_MIN + 1):
        port = PORT_MIN + (start - PORT_MIN + i) % (PORT_MAX - PORT_MIN + 1)
        if port in taken:
            continue
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((address, port))
        except OSError:
            sock.close()
            continue
        return port, sock
    raise RuntimeError("every probe port is in use")


def udp_answer(frame: bytes, by_port: dict[int, Probe]) -> tuple[Probe, UdpResult] | None:
    """The probe that `frame` answers, and how, of the datagrams sent from the probe
    ports in `by_port`; None for anything else. Only the probed MAC's answer about that
    very datagram counts: a UDP reply from VIP:port to our port, (ANSWERED, VIP) or
    (WRONG_SOURCE, its source) by the reply's source, or an ICMP port unreachable that
    quotes our datagram to VIP:port, (CLOSED, None)."""
    answer = frames.parse_udp(frame)
    if answer:
        src_ip, _dst, theirs, ours = answer
        p = by_port.get(ours)
        result = (ANSWERED if p and src_ip == p.vip else WRONG_SOURCE, src_ip)
    else:
        error = frames.parse_icmp_error(frame)
        if not error or error[:2] != (frames.ICMP_DEST_UNREACH, frames.ICMP_PORT_UNREACH):
            return None
        quoted = frames.parse_udp(error[2])     # our datagram, as it was sent
        if not quoted:
            return None
        _src, dst_ip, ours, theirs = quoted
        p = by_port.get(ours)
        if p and dst_ip != p.vip:
            return None
        result = (CLOSED, None)
    if not p or theirs != p.port or frame[6:12] != mac_bytes(p.mac):
        return None
    return p, result


def udp_probe(iface: Interface, probes: list[Probe], wait_s: float = 0.7,
              rounds: int = 2) -> dict[Probe, UdpResult]:
    """Send each probe's real server an empty datagram to VIP:port (TTL 1, its MAC),
    all at once: (ANSWERED, VIP), (WRONG_SOURCE, the answer's source), (CLOSED, None)
    or (SILENT, None). A probe without an answer is sent again after `wait_s`, up to
    `rounds` times."""
    held: dict[int, tuple[Probe, str, socket.socket]] = {}
    results: dict[Probe, UdpResult] = {}
    try:
        for p in probes:
            source = source_for(iface, p.rip)
            port, sock = _hold_port(source, set(held))
            held[port] = (p, source, sock)
        by_port = {port: p for port, (p, _, _) in held.items()}

        def pending() -> list[bytes]:
            return [frames.udp_frame(iface.mac, p.mac, source, p.vip, port, p.port, ttl=1)
                    for port, (p, source, _) in held.items() if p not in results]

        def receive(frame: bytes, _send) -> None:
            answer = udp_answer(frame, by_port)
            if answer and answer[0] not in results:
                results[answer[0]] = answer[1]

        frames.exchange(iface.name, ETH_P_IP, pending, receive, wait_s, rounds,
                        done=lambda: len(results) == len(probes),
                        setup=lambda s: attach_filter(s, _UDP_FILTER))
    finally:
        for _, _, sock in held.values():
            sock.close()
    return {p: results.get(p, (SILENT, None)) for p in probes}
