"""Command-line parameter types that every command group shares: ids as users type them."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import click
from ulid import ULID

from tailrunner.cli.terminal import printable
from tailrunner.errors import AccessDenied, InvalidArgument, PermissionDenied
from tailrunner.ids import parse_ulid, parse_uuid
from tailrunner.journal.server import DEFAULT_LISTEN
from tailrunner.security import ClientTls, ServerSecurity, ServerTls, Tokens
from tailrunner.security.channels import read_token

#: Where the journal commands find the journal's bearer token.
JOURNAL_TOKEN_ENV = "TAILRUNNER_JOURNAL_TOKEN"
_TLS_META = "tailrunner.tls"

F = TypeVar("F", bound=Callable[..., Any])


def _param_name(param: click.Parameter | None) -> str:
    return param.opts[0] if param is not None and param.opts else "value"


class UUIDParam(click.ParamType[UUID]):
    """An aggregate id: a UUID in its canonical text form."""

    name = "UUID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> UUID:
        if isinstance(value, UUID):
            return value
        try:
            return parse_uuid(str(value), field=_param_name(param))
        except InvalidArgument as exc:
            self.fail(exc.reason, param, ctx)


class ULIDParam(click.ParamType[ULID]):
    """An event id (a tail, a head): a ULID of 26 characters."""

    name = "ULID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> ULID:
        if isinstance(value, ULID):
            return value
        try:
            return parse_ulid(str(value), field=_param_name(param))
        except InvalidArgument as exc:
            self.fail(f"{exc.reason} (26 characters of Crockford base32)", param, ctx)


def option_error(exc: InvalidArgument, option_for_field: Mapping[str, str]) -> click.ClickException:
    """The CLI's error for a refused field: blamed on its option when the command has one.

    The reason may quote the refused value (from the server): it is escaped.
    """
    option = option_for_field.get(exc.field)
    if option is None:
        return click.ClickException(printable(str(exc)))
    return click.BadParameter(printable(exc.reason), param_hint=f"'{option}'")


def journal_option(what: str = "The journal to talk to") -> Callable[[F], F]:
    """``--journal HOST:PORT`` (also ``$TAILRUNNER_JOURNAL``), into the parameter ``address``,
    with the TLS options (:func:`tls_options`) toward it."""
    address = click.option(
        "--journal",
        "address",
        metavar="HOST:PORT",
        default=DEFAULT_LISTEN,
        show_default=True,
        envvar="TAILRUNNER_JOURNAL",
        help=f"{what} (also $TAILRUNNER_JOURNAL; its token, if it wants one, in"
        f" ${JOURNAL_TOKEN_ENV}).",
    )
    tls = tls_options("the journal")
    return lambda f: address(tls(f))


def tls_options(server: str) -> Callable[[F], F]:
    """``--tls``, ``--tls-ca``, ``--tls-cert``, ``--tls-key``, ``--tls-server-name``:
    TLS toward ``server``.

    They are not parameters of the command: :func:`client_tls` reads them.
    """
    path = click.Path(dir_okay=False, path_type=Path)
    specs: list[tuple[str, dict[str, Any]]] = [
        ("tls", {"is_flag": True, "default": None, "help": "Talk TLS to {server}, trusting"
                 " gRPC's default roots (--tls-ca: a CA bundle of your own)"}),
        ("tls-ca", {"type": path, "metavar": "PEM",
                    "help": "Talk TLS to {server}, trusting this CA bundle"}),
        ("tls-cert", {"type": path, "metavar": "PEM",
                      "help": "Client certificate (TLS), when {server} wants mutual TLS"}),
        ("tls-key", {"type": path, "metavar": "PEM", "help": "Key of the client certificate"}),
        ("tls-server-name", {"metavar": "NAME",
                             "help": "The name {server}'s certificate carries, when it is not"
                             " the host dialled"}),
    ]  # fmt: skip
    options = []
    for name, kwargs in specs:
        env = "TAILRUNNER_" + name.upper().replace("-", "_")
        text = kwargs.pop("help").format(server=server)
        options.append(
            click.option(
                f"--{name}",
                f"client_{name.replace('-', '_')}",
                envvar=env,
                expose_value=False,
                callback=_remember_tls,
                help=f"{text} (also ${env}).",
                **kwargs,
            )
        )

    return _applying(options)


def _applying(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    """One decorator applying ``options`` (the first shown first in ``--help``)."""

    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _remember_tls(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value not in (None, False, "") and param.name is not None:
        ctx.meta.setdefault(_TLS_META, {})[param.name.removeprefix("client_")] = value


def client_tls() -> ClientTls | None:
    """TLS as the current command's ``--tls…`` options say; ``None``: plaintext.

    :raises click.BadParameter: ``--tls-cert`` without ``--tls-key``, or the reverse.
    """
    given: dict[str, Any] = click.get_current_context().meta.get(_TLS_META, {})
    if not given:
        return None
    try:
        return ClientTls(
            ca=given.get("tls_ca"),
            cert=given.get("tls_cert"),
            key=given.get("tls_key"),
            server_name=given.get("tls_server_name"),
            field="--tls",
        )
    except InvalidArgument as exc:
        raise click.BadParameter(exc.reason, param_hint=f"'{exc.field}'") from None


def tls_hint() -> str:
    """What to check when a server cannot be reached: TLS looks like an outage too."""
    if click.get_current_context().meta.get(_TLS_META):
        return (
            "; if it is up, check that its certificate chains to --tls-ca and, for mutual"
            " TLS, --tls-cert and --tls-key"
        )
    return "; if it serves TLS, give --tls-ca (or --tls)"


def client_token(env: str) -> str | None:
    """The bearer token in the variable ``env``, without the line end an env file leaves.

    :raises click.UsageError: naming ``env`` (never the token): it holds
        characters a header cannot carry.
    """
    try:
        return read_token(os.environ, env)
    except InvalidArgument as exc:
        raise click.UsageError(exc.reason) from None


def access_error(exc: AccessDenied, address: str, token_env: str) -> click.ClickException:
    """The CLI's line for a refused call: what to set, never the token."""
    has_token = bool(os.environ.get(token_env))
    if isinstance(exc, PermissionDenied):
        hint = f"the token in ${token_env} may only read"
    elif has_token:
        hint = f"the server does not know the token in ${token_env}"
    else:
        hint = f"the server wants a bearer token: set ${token_env}"
    return click.ClickException(printable(f"{address} refused the call: {hint}"))


