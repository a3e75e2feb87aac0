"""The tiny servers the lab runs on its real servers: HTTP answering with the host's
name (HTTP/1.1, so a client may keep its connection; /big answers BIG_BYTES), a UDP echo
bound to the VIP, and a TCP line echo on ECHO_PORT (each line comes back as "NAME line":
one long connection shows which server holds it).
`python -m lb.lab.servers NAME VIP PORT... UDP`."""
from __future__ import annotations

import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


BIG_BYTES = 200_000   # several full-size segments: what path-MTU discovery is tested with
ECHO_PORT = 7007


def serve(name: str, vip: str, http_ports: list[int], udp_port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"    # keep-alive: the HA lab's long-lived connections

        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = f"{name}\n".encode()
            if self.path == "/big":
                body = body + b"x" * (BIG_BYTES - len(body))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    for port in http_ports:
        server = ThreadingHTTPServer(("", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    class Echo(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(f"{name} ".encode() + line)

    echo = socketserver.ThreadingTCPServer(("", ECHO_PORT), Echo)
    echo.daemon_threads = True
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    # Bound to the VIP so that replies leave with the VIP as source (DR needs that).
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((vip, udp_port))
    while True:
        data, peer = udp.recvfrom(2048)
        udp.sendto(f"{name} ".encode() + data, peer)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: python -m lb.lab.servers NAME VIP HTTP_PORT... UDP_PORT")
    ports = [int(p) for p in sys.argv[3:]]
    serve(sys.argv[1], sys.argv[2], ports[:-1], ports[-1])
