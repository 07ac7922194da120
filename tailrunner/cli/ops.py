"""``tailrunner ops``: long-running operations (AIP-151) from the command line.

``list``, ``get``, ``wait``, ``cancel``, ``delete`` and ``tree`` talk to the
``google.longrunning.Operations`` service of the journal server.

:data:`COMMANDS` is what :mod:`tailrunner.cli.main` registers.
"""

from __future__ import annotations

import base64
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
import click
import structlog
from google.protobuf import (  # noqa: F401  (registered, so that JSON shows them unpacked)
    duration_pb2,
    empty_pb2,
    json_format,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.any_pb2 import Any as AnyMessage

from tailrunner.cli.params import (
    JOURNAL_TOKEN_ENV,
    access_error,
    client_tls,
    journal_option,
    journal_token,
    json_option,
    server_security,
    server_security_options,
    tls_hint,
)
from tailrunner.cli.terminal import printable
from tailrunner.errors import AccessDenied, InvalidArgument, JournalUnavailable, TailrunnerError
from tailrunner.journal.client import JournalClient
from tailrunner.operations.client import OperationsClient
from tailrunner.operations.server import DEFAULT_LISTEN as OPS_LISTEN
from tailrunner.operations.server import OperationsServer
from tailrunner.operations.service import DEFAULT_MAX_WAIT
from tailrunner.operations.state import Operation
from tailrunner.proto.v1 import operations_pb2, workflows_pb2  # noqa: F401  (registered, likewise)
from tailrunner.security import ClientTls, ServerSecurity

T = TypeVar("T")

log = structlog.get_logger(__name__)
_journal_option = journal_option("The journal server that serves the operations")
_json_option = json_option("Print JSON, for scripts.")
_name_argument = click.argument("name", metavar="NAME")


@click.group("ops")
def ops() -> None:
    """Long-running operations (google.longrunning, AIP-151): list, get, wait, cancel, delete.

    An operation is operations/{id}: one that a service created with
    tailrunner.operations, or a workflow (a ping-registry workflow is
    operations/{workflow uuid}).

    \b
    Examples:
      tailrunner ops list --filter 'state=RUNNING AND kind=ping-registry'
      tailrunner ops wait operations/7c9e6679-7425-40de-944b-e07fc1f90ae7 --timeout 60
      tailrunner ops tree operations/import-2026-12-01
    """


@ops.command("list")
@_journal_option
@_json_option
@click.option(
    "--filter",
    "filter_",
    default="",
    metavar="FILTER",
    help="state=RUNNING|SUCCEEDED|FAILED|CANCELLED, kind=…, parent=operations/…,"
    " done=true|false, joined with AND.",
)
def list_(address: str, as_json: bool, filter_: str) -> None:
    """List operations, newest first: NAME, STATUS and RESULT, tab-separated."""

    async def run(client: OperationsClient) -> list[Operation]:
        return [op async for op in client.list_operations(filter_)]

    for operation in _with_client(address, run):
        shown = json.dumps(_as_dict(operation), separators=(",", ":"))
        click.echo(shown if as_json else _text(operation))


@ops.command("get")
@_journal_option
@_json_option
@_name_argument
def get(address: str, as_json: bool, name: str) -> None:
    """Print one operation: its status, metadata and result."""

    async def run(client: OperationsClient) -> Operation:
        return await client.get(name)

    _print(_with_client(address, run), as_json)


@ops.command("wait")
@_journal_option
@_json_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Give up after this long and print the operation as it is (exit status 2).",
)
@_name_argument
def wait(address: str, as_json: bool, timeout: float | None, name: str) -> None:
    """Wait until an operation is done, then print it.

    The journal wakes the wait when the operation finishes (no polling).
    Exit status 0 when it is done, 2 when the timeout came first.
    """

    async def run(client: OperationsClient) -> Operation:
        return await client.wait(name, timeout)

    operation = _with_client(address, run)
    _print(operation, as_json)
    if not operation.done:
        raise SystemExit(2)


@ops.command("cancel")
@_journal_option
@_name_argument
def cancel(address: str, name: str) -> None:
    """Ask for an operation to be cancelled (best effort; a done one is left as it is)."""

    async def run(client: OperationsClient) -> None:
        await client.cancel(name)

    _with_client(address, run)
    click.echo(f"{printable(name)}\tcancel requested")


@ops.command("delete")
@_journal_option
@_name_argument
def delete(address: str, name: str) -> None:
    """Delete a done operation (it is not found afterwards)."""

    async def run(client: OperationsClient) -> None:
        await client.delete(name)

    _with_client(address, run)
    click.echo(f"{printable(name)}\tdeleted")


@ops.command("tree")
@_journal_option
@click.option("--max-depth", type=click.IntRange(min=0), default=None, help="Levels of children.")
@_name_argument
def tree(address: str, max_depth: int | None, name: str) -> None:
    """Print an operation and its children, and theirs, indented."""

    async def run(client: OperationsClient) -> list[str]:
        lines: list[str] = []

        async def walk(operation: Operation, depth: int) -> None:
            lines.append("  " * depth + _text(operation))
            if max_depth is not None and depth >= max_depth:
                return
            for child in reversed(await client.children(operation.name)):  # oldest first
                await walk(child, depth + 1)

        await walk(await client.get(name), 0)
        return lines

    click.echo("\n".join(_with_client(address, run)))


