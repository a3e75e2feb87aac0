"""ipvsadm rules in and out: `dr-lb ipvsadm import` and `dr-lb ipvsadm export`.

Import reads what `ipvsadm-save -n` writes and shell scripts of `ipvsadm` commands,
replays them on a model of the IPVS table as ipvsadm itself would (-C clears, -E and -e
replace every attribute of what they edit, -D and -d delete, --set 0 keeps a timeout),
and turns the final table into a dr-lb config. Whatever dr-lb cannot do (NAT,
tunnelling, fwmark, IPv6, schedulers it lacks, ...) is judged on that final table, so a
rule undone later (-E, -e, -d, -D, -C) is no problem. A command ipvsadm itself would
refuse is always an error.

Both directions build the config as a Python dict and validate it with
lb.director.config.from_dict, the code `dr-lb check` uses: there is no second set of
rules here. Pure Python: no root, no kernel, no bcc.

What survives `import | export | import` is what ipvsadm can express: services (VIP,
port, protocol, scheduler, its flags (-b), one-packet scheduling (-o), persistence and,
when persistent, its netmask), real servers (address, weight, thresholds -x/-y) and the
timeouts. MACs, health checks, sorry servers, the [director] table and the netmask of a
service that is not persistent do not (see expressible()).
"""
from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import shlex
import socket
from dataclasses import dataclass, field

import tomlkit

from lb.director import config as config_mod
from lb.director.config import ConfigError

MAX_TIMEOUT = 31 * 86400        # ipvsadm's limit for -p and --set (MAX_TIMEOUT)
# `-p` without a value: libipvs's IPVS_SVC_PERSISTENT_TIMEOUT is 6*60. ipvsadm(8) says
# 300, but the table ipvsadm leaves (ipvsadm -Ln: "persistent 360") holds 360.
PERSISTENT_DEFAULT = 360
DEFAULT_SCHEDULER = "wlc"       # ipvsadm's DEF_SCHED, for -A/-E without -s
HOST_MASK = "255.255.255.255"
DEFAULT_INTERFACE = "eth0"

# Port names as /etc/services spells them; checked first so an import does not depend
# on the machine it runs on, then socket.getservbyname.
PORT_NAMES = {
    "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "http": 80, "www": 80,
    "pop3": 110, "ntp": 123, "imap": 143, "imap2": 143, "snmp": 161, "ldap": 389,
    "https": 443, "smtps": 465, "submissions": 465, "submission": 587, "ldaps": 636,
    "imaps": 993, "pop3s": 995, "ms-sql-s": 1433, "mysql": 3306, "postgresql": 5432,
    "redis": 6379, "http-alt": 8080, "webcache": 8080,
}

# ipvsadm's options: long name -> (short letters, arity); arity 0 none, 1 a value,
# 2 an optional value (popt's POPT_ARGFLAG_OPTIONAL: taken unless it starts with "-").
_OPTIONS = {
    "add-service": ("A", 0), "edit-service": ("E", 0), "delete-service": ("D", 0),
    "clear": ("C", 0), "list": ("Ll", 0), "zero": ("Z", 0), "add-server": ("a", 0),
    "edit-server": ("e", 0), "delete-server": ("d", 0), "set": ("", 0), "help": ("h", 0),
    "version": ("v", 0), "restore": ("R", 0), "save": ("S", 0), "start-daemon": ("", 1),
    "stop-daemon": ("", 1),
    "tcp-service": ("t", 1), "udp-service": ("u", 1), "sctp-service": ("", 1),
    "fwmark-service": ("f", 1), "scheduler": ("s", 1), "persistent": ("p", 2),
    "netmask": ("M", 1), "real-server": ("r", 1), "masquerading": ("m", 0),
    "ipip": ("i", 0), "gatewaying": ("g", 0), "weight": ("w", 1), "u-threshold": ("x", 1),
    "l-threshold": ("y", 1), "numeric": ("n", 0), "connection": ("c", 0),
    "mcast-interface": ("", 1), "mcast-group": ("", 1), "mcast-port": ("", 1),
    "mcast-ttl": ("", 1), "sync-maxlen": ("", 1), "syncid": ("", 1), "timeout": ("", 0),
    "daemon": ("", 0), "stats": ("", 0), "rate": ("", 0), "thresholds": ("", 0),
    "persistent-conn": ("", 0), "nosort": ("", 0), "sort": ("", 0), "exact": ("X", 0),
    "ipv6": ("6", 0), "ops": ("o", 0), "pe": ("", 1), "sched-flags": ("b", 1),
    "tun-type": ("", 1), "tun-port": ("", 1), "tun-nocsum": ("", 0), "tun-csum": ("", 0),
    "tun-remcsum": ("", 0),
}
_SHORT = {letter: name for name, (letters, _) in _OPTIONS.items() for letter in letters}

