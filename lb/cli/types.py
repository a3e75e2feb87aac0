"""click parameter types shared by the commands."""
from __future__ import annotations

import ipaddress

import click


class IPv4Type(click.ParamType):
    name = "ipv4"

    def convert(self, value, param, ctx):
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            self.fail(f"{value!r} is not an IPv4 address (write it as 192.168.0.21)",
                      param, ctx)


IPV4 = IPv4Type()


class ServiceType(click.ParamType):
    """VIP:PORT or VIP:PORT/PROTO, as a dict for lb.director.edits.ServiceSpec."""
    name = "vip:port"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        text, _, proto = value.partition("/")
        address, _, port = text.rpartition(":")
        try:
            vip = str(ipaddress.IPv4Address(address))
            port_n = int(port)
            if not 1 <= port_n <= 65535 or proto not in ("", "tcp", "udp"):
                raise ValueError
        except ValueError:
            self.fail(f"{value!r} is not a service; write it as 192.168.0.21:80 "
                      "(or 192.168.0.21:53/udp)", param, ctx)
        return {"vip": vip, "port": port_n, "protocol": proto or None}


SERVICE = ServiceType()


class ServiceOrVipType(ServiceType):
    """VIP or VIP:PORT (a filter)."""
    name = "vip[:port]"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        if ":" in value:
            return super().convert(value, param, ctx)
        return {"vip": IPV4.convert(value, param, ctx), "port": None, "protocol": None}


SERVICE_OR_VIP = ServiceOrVipType()
