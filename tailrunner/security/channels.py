"""Client channels: plaintext or TLS, and the bearer token as call metadata.

Every client of tailrunner (the journal client, the admin client, the
operations client) makes its channel here, so that TLS is the same for all.
The token goes with each call as ``authorization: Bearer <token>`` metadata
(:func:`bearer`): it works on plaintext loopback channels too, where gRPC's
call credentials would not be sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from tailrunner.security.tls import ClientTls

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