# Commands that change the virtual server table, and the options each takes besides
# the service (-t/-u/-f/--sctp-service), as ipvsadm's commands_v_options table has it.
_TUN = {"tun-type", "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum"}
_RULE_COMMANDS = {
    "add-service": {"scheduler", "persistent", "netmask", "sched-flags", "pe", "ops"},
    "edit-service": {"scheduler", "persistent", "netmask", "sched-flags", "pe", "ops"},
    "delete-service": set(),
    "add-server": {"real-server", "masquerading", "ipip", "gatewaying", "weight",
                   "u-threshold", "l-threshold"} | _TUN,
    "edit-server": {"real-server", "masquerading", "ipip", "gatewaying", "weight",
                    "u-threshold", "l-threshold"} | _TUN,
    "delete-server": {"real-server"},
    "clear": set(),
    "set": set(),
}
_SERVICE_OPTIONS = {"tcp-service", "udp-service", "sctp-service", "fwmark-service"}
_FORWARD_OPTIONS = {"gatewaying": "g", "masquerading": "m", "ipip": "i"}
# Commands that read or leave the table as it is: skipped. The ones whose effect an
# operator would miss are said on stderr.
_NOT_RULES = {
    "list": None, "zero": None, "save": None, "help": None, "version": None,
    "restore": "-R restores rules from its standard input, which is not read here; "
               "import that file as well",
    "start-daemon": "the connection sync daemon is not part of a dr-lb config",
    "stop-daemon": "the connection sync daemon is not part of a dr-lb config",
}


class _Refused(Exception):
    """A command ipvsadm itself would refuse; str() says why."""


@dataclass(frozen=True)
class Origin:
    """Where a rule was written: `rules.txt:3` (or `3-4` with \\ continuations)."""
    where: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


@dataclass
class _Real:
    address: str
    port: int                 # as ipvsadm keeps it
    forward: str = "g"
    weight: int = 1
    upper: int = 0            # -x
    lower: int = 0            # -y
    unsupported: list[str] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)


@dataclass
class _Service:
    kind: str                 # "tcp" | "udp" | "sctp" | "fwmark"
    address: str
    port: int
    scheduler: str = DEFAULT_SCHEDULER
    persistent: int = 0
    netmask: str = HOST_MASK
    flags: tuple[str, ...] = ()   # -b, as dr-lb's scheduler_flags
    ops: bool = False             # -o
    unsupported: list[str] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)
    reals: dict[tuple[str, int], _Real] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.kind, self.address, self.port)


class Imported:
    """The result of import_rules: the validated config, what to tell the operator on
    stderr (lines skipped or left out), and the config as TOML (rendered when asked
    for: tomlkit takes most of an import's time)."""

    def __init__(self, config: config_mod.Config, notes: list[str], render) -> None:
        self.config = config
        self.notes = notes
        self._render = render

    @functools.cached_property
    def toml(self) -> str:
        return self._render()


# ---------------------------------------------------------------- reading the input


