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
