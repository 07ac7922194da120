"""TLS for tailrunner's servers and clients, from PEM files.

:class:`ServerTls` is a server's certificate chain and key, and optionally
the CA whose client certificates it requires (mutual TLS). :class:`ClientTls`
is what a client trusts (a CA bundle; the system's roots when it is not
given) and, for mutual TLS, its own certificate and key.

The files are read once, when the server or channel is made: an error
names the option or key and the file, and says what is wrong with it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from tailrunner.errors import InvalidArgument

_PEM = b"-----BEGIN "


def read_pem(path: Path, *, field: str, what: str) -> bytes:
    """The bytes of the PEM file ``path``.

    :param what: what it should hold, for the error (``"a certificate"``).
    :raises InvalidArgument: naming ``field``: unreadable, or not PEM.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(field, f"cannot read {path}: {exc.strerror}") from None
    if _PEM not in data:
        raise InvalidArgument(field, f"{path} is not PEM (expected {what}, '-----BEGIN …')")
    return data


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTls:
    """A server's TLS: its certificate chain and key, and a client CA for mutual TLS.

    :ivar cert: PEM certificate chain, the server's own first.
    :ivar key: PEM private key of that certificate.
    :ivar client_ca: PEM CA bundle; when set, a client must show a certificate it signed.
    """

    cert: Path
    key: Path
    client_ca: Path | None = None
    #: The option or key prefix errors name (``tls`` → ``tls_cert``, ``--tls`` →
    #: ``--tls-cert`` …).
    field: str = "tls"

    def _files(self) -> tuple[bytes, bytes, bytes | None]:
        cert = read_pem(self.cert, field=_named(self.field, "cert"), what="a certificate")
        key = read_pem(self.key, field=_named(self.field, "key"), what="a private key")
        ca = (
            None
            if self.client_ca is None
            else read_pem(
                self.client_ca, field=_named(self.field, "client_ca"), what="certificates"
            )
        )
        return cert, key, ca

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials (mutual TLS when :attr:`client_ca` is set)."""
        cert, key, ca = self._files()
        # Checked here, as gRPC would only log it and refuse every handshake.
        self.ssl_context()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )

    def ssl_context(self) -> ssl.SSLContext:
        """An :class:`ssl.SSLContext` for an HTTP server (the metrics endpoint).

        :raises InvalidArgument: the key does not fit the certificate, or a file is bad.
        """
        self._files()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, ValueError) as exc:
            raise InvalidArgument(
                f"{self.field}_key",
                f"{self.key} does not go with the certificate {self.cert} ({type(exc).__name__})",
            ) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except ssl.SSLError as exc:
                raise InvalidArgument(
                    f"{self.field}_client_ca", f"{self.client_ca} holds no usable CA: {exc.reason}"
                ) from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTls:
    """A client's TLS toward a server.

    :ivar ca: PEM CA bundle the server's certificate must chain to; ``None``:
        the system's roots.
    :ivar cert: PEM certificate for mutual TLS (with :attr:`key`).
    :ivar key: PEM private key of :attr:`cert`.
    :ivar server_name: the name the server's certificate must carry, when it
        is not the host dialled (say, dialling an IP address).
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None
    #: The option or key prefix errors name (``tls`` → ``tls_ca``, ``tls_cert`` …).
    field: str = "tls"

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            given, missing = ("cert", "key") if self.key is None else ("key", "cert")
            raise InvalidArgument(
                _named(self.field, missing),
                f"a client certificate needs both {_named(self.field, 'cert')} and"
                f" {_named(self.field, 'key')} ({_named(self.field, given)} is set)",
            )

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials.

        :raises InvalidArgument: a file cannot be read, is not PEM, or the key
            does not go with the certificate (checked here: gRPC would only
            fail each handshake, which looks like a server that is down).
        """
        ca = (
            None
            if self.ca is None
            else read_pem(self.ca, field=_named(self.field, "ca"), what="certificates")
        )
        cert = key = None
        if self.cert is not None and self.key is not None:
            cert = read_pem(self.cert, field=_named(self.field, "cert"), what="a certificate")
            key = read_pem(self.key, field=_named(self.field, "key"), what="a private key")
            try:
                ssl.create_default_context().load_cert_chain(self.cert, self.key)
            except (ssl.SSLError, ValueError) as exc:
                raise InvalidArgument(
                    _named(self.field, "key"),
                    f"{self.key} does not go with the certificate {self.cert}"
                    f" ({type(exc).__name__})",
                ) from None
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def channel_options(self) -> tuple[tuple[str, str], ...]:
        """The channel options it needs (the name the certificate must carry)."""
        if self.server_name is None:
            return ()
        return (("grpc.ssl_target_name_override", self.server_name),)


def _named(prefix: str, part: str) -> str:
    """The name of one file's option or key: ``tls_key``, ``journal.tls_key``, ``--tls-key``."""
    if prefix.startswith("--"):
        return f"{prefix}-{part.replace('_', '-')}"
    return f"{prefix}_{part}"