def _logical_lines(text: str, source: str):
    """(where, first line number, text) per logical line: \\ continuations joined,
    where is `source:3` or `source:3-4`."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        first = i
        parts = [lines[i]]
        while (not parts[-1].lstrip().startswith("#") and _continued(parts[-1])
               and i + 1 < len(lines)):
            parts[-1] = parts[-1][:-1]
            i += 1
            parts.append(lines[i])
        if _continued(parts[-1]) and not parts[-1].lstrip().startswith("#"):
            parts[-1] = parts[-1][:-1]          # a \ on the last line of the file
        i += 1
        where = f"{source}:{first + 1}" if i - 1 == first else f"{source}:{first + 1}-{i}"
        yield where, first + 1, " ".join(parts)


def _continued(line: str) -> bool:
    """Does the line end in an unescaped backslash?"""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


_SEPARATORS = {";", "&&", "||", "|", "&", ";;"}
_REDIRECTS = {">", ">>", "<", ">&", "&>", "<&", ">|", "<<", "<<<", "&>>"}
_SHELL_SPECIAL = re.compile(r"[\"'\\$;&|<>#`()]")
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _commands(text: str) -> list[list[str]]:
    """The simple commands of one shell line, redirections dropped. Raises ValueError
    if the line is not readable as shell (an unclosed quote)."""
    if not _SHELL_SPECIAL.search(text):        # ipvsadm-save's lines: no shell needed
        words = text.split()
        return [words] if words else []
    text = re.sub(r"(?<!\S)\d+(?=[<>])", "", text)      # 2>/dev/null: drop the fd
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    skip_next = False
    for token in lexer:
        if skip_next:
            skip_next = False
        elif token in _SEPARATORS:
            commands.append([])
        elif token in _REDIRECTS:
            skip_next = True
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(text: str) -> str:
    """One line of text as it can be shown (and put in a TOML comment)."""
    return _CONTROL.sub("?", " ".join(text.split()))


# ---------------------------------------------------------------- one ipvsadm command


@dataclass
class _Args:
    command: str
    options: dict[str, str | None]      # long name -> value (None: no value)
    spelled: dict[str, str]             # long name -> as written, for messages
    positional: list[str]


def _parse_argv(argv: list[str]) -> _Args:
    """ipvsadm's (popt's) reading of its arguments. Raises _Refused."""
    found: list[tuple[str, str | None, str]] = []
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional.extend(argv[i:])
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name not in _OPTIONS:
                raise _Refused(f"ipvsadm has no option '--{name}'")
            arity = _OPTIONS[name][1]
            if eq and arity == 0:
                raise _Refused(f"'--{name}' takes no value")
            if not eq:
                value = None
                if arity == 1:
                    if i >= len(argv):
                        raise _Refused(f"'--{name}' needs a value")
                    value, i = argv[i], i + 1
                elif arity == 2 and i < len(argv) and not argv[i].startswith("-"):
                    value, i = argv[i], i + 1
            found.append((name, value, f"--{name}"))
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                letter = arg[j]
                j += 1
                if letter not in _SHORT:
                    raise _Refused(f"ipvsadm has no option '-{letter}'")
                name = _SHORT[letter]
                arity = _OPTIONS[name][1]
                value = None
                if arity and j < len(arg):
                    value, j = arg[j:], len(arg)
                elif arity == 1:
                    if i >= len(argv):
                        raise _Refused(f"'-{letter}' needs a value")
                    value, i = argv[i], i + 1
                elif arity == 2 and i < len(argv) and not argv[i].startswith("-"):
                    value, i = argv[i], i + 1
                found.append((name, value, f"-{letter}"))
        else:
            positional.append(arg)

    commands = [(n, s) for n, _, s in found if n in _RULE_COMMANDS or n in _NOT_RULES]
    if not commands:
        raise _Refused("no command: ipvsadm needs one such as -A, -a or --set")
    if len(commands) > 1:
        raise _Refused("more than one command (" + ", ".join(s for _, s in commands)
                       + "); ipvsadm takes one per line")
    command = commands[0][0]
    options: dict[str, str | None] = {}
    spelled: dict[str, str] = {}
    for name, value, spelling in found:
        if name == command:
            continue
        group = ("service" if name in _SERVICE_OPTIONS
                 else "forward" if name in _FORWARD_OPTIONS else name)
        if group in spelled:
            raise _Refused(f"'{spelling}' given twice" if spelled[group] == spelling
                           else f"'{spelled[group]}' and '{spelling}' given together")
        spelled[group] = spelling
        options[name] = value
        spelled[name] = spelling
    return _Args(command, options, spelled, positional)


def _port(text: str, proto: str) -> int:
    if text.isdigit():
        port = int(text)
        if port > 65535:
            raise _Refused(f"port {port} is out of range (0-65535)")
        return port
    if text in PORT_NAMES:
        return PORT_NAMES[text]
    try:
        return socket.getservbyname(text, "udp" if proto == "udp" else "tcp")
    except (OSError, UnicodeError):
        raise _Refused(f"'{text}' is not a port number or a known port name") from None


def _address(text: str, proto: str, what: str) -> tuple[str, int | None, list[str]]:
    """ipvsadm's parse_service: (address, port or None, reasons dr-lb cannot use it)."""
    if not text or text.isdigit():
        raise _Refused(f"'{text}' is not a {what} address[:port]")
    reasons: list[str] = []
    port_text: str | None = None
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]*)\]:(.*)", text)
        if not m:
            raise _Refused(f"'{text}' is not a {what} address: write [IPv6]:port")
        host, port_text = m.group(1), m.group(2)
    elif text.count(":") > 1:
        host = text
    else:
        host, colon, port_text = text.partition(":")
        port_text = port_text if colon else None
    port = _port(port_text, proto) if port_text is not None else None
    try:
        return str(ipaddress.IPv4Address(host)), port, reasons
    except ValueError:
        pass
    try:
        ipaddress.IPv6Address(host)
        reasons.append(f"IPv6 ({host}) is not supported: dr-lb balances IPv4 only")
        return host, port, reasons
    except ValueError:
        pass
    if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host) and \
            not re.fullmatch(r"[0-9.]+", host):
        reasons.append(f"'{host}' is a host name and dr-lb does not resolve names; "
                       "write its IPv4 address (ipvsadm-save -n prints addresses)")
        return host, port, reasons
    raise _Refused(f"'{host}' is not a {what} address")


def _number(args: _Args, name: str, lo: int, hi: int, what: str) -> int:
    value = args.options[name] or ""
    if not value.isdigit() or not lo <= int(value) <= hi:
        raise _Refused(f"{what} ({args.spelled[name]}) must be a whole number from {lo} "
                       f"to {hi}, not {value!r}")
    return int(value)


