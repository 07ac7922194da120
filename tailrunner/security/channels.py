"""Client channels: plaintext or TLS, and the bearer token as call metadata.

Every client of tailrunner (the journal client, the admin client, the
operations client) makes its channel here, so that TLS is the same for all.
The token goes with each call as ``authorization: Bearer <token>`` metadata
(:func:`bearer`): it works on plaintext loopback channels too, where gRPC's
call credentials would not be sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import structlog

from tailrunner.address import parse_host_port
from tailrunner.errors import InvalidArgument
from tailrunner.security.server import is_loopback
from tailrunner.security.tls import ClientTls

log = structlog.get_logger(__name__)

Metadata = tuple[tuple[str, str], ...]


def aio_channel(
    address: str, *, tls: ClientTls | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``address``; TLS when ``tls`` is given."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(
        address, tls.credentials(), options=[*options, *tls.channel_options()]
    )


def sync_channel(
    address: str, *, tls: ClientTls | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A blocking channel to ``address``; TLS when ``tls`` is given."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(
        address, tls.credentials(), options=[*options, *tls.channel_options()]
    )


def bearer(token: str | None) -> Metadata:
    """The call metadata that carries ``token`` (none for ``None`` or empty)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def read_token(environ: Mapping[str, str], name: str) -> str | None:
    """The bearer token in the variable ``name``; ``None`` when it is unset or empty.

    Spaces and the line end an env file or a secret mount leaves are dropped.

    :raises InvalidArgument: naming ``name`` (never the token): it holds
        characters other than printable ASCII, which a header cannot carry.
    """
    token = environ.get(name, "").strip()
    if not token:
        return None
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise InvalidArgument(
            name,
            f"${name} holds characters a bearer token cannot have (printable ASCII, no spaces)",
            text=f"${name} holds characters a bearer token cannot have"
            " (printable ASCII, no spaces)",
        )
    return token


def warn_cleartext_token(
    address: str, *, tls: ClientTls | None, token: str | None, server: str
) -> None:
    """Warn (once per channel) when ``token`` would cross the network in clear text.

    On a loopback address that is how a local server without TLS is reached;
    anywhere else whoever sees the traffic can take the token.
    """
    if not token or tls is not None or address.startswith("unix:"):
        return
    try:
        local = is_loopback(parse_host_port(address, field="address").host)
    except InvalidArgument:
        local = False
    if not local:
        log.warning(
            "sending a bearer token without TLS",
            server=server,
            address=address,
            hint="give the server's CA (tls_ca, --tls-ca) or --tls",
        )
