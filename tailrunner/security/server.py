"""``ServerSecurity``: what guards one server (TLS, tokens), and the rule for open binds.

A server on a loopback address may run without TLS and without tokens (only
local users reach it). One that binds any other address needs both, or
``insecure = true`` to say that the network around it is trusted:
otherwise it refuses to start, and says why.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import grpc
import structlog

from tailrunner.address import HostPort
from tailrunner.errors import InvalidArgument
from tailrunner.security.auth import BearerAuth
from tailrunner.security.tls import ServerTls
from tailrunner.security.tokens import Tokens

log = structlog.get_logger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) is reachable only from this machine.

    A name other than ``localhost`` may resolve to anything: it counts as open.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSecurity:
    """TLS and tokens for one server; both optional on loopback.

    :ivar tls: the server's certificate (``None``: plaintext).
    :ivar tokens: the bearer tokens it accepts (``None``: every call is let in).
    :ivar insecure: allow a non-loopback bind without TLS or without tokens.
    :ivar field: the config key or option that sets :attr:`insecure`, for the
        error (``admin.insecure``, ``--insecure``).
    """

    tls: ServerTls | None = None
    tokens: Tokens | None = None
    insecure: bool = False
    field: str = "insecure"

    def check_bind(self, listen: HostPort, *, kind: str) -> None:
        """Refuse an open bind without TLS and tokens (unless :attr:`insecure`).

        :raises InvalidArgument: naming :attr:`field`, with what is missing and how to fix it.
        """
        if is_loopback(listen.host):
            return
        missing = [
            what
            for what, given in (("TLS", self.tls is not None), ("tokens", self.tokens is not None))
            if not given
        ]
        if not missing:
            return
        if self.insecure:
            log.warning(
                "listening without protection",
                service=kind,
                address=str(listen),
                tls=self.tls is not None,
                auth=self.tokens is not None,
                reason=f"{self.field} is set",
            )
            return
        exposed = "read the traffic to" if self.tokens is not None else "call"
        setting = self.field if self.field.startswith("--") else f"{self.field} = true"
        message = (
            f"the {kind} server would listen on {listen}, reachable from other machines,"
            f" without {' and without '.join(missing)}: anyone who reaches it could {exposed}"
            f" it. Give a certificate and a tokens file, listen on a loopback address, or set"
            f" {setting} if the network is trusted"
        )
        raise InvalidArgument(self.field, message, text=message)

    def interceptors(self, *, kind: str) -> list[grpc.aio.ServerInterceptor]:
        """The server interceptors these settings need (the token check)."""
        return [] if self.tokens is None else [BearerAuth(self.tokens, server=kind)]

    def credentials(self) -> grpc.ServerCredentials | None:
        """The server's TLS credentials; ``None`` for plaintext."""
        return None if self.tls is None else self.tls.credentials()


#: Plaintext and no tokens: for loopback addresses and tests.
OPEN = ServerSecurity()