def _service_of(args: _Args) -> tuple[str, str, int, list[str]]:
    """(kind, address, port, reasons) of the command's -t/-u/-f/--sctp-service."""
    opts = args.options
    if "ipv6" in opts and "fwmark-service" not in opts:
        raise _Refused("-6 is only for a firewall-mark service (-f)")
    if "fwmark-service" in opts:
        mark = opts["fwmark-service"] or ""
        if not mark.isdigit() or not 0 < int(mark) <= 0xffffffff:
            raise _Refused(f"invalid fwmark value '{mark}'")
        return "fwmark", mark, 0, [f"firewall-mark services ({args.spelled['fwmark-service']})"
                                   " are not supported: dr-lb matches VIP:port; write "
                                   "one -A -t/-u per port"]
    for name, kind in (("tcp-service", "tcp"), ("udp-service", "udp"),
                       ("sctp-service", "sctp")):
        if name in opts:
            address, port, reasons = _address(opts[name] or "", kind, "virtual service")
            port = port or 0
            if kind == "sctp":
                reasons.insert(0, "SCTP services are not supported: dr-lb balances "
                                  "TCP and UDP")
            if port == 0:
                reasons.append("port 0 (every port of the VIP) is not supported: "
                               "give the service's port")
            return kind, address, port, reasons
    raise _Refused(f"{args.command} needs a service (-t, -u or -f)")


@dataclass
class _ServiceAttributes:
    scheduler: str
    persistent: int
    netmask: str
    flags: tuple[str, ...]
    ops: bool
    reasons: list[str]


# ipvsadm's -b names: the generic flag-N bits mean, to sh and mh, their own flags.
_GENERIC_FLAGS = {"flag-1": "fallback", "flag-2": "port", "flag-3": None}


def _sched_flags(args: _Args, scheduler: str, reasons: list[str]) -> tuple[str, ...]:
    """ipvsadm's parse_sched_flags(): a comma-separated list; sh-* and mh-* flags with
    another scheduler, or an unknown flag, are refused as ipvsadm refuses them."""
    value = args.options.get("sched-flags")
    if value is None:
        return ()
    flags: list[str] = []
    own = config_mod.SCHEDULER_FLAGS.get(scheduler, ())
    known = {f for fs in config_mod.SCHEDULER_FLAGS.values() for f in fs}
    for flag in value.split(","):
        if flag in _GENERIC_FLAGS:
            meaning = _GENERIC_FLAGS[flag]
            name = f"{scheduler}-{meaning}" if meaning else None
            if name not in own:
                reasons.append(f"scheduler flag {flag} ({args.spelled['sched-flags']}) means "
                               f"nothing to scheduler {scheduler} in dr-lb; remove it")
                continue
            flag = name
        elif flag in known:
            if flag not in own:
                raise _Refused(f"incompatible scheduler flag '{flag}' for scheduler "
                               f"'{scheduler}'")
        else:
            raise _Refused(f"invalid scheduler flag '{flag}'")
        if flag not in flags:
            flags.append(flag)
    # In the config's order (SCHEDULER_FLAGS), so that export | import is the identity.
    return tuple(f for f in own if f in flags)


def _service_attributes(args: _Args, kind: str) -> _ServiceAttributes:
    """The attributes of an -A/-E command; what it leaves out takes ipvsadm's default,
    as ipvsadm replaces every attribute on -E too."""
    opts, reasons = args.options, []
    scheduler = opts.get("scheduler") or DEFAULT_SCHEDULER
    supported = config_mod.SCHEDULERS       # the one list: new schedulers import too
    if scheduler not in supported:
        have = ", ".join(supported)
        reasons.append(f"scheduler '{scheduler}' is not in dr-lb (it has {have})"
                       if "scheduler" in opts else
                       f"no -s: ipvsadm's default scheduler {DEFAULT_SCHEDULER} is not in "
                       f"dr-lb (it has {have}); add -s {supported[0]}")
    persistent = 0
    if "persistent" in opts:
        persistent = (PERSISTENT_DEFAULT if opts["persistent"] is None
                      else _number(args, "persistent", 1, MAX_TIMEOUT, "the timeout"))
    netmask = HOST_MASK
    if "netmask" in opts:
        value = opts["netmask"] or ""
        if value.isdigit():
            reasons.append(f"-M {value} means {ipaddress.IPv4Address(int(value) % 2**32)} "
                           f"to ipvsadm, not /{value}; write it as a dotted netmask such as "
                           "255.255.255.0")
        else:
            try:
                ipaddress.IPv4Address(value)
            except ValueError:
                raise _Refused(f"-M {value}: not a netmask such as 255.255.255.0") from None
            netmask = value
            if config_mod._netmask(value) != value:
                reasons.append(f"-M {value} is not a contiguous netmask; dr-lb takes one "
                               "such as 255.255.255.0")
    if "pe" in opts:
        reasons.append(f"persistence engines ({args.spelled['pe']}) are not supported")
    flags = _sched_flags(args, scheduler, reasons)
    ops = "ops" in opts
    if ops and kind != "udp":
        reasons.append(f"one-packet scheduling ({args.spelled['ops']}) is for UDP services "
                       "only (IPVS ignores it on others); remove it")
        ops = False
    return _ServiceAttributes(scheduler, persistent, netmask, flags, ops, reasons)


