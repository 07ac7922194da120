"""``AdminClient``: a runner's ``tailrunner.v1.Runner`` service, for the CLI.

It is synchronous (a plain gRPC channel, no event loop): the CLI makes a
call or two and exits. gRPC errors are mapped to :mod:`tailrunner.errors` by
:func:`tailrunner.rpc_errors.from_rpc_error`, with this client's codes:

=====================  =============================================
status                 raised
=====================  =============================================
``INVALID_ARGUMENT``   :class:`~tailrunner.errors.InvalidArgument` (``BadRequest``)
``NOT_FOUND``          :class:`TaskNotFound`
``FAILED_PRECONDITION``  :class:`TaskNotControllable`
``UNAUTHENTICATED``    :class:`NotAuthenticated`
``UNAVAILABLE`` with   :class:`ControlNotStored` (the control is applied
``CONTROL_NOT_STORED``   in the runner's memory; its save is retried)
``UNAVAILABLE`` …      :class:`AdminUnavailable`
anything else          :class:`AdminError`
=====================  =============================================

:meth:`AdminClient.cluster` answers ``None`` for a runner that does not
share work, and for one too old to have ``GetCluster`` (``UNIMPLEMENTED``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self
from uuid import UUID

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from ulid import ULID

from tailrunner.errors import (
    AdminError,
    AdminUnavailable,
    InvalidArgument,
    NotAuthenticated,
    TailrunnerError,
    TaskNotControllable,
    TaskNotFound,
)
from tailrunner.model import AggregateRef
from tailrunner.proto.v1 import runner_pb2, runner_pb2_grpc
from tailrunner.rpc_errors import ClientErrors, from_rpc_error
from tailrunner.security.channels import bearer, sync_channel, warn_cleartext_token
from tailrunner.security.tls import ClientTls
from tailrunner.states import OutcomeKind, TaskState, WaitReason
from tailrunner.tails.store import RunRecord

#: The environment variable the CLI reads the admin token from, unless told another.
DEFAULT_TOKEN_ENV = "TAILRUNNER_ADMIN_TOKEN"
_UNAVAILABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
#: What a runner's status codes mean (the details are read before these).
_BY_CODE: dict[grpc.StatusCode, Callable[[str], TailrunnerError]] = {
    grpc.StatusCode.NOT_FOUND: TaskNotFound,
    grpc.StatusCode.FAILED_PRECONDITION: TaskNotControllable,
    grpc.StatusCode.UNAUTHENTICATED: NotAuthenticated,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskInfo:
    """One task as the runner reports it."""

    activity: str
    aggregate: AggregateRef
    #: ``None`` when the stored state is not one this client knows.
    state: TaskState | None
    tail: ULID | None
    #: The aggregate's newest event id (``None``: no events, or unknown).
    head: ULID | None
    #: Events after the tail; ``None`` when the runner could not tell in time.
    lag: int | None
    attempts: int
    last_error: str | None
    last_run_started: datetime | None
    last_run_finished: datetime | None
    last_run_outcome: str | None
    #: When the task's record was last stored (``None``: never).
    updated_at: datetime | None
    #: The runner runs this task (``False``: only a stored record).
    live: bool
    #: Why it waits; ``None`` while it runs, when complete, or when the runner
    #: cannot tell (or names a reason this client does not know).
    wait_reason: WaitReason | None = None
    #: When it runs next; ``None`` when no time is known.
    next_run_at: datetime | None = None
    #: Lazy engine: the backstop's re-check without a signal, at the latest.
    recheck_at: datetime | None = None
    #: An operator's control waiting for the current run to end (``"stop"`` …).
    pending_control: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentInfo:
    """One segment's lease, as the cluster's database has it."""

    segment: int
    #: The holder's incarnation id; ``None`` when free.
    owner: str | None
    epoch: int
    #: When the holder claimed it; ``None`` when free.
    since: datetime | None
    expires_at: datetime | None
    #: Held and not expired (an owner with ``live`` false: the lease ran out).
    live: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberInfo:
    """One runner of the cluster, as it announced itself."""

    incarnation: str
    #: What it says about itself: host, pid, engine, admin address.
    about: str
    started_at: datetime
    expires_at: datetime
    #: Announced within its lease (``False``: gone within the last hour).
    live: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterInfo:
    """The cluster of runners sharing the work, as one of them sees it."""

    #: The incarnation id of the runner that answered.
    incarnation: str
    segment_count: int
    lease: timedelta
    #: Every segment, by number.
    segments: list[SegmentInfo]
    #: The runners seen within the last hour, oldest first.
    members: list[MemberInfo]


class AdminClient:
    """A runner's admin service reached over gRPC.

    ::

        with AdminClient.connect("127.0.0.1:7741", token=token) as admin:
            for task in admin.tasks(states=[TaskState.RETRY]):
                print(task.activity, task.aggregate, task.lag)
    """

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        address: str = "",
        token: str | None = None,
        timeout: float | None = 30.0,
        close_channel: bool = False,
    ) -> None:
        """Use a channel the caller made; :meth:`connect` makes one.

        :param address: named in errors.
        :param token: sent as ``authorization: Bearer <token>`` with every call.
        :param timeout: seconds per call (``None``: no deadline).
        :param close_channel: :meth:`close` closes ``channel`` too.
        """
        self._channel = channel
        self._stub = runner_pb2_grpc.RunnerStub(channel)
        self._address = address
        self._metadata = bearer(token)
        self._timeout = timeout
        self._close_channel = close_channel

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        token: str | None = None,
        timeout: float | None = 30.0,
        tls: ClientTls | None = None,
    ) -> AdminClient:
        """A client of the runner whose admin address is ``address`` (``HOST:PORT``).

        The connection is made by the first call, which raises
        :class:`AdminUnavailable` when nothing answers.

        :param tls: TLS toward the admin server (``None``: plaintext).
        :raises InvalidArgument: a TLS file cannot be read (names its option).
        """
        warn_cleartext_token(address, tls=tls, token=token, server="admin")
        channel = sync_channel(address, tls=tls)
        return cls(channel, address=address, token=token, timeout=timeout, close_channel=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (when this client made it)."""
        if self._close_channel:
            self._channel.close()

    def list_tasks(
        self,
        *,
        activity: str | None = None,
        aggregate_type: str | None = None,
        states: Collection[TaskState] = (),
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[TaskInfo], str]:
        """One page of tasks and the next page's token ("" on the last).

        PENDING and RUNNING tasks first, then the most recently updated.
        A page may be short, even empty, and still have a token.

        :raises InvalidArgument: a bad filter, ``page_size`` or ``page_token``.
        """
        request = runner_pb2.ListTasksRequest(
            activity=activity or "",
            aggregate_type=aggregate_type or "",
            states=[runner_pb2.Task.State.Value(s.value) for s in states],
            page_size=page_size,
            page_token=page_token,
        )
        for name, value in (("updated_after", updated_after), ("updated_before", updated_before)):
            if value is not None:
                if value.utcoffset() is None:
                    raise InvalidArgument(name, f"{value.isoformat()} has no time zone")
                getattr(request, name).FromDatetime(value)
        response = self._call(self._stub.ListTasks, request)
        return [_task_info(t) for t in response.tasks], response.next_page_token

    def tasks(
        self,
        *,
        activity: str | None = None,
        aggregate_type: str | None = None,
        states: Collection[TaskState] = (),
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
        page_size: int = 0,
    ) -> Iterator[TaskInfo]:
        """Every task that matches, page after page (see :meth:`list_tasks`)."""
        token = ""
        while True:
            page, token = self.list_tasks(
                activity=activity,
                aggregate_type=aggregate_type,
                states=states,
                updated_after=updated_after,
                updated_before=updated_before,
                page_size=page_size,
                page_token=token,
            )
            yield from page
            if not token:
                return

    def get_task(self, activity: str, aggregate_id: UUID) -> TaskInfo:
        """One task, with its head and lag.

        :raises TaskNotFound: neither the runner nor its tail store knows it.
        """
        request = runner_pb2.GetTaskRequest(activity=activity, aggregate_id=str(aggregate_id))
        return _task_info(self._call(self._stub.GetTask, request))

    def list_runs(self, activity: str, aggregate_id: UUID, *, limit: int = 0) -> list[RunRecord]:
        """The task's recorded runs, newest first.

        :param limit: at most this many (0: the runner's default, 20).
        :raises TaskNotFound: neither the runner nor its tail store knows the task.
        """
        request = runner_pb2.ListRunsRequest(
            activity=activity, aggregate_id=str(aggregate_id), page_size=limit
        )
        response = self._call(self._stub.ListRuns, request)
        return [_run_record(run) for run in response.runs]

    def suspend(self, activity: str, aggregate_id: UUID) -> TaskInfo:
        """Set the task aside until resumed (cancelling its run); returns it as it is now.

        :raises TaskNotFound: the runner does not run this task.
        :raises TaskNotControllable: the task is complete.
        """
        request = runner_pb2.SuspendTaskRequest(activity=activity, aggregate_id=str(aggregate_id))
        return _task_info(self._call(self._stub.SuspendTask, request))

    def resume(self, activity: str, aggregate_id: UUID) -> TaskInfo:
        """Run a stopped or suspended task again, with a fresh attempt count.

        :raises TaskNotFound: the runner does not run this task.
        :raises TaskNotControllable: the task is neither stopped nor suspended.
        """
        request = runner_pb2.ResumeTaskRequest(activity=activity, aggregate_id=str(aggregate_id))
        return _task_info(self._call(self._stub.ResumeTask, request))

    def stop(self, activity: str, aggregate_id: UUID) -> TaskInfo:
        """Stop the task (cancelling its run); it stays stopped across restarts.

        :raises TaskNotFound: the runner does not run this task.
        :raises TaskNotControllable: the task is complete.
        """
        request = runner_pb2.StopTaskRequest(activity=activity, aggregate_id=str(aggregate_id))
        return _task_info(self._call(self._stub.StopTask, request))

    def restart(self, activity: str, aggregate_id: UUID, *, tail: ULID | None) -> TaskInfo:
        """Run the task again from ``tail`` (``None``: from the first event).

        :raises TaskNotFound: the runner does not run this task.
        :raises InvalidArgument: ``tail`` is not an event of the aggregate
            (field ``from_tail``).
        """
        request = runner_pb2.RestartTaskRequest(activity=activity, aggregate_id=str(aggregate_id))
        if tail is None:
            request.from_start = True
        else:
            request.from_tail = str(tail)
        return _task_info(self._call(self._stub.RestartTask, request))

    def cluster(self) -> ClusterInfo | None:
        """Who holds which segment, and the runners of the cluster.

        :returns: ``None`` when the runner does not share work
            (``scaleout.enabled`` false), or is too old to say.
        :raises AdminUnavailable: the runner could not read its database (or
            cannot be reached).
        """
        try:
            response: runner_pb2.Cluster = self._stub.GetCluster(
                runner_pb2.GetClusterRequest(), timeout=self._timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                # Most often the runner's database, not the runner, failed.
                where = f" at {self._address}" if self._address else ""
                raise AdminUnavailable(
                    f"the runner{where} could not read the cluster: {exc.details() or ''}"
                ) from exc
            raise self._map_error(exc) from exc
        if not response.scaleout_enabled:
            return None
        return ClusterInfo(
            incarnation=response.incarnation,
            segment_count=response.segment_count,
            lease=response.lease.ToTimedelta(),
            segments=[_segment_info(s) for s in response.segments],
            members=[_member_info(m) for m in response.members],
        )

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._map_error(exc) from exc

    def _map_error(self, exc: grpc.RpcError) -> Exception:
        where = f" at {self._address}" if self._address else ""
        return from_rpc_error(
            exc,
            ClientErrors(
                other=AdminError,
                unavailable=lambda _code, message: AdminUnavailable(
                    f"cannot reach the runner's admin service{where}: {message}"
                ),
                retryable=_UNAVAILABLE,
                by_code=_BY_CODE,
            ),
        )


def _task_info(message: runner_pb2.Task) -> TaskInfo:
    state_name = runner_pb2.Task.State.Name(message.state)
    return TaskInfo(
        activity=message.activity,
        aggregate=AggregateRef(type=message.aggregate_type, id=UUID(message.aggregate_id)),
        state=TaskState[state_name] if state_name in TaskState.__members__ else None,
        tail=_ulid(message.tail),
        head=_ulid(message.head),
        lag=message.lag if message.HasField("lag") else None,
        attempts=message.attempts,
        last_error=message.last_error or None,
        last_run_started=_time(message, "last_run_start_time"),
        last_run_finished=_time(message, "last_run_end_time"),
        last_run_outcome=message.last_run_outcome or None,
        updated_at=_time(message, "update_time"),
        live=message.live,
        wait_reason=_wait_reason(message.wait_reason),
        next_run_at=_time(message, "next_run_time"),
        recheck_at=_time(message, "recheck_time"),
        pending_control=message.pending_control or None,
    )


def _segment_info(message: runner_pb2.Cluster.Segment) -> SegmentInfo:
    return SegmentInfo(
        segment=message.segment,
        owner=message.owner or None,
        epoch=message.epoch,
        since=message.since.ToDatetime(tzinfo=UTC) if message.HasField("since") else None,
        expires_at=(
            message.expire_time.ToDatetime(tzinfo=UTC) if message.HasField("expire_time") else None
        ),
        live=message.live,
    )


def _member_info(message: runner_pb2.Cluster.Member) -> MemberInfo:
    return MemberInfo(
        incarnation=message.incarnation,
        about=message.about,
        started_at=message.start_time.ToDatetime(tzinfo=UTC),
        expires_at=message.expire_time.ToDatetime(tzinfo=UTC),
        live=message.live,
    )


def _time(message: runner_pb2.Task, name: str) -> datetime | None:
    """The instant in ``message``'s Timestamp field ``name``; ``None`` when it is unset."""
    if not message.HasField(name):  # type: ignore[arg-type]  # a field name checked by the caller
        return None
    value: Timestamp = getattr(message, name)
    return value.ToDatetime(tzinfo=UTC)


def _wait_reason(text: str) -> WaitReason | None:
    try:
        return WaitReason(text) if text else None
    except ValueError:  # a newer runner's reason
        return None


def _run_record(message: runner_pb2.Run) -> RunRecord:
    return RunRecord(
        activity=message.activity,
        aggregate=AggregateRef(type=message.aggregate_type, id=UUID(message.aggregate_id)),
        attempt=message.attempt,
        started_at=message.start_time.ToDatetime(tzinfo=UTC),
        finished_at=message.end_time.ToDatetime(tzinfo=UTC),
        tail_before=_ulid(message.tail_before),
        tail_after=_ulid(message.tail_after),
        events_seen=message.events_seen,
        outcome=OutcomeKind.stored(message.outcome),
        error=message.error or None,
    )


def _ulid(text: str) -> ULID | None:
    return ULID.from_str(text) if text else None
