"""Command-line parameter types that every command group shares: ids as users type them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from uuid import UUID

import click
from ulid import ULID

from tailrunner.cli.terminal import printable
from tailrunner.errors import InvalidArgument
from tailrunner.ids import parse_ulid, parse_uuid
from tailrunner.journal.server import DEFAULT_LISTEN

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
    """``--journal HOST:PORT`` (also ``$TAILRUNNER_JOURNAL``), into the parameter ``address``."""
    return click.option(
        "--journal",
        "address",
        metavar="HOST:PORT",
        default=DEFAULT_LISTEN,
        show_default=True,
        envvar="TAILRUNNER_JOURNAL",
        help=f"{what} (also $TAILRUNNER_JOURNAL).",
    )


def json_option(help: str = "One JSON object per line instead of text.") -> Callable[[F], F]:
    """``--json``, into the parameter ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help)
