"""A running runner from the command line: ``status``, ``task …`` and ``runs``.

They talk to the runner's admin address (``--admin``, ``$TAILRUNNER_ADMIN``).
The admin token is read from an environment variable (``--token-env``,
``$TAILRUNNER_ADMIN_TOKEN`` by default), never from the command line, where
other users could read it in the process list. :data:`COMMANDS` is what
:mod:`tailrunner.cli.main` registers.

Text that comes from the runner (names, errors, tracebacks) is escaped
(:mod:`tailrunner.cli.terminal`) and never read as Rich markup.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text
from ulid import ULID

from tailrunner.admin.client import (
    DEFAULT_TOKEN_ENV,
    AdminClient,
    ClusterInfo,
    MemberInfo,
    SegmentInfo,
    TaskInfo,
)
from tailrunner.admin.server import DEFAULT_ADMIN_LISTEN
from tailrunner.cli.params import (
    ULIDParam,
    UUIDParam,
    client_tls,
    client_token,
    json_option,
    option_error,
    tls_hint,
    tls_options,
)
from tailrunner.cli.terminal import cell, last_line, printable
from tailrunner.errors import (
    AdminError,
    AdminUnavailable,
    ControlNotStored,
    InvalidArgument,
    NotAuthenticated,
    PermissionDenied,
    TaskNotControllable,
    TaskNotFound,
)
from tailrunner.states import TaskState, WaitReason
from tailrunner.tails.store import RunRecord

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: The service's field names as the options and arguments of these commands.
_OPTION_FOR_FIELD = {
    "aggregate_id": "AGGREGATE_ID",
    "activity": "ACTIVITY",
    "from_tail": "--from-tail",
}
_STATE_STYLES = {
    TaskState.RUNNING: "green",
    TaskState.PENDING: "cyan",
    TaskState.SLEEPING: "dim",
    TaskState.RETRY: "yellow",
    TaskState.WAITING: "dim",
    TaskState.SUSPENDED: "bold red",
    TaskState.STOPPED: "magenta",
    TaskState.COMPLETE: "blue",
}
_ERROR_WIDTH = 60
#: How ``WAITS FOR`` names each reason.
_REASON_TEXT = {
    WaitReason.BACKOFF: "backoff",
    WaitReason.RETRY_AFTER: "retry_after",
    WaitReason.CRON_TICK: "cron tick",
    WaitReason.SIGNAL: "signal",
    WaitReason.REOPEN: "reopen",
    WaitReason.CAPACITY: "capacity",
    WaitReason.SUSPENDED: "suspended",
    WaitReason.STOPPED: "stopped",
}
#: Runs ``task show`` looks through for the last failed one (a store keeps 100 by default).
_FAILED_RUN_SEARCH = 100
#: The column of ``task show``'s values, where a traceback's lines start too.
_SHOW_INDENT = 12
#: How much of an incarnation id (a UUID) the tables show.
_SHORT_ID = 8


_admin_address = click.option(
    "--admin",
    "address",
    metavar="HOST:PORT",
    default=DEFAULT_ADMIN_LISTEN,
    show_default=True,
    envvar="TAILRUNNER_ADMIN",
    help="The runner's admin address (also $TAILRUNNER_ADMIN).",
)
_admin_tls = tls_options("the runner's admin service")


def _admin_option(f: F) -> F:
    """``--admin HOST:PORT`` and the TLS options toward it."""
    return _admin_address(_admin_tls(f))


_token_option = click.option(
    "--token-env",
    metavar="VAR",
    default=DEFAULT_TOKEN_ENV,
    show_default=True,
    help="The environment variable that holds the admin token, if the runner wants one.",
)
_json_option = json_option()
_task_arguments = [
    click.argument("activity"),
    click.argument("aggregate_id", metavar="AGGREGATE_ID", type=UUIDParam()),
]


def _with_task_arguments(func: Callable[..., None]) -> Callable[..., None]:
    for decorate in reversed(_task_arguments):
        func = decorate(func)
    return func


@click.command("status")
@_admin_option
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in TaskState], case_sensitive=False),
    help="Only tasks in this state (repeat for several).",
)
@click.option("--activity", default=None, help="Only this activity's tasks.")
@click.option(
    "--type",
    "aggregate_type",
    default=None,
    metavar="TYPE",
    help="Only tasks that follow aggregates of this type.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Show at most this many tasks.",
)
@click.option(
    "--segments",
    "all_segments",
    is_flag=True,
    help="In a cluster, also list every segment: owner, epoch, since, expiry.",
)
@_json_option
@_token_option
def status(
    *,
    address: str,
    states: tuple[str, ...],
    activity: str | None,
    aggregate_type: str | None,
    limit: int,
    all_segments: bool,
    as_json: bool,
    token_env: str,
) -> None:
    """Show the runner's tasks: state, why each waits and when it runs next, lag, last run.

    A runner that shares the work (scaleout.enabled) also shows the
    cluster: each runner (its incarnation id's start, what it says about
    itself, whether it is live), the segments it holds and since when;
    --segments lists every segment's lease. --json prints one line per task,
    then one {"cluster": …} line with every runner and segment.

    WAITS FOR says what a task that is not running waits for: backoff (after
    an error), retry_after (the time it asked for), cron tick, signal (lazy;
    with the backstop's re-check), reopen (eager), capacity, suspended or
    stopped, and a control (stop …) that waits for its run to end. NEXT RUN
    says when it runs next, where a time is known. Running and pending tasks
    come first, then the most recently updated.

    \b
    Examples:
      tailrunner status
      tailrunner status --state RETRY --state SUSPENDED
      tailrunner status --activity counter --json
      TAILRUNNER_ADMIN_TOKEN=… tailrunner status --admin 10.0.0.5:7741
    """
    wanted = [TaskState(s.upper()) for s in states]

    def run(client: AdminClient) -> tuple[list[TaskInfo], bool, ClusterInfo | str | None]:
        shown: list[TaskInfo] = []
        more = False
        tasks = client.tasks(
            activity=activity,
            aggregate_type=aggregate_type,
            states=wanted,
            page_size=min(limit, 1000),
        )
        for task in tasks:
            if len(shown) == limit:
                more = True
                break
            shown.append(task)
        cluster: ClusterInfo | str | None
        try:
            cluster = client.cluster()
        except AdminUnavailable as exc:
            # The tasks were read: show them, and why the cluster is not.
            cluster = str(exc)
        return shown, more, cluster

    shown, more, cluster = _with_client(address, token_env, run)
    if as_json:
        for task in shown:
            click.echo(_json_line(_task_json(task)))
        if isinstance(cluster, ClusterInfo):
            click.echo(_json_line({"cluster": _cluster_json(cluster)}))
    else:
        _print_status(shown)
        if isinstance(cluster, ClusterInfo):
            _print_cluster(cluster, all_segments)
    if isinstance(cluster, str):
        click.echo(printable(f"cluster not shown: {cluster}"), err=True)
    elif cluster is None and all_segments:
        click.echo("this runner does not share work (scaleout.enabled is false)", err=True)
    if more:
        click.echo(f"(showing the first {limit} tasks: raise --limit to see more)", err=True)


@click.group("task")
def task() -> None:
    """Inspect and control one task: one activity following one aggregate."""


@task.command("show")
@_with_task_arguments
@_admin_option
@_json_option
@_token_option
def show(activity: str, aggregate_id: UUID, address: str, as_json: bool, token_env: str) -> None:
    """Show one task: its journal head and lag, why it waits, and its last failure.

    The last failed run's whole traceback is shown (the newest of the runs
    the runner keeps).

    \b
    Example:
      tailrunner task show counter 7c9e6679-7425-40de-944b-e07fc1f90ae7
    """

    def run(client: AdminClient) -> tuple[TaskInfo, RunRecord | None]:
        info = client.get_task(activity, aggregate_id)
        runs = client.list_runs(activity, aggregate_id, limit=_FAILED_RUN_SEARCH)
        return info, next((r for r in runs if r.error), None)

    info, failed = _with_client(address, token_env, run)
    _print_task(info, as_json, failed=failed, with_failure=True)


def _control_command(
    name: str, summary: str, call: Callable[[AdminClient, str, UUID], TaskInfo]
) -> click.Command:
    def command(
        activity: str, aggregate_id: UUID, address: str, as_json: bool, token_env: str
    ) -> None:
        info = _with_client(address, token_env, lambda c: call(c, activity, aggregate_id))
        _print_task(info, as_json)

    command.__doc__ = summary
    decorated = _token_option(_json_option(_admin_option(_with_task_arguments(command))))
    return task.command(name)(decorated)


_control_command(
    "suspend",
    "Set a task aside until it is resumed; a running task is cancelled, keeping its tail.",
    lambda c, a, i: c.suspend(a, i),
)
_control_command(
    "resume",
    "Run a stopped or suspended task again with a fresh attempt count (clears a poison"
    " suspension).",
    lambda c, a, i: c.resume(a, i),
)
_control_command(
    "stop",
    "Stop a task (cancelling its run); it stays stopped across restarts until resumed.",
    lambda c, a, i: c.stop(a, i),
)


@task.command("restart")
@_with_task_arguments
@click.option(
    "--from-tail",
    type=ULIDParam(),
    default=None,
    help="Replay the events after this event of the aggregate.",
)
@click.option("--from-start", is_flag=True, help="Replay every event, from the first.")
@_admin_option
@_json_option
@_token_option
def restart(
    *,
    activity: str,
    aggregate_id: UUID,
    from_tail: ULID | None,
    from_start: bool,
    address: str,
    as_json: bool,
    token_env: str,
) -> None:
    """Run a task again from a tail, or from the start, whatever its state (complete too).

    \b
    Examples:
      tailrunner task restart counter 7c9e6679-7425-40de-944b-e07fc1f90ae7 --from-start
      tailrunner task restart counter 7c9e6679-7425-40de-944b-e07fc1f90ae7 \\
          --from-tail 01J9Z3K4Q2V8X7W6T5R4P3N2M1
    """
    if (from_tail is None) == (not from_start):
        raise click.UsageError("give exactly one of --from-tail ULID and --from-start")
    info = _with_client(
        address, token_env, lambda c: c.restart(activity, aggregate_id, tail=from_tail)
    )
    _print_task(info, as_json)


@click.command("runs")
@_with_task_arguments
@_admin_option
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=1000),
    default=20,
    show_default=True,
    help="Show at most this many runs.",
)
@_json_option
@_token_option
def runs(
    *, activity: str, aggregate_id: UUID, address: str, limit: int, as_json: bool, token_env: str
) -> None:
    """Show a task's recorded runs, newest first: try, start, duration, outcome, tails, error.

    ERROR is the last line of a failed run's traceback; ``--json`` and
    ``tailrunner task show`` give the whole traceback.

    \b
    Example:
      tailrunner runs counter 7c9e6679-7425-40de-944b-e07fc1f90ae7 --limit 5
    """
    records = _with_client(
        address, token_env, lambda c: c.list_runs(activity, aggregate_id, limit=limit)
    )
    if as_json:
        for record in records:
            click.echo(_json_line(_run_json(record)))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("TRY", "STARTED", "TOOK", "OUTCOME", "EVENTS", "TAIL BEFORE", "TAIL AFTER"):
        table.add_column(column, no_wrap=True)
    table.add_column("ERROR", overflow="fold")
    now = datetime.now(UTC)
    for record in records:
        took = (record.finished_at - record.started_at).total_seconds()
        table.add_row(
            str(record.attempt),
            f"{_ago(record.started_at, now)} ago",
            f"{took:.3f}s",
            cell(record.outcome),
            str(record.events_seen),
            _tail_text(record.tail_before),
            _tail_text(record.tail_after),
            cell(_short(record.error)),
        )
    _console().print(table)


#: The commands :mod:`tailrunner.cli.main` registers.
COMMANDS: list[click.Command] = [status, task, runs]


# -- plumbing -------------------------------------------------------------------


def _with_client(address: str, token_env: str, run: Callable[[AdminClient], T]) -> T:
    token = client_token(token_env)
    with (
        _cli_errors(address, token_env, token is not None),
        AdminClient.connect(address, token=token, tls=client_tls()) as client,
    ):
        return run(client)


@contextmanager
def _cli_errors(address: str, token_env: str, has_token: bool) -> Iterator[None]:
    """Turn the admin errors into one line on stderr and a non-zero exit."""
    try:
        yield
    except InvalidArgument as exc:
        raise option_error(exc, _OPTION_FOR_FIELD) from exc
    except PermissionDenied as exc:
        raise click.ClickException(
            f"{address} refused the call: the token in ${token_env} may only read"
        ) from exc
    except NotAuthenticated as exc:
        hint = (
            f"the token in ${token_env} is not the runner's"
            if has_token
            else f"the runner wants a token: set ${token_env} (or name another variable"
            " with --token-env)"
        )
        raise click.ClickException(f"{address} refused the call: {hint}") from exc
    except AdminUnavailable as exc:
        raise click.ClickException(
            printable(f"{exc} (is {address} the runner's admin address? see --admin){tls_hint()}")
        ) from exc
    except ControlNotStored as exc:
        raise click.ClickException(
            printable(
                f"{exc} (the runner shows the control already; check again with"
                " tailrunner task show)"
            )
        ) from exc
    except (TaskNotFound, TaskNotControllable, AdminError) as exc:
        raise click.ClickException(printable(str(exc))) from exc


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped or captured: do not wrap ids at 80 columns.
        console = Console(highlight=False, width=max(console.width, 200))
    return console


def _print_status(tasks: list[TaskInfo]) -> None:
    console = _console()
    if not tasks:
        console.print("no tasks")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("ACTIVITY", "AGGREGATE", "STATE", "WAITS FOR", "NEXT RUN", "TAIL"):
        table.add_column(column, no_wrap=True)
    table.add_column("LAG", justify="right", no_wrap=True)
    table.add_column("TRIES", justify="right", no_wrap=True)
    for column in ("LAST RUN", "UPDATED"):
        table.add_column(column, no_wrap=True)
    table.add_column("ERROR", overflow="ellipsis", max_width=_ERROR_WIDTH, no_wrap=True)
    now = datetime.now(UTC)
    for info in tasks:
        table.add_row(
            cell(info.activity),
            cell(str(info.aggregate)),
            _state_text(info),
            cell(_waits_for(info, now)),
            _next_run_text(info, now),
            _tail_text(info.tail),
            "?" if info.lag is None else str(info.lag),
            str(info.attempts),
            cell(_last_run_text(info, now)),
            "-" if info.updated_at is None else f"{_ago(info.updated_at, now)} ago",
            cell(_short(info.last_error)),
        )
    console.print(table)


def _print_cluster(cluster: ClusterInfo, all_segments: bool) -> None:
    """Who holds which segments since when; ``all_segments``: every segment's lease too."""
    console = _console()
    now = datetime.now(UTC)
    lease = cluster.lease.total_seconds()
    console.print()
    console.print(
        Text(
            f"cluster: {cluster.segment_count} segments, lease {lease:g}s, this runner"
            f" {_short_id(cluster.incarnation)}"
        )
    )
    table = Table(box=None, pad_edge=False)
    for column in ("RUNNER", "ABOUT", "LIVE", "SEGMENTS"):
        table.add_column(column, no_wrap=True)
    table.add_column("HELD", justify="right", no_wrap=True)
    table.add_column("SINCE", no_wrap=True)
    for owner, member, held in _runners_and_holdings(cluster):
        label = _short_id(owner) + (" (this)" if owner == cluster.incarnation else "")
        since = min((s.since for s in held if s.since is not None), default=None)
        table.add_row(
            cell(label),
            cell("?" if member is None else member.about),
            "?" if member is None else ("yes" if member.live else "gone"),
            _ranges([s.segment for s in held]) or "-",
            str(len(held)),
            "-" if since is None else f"{_ago(since, now)} ago",
        )
    console.print(table)
    free = [s.segment for s in cluster.segments if not s.live]
    if free:
        console.print(Text(f"free: {_ranges(free)} (any runner may claim them)"))
    if not all_segments:
        return
    console.print()
    segments = Table(box=None, pad_edge=False)
    for column in ("SEGMENT", "OWNER", "EPOCH", "SINCE", "EXPIRES"):
        segments.add_column(column, no_wrap=True, justify="right" if column == "EPOCH" else "left")
    for row in cluster.segments:
        segments.add_row(
            str(row.segment),
            cell("-" if row.owner is None else _short_id(row.owner)),
            str(row.epoch),
            "-" if row.since is None else f"{_ago(row.since, now)} ago",
            _expiry_text(row, now),
        )
    console.print(segments)


