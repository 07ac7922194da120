"""The journal from the command line: ``journal serve``, ``append``, ``events``, ``aggregates``.

:data:`COMMANDS` is what :mod:`tailrunner.cli.main` registers.

Text from the journal (event types and data, aggregate types, its errors)
is printed escaped (:mod:`tailrunner.cli.terminal`): no control character
reaches the terminal. ``--json`` prints the values as they are.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import anyio
import click
import structlog
from ulid import ULID

from tailrunner.cli.params import (
    JOURNAL_TOKEN_ENV,
    ULIDParam,
    UUIDParam,
    access_error,
    client_tls,
    journal_option,
    journal_token,
    json_option,
    option_error,
    server_security,
    server_security_options,
    tls_hint,
)
from tailrunner.cli.terminal import printable
from tailrunner.errors import (
    AccessDenied,
    InvalidArgument,
    JournalError,
    JournalUnavailable,
    StoreError,
    TailMismatch,
)
from tailrunner.journal.client import JournalClient
from tailrunner.journal.open import DEFAULT_STORE, migrate_store, open_store
from tailrunner.journal.server import DEFAULT_LISTEN, JournalServer
from tailrunner.journal.service import DEFAULT_MAX_EVENT_SIZE, DEFAULT_MAX_EVENTS_PER_APPEND
from tailrunner.model import AggregateInfo, AggregateRef, Event, NewEvent
from tailrunner.operations.pingregistry import workflows_service
from tailrunner.operations.service import DEFAULT_MAX_WAIT, operations_service
from tailrunner.security import ServerSecurity

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: The journal's field names as the options of these commands.
_OPTION_FOR_FIELD = {
    "aggregate_type": "--type",
    "aggregate_id": "--id",
    "expected_tail": "--expect-tail",
    "expect_new": "--expect-new",
    "request_id": "--request-id",
    "events[0].type": "--event-type",
    "events[0].data": "--data",
    "after": "--after",
    "listen": "--listen",
    "--store": "--store",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "tls_client_ca": "--tls-client-ca",
}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(r"\s*(\d+)\s*([a-zA-Z]*)\s*")


class _SizeParam(click.ParamType[int]):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _SIZE.fullmatch(str(value))
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _SIZE_UNITS or int(match.group(1)) < 1:
            self.fail(
                f"{value!r} is not a size: expected a positive number of bytes with an optional"
                " unit (B, KiB, MiB, GiB, KB, MB, GB), e.g. 1MiB or 65536",
                param,
                ctx,
            )
        return int(match.group(1)) * _SIZE_UNITS[unit]


_journal_option = journal_option()
_json_option = json_option()


@click.group("journal")
def journal() -> None:
    """The event journal: append-only event streams of aggregates, served over gRPC."""


@journal.command("serve")
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=DEFAULT_LISTEN,
    show_default=True,
    help="Address to listen on; port 0 picks a free port (printed on start).",
)
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    default=DEFAULT_STORE,
    show_default=True,
    help="Where events are kept: sqlite:///PATH (relative; sqlite:////PATH is absolute,"
    " ?synchronous=NORMAL trades power-cut durability for speed, ?file_mode=0640 sets a new"
    " file's mode (default 0600), ?check=off skips the O(size) integrity checks at start),"
    " postgresql://USER@HOST/DB (?schema=NAME, default tailrunner; shared by journal servers)"
    " or memory:.",
)
@click.option(
    "--max-event-size",
    type=_SizeParam(),
    default=str(DEFAULT_MAX_EVENT_SIZE),
    show_default="1MiB",
    help="Largest event (type, data and metadata) an append may carry, e.g. 512KiB, 4MiB.",
)
@click.option(
    "--max-events-per-append",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_EVENTS_PER_APPEND,
    show_default=True,
    metavar="N",
    help="Most events one append may carry; a bigger one is refused (INVALID_ARGUMENT).",
)
@click.option(
    "--max-request-size",
    type=_SizeParam(),
    default=None,
    show_default="4 times --max-event-size plus 1MiB, at least 4MiB; 5MiB",
    help="Largest request message, any service's; a bigger one is refused by gRPC"
    " (RESOURCE_EXHAUSTED). At least --max-event-size.",
)
@click.option(
    "--no-operations",
    is_flag=True,
    help="Leave out the google.longrunning.Operations and tailrunner.v1.Workflows services"
    " (served by default).",
)
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_MAX_WAIT,
    show_default=True,
    metavar="SECONDS",
    help="The longest WaitOperation; a longer (or no) timeout is capped to it.",
)
@server_security_options()
def serve(
    *,
    listen: str,
    store_url: str,
    max_event_size: int,
    max_events_per_append: int,
    max_request_size: int | None,
    no_operations: bool,
    max_wait: float,
) -> None:
    """Serve the event journal over gRPC until SIGINT or SIGTERM.

    Prints "listening on HOST:PORT" once it accepts calls. The gRPC health
    service and server reflection are on, so grpcurl and health probes work.
    Beside the journal it serves google.longrunning.Operations (the library's
    operations and the ping-registry workflows) and tailrunner.v1.Workflows
    (BeginPingRegistry), unless --no-operations.

    With --tokens-file every call but health's needs a bearer token: read
    tokens may read events, signals, lists and operations; write tokens may
    also append, cancel and delete. Listening on an address other machines
    reach needs TLS and tokens (or --insecure). See SECURITY.md.

    \b
    Examples:
      tailrunner journal serve
      tailrunner journal serve --store sqlite:////var/lib/tailrunner/journal.db
      tailrunner journal serve --listen 127.0.0.1:0 --store memory:
      tailrunner journal serve --store 'postgresql://tailrunner@db/events?schema=journal'
      grpcurl -plaintext 127.0.0.1:7740 list
      tailrunner journal serve --listen 0.0.0.0:7740 --tls-cert server.pem \\
          --tls-key server.key --tokens-file journal.tokens
    """
    _configure_logging("info")
    if max_request_size is not None and max_request_size < max_event_size:
        raise click.UsageError(
            f"--max-request-size ({max_request_size} bytes) is below --max-event-size"
            f" ({max_event_size} bytes): an event within the event limit could not be sent"
        )
    security = server_security()
    with _cli_errors(listen):
        anyio.run(
            functools.partial(
                _serve,
                listen=listen,
                store_url=store_url,
                max_event_size=max_event_size,
                max_events_per_append=max_events_per_append,
                max_request_size=max_request_size,
                operations=not no_operations,
                max_wait=max_wait,
                security=security,
            )
        )


async def _serve(
    *,
    listen: str,
    store_url: str,
    max_event_size: int,
    max_events_per_append: int,
    max_request_size: int | None,
    operations: bool,
    max_wait: float,
    security: ServerSecurity,
) -> None:
    store = await open_store(store_url)
    try:
        server = JournalServer(
            store,
            listen=listen,
            max_event_size=max_event_size,
            max_events_per_append=max_events_per_append,
            max_request_size=max_request_size,
            close_store=True,
            services=[operations_service(max_wait=max_wait), workflows_service()]
            if operations
            else [],
            security=security,
        )
    except BaseException:
        await store.aclose()
        raise
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with server:
            click.echo(f"listening on {server.address}")
            sys.stdout.flush()
            async for signum in signals:
                log.info("stopping", signal=signal.Signals(signum).name)
                break


@journal.command("migrate")
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    default=DEFAULT_STORE,
    show_default=True,
    help="The store to create or migrate: sqlite:///PATH or postgresql://USER@HOST/DB"
    " (?schema=NAME, default tailrunner).",
)
def migrate(store_url: str) -> None:
    """Create or migrate the journal store's tables; print the schema version it is at.

    Safe to repeat, and to run while journal servers run (they migrate on
    start too): a store already at the newest version is left as it is.

    \b
    Examples:
      tailrunner journal migrate --store postgresql://tailrunner@db/events
      tailrunner journal migrate --store 'postgresql://tailrunner@db/events?schema=journal'
    """
    _configure_logging("warning")
    with _cli_errors(store_url):
        version = anyio.run(migrate_store, store_url)
    click.echo(f"schema version {version}")


@click.command("append")
@_journal_option
@click.option("--type", "aggregate_type", required=True, metavar="TYPE", help="Aggregate type.")
@click.option("--id", "aggregate_id", type=UUIDParam(), required=True, help="Aggregate id.")
@click.option("--event-type", required=True, metavar="TYPE", help="The event's type.")
@click.option(
    "--data",
    metavar="JSON|@FILE",
    default=None,
    help="The event's payload: JSON text, or @FILE to send a file's bytes (@- for stdin).",
)
@click.option(
    "--expect-tail",
    type=ULIDParam(),
    default=None,
    help="Append only if this is the aggregate's newest event id (optimistic concurrency).",
)
@click.option(
    "--expect-new",
    is_flag=True,
    help="Append only if the aggregate has no events yet (not with --expect-tail).",
)
@click.option(
    "--request-id",
    metavar="TEXT",
    default=None,
    help=(
        "Make the append safe to repeat: a repeat with the request id of an earlier append "
        "to this aggregate appends nothing and prints the first append's tail."
    ),
)
def append(
    *,
    address: str,
    aggregate_type: str,
    aggregate_id: UUID,
    event_type: str,
    data: str | None,
    expect_tail: ULID | None,
    expect_new: bool,
    request_id: str | None,
) -> None:
    """Append one event to an aggregate and print the aggregate's new tail.

    \b
    Examples:
      tailrunner append --type order --id 7c9e6679-7425-40de-944b-e07fc1f90ae7 \\
          --event-type placed --data '{"sku": "a-1", "qty": 2}'
      tailrunner append --type order --id 7c9e6679-7425-40de-944b-e07fc1f90ae7 \\
          --event-type paid --data @payment.json --expect-tail 01J9Z3K4Q2V8X7W6T5R4P3N2M1
      tailrunner append --type order --id 7c9e6679-7425-40de-944b-e07fc1f90ae7 \\
          --event-type placed --expect-new --request-id place-7c9e6679
    """
    _configure_logging("warning")
    payload = _read_data(data)
    ref = AggregateRef(type=aggregate_type, id=aggregate_id)

    async def run(client: JournalClient) -> ULID:
        result = await client.append(
            ref,
            [NewEvent(type=event_type, data=payload)],
            expected_tail=expect_tail,
            expect_new=expect_new,
            request_id=request_id,
        )
        return result.tail

    click.echo(str(_with_client(address, run)))


@click.command("events")
@_journal_option
@click.option("--id", "aggregate_id", type=UUIDParam(), required=True, help="Aggregate id.")
@click.option(
    "--after", type=ULIDParam(), default=None, help="Only events after this id (default: all)."
)
@click.option("--watch", is_flag=True, help="Keep printing new events as they are appended.")
@_json_option
def events(
    address: str, aggregate_id: UUID, after: ULID | None, watch: bool, as_json: bool
) -> None:
    """Print an aggregate's events, one per line: ID, TYPE and DATA, tab-separated.

    A control character in a type or in the data (a line break, a tab, an
    escape sequence) is shown as its escape (\\n, \\t, \\x1b), so that each
    event stays on its line; --json has the data as it is.

    An aggregate without events prints nothing. With --json each line is an
    object with id, parent, aggregate_type, aggregate_id, type, metadata and
    data (the payload as JSON; a payload that is not JSON is in data_base64).

    \b
    Examples:
      tailrunner events --id 7c9e6679-7425-40de-944b-e07fc1f90ae7
      tailrunner events --id 7c9e6679-7425-40de-944b-e07fc1f90ae7 --json --watch
      tailrunner events --id 7c9e6679-7425-40de-944b-e07fc1f90ae7 --after 01J9Z3K4Q2V8X7W6T5R4P3N2M1
    """
    _configure_logging("warning")
    render = _event_json if as_json else _event_text

    async def run(client: JournalClient) -> None:
        stream = client.events(aggregate_id, after=after, watch=watch)
        try:
            async for batch in stream:
                if batch.events:
                    click.echo("\n".join(render(event) for event in batch.events))
        finally:
            await stream.aclose()

    try:
        _with_client(address, run)
    except KeyboardInterrupt:
        # Ctrl-C ends a watch: the usual way out, not an error.
        sys.exit(130)


@click.command("aggregates")
@_journal_option
@click.option("--type", "aggregate_type", default=None, metavar="TYPE", help="Only this type.")
@_json_option
def aggregates(address: str, aggregate_type: str | None, as_json: bool) -> None:
    """List aggregates, one per line: TYPE, ID, HEAD and EVENT COUNT, tab-separated.

    \b
    Examples:
      tailrunner aggregates
      tailrunner aggregates --type order --json
    """
    _configure_logging("warning")

    async def run(client: JournalClient) -> None:
        async for info in client.aggregates(aggregate_type):
            click.echo(_aggregate_json(info) if as_json else _aggregate_text(info))

    _with_client(address, run)


#: The commands :mod:`tailrunner.cli.main` registers.
COMMANDS: list[click.Command] = [journal, append, events, aggregates]


def _with_client(address: str, run: Callable[[JournalClient], Awaitable[T]]) -> T:
    tls = client_tls()

    async def main() -> T:
        async with JournalClient.connect(address, tls=tls, token=journal_token()) as client:
            return await run(client)

    with _cli_errors(address):
        return anyio.run(main)


@contextmanager
def _cli_errors(address: str) -> Iterator[None]:
    """Turn tailrunner's errors into one line on stderr and a non-zero exit."""
    try:
        yield
    except InvalidArgument as exc:
        raise option_error(exc, _OPTION_FOR_FIELD) from exc
    except TailMismatch as exc:
        if exc.expected is None:  # --expect-new
            raise click.ClickException(
                f"--expect-new: the aggregate already has events; its tail is {exc.actual}"
            ) from exc
        actual = exc.actual or "none (the aggregate has no events)"
        raise click.ClickException(
            f"--expect-tail {exc.expected} is not the aggregate's tail, which is {actual}"
        ) from exc
    except AccessDenied as exc:
        raise access_error(exc, address, JOURNAL_TOKEN_ENV) from exc
    except JournalUnavailable as exc:
        raise click.ClickException(
            printable(f"cannot reach the journal at {address}: {exc}{tls_hint()}")
        ) from exc
    except (JournalError, StoreError) as exc:
        raise click.ClickException(printable(str(exc))) from exc