def _real_of(args: _Args, svc_kind: str, svc_port: int, for_delete: bool
             ) -> tuple[str, int, int | None, list[str]]:
    """(address, port as ipvsadm keeps it, port as written, reasons) of -r."""
    if "real-server" not in args.options:
        raise _Refused(f"{args.command} needs a real server (-r)")
    address, port, reasons = _address(args.options["real-server"] or "",
                                      svc_kind, "real server")
    written = port
    forward = _forward(args)
    if port is None:
        port = svc_port
    elif not for_delete and forward in ("g", "i") and svc_kind != "fwmark":
        port = svc_port         # ipvsadm: DR and tunnelling cannot change the port
    return address, port, written, reasons


def _forward(args: _Args) -> str:
    for name, letter in _FORWARD_OPTIONS.items():
        if name in args.options:
            return letter
    return "g"


def _real_attributes(args: _Args, svc_port: int, svc_kind: str, written: int | None
                     ) -> tuple[str, int, int, int, list[str]]:
    """(forward, weight, upper, lower, reasons) of an -a/-e command."""
    opts, reasons = args.options, []
    forward = _forward(args)
    if forward == "m":
        reasons.append(f"NAT ({args.spelled['masquerading']}) is not supported: dr-lb "
                       "only does direct routing (-g)")
    elif forward == "i":
        reasons.append(f"tunnelling ({args.spelled['ipip']}) is not supported: dr-lb "
                       "only does direct routing (-g)")
    if forward != "m" and written is not None and written != svc_port \
            and svc_kind != "fwmark":
        reasons.append(f"DR cannot change ports: ipvsadm would send to port {svc_port} "
                       f"anyway; write the real server with port {svc_port} or none")
    weight = 1
    if "weight" in opts:
        weight = _number(args, "weight", 0, 65535, "the weight")
    upper = lower = 0
    if "u-threshold" in opts:
        upper = _number(args, "u-threshold", 0, config_mod.THRESHOLD_MAX, "a threshold")
    if "l-threshold" in opts:
        lower = _number(args, "l-threshold", 0, config_mod.THRESHOLD_MAX, "a threshold")
    if lower > upper:       # the kernel's -ERANGE
        raise _Refused(f"the upper threshold ({upper}) is lower than the lower "
                       f"threshold ({lower})")
    tun = sorted(args.spelled[n] for n in _TUN if n in opts)
    if tun:
        reasons.append(f"tunnel options ({', '.join(tun)}) are not supported")
    return forward, weight, upper, lower, reasons


# ---------------------------------------------------------------- the table


class _Table:
    """The IPVS table as ipvsadm would leave it after each command."""

    def __init__(self) -> None:
        self.services: dict[tuple[str, str, int], _Service] = {}
        self.timeouts = dict(dataclasses.asdict(config_mod.Timeouts()))
        self.timeout_origins: list[Origin] = []

    def apply(self, args: _Args, origin: Origin) -> None:
        command = args.command
        allowed = set(_RULE_COMMANDS[command])
        if command not in ("clear", "set"):
            allowed |= _SERVICE_OPTIONS | {"ipv6"}
        for name in args.options:
            if name not in allowed:
                raise _Refused(f"{args.spelled[name]} cannot go with "
                               f"{_spell(command)}")
        if command == "set":
            if len(args.positional) != 3:
                raise _Refused("--set takes three timeouts: tcp tcpfin udp")
            values = []
            for text in args.positional:
                if not text.isdigit() or int(text) > MAX_TIMEOUT:
                    raise _Refused(f"invalid timeout '{text}' (0 to {MAX_TIMEOUT})")
                values.append(int(text))
            for key, value in zip(("tcp", "tcpfin", "udp"), values):
                if value:                       # 0 keeps the current value
                    self.timeouts[key] = value
            self.timeout_origins.append(origin)
            return
        if args.positional:
            raise _Refused(f"unexpected argument '{args.positional[0]}'")
        if command == "clear":
            self.services.clear()
            return

        kind, address, port, svc_reasons = _service_of(args)
        key = (kind, address, port)
        svc = self.services.get(key)
        name = f"{kind} {address}:{port}" if kind != "fwmark" else f"fwmark {address}"
        if command == "add-service":
            if svc is not None:
                raise _Refused(f"service {name} already exists (line {svc.origins[0].line});"
                               " use -E to change it")
            a = _service_attributes(args, kind)
            self.services[key] = _Service(kind, address, port, a.scheduler, a.persistent,
                                          a.netmask, a.flags, a.ops, svc_reasons + a.reasons,
                                          [origin])
            return
        if svc is None:
            raise _Refused(f"no service {name} (add it with -A first)")
        if command == "edit-service":
            a = _service_attributes(args, kind)
            svc.scheduler, svc.persistent, svc.netmask = a.scheduler, a.persistent, a.netmask
            svc.flags, svc.ops = a.flags, a.ops
            svc.unsupported = svc_reasons + a.reasons
            svc.origins.append(origin)
            return
        if command == "delete-service":
            del self.services[key]
            return

        r_addr, r_port, written, r_reasons = _real_of(
            args, kind, port, for_delete=command == "delete-server")
        rkey = (r_addr, r_port)
        real = svc.reals.get(rkey)
        rname = f"{r_addr}:{r_port}"
        if command == "add-server":
            if real is not None:
                raise _Refused(f"real server {rname} is already in service {name} "
                               f"(line {real.origins[0].line}); use -e to change it")
            forward, weight, upper, lower, reasons = _real_attributes(args, port, kind,
                                                                      written)
            svc.reals[rkey] = _Real(r_addr, r_port, forward, weight, upper, lower,
                                    r_reasons + reasons, [origin])
            return
        if real is None:
            raise _Refused(f"service {name} has no real server {rname}")
        if command == "edit-server":
            forward, weight, upper, lower, reasons = _real_attributes(args, port, kind,
                                                                      written)
            real.forward, real.weight, real.upper, real.lower = forward, weight, upper, lower
            real.unsupported = r_reasons + reasons
            real.origins.append(origin)
        else:                                   # delete-server
            del svc.reals[rkey]