def _runners_and_holdings(
    cluster: ClusterInfo,
) -> list[tuple[str, MemberInfo | None, list[SegmentInfo]]]:
    """Each runner with the live leases it holds: the announced ones, then any other holder."""
    held: dict[str, list[SegmentInfo]] = {}
    for row in cluster.segments:
        if row.live and row.owner is not None:
            held.setdefault(row.owner, []).append(row)
    rows: list[tuple[str, MemberInfo | None, list[SegmentInfo]]] = [
        (m.incarnation, m, held.pop(m.incarnation, [])) for m in cluster.members
    ]
    # A holder that has not announced itself (yet, or its row was pruned).
    rows += [(owner, None, segments) for owner, segments in sorted(held.items())]
    return rows


def _ranges(numbers: list[int]) -> str:
    """``0-2,5,7-9``: sorted numbers as ranges."""
    parts: list[str] = []
    ordered = sorted(set(numbers))
    start = 0
    for index, number in enumerate(ordered):
        if index + 1 < len(ordered) and ordered[index + 1] == number + 1:
            continue
        first = ordered[start]
        parts.append(str(first) if first == number else f"{first}-{number}")
        start = index + 1
    return ",".join(parts)


def _short_id(incarnation: str) -> str:
    return incarnation[:_SHORT_ID]


