"""``RunnerService``: the grpc.aio servicer of ``tailrunner.v1.Runner``.

It reads tasks from two places and says which wins: the live engine
(:meth:`~tailrunner.engines.base.Engine.find`) knows a task's state,
tail, attempts and error right now; the tail store knows when each task was
last updated, its recorded runs, and tasks this runner does not run. A task
the engine has is shown with the engine's values and the store's update
time and newest run; a task only the store has is shown as stored.

Listing pages through :meth:`~tailrunner.tails.store.TailStore.query`, the
store's newest-first index, so a page costs what the page holds (plus what
filters the store cannot apply skip). ``PENDING`` and ``RUNNING`` tasks come
first, from the engine: the store never holds ``RUNNING``, and it holds the
state a task had before it was woken.

Why a task waits and when it runs next comes from
:meth:`~tailrunner.engines.base.Engine.waiting` for a task the
engine has, and from its stored state and ``next_run_at`` for a task only
the store has.

Controls: a control the engine could not store
(:class:`~tailrunner.errors.StoreError`) is ``UNAVAILABLE`` with the
``ErrorInfo`` reason :data:`~tailrunner.rpc_errors.CONTROL_NOT_STORED`,
since the engine has applied it in memory and keeps retrying the save; a
control that waits for a run to end past the control timeout (an activity
that does not honour cancellation) is replied to with the task as it is and
the control in ``pending_control``; the engine applies it when the run ends.

The cluster view (``GetCluster``) is read from the segment-lease tables at
the call, through the runner's :class:`~tailrunner.scaleout.membership.Membership`;
a runner without one (``scaleout.enabled`` false) answers with
``scaleout_enabled`` false rather than an error: one runner running every
task is the normal case, not a failed precondition.

Requests are validated here (``INVALID_ARGUMENT`` naming the field); a
failed call ends with :func:`tailrunner.rpc_errors.abort`, which maps
tailrunner's errors to gRPC statuses for every service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

import anyio
import grpc
import structlog
from ulid import ULID

from tailrunner.admin.lag import Lag, count_after
from tailrunner.engines.base import Engine
from tailrunner.engines.task import Task, Waiting
from tailrunner.errors import (
    AccessDenied,
    ControlNotStored,
    InvalidArgument,
    JournalError,
    StoreError,
    TailrunnerError,
    TaskNotControllable,
    TaskNotFound,
)
from tailrunner.ids import parse_ulid, parse_uuid
from tailrunner.instants import from_micros, micros
from tailrunner.journal.api import JournalApi
from tailrunner.journal.lookup import is_event_of
from tailrunner.model import AggregateRef
from tailrunner.proto.v1 import runner_pb2, runner_pb2_grpc
from tailrunner.rpc_errors import abort
from tailrunner.states import TaskState, WaitReason
from tailrunner.tails.store import QueryCursor, RunRecord, TailRecord, TailStore, query_cursor

if TYPE_CHECKING:
    from tailrunner.scaleout.leases import RunnerRow, SegmentRow
    from tailrunner.scaleout.membership import Membership

log = structlog.get_logger(__name__)

#: ``ListTasks`` page size when the request says 0, and its cap.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: ``ListRuns`` page size when the request says 0, and its cap.
DEFAULT_RUNS_PAGE_SIZE = 20
#: Seconds a listing waits for the journal to say how far behind its tasks are.
DEFAULT_LAG_TIMEOUT = 5.0
#: Seconds a control waits for a running task's cancellation to land.
DEFAULT_CONTROL_TIMEOUT = 5.0
#: States only the engine knows: listed first, from the engine.
LIVE_STATES = frozenset({TaskState.PENDING, TaskState.RUNNING})
#: Store records one ``ListTasks`` call may skip over before it returns a short page.
_SCAN_BUDGET_PAGES = 10
_MIN_SCAN_BUDGET = 1000
#: Store and journal calls at once while a page is described.
_CONCURRENCY = 8
_PAGE_TOKEN_VERSION = 1
#: Why a task that only the store knows waits, by its stored state (no
#: engine here to ask: ``SLEEPING`` and ``PENDING`` depend on the engine).
_STORED_REASONS = {
    TaskState.RETRY: WaitReason.BACKOFF,
    TaskState.WAITING: WaitReason.RETRY_AFTER,
    TaskState.SUSPENDED: WaitReason.SUSPENDED,
    TaskState.STOPPED: WaitReason.STOPPED,
}


class _TaskRequest(Protocol):
    @property
    def activity(self) -> str: ...
    @property
    def aggregate_id(self) -> str: ...


@dataclass(slots=True)
class _Row:
    """One task of a reply: what the engine and the store know of it."""

    activity: str
    aggregate: AggregateRef
    live: Task | None
    record: TailRecord | None = None
    #: ``record`` was read from the store (``None`` then means: never stored).
    loaded: bool = False

    @classmethod
    def of_task(cls, task: Task) -> _Row:
        return cls(activity=task.activity.name, aggregate=task.aggregate, live=task)

    @property
    def state(self) -> TaskState | None:
        if self.live is not None:
            return self.live.state
        if self.record is None:
            return None
        return _stored_state(self.record)

    @property
    def tail(self) -> ULID | None:
        if self.live is not None:
            return self.live.tail
        return None if self.record is None else self.record.tail


@dataclass(frozen=True, slots=True)
class _Cursor:
    """Where a listing goes on: in the engine's part, then in the store's."""

    #: ``(activity, aggregate id bytes)`` of the last live task listed.
    live_after: tuple[str, bytes] | None = None
    in_store: bool = False
    #: The store's cursor past the last record scanned.
    store_after: QueryCursor | None = None


@dataclass(frozen=True, slots=True)
class _TaskQuery:
    activity: str | None
    aggregate_type: str | None
    states: frozenset[TaskState]
    updated_after: datetime | None
    updated_before: datetime | None
    page_size: int
    cursor: _Cursor = field(default_factory=_Cursor)

    def fingerprint(self) -> str:
        """What a page token remembers of the filter, so that it is used with that filter only."""
        key = [
            self.activity,
            self.aggregate_type,
            sorted(s.value for s in self.states),
            None if self.updated_after is None else micros(self.updated_after),
            None if self.updated_before is None else micros(self.updated_before),
        ]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


class RunnerService(runner_pb2_grpc.RunnerServicer):
    """Serves one runner's engine and tail store over gRPC.

    :param engine: the runner's engine (``runner.engine``): tasks are read
        from and controlled through it.
    :param tails: the tail store the engine writes to.
    :param journal: where heads and lag are read.
    :param lag_timeout: seconds a reply waits for the lag; tasks whose lag is
        not known by then are returned without it.
    :param control_timeout: seconds a control waits for a running task's
        cancellation to land before it returns the task as it is.
    :param membership: the runner's part in a cluster (``GetCluster``);
        ``None`` when it does not share work.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        tails: TailStore,
        journal: JournalApi,
        lag_timeout: float = DEFAULT_LAG_TIMEOUT,
        control_timeout: float = DEFAULT_CONTROL_TIMEOUT,
        membership: Membership | None = None,
    ) -> None:
        self._engine = engine
        self._tails = tails
        self._journal = journal
        self._lag_timeout = lag_timeout
        self._control_timeout = control_timeout
        self._membership = membership

    # -- reads ---------------------------------------------------------------

    async def ListTasks(
        self, request: runner_pb2.ListTasksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> runner_pb2.ListTasksResponse:
        try:
            query = _parse_list(request)
            rows, token = await self._list(query)
            tasks = await self._describe(rows)
        except TailrunnerError as exc:
            await abort(context, exc, rpc="ListTasks")
        return runner_pb2.ListTasksResponse(tasks=tasks, next_page_token=token)

    async def GetTask(
        self, request: runner_pb2.GetTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> runner_pb2.Task:
        try:
            activity, aggregate_id = _task_key(request)
            live = self._engine.find(activity, aggregate_id)
            record = await self._tails.get(activity, aggregate_id)
            if live is not None:
                row = _Row(activity, live.aggregate, live, record, loaded=True)
            elif record is not None:
                row = _Row(activity, record.aggregate, None, record, loaded=True)
            else:
                raise _not_found(activity, aggregate_id)
            (task,) = await self._describe([row])
        except TailrunnerError as exc:
            await abort(context, exc, rpc="GetTask")
        return task

    async def ListRuns(
        self, request: runner_pb2.ListRunsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> runner_pb2.ListRunsResponse:
        try:
            activity, aggregate_id = _task_key(request)
            limit = _page_size(request.page_size, DEFAULT_RUNS_PAGE_SIZE)
            runs = await self._tails.list_runs(activity, aggregate_id, limit=limit)
            if (
                not runs
                and self._engine.find(activity, aggregate_id) is None
                and await self._tails.get(activity, aggregate_id) is None
            ):
                raise _not_found(activity, aggregate_id)
        except TailrunnerError as exc:
            await abort(context, exc, rpc="ListRuns")
        return runner_pb2.ListRunsResponse(runs=[_run_message(run) for run in runs])

    async def GetCluster(
        self, request: runner_pb2.GetClusterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> runner_pb2.Cluster:
        membership = self._membership
        if membership is None:
            return runner_pb2.Cluster(scaleout_enabled=False)
        leases = membership.leases
        try:
            segments = await leases.table()
            members = await leases.runners()
        except TailrunnerError as exc:
            await abort(context, exc, rpc="GetCluster")
        message = runner_pb2.Cluster(
            scaleout_enabled=True,
            incarnation=membership.incarnation,
            segment_count=leases.segments,
            segments=[_segment_message(row) for row in segments],
            members=[_member_message(row) for row in members],
        )
        message.lease.FromTimedelta(timedelta(seconds=leases.lease))
        return message

    # -- controls ------------------------------------------------------------

    async def SuspendTask(
        self, request: runner_pb2.SuspendTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> runner_pb2.Task:
        return await self._control(request, context, "suspend", self._engine.suspend)

    async def ResumeTask(
        self, request: runner_pb2.ResumeTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> runner_pb2.Task:
        return await self._control(request, context, "resume", self._engine.resume)

    async def StopTask(
        self, request: runner_pb2.StopTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> runner_pb2.Task:
        return await self._control(request, context, "stop", self._engine.stop)

    async def RestartTask(
        self, request: runner_pb2.RestartTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> runner_pb2.Task:
        try:
            _, aggregate_id = _task_key(request)
            which = request.WhichOneof("from")
            tail: ULID | None = None
            if which == "from_tail":
                tail = parse_ulid(request.from_tail, field="from_tail")
                # A tail from another aggregate would silently skip this one's
                # events up to that id: refuse it.
                if not await is_event_of(self._journal, aggregate_id, tail):
                    raise InvalidArgument(
                        "from_tail", f"{tail} is not an event of aggregate {aggregate_id}"
                    )
            elif which == "from_start":
                if not request.from_start:
                    raise InvalidArgument("from_start", "must be true (or give from_tail)")
            else:
                raise InvalidArgument("from", "give from_tail (a ULID) or from_start")
        except TailrunnerError as exc:
            await abort(context, exc, rpc="RestartTask")

        async def restart(task: Task) -> None:
            await self._engine.restart(task, tail)

        return await self._control(request, context, "restart", restart)

    async def _control(
        self,
        request: _TaskRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        action: str,
        apply: Callable[[Task], Awaitable[None]],
    ) -> runner_pb2.Task:
        rpc = f"{action.capitalize()}Task"
        try:
            activity, aggregate_id = _task_key(request)
            task = self._engine.find(activity, aggregate_id)
            if task is None:
                if self._membership is not None and activity in self._engine.activities:
                    owner = await self._owner_of(activity, aggregate_id)
                    if owner is not None:
                        raise TaskNotFound(
                            f"task {activity}/{aggregate_id}: {owner}; control it there"
                        )
                if await self._tails.get(activity, aggregate_id) is not None:
                    raise TaskNotFound(
                        f"task {activity}/{aggregate_id}: this runner does not run it (its"
                        " activity or aggregate type is not followed here), so it cannot be"
                        f" controlled here"
                    )
                raise _not_found(activity, aggregate_id)
            if action in ("stop", "suspend") and task.state is TaskState.COMPLETE:
                # Stopping a complete task would let a resume run it again.
                raise TaskNotControllable(
                    f"task {activity}/{aggregate_id} is COMPLETE: restart it to run it again"
                )
            log.info("controlling", action=action, state=task.state.value, **task.log_fields())
            try:
                # A running task takes the control when its run's cancellation
                # lands; an activity that ignores cancellation must not hang
                # us: the reply shows the control as pending. The engine
                # refuses a control that does not fit (TaskNotControllable:
                # resuming a task that is neither SUSPENDED nor STOPPED).
                with anyio.move_on_after(self._control_timeout) as waited:
                    await apply(task)
            except StoreError as exc:
                raise ControlNotStored(
                    f"task {activity}/{aggregate_id}: {action} is applied in memory but not yet"
                    " stored; the runner keeps retrying the save (a restart of the runner"
                    f" before it succeeds would lose it): {exc}"
                ) from exc
            if waited.cancelled_caught:
                log.warning(
                    "control pending",
                    action=action,
                    timeout=self._control_timeout,
                    **task.log_fields(),
                )
            (reply,) = await self._describe([_Row.of_task(task)])
        except TailrunnerError as exc:
            await abort(context, exc, rpc=rpc)
        return reply

    # -- listing -------------------------------------------------------------

    async def _owner_of(self, activity: str, aggregate_id: UUID) -> str | None:
        """Scale-out: which runner holds the task's segment, for a refusal; ``None`` if unknown."""
        membership = self._membership
        assert membership is not None
        segment = membership.segment(activity, aggregate_id)
        try:
            rows = await membership.leases.table()
            runners = {row.owner: row.about for row in await membership.leases.runners()}
        except StoreError:
            return None  # the plain refusal then
        row = next((r for r in rows if r.segment == segment), None)
        if row is None:
            return None
        owner = row.owner if row.live else None
        if owner == membership.incarnation:
            return None  # held here: its task starts at the next discovery
        return _describe_owner(segment, owner, runners.get(owner) if owner else None)

    async def _list(self, query: _TaskQuery) -> tuple[list[_Row], str]:
        rows: list[_Row] = []
        cursor = query.cursor
        if not cursor.in_store:
            live = self._live_candidates(query, cursor.live_after)
            if len(live) > query.page_size:
                page = live[: query.page_size]
                last = page[-1]
                token = _encode_token(
                    query, _Cursor(live_after=(last.activity.name, last.aggregate.id.bytes))
                )
                return [_Row.of_task(t) for t in page], token
            rows.extend(_Row.of_task(t) for t in live)
            store_after = (
                None
                if query.updated_before is None
                # Before this instant, exclusive: no activity sorts below "".
                else (query.updated_before, "", UUID(int=0))
            )
        else:
            store_after = cursor.store_after
        store_after, exhausted = await self._scan_store(query, rows, store_after)
        if exhausted:
            return rows, ""
        return rows, _encode_token(query, _Cursor(in_store=True, store_after=store_after))

    def _live_candidates(self, query: _TaskQuery, after: tuple[str, bytes] | None) -> list[Task]:
        wanted = LIVE_STATES & query.states if query.states else LIVE_STATES
        now = datetime.now(UTC)
        # PENDING and RUNNING tasks are changing now: "updated now" for the time filters.
        if (query.updated_before is not None and query.updated_before <= now) or (
            query.updated_after is not None and query.updated_after >= now
        ):
            return []
        found = [
            t
            for t in self._engine.tasks()
            if t.state in wanted
            and (query.activity is None or t.activity.name == query.activity)
            and (query.aggregate_type is None or t.aggregate.type == query.aggregate_type)
            and (after is None or _live_key(t) < after)
        ]
        found.sort(key=_live_key, reverse=True)
        return found

    async def _scan_store(
        self, query: _TaskQuery, rows: list[_Row], after: QueryCursor | None
    ) -> tuple[QueryCursor | None, bool]:
        """Add matching stored records to ``rows`` up to the page size.

        :returns: the cursor past the last record scanned, and whether the
            store has no more matching records.
        """
        budget = max(_SCAN_BUDGET_PAGES * query.page_size, _MIN_SCAN_BUDGET)
        chunk_size = min(max(query.page_size, 100), MAX_PAGE_SIZE)
        # Outside PENDING and RUNNING a live task's state is the stored one,
        # so the store's state index may narrow the scan.
        states = tuple(sorted(s.value for s in query.states))
        scanned = 0
        while len(rows) < query.page_size and scanned < budget:
            limit = min(chunk_size, budget - scanned)
            chunk = await self._tails.query(
                activity=query.activity, states=states, limit=limit, after=after
            )
            for index, record in enumerate(chunk):
                if query.updated_after is not None and record.updated_at <= query.updated_after:
                    return after, True  # newest first: all the rest are older
                scanned += 1
                after = query_cursor(record)
                row = self._stored_row(query, record)
                if row is not None:
                    rows.append(row)
                    if len(rows) == query.page_size:
                        last_of_store = index == len(chunk) - 1 and len(chunk) < limit
                        return after, last_of_store
            if len(chunk) < limit:
                return after, True
        return after, False

    def _stored_row(self, query: _TaskQuery, record: TailRecord) -> _Row | None:
        live = self._engine.find(record.activity, record.aggregate.id)
        if live is not None and live.state in LIVE_STATES:
            return None  # listed (or filtered out) with the engine's part
        if query.aggregate_type is not None and record.aggregate.type != query.aggregate_type:
            return None
        row = _Row(record.activity, record.aggregate, live, record, loaded=True)
        if query.states and row.state not in query.states:
            return None
        return row

    # -- describing ----------------------------------------------------------

    async def _describe(self, rows: Sequence[_Row]) -> list[runner_pb2.Task]:
        """The messages of ``rows``: their stored record, newest run and lag, read at once."""
        limiter = anyio.CapacityLimiter(_CONCURRENCY)
        newest: list[RunRecord | None] = [None] * len(rows)
        lags: list[Lag | None] = [None] * len(rows)
        # The tail each lag was counted from: a running task's tail moves
        # meanwhile, and a reply must not pair a new tail with an old lag.
        counted_from: list[ULID | None] = [row.tail for row in rows]
        failures: list[TailrunnerError] = []
        lag_failures: list[str] = []
        lag_deadline = anyio.current_time() + self._lag_timeout

        async def read_store(index: int, row: _Row) -> None:
            async with limiter:
                try:
                    if not row.loaded:
                        row.record = await self._tails.get(row.activity, row.aggregate.id)
                        row.loaded = True
                    runs = await self._tails.list_runs(row.activity, row.aggregate.id, limit=1)
                except TailrunnerError as exc:
                    failures.append(exc)
                    return
            newest[index] = runs[0] if runs else None

        async def read_lag(index: int, row: _Row) -> None:
            with anyio.CancelScope(deadline=lag_deadline):
                async with limiter:
                    try:
                        tail = row.tail
                        lags[index] = await count_after(self._journal, row.aggregate.id, tail)
                        counted_from[index] = tail
                    except (JournalError, AccessDenied) as exc:  # a revoked token too
                        lag_failures.append(str(exc))

        async with anyio.create_task_group() as tg:
            for index, row in enumerate(rows):
                tg.start_soon(read_store, index, row)
                tg.start_soon(read_lag, index, row)
        if failures:
            raise failures[0]
        missing = sum(lag is None for lag in lags)
        if missing:
            log.warning(
                "lag unknown",
                tasks=missing,
                error=lag_failures[0] if lag_failures else f"over {self._lag_timeout}s",
            )
        return [
            _task_message(row, newest[i], lags[i], self._waiting(row), tail=counted_from[i])
            for i, row in enumerate(rows)
        ]

    def _waiting(self, row: _Row) -> Waiting:
        """Why the task of ``row`` waits: the engine's word, else what its record says."""
        if row.live is not None:
            return self._engine.waiting(row.live)
        record = row.record
        state = row.state
        if record is None or state is None:
            return Waiting(reason=None)
        return Waiting(reason=_STORED_REASONS.get(state), next_run_at=record.next_run_at)


# -- messages -----------------------------------------------------------------


def _task_message(
    row: _Row, run: RunRecord | None, lag: Lag | None, waiting: Waiting, *, tail: ULID | None
) -> runner_pb2.Task:
    """:param tail: the tail the reply shows: the one ``lag`` was counted from."""
    message = runner_pb2.Task(
        activity=row.activity,
        aggregate_type=row.aggregate.type,
        aggregate_id=str(row.aggregate.id),
        tail=_text(tail),
        live=row.live is not None,
    )
    state = row.state
    if state is not None:
        message.state = runner_pb2.Task.State.Value(state.value)
    if row.live is not None:
        message.attempts = row.live.errors
        message.last_error = row.live.last_error or ""
    elif row.record is not None:
        message.attempts = row.record.attempts
        message.last_error = row.record.last_error or ""
    if row.record is not None:
        message.update_time.FromDatetime(row.record.updated_at)
    if run is not None:
        message.last_run_start_time.FromDatetime(run.started_at)
        message.last_run_end_time.FromDatetime(run.finished_at)
        message.last_run_outcome = run.outcome
    if lag is not None:
        message.head = _text(lag.head)
        message.lag = lag.events
    if waiting.reason is not None:
        message.wait_reason = waiting.reason.value
    if waiting.next_run_at is not None:
        message.next_run_time.FromDatetime(waiting.next_run_at)
    if waiting.recheck_at is not None:
        message.recheck_time.FromDatetime(waiting.recheck_at)
    message.pending_control = waiting.control or ""
    return message


def _run_message(run: RunRecord) -> runner_pb2.Run:
    message = runner_pb2.Run(
        activity=run.activity,
        aggregate_type=run.aggregate.type,
        aggregate_id=str(run.aggregate.id),
        attempt=run.attempt,
        tail_before=_text(run.tail_before),
        tail_after=_text(run.tail_after),
        events_seen=run.events_seen,
        outcome=run.outcome,
        error=run.error or "",
    )
    message.start_time.FromDatetime(run.started_at)
    message.end_time.FromDatetime(run.finished_at)
    return message


def _segment_message(row: SegmentRow) -> runner_pb2.Cluster.Segment:
    message = runner_pb2.Cluster.Segment(
        segment=row.segment, owner=row.owner or "", epoch=row.epoch, live=row.live
    )
    if row.since is not None:
        message.since.FromDatetime(row.since)
    if row.expires_at is not None:
        message.expire_time.FromDatetime(row.expires_at)
    return message


def _member_message(row: RunnerRow) -> runner_pb2.Cluster.Member:
    message = runner_pb2.Cluster.Member(incarnation=row.owner, about=row.about, live=row.live)
    message.start_time.FromDatetime(row.started_at)
    message.expire_time.FromDatetime(row.expires_at)
    return message


def _text(value: ULID | None) -> str:
    return "" if value is None else str(value)


# -- requests -----------------------------------------------------------------


def _task_key(request: _TaskRequest) -> tuple[str, UUID]:
    if not request.activity:
        raise InvalidArgument("activity", "must not be empty")
    if not request.aggregate_id:
        raise InvalidArgument("aggregate_id", "must not be empty")
    return request.activity, parse_uuid(request.aggregate_id, field="aggregate_id")


def _describe_owner(segment: int, owner: str | None, about: str | None) -> str:
    if owner is None:
        return f"its segment {segment} is held by no runner right now (it moves within a lease)"
    where = f" ({about})" if about else ""
    return f"its segment {segment} is held by runner {owner}{where}, not this one"


def _not_found(activity: str, aggregate_id: UUID) -> TaskNotFound:
    return TaskNotFound(
        f"task {activity}/{aggregate_id}: neither this runner nor its tail store knows it"
        f" (activity {activity!r}, aggregate {aggregate_id})"
    )


def _page_size(requested: int, default: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size", f"must not be negative, got {requested}")
    return min(requested or default, MAX_PAGE_SIZE)


def _parse_list(request: runner_pb2.ListTasksRequest) -> _TaskQuery:
    states: set[TaskState] = set()
    for index, value in enumerate(request.states):
        name = runner_pb2.Task.State.Name(value) if value in runner_pb2.Task.State.values() else ""
        if name not in TaskState.__members__:
            allowed = ", ".join(s.value for s in TaskState)
            raise InvalidArgument(f"states[{index}]", f"{value} is not a state: expected {allowed}")
        states.add(TaskState[name])
    query = _TaskQuery(
        activity=request.activity or None,
        aggregate_type=request.aggregate_type or None,
        states=frozenset(states),
        updated_after=_optional_time(request, "updated_after"),
        updated_before=_optional_time(request, "updated_before"),
        page_size=_page_size(request.page_size, DEFAULT_PAGE_SIZE),
    )
    return replace(query, cursor=_decode_token(request.page_token, query.fingerprint()))


def _optional_time(request: runner_pb2.ListTasksRequest, name: str) -> datetime | None:
    if name == "updated_after":
        given, value = request.HasField("updated_after"), request.updated_after
    else:
        given, value = request.HasField("updated_before"), request.updated_before
    if not given:
        return None
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (OverflowError, ValueError, OSError) as exc:
        raise InvalidArgument(
            name,
            f"{value.seconds} s, {value.nanos} ns: outside 0001-01-01 … 9999-12-31 (UTC)",
        ) from exc


#: Longer than any token this runner makes (a cursor is a time, a name, an id).
_MAX_PAGE_TOKEN = 4096


def _encode_token(query: _TaskQuery, cursor: _Cursor) -> str:
    body: dict[str, object] = {"v": _PAGE_TOKEN_VERSION, "f": query.fingerprint()}
    if cursor.in_store:
        body["s"] = (
            None
            if cursor.store_after is None
            else [
                micros(cursor.store_after[0]),
                cursor.store_after[1],
                cursor.store_after[2].hex,
            ]
        )
    elif cursor.live_after is not None:
        body["l"] = [cursor.live_after[0], cursor.live_after[1].hex()]
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_token(token: str, fingerprint: str) -> _Cursor:
    if not token:
        return _Cursor()
    bad = InvalidArgument("page_token", "not a page token of this runner's ListTasks")
    if len(token) > _MAX_PAGE_TOKEN:
        raise bad
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than Python's stack.
        raise bad from exc
    if not isinstance(body, dict) or body.get("v") != _PAGE_TOKEN_VERSION:
        raise bad
    if body.get("f") != fingerprint:
        raise InvalidArgument(
            "page_token", "made for another filter: repeat the filter of the first page"
        )
    try:
        if body.get("s") is not None:
            at_micros, activity, hex_id = body["s"]
            after = (from_micros(int(at_micros)), str(activity), UUID(hex_id))
            return _Cursor(in_store=True, store_after=after)
        if "s" in body:
            return _Cursor(in_store=True)
        if "l" in body:
            activity, hex_id = body["l"]
            return _Cursor(live_after=(str(activity), bytes.fromhex(hex_id)))
    except (ValueError, TypeError, AttributeError, OverflowError, KeyError) as exc:
        # Whatever a crafted token holds where the cursor's parts should be.
        raise bad from exc
    return _Cursor()


def _live_key(task: Task) -> tuple[str, bytes]:
    return (task.activity.name, task.aggregate.id.bytes)


def _stored_state(record: TailRecord) -> TaskState | None:
    try:
        return TaskState(record.state)
    except ValueError:
        return None
