"""``HOST:PORT``: the one parser and formatter of the addresses tailrunner listens on and dials.

An IPv6 host is written in brackets (``[::1]:7740``); :class:`HostPort`
keeps the host without them and puts them back when it is formatted, so
that a server reports the address a client can dial.
"""

from __future__ import annotations

from dataclasses import dataclass

from tailrunner.errors import InvalidArgument

#: What an address looks like, for error messages.
EXAMPLES = "e.g. 127.0.0.1:7740, [::1]:0, 0.0.0.0:7740"


@dataclass(frozen=True, slots=True)
class HostPort:
    """A host (an IPv6 one without its brackets) and a port.

    :ivar host: a name, an IPv4 address or an IPv6 address (no brackets).
    :ivar port: 0 to 65535; 0 asks a listener for any free port.
    """

    host: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


def format_host_port(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 host in brackets (``[::1]:7740``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str, *, field: str, any_port: bool = True) -> HostPort:
    """Read ``HOST:PORT`` (an IPv6 host in brackets: ``[::1]:0``).

    :param field: what the error names (a config key, an option, an argument).
    :param any_port: whether port 0 (any free port, for a listener) is allowed.
    :raises InvalidArgument: naming ``field`` when ``text`` is not ``HOST:PORT``.
    """
    hint = f"{text!r} is not HOST:PORT ({EXAMPLES})"
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isascii() or not port_text.isdigit():
        raise InvalidArgument(field, hint)
    port = int(port_text)
    if not (0 if any_port else 1) <= port <= 65535:
        raise InvalidArgument(field, f"{hint}: the port is out of range")
    if host.startswith("["):
        if not host.endswith("]") or len(host) == 2:
            raise InvalidArgument(field, hint)
        host = host[1:-1]
    elif ":" in host:
        raise InvalidArgument(field, f"{hint}: an IPv6 host goes in brackets, e.g. [::1]:{port}")
    if any(c.isspace() or c in "[]" for c in host):
        raise InvalidArgument(field, hint)
    return HostPort(host, port)