def _expiry_text(row: SegmentInfo, now: datetime) -> str:
    if row.expires_at is None:
        return "-"
    if row.expires_at > now:
        return _relative(row.expires_at, now)
    return f"expired {_ago(row.expires_at, now)} ago"


def _print_task(
    info: TaskInfo, as_json: bool, *, failed: RunRecord | None = None, with_failure: bool = False
) -> None:
    """Print one task; ``with_failure``: with its last failed run (``task show``)."""
    if as_json:
        record = _task_json(info)
        if with_failure:
            record["last_failed_run"] = None if failed is None else _run_json(failed)
        click.echo(_json_line(record))
        return
    now = datetime.now(UTC)
    lag = "unknown (the journal did not answer in time)" if info.lag is None else str(info.lag)
    rows = [
        ("activity", info.activity),
        ("aggregate", str(info.aggregate)),
        ("state", _state_text(info).plain),
        ("waits for", _waits_for(info, now) or "-"),
        ("next run", _when_text(info.next_run_at, now)),
    ]
    if info.recheck_at is not None:
        rows.append(("backstop", _when_text(info.recheck_at, now)))
    if info.pending_control is not None:
        rows.append(("pending", f"{info.pending_control} (waits for the current run to end)"))
    rows += [
        ("tail", _tail_text(info.tail)),
        ("head", _tail_text(info.head) if info.lag is not None else "?"),
        ("lag", lag),
        ("attempts", str(info.attempts)),
        ("last error", info.last_error or "-"),
        ("last run", _last_run_text(info, now)),
        ("updated", "-" if info.updated_at is None else info.updated_at.isoformat()),
    ]
    if with_failure:
        rows.append(("failed run", "-" if failed is None else _failed_run_text(failed, now)))
    lines = [f"{name:<{_SHOW_INDENT - 1}} {printable(value)}" for name, value in rows]
    if failed is not None and failed.error:
        indent = " " * _SHOW_INDENT
        lines += [indent + line for line in printable(failed.error, lines=True).splitlines()]
    click.echo("\n".join(lines))