def _spell(command: str) -> str:
    letters = _OPTIONS[command][0]
    return f"-{letters[0]}" if letters else f"--{command}"


# ---------------------------------------------------------------- import


def import_rules(text: str, source: str = "<stdin>", interface: str | None = None,
                 skip_unsupported: bool = False) -> Imported:
    """Read ipvsadm rules or a shell script of ipvsadm commands into a validated dr-lb
    config. Raises ConfigError: one `LINE: RULE: why` per rule ipvsadm would refuse
    or dr-lb cannot honour (those are skipped with skip_unsupported), or the config's
    own messages if the result is not a valid config."""
    table = _Table()
    errors: list[tuple[int, str]] = []
    notes: list[tuple[int, str]] = []
    variables: dict[str, str | None] = {}
    for where, line_no, line in _logical_lines(text, source):
        shown = _printable(line.strip())
        try:
            commands = _commands(line)
        except ValueError as e:
            errors.append((line_no, f"{where}: {shown}: not readable as a shell "
                                    f"command: {e}"))
            continue
        for words in commands:
            origin = Origin(where, line_no, shown)
            try:
                argv = _ipvsadm_argv(words, variables)
                if argv is None:
                    notes.append((line_no, f"{origin}: skipped: not an ipvsadm command"))
                    continue
                if not argv:                    # an assignment, or `ipvsadm` alone
                    continue
                args = _parse_argv(argv)
                if args.command in _NOT_RULES:
                    if _NOT_RULES[args.command]:
                        notes.append((line_no, f"{origin}: skipped: "
                                               f"{_NOT_RULES[args.command]}"))
                    continue
                table.apply(args, origin)
            except _Refused as e:
                errors.append((line_no, f"{origin}: {e}"))

    unsupported, left_out_notes = _unsupported(table)
    if errors and skip_unsupported:
        raise ConfigError([m for _, m in sorted(errors, key=lambda p: p[0])] + [
            f"{source}: --skip-unsupported leaves out only what dr-lb lacks; fix the "
            "lines above"])
    if errors or unsupported and not skip_unsupported:
        raise ConfigError([m for _, m in sorted(errors + unsupported,
                                                key=lambda p: p[0])])
    notes.extend(left_out_notes if skip_unsupported else [])

    services = [s for s in table.services.values() if not s.unsupported]
    kept: list[tuple[_Service, list[_Real]]] = []
    for svc in services:
        reals = [r for r in svc.reals.values() if not r.unsupported]
        if svc.reals and not reals:
            notes.append((svc.origins[0].line, f"{svc.origins[0]}: left out: all its "
                                               "real servers were left out"))
            continue
        kept.append((svc, reals))
    if skip_unsupported and not kept and unsupported:
        raise ConfigError([m for _, m in sorted(unsupported, key=lambda p: p[0])]
                          + [f"{source}: nothing is left to import"])

    data = _config_dict(table, kept, interface or DEFAULT_INTERFACE)
    cfg = config_mod.from_dict(data, source)        # the checks `dr-lb check` makes
    return Imported(cfg, [m for _, m in sorted(notes, key=lambda p: p[0])],
                    lambda: _render(data, table, kept, source, interface is None))