def _read_data(data: str | None) -> bytes:
    if data is None:
        return b""
    if data.startswith("@"):
        name = data[1:]
        if name == "-":
            return sys.stdin.buffer.read()
        try:
            return Path(name).read_bytes()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {name}: {exc.strerror or exc}", param_hint="'--data'"
            ) from exc
    try:
        json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(
            f"not JSON ({exc}); to send a file's bytes, use @FILE", param_hint="'--data'"
        ) from exc
    return data.encode()


def _event_text(event: Event) -> str:
    data = printable(event.data.decode(errors="backslashreplace"))
    return f"{event.id}\t{printable(event.type)}\t{data}"


def _event_json(event: Event) -> str:
    record: dict[str, Any] = {
        "id": str(event.id),
        "parent": None if event.parent is None else str(event.parent),
        "aggregate_type": event.aggregate_type,
        "aggregate_id": str(event.aggregate_id),
        "type": event.type,
        "metadata": dict(event.metadata),
        "data": None,
    }
    if event.data:
        try:
            record["data"] = json.loads(event.data)
        except ValueError:
            record["data_base64"] = base64.b64encode(event.data).decode("ascii")
    return json.dumps(record, separators=(",", ":"))


def _aggregate_text(info: AggregateInfo) -> str:
    return f"{printable(info.type)}\t{info.id}\t{info.head or '-'}\t{info.event_count}"


def _aggregate_json(info: AggregateInfo) -> str:
    return json.dumps(
        {
            "type": info.type,
            "id": str(info.id),
            "head": None if info.head is None else str(info.head),
            "event_count": info.event_count,
        },
        separators=(",", ":"),
    )


def _configure_logging(level: str) -> None:
    """Logs go to stderr (stdout is the commands' output): console on a terminal, JSON otherwise."""
    from tailrunner.logs import configure_logging

    configure_logging("auto", level)