def _waits_for(info: TaskInfo, now: datetime) -> str:
    """Why the task waits, and any control that waits for its run: ``WAITS FOR``."""
    parts: list[str] = []
    if info.wait_reason is not None:
        text = _REASON_TEXT.get(info.wait_reason, info.wait_reason.value)
        if info.recheck_at is not None:
            text += f" (backstop {_relative(info.recheck_at, now)})"
        parts.append(text)
    if info.pending_control is not None:
        parts.append(f"{info.pending_control} pending")
    return "; ".join(parts)


def _next_run_text(info: TaskInfo, now: datetime) -> str:
    return "-" if info.next_run_at is None else _relative(info.next_run_at, now)


def _when_text(when: datetime | None, now: datetime) -> str:
    return "-" if when is None else f"{_relative(when, now)} ({when.isoformat()})"


def _failed_run_text(run: RunRecord, now: datetime) -> str:
    return (
        f"{run.outcome} {_ago(run.finished_at, now)} ago (try {run.attempt},"
        f" from tail {_tail_text(run.tail_before)}):"
    )


def _relative(when: datetime, now: datetime) -> str:
    """``in 12s`` for a time ahead; ``now`` for one that is due."""
    if when <= now:
        return "now"
    return f"in {_span((when - now).total_seconds())}"