def _ipvsadm_argv(words: list[str], variables: dict[str, str | None]
                  ) -> list[str] | None:
    """The ipvsadm arguments of a shell command, its $VARIABLES expanded; [] for a
    variable assignment (remembered for later lines) or a bare `ipvsadm`; None for any
    other command."""
    if len(words) <= 2 and re.fullmatch(r"\w+=.*", words[-1]) and \
            (len(words) == 1 or words[0] in ("export", "readonly", "local")):
        name, _, value = words[-1].partition("=")
        try:
            variables[name] = _expand(value, variables)
        except _Refused:
            variables[name] = None              # known to be set, to what is unknown
        return []
    if words[0].startswith("-"):                # ipvsadm-save's form
        return [_expand(w, variables) for w in words]
    while words and words[0] == "sudo":
        words = words[1:]
        while words and words[0].startswith("-"):
            words = words[1:]
    if words and words[0].rsplit("/", 1)[-1] == "ipvsadm":
        return [_expand(w, variables) for w in words[1:]]
    return None


def _expand(word: str, variables: dict[str, str | None]) -> str:
    if "$" not in word:
        return word

    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if variables.get(name) is None:
            raise _Refused(f"uses ${name}, which is not set to a plain value earlier "
                           "in this file")
        return variables[name]
    return _VAR.sub(value, word)


def _unsupported(table: _Table) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(problems, notes for --skip-unsupported): one per rule of the final table that
    dr-lb cannot honour, naming the line that made it so."""
    problems, notes = [], []
    for svc in table.services.values():
        origin = svc.origins[-1]
        if svc.unsupported:
            why = "; ".join(svc.unsupported)
            problems.append((origin.line, f"{origin}: {why}"))
            n = len(svc.reals)
            with_reals = f" (with its {n} real server{'s' if n != 1 else ''})" if n else ""
            notes.append((origin.line, f"{origin}: left out{with_reals}: {why}"))
        for real in svc.reals.values():
            if real.unsupported:
                rorigin = real.origins[-1]
                why = "; ".join(real.unsupported)
                problems.append((rorigin.line, f"{rorigin}: {why}"))
                if not svc.unsupported:
                    notes.append((rorigin.line, f"{rorigin}: left out: {why}"))
    return problems, notes


def _config_dict(table: _Table, kept: list[tuple[_Service, list[_Real]]],
                 interface: str) -> dict:
    services = []
    for svc, reals in kept:
        entry: dict = {"vip": svc.address, "port": svc.port, "protocol": svc.kind,
                       "scheduler": svc.scheduler}
        if svc.flags:
            entry["scheduler_flags"] = list(svc.flags)
        if svc.ops:
            entry["ops"] = True
        if svc.persistent:
            entry["persistent"] = svc.persistent
            if svc.netmask != HOST_MASK:
                entry["persistent_netmask"] = svc.netmask
        entry["real_server"] = [_real_dict(r) for r in reals]
        services.append(entry)
    data: dict = {"director": {"interface": interface}, "timeouts": dict(table.timeouts)}
    if services:
        data["service"] = services
    return data


def _real_dict(real: _Real) -> dict:
    entry: dict = {"address": real.address, "weight": real.weight}
    if real.upper:
        entry["upper"] = real.upper
    if real.lower:
        entry["lower"] = real.lower
    return entry


def _render(data: dict, table: _Table, kept: list[tuple[_Service, list[_Real]]],
            source: str, default_interface: bool) -> str:
    """The validated dict as TOML, each table under comments naming its source lines."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"dr-lb config imported from {source} by `dr-lb ipvsadm "
                            "import`"))
    doc.add(tomlkit.nl())
    director = tomlkit.table()
    director.add("interface", data["director"]["interface"])
    if default_interface:
        director["interface"].comment("CHECK: the director's interface (ip -br link); "
                                      "set it with --interface")
    doc.add("director", director)

    previous = director
    _comment_above(previous, [str(o) for o in table.timeout_origins] or
                   [f"no --set in {source}: ipvsadm's defaults (ipvsadm -l --timeout "
                    "shows the kernel's)"])
    timeouts = tomlkit.table()
    for key, value in data["timeouts"].items():
        timeouts.add(key, value)
    doc.add("timeouts", timeouts)
    previous = timeouts

    services = tomlkit.aot()
    for (svc, reals), entry in zip(kept, data.get("service", [])):
        _comment_above(previous, [str(o) for o in svc.origins])
        table_ = tomlkit.table()
        for key, value in entry.items():
            if key != "real_server":
                table_.add(key, value)
        previous = table_
        real_tables = tomlkit.aot()
        for real, rentry in zip(reals, entry["real_server"]):
            _comment_above(previous, [str(o) for o in real.origins])
            rtable = tomlkit.table()
            for key, value in rentry.items():
                rtable.add(key, value)
            real_tables.append(rtable)
            previous = rtable
        table_.add("real_server", real_tables)
        services.append(table_)
    if kept:
        doc.add("service", services)
    text = tomlkit.dumps(doc)
    # tomlkit starts each table after a comment with a blank line; keep the comments
    # right above the header they describe.
    return re.sub(r"^(# (?:from |no --set ).*)\n\n(\[)", r"\1\n\2", text, flags=re.M)


