"""The tiny servers the lab runs on its real servers: HTTP answering with the host's
name, and a UDP echo bound to the VIP. `python -m lb.lab.servers NAME VIP PORT... UDP`."""
from __future__ import annotations

import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(name: str, vip: str, http_ports: list[int], udp_port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"    # keep-alive: the HA lab's long-lived connections

        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = f"{name}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    for port in http_ports:
        server = ThreadingHTTPServer(("", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
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