def _state_text(info: TaskInfo) -> Text:
    if info.state is None:
        return Text("?")
    label = info.state.value if info.live else f"{info.state.value} (not run here)"
    return Text(label, style=_STATE_STYLES.get(info.state, ""))


def _last_run_text(info: TaskInfo, now: datetime) -> str:
    if info.last_run_finished is None:
        return "-"
    return f"{info.last_run_outcome or '?'} {_ago(info.last_run_finished, now)} ago"


def _tail_text(tail: ULID | None) -> str:
    return "epoch" if tail is None else str(tail)


def _short(text: str | None) -> str:
    """The last line of an error (a traceback's exception), cut to the ERROR column."""
    if not text:
        return ""
    line = last_line(text)
    return line if len(line) <= _ERROR_WIDTH else line[: _ERROR_WIDTH - 1] + "…"


def _ago(when: datetime, now: datetime) -> str:
    return _span((now - when).total_seconds())


def _span(seconds: float) -> str:
    whole = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _text(value: ULID | None) -> str | None:
    return None if value is None else str(value)


def _task_json(info: TaskInfo) -> dict[str, Any]:
    return {
        "activity": info.activity,
        "aggregate_type": info.aggregate.type,
        "aggregate_id": str(info.aggregate.id),
        "state": None if info.state is None else info.state.value,
        "tail": _text(info.tail),
        "head": _text(info.head),
        "lag": info.lag,
        "attempts": info.attempts,
        "last_error": info.last_error,
        "last_run_started": _iso(info.last_run_started),
        "last_run_finished": _iso(info.last_run_finished),
        "last_run_outcome": info.last_run_outcome,
        "updated": _iso(info.updated_at),
        "live": info.live,
        "wait_reason": None if info.wait_reason is None else info.wait_reason.value,
        "next_run": _iso(info.next_run_at),
        "recheck": _iso(info.recheck_at),
        "pending_control": info.pending_control,
    }