def _comment_above(previous, lines: list[str]) -> None:
    """Comments after the last key of `previous`: they render right above the table
    that comes next."""
    previous.add(tomlkit.nl())
    for line in lines:
        previous.add(tomlkit.comment(f"from {line}" if not line.startswith("no --set")
                                     else line))


# ---------------------------------------------------------------- export


def expressible(cfg: config_mod.Config, interface: str = DEFAULT_INTERFACE
                ) -> config_mod.Config:
    """The part of cfg that ipvsadm rules can hold, as import would give it back:
    no MACs, health checks or sorry servers, a default [director] on `interface`, the
    netmask of a service that is not persistent dropped (ipvsadm-save does not write
    it), and a drained server as weight 0."""
    services = tuple(dataclasses.replace(
        s, persistent_netmask=s.persistent_netmask if s.persistent else HOST_MASK,
        health=config_mod.Health(), sorry_server=None,
        real_servers=tuple(dataclasses.replace(r, mac=None, weight=r.effective_weight,
                                               drained=False, health=config_mod.Health())
                           for r in s.real_servers))
        for s in cfg.services)
    return config_mod.Config(director=config_mod.Director(interface=interface),
                             timeouts=cfg.timeouts, services=services, source=cfg.source)


def export_rules(cfg: config_mod.Config) -> tuple[str, list[str]]:
    """(rules `ipvsadm -R` accepts, notes for stderr) for a validated config. Raises
    ConfigError for what ipvsadm cannot take (a timeout over 31 days).

    The format is ipvsadm-save -n's, after a --set line, in the config's order, and
    without comments: ipvsadm -R does not skip them.
    """
    problems = []
    for key in ("tcp", "tcpfin", "udp"):
        value = getattr(cfg.timeouts, key)
        if value > MAX_TIMEOUT:
            problems.append(f"{cfg.source}: [timeouts]: {key} = {value} is more than "
                            f"ipvsadm takes ({MAX_TIMEOUT}, 31 days)")
    for s in cfg.services:
        if s.persistent > MAX_TIMEOUT:
            problems.append(f"{cfg.source}: service {s.name}: persistent = "
                            f"{s.persistent} is more than ipvsadm takes ({MAX_TIMEOUT}, "
                            "31 days)")
    if problems:
        raise ConfigError(problems)
    t = cfg.timeouts
    lines = [f"--set {t.tcp} {t.tcpfin} {t.udp}"]
    macs = checked = sorry = sloppy = 0
    for s in cfg.services:
        svc = f"{'-t' if s.protocol == 'tcp' else '-u'} {s.vip}:{s.port}"
        line = f"-A {svc} -s {s.scheduler}"
        if s.persistent:
            line += f" -p {s.persistent}"
            if s.persistent_netmask != HOST_MASK:
                line += f" -M {s.persistent_netmask}"
        if s.scheduler_flags:
            line += f" -b {','.join(s.scheduler_flags)}"
        if s.ops:
            line += " -o"
        lines.append(line)
        checked += s.health.checked or any(r.health.checked for r in s.real_servers)
        sorry += s.sorry_server is not None
        sloppy += s.sloppy
        for r in s.real_servers:
            # A drained server is weight 0 to IPVS (quiesced), as `dr-lb drain` makes it.
            real = f"-a {svc} -r {r.address}:{s.port} -g -w {r.effective_weight}"
            if r.upper:
                real += f" -x {r.upper}"
            if r.lower:
                real += f" -y {r.lower}"
            lines.append(real)
            macs += r.mac is not None
    notes = []
    if macs:
        notes.append(f"{cfg.source}: {macs} real server MAC(s) left out: ipvsadm has no "
                     "place for them (IPVS asks the neighbour table)")
    if checked:
        notes.append(f"{cfg.source}: the health checks of {checked} service(s) left out: "
                     "ipvsadm has no place for them (keepalived does them for IPVS)")
    if sorry:
        notes.append(f"{cfg.source}: {sorry} sorry server(s) left out: ipvsadm has no "
                     "place for them (keepalived's sorry_server)")
    if sloppy:
        notes.append(f"{cfg.source}: sloppy = true ({sloppy} service(s)) left out: for IPVS "
                     "it is the sysctl net.ipv4.vs.sloppy_tcp = 1, for every service")
    return "\n".join(lines) + "\n", notes
