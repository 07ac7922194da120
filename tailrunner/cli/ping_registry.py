"""``tailrunner ping-registry``: the admin's side of the ping-registry workflow.

``begin`` starts a workflow and prints its id; ``show`` prints its state,
pings and summary; ``list`` the workflows a registry's index lists;
``commit`` completes a summarized workflow; ``delete`` removes a completed
one from the index. The servers and the registry daemon are runner
processes with the ``ping-*`` activities enabled (see ``tailrunner plugins``).

:data:`COMMANDS` is what :mod:`tailrunner.cli.main` registers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import anyio
import click

from tailrunner.cli.params import (
    JOURNAL_TOKEN_ENV,
    UUIDParam,
    access_error,
    client_tls,
    journal_option,
    journal_token,
    json_option,
    option_error,
    tls_hint,
)
from tailrunner.cli.terminal import printable
from tailrunner.config import parse_duration
from tailrunner.errors import (
    AccessDenied,
    CommandRefused,
    ConfigError,
    InvalidArgument,
    JournalError,
    JournalUnavailable,
    NotFound,
    WorkflowError,
)
from tailrunner.journal.client import JournalClient
from tailrunner.operations.pingregistry import MAX_DEADLINE
from tailrunner.workflows.pingregistry.index import IndexEntry
from tailrunner.workflows.pingregistry.registry import PingRegistry
from tailrunner.workflows.pingregistry.state import State

T = TypeVar("T")

_journal_option = journal_option()
_json_option = json_option("Print JSON, for scripts.")
_workflow_argument = click.argument("workflow", metavar="ID", type=UUIDParam())


class _DurationParam(click.ParamType[timedelta]):
    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            seconds = parse_duration(str(value), key="--deadline")
        except ConfigError:
            seconds = None
        if seconds is None:
            self.fail(f"{value!r}: expected a duration such as 30s, 5m or 1h30m", param, ctx)
        duration = timedelta(seconds=seconds)
        if duration > MAX_DEADLINE:  # as BeginPingRegistry refuses it
            self.fail(f"{value!r}: too long (at most {MAX_DEADLINE.days} days)", param, ctx)
        return duration


@click.group("ping-registry")
def ping_registry() -> None:
    """Gather pings from the servers that watch a registry (nog's ping-registry workflow).

    An admin begins a workflow for a registry. Every runner with the
    ping-pinger activity that watches the registry posts its pings; the
    runner with ping-summarizer (the registry daemon) posts its own, waits
    for the deadline and posts the summary; ping-index-keeper keeps each
    registry's index. The admin then commits the workflow, and may delete
    it from the index.

    \b
    Example:
      ID=$(tailrunner ping-registry begin --registry main --deadline 30s)
      tailrunner ping-registry show $ID
      tailrunner ping-registry commit $ID
      tailrunner ping-registry list --registry main
      tailrunner ping-registry delete $ID
    """


@ping_registry.command("begin")
@_journal_option
@click.option("--registry", required=True, metavar="NAME", help="The registry to ping.")
@click.option(
    "--deadline",
    type=_DurationParam(),
    default="30s",
    show_default=True,
    help="How long the servers have to answer; then the registry daemon summarizes.",
)
def begin(address: str, registry: str, deadline: timedelta) -> None:
    """Start a workflow for a registry and print its id."""
    at = datetime.now(UTC) + deadline

    async def run(registries: PingRegistry) -> UUID:
        return await registries.begin(registry, at)

    click.echo(str(_with_registry(address, run)))


@ping_registry.command("show")
@_journal_option
@_json_option
@_workflow_argument
def show(address: str, as_json: bool, workflow: UUID) -> None:
    """Print a workflow: its state, registry, deadline, each ping and the summary."""

    async def run(registries: PingRegistry) -> State:
        return await registries.show(workflow)

    state = _with_registry(address, run)
    click.echo(json.dumps(_state_json(state), indent=2) if as_json else _state_text(state))


@ping_registry.command("list")
@_journal_option
@_json_option
@click.option("--registry", required=True, metavar="NAME", help="The registry whose index to list.")
def list_(address: str, as_json: bool, registry: str) -> None:
    """List a registry's workflows from its index: ID, STATE and DEADLINE, tab-separated.

    Deleted workflows are not listed; completed ones are until deleted.
    """

    async def run(registries: PingRegistry) -> tuple[IndexEntry, ...]:
        return await registries.list(registry)

    for entry in _with_registry(address, run):
        if as_json:
            click.echo(json.dumps(_entry_json(entry), separators=(",", ":")))
        else:
            click.echo(f"{entry.workflow}\t{entry.code.value}\t{entry.deadline.isoformat()}")


@ping_registry.command("commit")
@_journal_option
@_workflow_argument
def commit(address: str, workflow: UUID) -> None:
    """Complete a summarized workflow (on the workflow, then the index, then committed).

    Running it again finishes a commit that was interrupted; a committed
    workflow is left as it is.
    """

    async def run(registries: PingRegistry) -> State:
        return await registries.commit(workflow)

    state = _with_registry(address, run)
    click.echo(f"{workflow}\t{state.code.value}")


@ping_registry.command("delete")
@_journal_option
@_workflow_argument
def delete(address: str, workflow: UUID) -> None:
    """Remove a completed workflow from its registry's index (committed or not)."""

    async def run(registries: PingRegistry) -> State:
        return await registries.delete(workflow)

    _with_registry(address, run)
    click.echo(f"{workflow}\tdeleted")


#: The commands :mod:`tailrunner.cli.main` registers.
COMMANDS: list[click.Command] = [ping_registry]


def _with_registry(address: str, run: Callable[[PingRegistry], Awaitable[T]]) -> T:
    tls = client_tls()

    async def main() -> T:
        async with JournalClient.connect(address, tls=tls, token=journal_token()) as client:
            return await run(PingRegistry(client))

    with _cli_errors(address):
        return anyio.run(main)


@contextmanager
def _cli_errors(address: str) -> Iterator[None]:
    """One line on stderr and a non-zero exit for each refusal."""
    try:
        yield
    except InvalidArgument as exc:
        raise option_error(exc, {"registry": "--registry", "deadline": "--deadline"}) from exc
    except NotFound as exc:
        raise click.ClickException(printable(f"no such workflow ({exc})")) from exc
    except CommandRefused as exc:
        raise click.ClickException(printable(str(exc))) from exc
    except AccessDenied as exc:
        raise access_error(exc, address, JOURNAL_TOKEN_ENV) from exc
    except JournalUnavailable as exc:
        raise click.ClickException(
            printable(f"cannot reach the journal at {address}: {exc}{tls_hint()}")
        ) from exc
    except (JournalError, WorkflowError) as exc:
        raise click.ClickException(printable(f"{type(exc).__name__}: {exc}")) from exc


def _state_text(state: State) -> str:
    deadline = "-" if state.deadline is None else state.deadline.isoformat()
    lines = [
        f"workflow  {state.id}",
        f"state     {state.code.value}",
        f"registry  {printable(state.registry)}",
        f"deadline  {deadline}",
        f"pings     {len(state.pings)}",
    ]
    for ping in state.pings:
        who, what = printable(ping.pinger), printable(ping.message)
        lines.append(f"  {ping.event_id}  code {ping.code}  {who}: {what}")
    if state.summary is None:
        lines.append("summary   -")
    else:
        summary = state.summary
        lines.append(
            f"summary   code {summary.code}: {printable(summary.message)}"
            f" ({len(summary.pings)} pings, event {summary.event_id})"
        )
    return "\n".join(lines)


def _state_json(state: State) -> dict[str, Any]:
    summary = state.summary
    return {
        "workflow": str(state.id),
        "state": state.code.value,
        "registry": state.registry,
        "deadline": None if state.deadline is None else state.deadline.isoformat(),
        "pings": [
            {
                "code": p.code,
                "message": p.message,
                "pinger": p.pinger,
                "event_id": str(p.event_id),
            }
            for p in state.pings
        ],
        "summary": None
        if summary is None
        else {
            "code": summary.code,
            "message": summary.message,
            "pings": len(summary.pings),
            "event_id": str(summary.event_id),
        },
    }


def _entry_json(entry: IndexEntry) -> dict[str, Any]:
    return {
        "workflow": str(entry.workflow),
        "state": entry.code.value,
        "deadline": entry.deadline.isoformat(),
    }