def _run_json(record: RunRecord) -> dict[str, Any]:
    return {
        "activity": record.activity,
        "aggregate_type": record.aggregate.type,
        "aggregate_id": str(record.aggregate.id),
        "attempt": record.attempt,
        "started": record.started_at.isoformat(),
        "finished": record.finished_at.isoformat(),
        "tail_before": _text(record.tail_before),
        "tail_after": _text(record.tail_after),
        "events_seen": record.events_seen,
        "outcome": record.outcome,
        "error": record.error,
    }


def _cluster_json(cluster: ClusterInfo) -> dict[str, Any]:
    return {
        "incarnation": cluster.incarnation,
        "segment_count": cluster.segment_count,
        "lease_seconds": cluster.lease.total_seconds(),
        "runners": [
            {
                "incarnation": owner,
                "about": None if member is None else member.about,
                "live": None if member is None else member.live,
                "started": None if member is None else member.started_at.isoformat(),
                "expires": None if member is None else member.expires_at.isoformat(),
                "segments": [s.segment for s in held],
                "since": _iso(min((s.since for s in held if s.since is not None), default=None)),
            }
            for owner, member, held in _runners_and_holdings(cluster)
        ],
        "segments": [
            {
                "segment": row.segment,
                "owner": row.owner,
                "epoch": row.epoch,
                "since": _iso(row.since),
                "expires": _iso(row.expires_at),
                "live": row.live,
            }
            for row in cluster.segments
        ],
    }


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))