@ops.command("serve")
@_journal_option
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=OPS_LISTEN,
    show_default=True,
    help="Address to listen on; port 0 picks a free port (printed on start).",
)
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_MAX_WAIT,
    show_default=True,
    metavar="SECONDS",
    help="The longest WaitOperation; a longer (or no) timeout is capped to it.",
)
@server_security_options(prefix="serve-")
def serve(address: str, listen: str, max_wait: float) -> None:
    """Serve google.longrunning.Operations and tailrunner.v1.Workflows in this process.

    The journal server carries both already (unless started with
    --no-operations); this runs them apart, over a client of the journal at
    --journal. Waits stay pushed: they watch the journal. Prints
    "listening on HOST:PORT" once it accepts calls; stops on SIGINT or SIGTERM.

    --tls-ca, --tls-cert and --tls-key (and $TAILRUNNER_JOURNAL_TOKEN) are
    toward the journal; --serve-tls-… and --tokens-file guard this server.

    \b
    Examples:
      tailrunner journal serve --no-operations &
      tailrunner ops serve --journal 127.0.0.1:7740 --listen 127.0.0.1:7742
    """
    from tailrunner.logs import configure_logging

    configure_logging("auto", "info")
    security, tls = server_security(prefix="serve-"), client_tls()
    with _cli_errors(address):
        anyio.run(_serve, address, listen, max_wait, security, tls)


async def _serve(
    address: str, listen: str, max_wait: float, security: ServerSecurity, tls: ClientTls | None
) -> None:
    token = journal_token()
    if token is not None and security.tokens is None:
        # It calls the journal with this token for whoever calls it.
        log.warning(
            "serving without tokens while holding the journal's",
            hint="give --tokens-file, or every caller who reaches it acts with that token",
        )
    async with JournalClient.connect(address, tls=tls, token=token) as journal:
        server = OperationsServer(journal, listen=listen, max_wait=max_wait, security=security)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with server:
                click.echo(f"listening on {server.address}")
                sys.stdout.flush()
                async for _ in signals:
                    break


#: The commands :mod:`tailrunner.cli.main` registers.
COMMANDS: list[click.Command] = [ops]


def _with_client(address: str, run: Callable[[OperationsClient], Awaitable[T]]) -> T:
    tls = client_tls()

    async def main() -> T:
        async with OperationsClient.connect(address, tls=tls, token=journal_token()) as client:
            return await run(client)

    with _cli_errors(address):
        return anyio.run(main)


@contextmanager
def _cli_errors(address: str) -> Iterator[None]:
    try:
        yield
    except InvalidArgument as exc:
        raise click.ClickException(printable(f"{exc.field}: {exc.reason}")) from exc
    except AccessDenied as exc:
        raise access_error(exc, address, JOURNAL_TOKEN_ENV) from exc
    except JournalUnavailable as exc:
        raise click.ClickException(
            printable(f"cannot reach the journal at {address}: {exc}{tls_hint()}")
        ) from exc
    except TailrunnerError as exc:
        raise click.ClickException(printable(str(exc))) from exc


def _status(operation: Operation) -> str:
    if not operation.done:
        return "running"
    if operation.HasField("error"):
        return "cancelled" if operation.error.code == 1 else "failed"
    return "succeeded"


def _result(operation: Operation) -> str:
    if operation.HasField("error"):
        return f"error {operation.error.code}: {operation.error.message}"
    if operation.HasField("response"):
        return f"response {_type_name(operation.response)}"
    return "-"


def _text(operation: Operation) -> str:
    return "\t".join(
        printable(part) for part in (operation.name, _status(operation), _result(operation))
    )


def _print(operation: Operation, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_as_dict(operation), indent=2))
        return
    lines = [
        f"name      {operation.name}",
        f"status    {_status(operation)}",
        f"result    {_result(operation)}",
    ]
    if operation.HasField("metadata"):
        lines.append(f"metadata  {_type_name(operation.metadata)}")
        shown = _unpacked(operation.metadata)
        if shown is not None:
            lines.extend(f"  {key}: {value}" for key, value in shown.items())
    # Each line escaped on its own: a line break in a value does not make a line.
    click.echo("\n".join(printable(line) for line in lines))


def _as_dict(operation: Operation) -> dict[str, Any]:
    """The operation as JSON; an ``Any`` of a type unknown here shows its type and bytes."""
    shown: dict[str, Any] = {"name": operation.name, "done": operation.done}
    if operation.HasField("metadata"):
        shown["metadata"] = _any_dict(operation.metadata)
    if operation.HasField("response"):
        shown["response"] = _any_dict(operation.response)
    if operation.HasField("error"):
        error = operation.error
        shown["error"] = {
            "code": error.code,
            "message": error.message,
            "details": [_any_dict(detail) for detail in error.details],
        }
    return shown


def _any_dict(packed: AnyMessage) -> dict[str, Any]:
    try:
        return dict(json_format.MessageToDict(packed))
    except TypeError:  # a type this process does not know (a service's own message)
        return {"@type": packed.type_url, "value_base64": base64.b64encode(packed.value).decode()}


def _unpacked(packed: AnyMessage) -> dict[str, Any] | None:
    try:
        shown = json_format.MessageToDict(packed)
    except TypeError:
        return None
    shown.pop("@type", None)
    return dict(shown)


def _type_name(packed: AnyMessage) -> str:
    return packed.type_url.rpartition("/")[2] or "-"