def journal_token() -> str | None:
    """The journal's bearer token from ``$TAILRUNNER_JOURNAL_TOKEN``, if it is set."""
    return client_token(JOURNAL_TOKEN_ENV)


def json_option(help: str = "One JSON object per line instead of text.") -> Callable[[F], F]:
    """``--json``, into the parameter ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help)


_SERVE_META = "tailrunner.serve"


def server_security_options(prefix: str = "") -> Callable[[F], F]:
    """``--{prefix}tls-cert``, ``--{prefix}tls-key``, ``--{prefix}tls-client-ca``,
    ``--tokens-file`` and ``--insecure``: how a server guards itself.

    They are not parameters of the command: :func:`server_security` reads them.
    """
    path = click.Path(dir_okay=False, path_type=Path)
    # Their own parameter names: click keys values by name, and a client's
    # --tls-cert beside a server's --serve-tls-cert must not share one.
    specs: list[tuple[str, str, dict[str, Any]]] = [
        (
            f"--{prefix}tls-cert",
            "serve_tls_cert",
            {"type": path, "metavar": "PEM", "help": "Serve TLS with this certificate chain."},
        ),
        (
            f"--{prefix}tls-key",
            "serve_tls_key",
            {"type": path, "metavar": "PEM", "help": "Key of that certificate."},
        ),
        (
            f"--{prefix}tls-client-ca",
            "serve_tls_client_ca",
            {
                "type": path,
                "metavar": "PEM",
                "help": "Require client certificates signed by this CA (mutual TLS).",
            },
        ),
        (
            "--tokens-file",
            "serve_tokens_file",
            {
                "type": path,
                "metavar": "FILE",
                "help": "Bearer tokens, one 'ROLE TOKEN' line each (read or write), mode 600;"
                " without it every call is let in.",
            },
        ),
        (
            "--insecure",
            "serve_insecure",
            {
                "is_flag": True,
                "help": "Allow a non-loopback --listen without TLS or without tokens"
                " (only on a network you trust).",
            },
        ),
    ]
    options = [
        click.option(flag, name, expose_value=False, callback=_remember_serve, **kwargs)
        for flag, name, kwargs in specs
    ]

    return _applying(options)


def _remember_serve(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None and param.name is not None:
        ctx.meta.setdefault(_SERVE_META, {})[param.name.removeprefix("serve_")] = (
            value,
            param.opts[0],
        )


def server_security(prefix: str = "") -> ServerSecurity:
    """The server's TLS and tokens as the current command's options say.

    :param prefix: the options' prefix, as given to :func:`server_security_options`.

    :raises click.BadParameter: naming the option: a file that cannot be used,
        or a certificate without its key.
    """
    given: dict[str, tuple[Any, str]] = click.get_current_context().meta.get(_SERVE_META, {})

    def value(name: str) -> Any:
        return given.get(name, (None, ""))[0]

    def flag(name: str, default: str) -> str:
        return given.get(name, (None, default))[1]

    cert, key, client_ca = value("tls_cert"), value("tls_key"), value("tls_client_ca")
    if (cert is None) != (key is None) or (client_ca is not None and cert is None):
        raise click.UsageError(
            f"{flag('tls_cert', f'--{prefix}tls-cert')} and"
            f" {flag('tls_key', f'--{prefix}tls-key')} go together, and"
            f" {flag('tls_client_ca', f'--{prefix}tls-client-ca')} needs both"
        )
    try:
        tokens_file = value("tokens_file")
        return ServerSecurity(
            tls=None
            if cert is None
            else ServerTls(cert=cert, key=key, client_ca=client_ca, field=f"--{prefix}tls"),
            tokens=None
            if tokens_file is None
            else Tokens.from_file(tokens_file, field="--tokens-file"),
            insecure=bool(value("insecure")),
            field="--insecure",
        )
    except InvalidArgument as exc:
        raise click.BadParameter(printable(exc.reason), param_hint=f"'{exc.field}'") from None
