"""The ping-registry workflow's commands, and its pure behaviour: tell and advance.

``tell(state, command)`` checks a command against the state and returns the
events it yields (an empty list for a repeated, idempotent command) or raises
an error naming the state or the argument; ``advance(state, event, event_id)``
returns the state after one event. Neither does I/O nor mutates anything.

=================  ===========================  ===================================
command            allowed in                   yields
=================  ===========================  ===================================
``Init``           uninitialized                started; later: nothing if the
                                                same, else ArgumentNotIdempotent
``AppendPing``     initialized, appending       server-pinged
``PostSummary``    initialized, appending       pings-gathered; later: nothing if
                                                the same, else ArgumentNotIdempotent
``AbortExpired``   initialized, appending       pings-gathered with code
                                                :data:`EXPIRED_CODE`; later: nothing
``Cancel``         initialized, appending       pings-gathered with code
                                                :data:`CANCELLED_CODE`; later: nothing
``Commit``         summarized                   completed; later: nothing
``End``            completed                    committed; terminated: nothing
``Delete``         completed, terminated        nothing (the index records it)
=================  ===========================  ===================================

Any command but ``Init`` on an uninitialized workflow raises
:class:`~.errors.Uninitialized`; any other refusal is :class:`~.errors.WrongState`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

from ulid import ULID

from tailrunner.errors import InvalidArgument
from tailrunner.proto.v1 import workflows_pb2 as pb
from tailrunner.workflows.behaviour import ProtoCodec, check_idempotent
from tailrunner.workflows.pingregistry.deadlines import from_timestamp, to_timestamp
from tailrunner.workflows.pingregistry.errors import (
    Uninitialized,
    WrongState,
)
from tailrunner.workflows.pingregistry.state import Ping, State, StateCode, Summary, new_state

EXPIRED_CODE = 4
"""The summary code of a workflow aborted because it expired (gRPC's DEADLINE_EXCEEDED)."""

EXPIRED_MESSAGE = "expired before it was summarized"

CANCELLED_CODE = 1
"""The summary code of a workflow cancelled before it was summarized (gRPC's CANCELLED)."""

CANCELLED_MESSAGE = "cancelled before it was summarized"


@dataclass(frozen=True, slots=True, kw_only=True)
class Init:
    """Start the workflow for ``registry``; its pings are summarized after ``deadline``.

    :ivar deadline: timezone-aware.
    """

    registry: str
    deadline: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendPing:
    """Post one ping from ``pinger`` (0 for success)."""

    code: int
    message: str
    pinger: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PostSummary:
    """Post the summary of the pings gathered so far; no ping is accepted after it."""

    code: int
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AbortExpired:
    """Close an expired workflow that was never summarized, with an error summary."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    """Close an open workflow with a cancelled summary: no more pings, no summary at the deadline.

    A workflow that is summarized (or later) is left as it is: cancelling is best effort.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    """The commit's first step: completed on the workflow."""


@dataclass(frozen=True, slots=True, kw_only=True)
class End:
    """The commit's last step, after the index recorded the completion: committed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    """Check that the workflow may leave the index (completed, committed or not)."""


Command = Init | AppendPing | PostSummary | AbortExpired | Cancel | Commit | End | Delete
"""Every command of the ping-registry workflow."""

Event = (
    pb.PingRegistryStarted
    | pb.ServerPinged
    | pb.ServerPingsGathered
    | pb.PingRegistryCompleted
    | pb.PingRegistryCommitted
)
"""Every event of the ping-registry workflow."""

EVENT_TYPES: tuple[type[Event], ...] = (
    pb.PingRegistryStarted,
    pb.ServerPinged,
    pb.ServerPingsGathered,
    pb.PingRegistryCompleted,
    pb.PingRegistryCommitted,
)
"""The event classes, to decode a journal event by its type name."""

_OPEN = (StateCode.INITIALIZED, StateCode.APPENDING)
_SUMMARIZED_OR_LATER = (StateCode.SUMMARIZED, StateCode.COMPLETED, StateCode.TERMINATED)
_COMPLETED_OR_LATER = (StateCode.COMPLETED, StateCode.TERMINATED)


def tell(state: State, command: Command) -> list[Event]:
    """The events ``command`` yields in ``state`` (none for an idempotent repeat).

    :raises Uninitialized: a command other than ``Init`` before the workflow started.
    :raises ArgumentNotIdempotent: a repeated ``Init`` or ``PostSummary`` that differs;
        it names the argument.
    :raises WrongState: the command is not allowed in ``state``; it names the state.
    :raises InvalidArgument: an empty registry, or a deadline without a timezone.
    """
    if isinstance(command, Init):
        return _tell_init(state, command)
    what = _NAMES[type(command)]
    if state.code is StateCode.UNINITIALIZED:
        raise Uninitialized(what)
    match command:
        case AppendPing(code=code, message=message, pinger=pinger):
            _require(state, _OPEN, what)
            return [pb.ServerPinged(code=code, message=message, pinger=pinger)]
        case PostSummary(code=code, message=message):
            if state.summary is not None:
                _same_summary(state.summary, code, message)
                return []
            return [_gathered(state, code, message)]
        case AbortExpired():
            if state.code in _SUMMARIZED_OR_LATER:
                return []
            return [_gathered(state, EXPIRED_CODE, EXPIRED_MESSAGE)]
        case Cancel():
            if state.code in _SUMMARIZED_OR_LATER:
                return []
            return [_gathered(state, CANCELLED_CODE, CANCELLED_MESSAGE)]
        case Commit():
            if state.code in _COMPLETED_OR_LATER:
                return []
            _require(state, (StateCode.SUMMARIZED,), what)
            return [pb.PingRegistryCompleted()]
        case End():
            if state.code is StateCode.TERMINATED:
                return []
            _require(state, (StateCode.COMPLETED,), what)
            return [pb.PingRegistryCommitted()]
        case Delete():
            _require(state, _COMPLETED_OR_LATER, what)
            return []
    raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover


def advance(state: State, event: Event, event_id: ULID) -> State:
    """The state after ``event`` (whose journal id is ``event_id``); ``state`` is unchanged.

    Events are trusted: they were checked by :func:`tell` before they were stored.
    """
    match event:
        case pb.PingRegistryStarted():
            return replace(
                state,
                code=StateCode.INITIALIZED,
                registry=event.registry,
                deadline=from_timestamp(event.deadline),
                started=event_id,
            )
        case pb.ServerPinged():
            ping = Ping(
                code=event.code, message=event.message, pinger=event.pinger, event_id=event_id
            )
            return replace(state, code=StateCode.APPENDING, pings=(*state.pings, ping))
        case pb.ServerPingsGathered():
            pings = tuple(
                Ping(
                    code=p.code,
                    message=p.message,
                    pinger=p.pinger,
                    event_id=ULID.from_bytes(p.event_id),
                )
                for p in event.pings
            )
            summary = Summary(
                code=event.code, message=event.message, pings=pings, event_id=event_id
            )
            return replace(state, code=StateCode.SUMMARIZED, summary=summary)
        case pb.PingRegistryCompleted():
            return replace(state, code=StateCode.COMPLETED)
        case pb.PingRegistryCommitted():
            return replace(state, code=StateCode.TERMINATED)
    raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover


_NAMES: dict[type[Command], str] = {
    Init: "init",
    AppendPing: "append-ping",
    PostSummary: "post-summary",
    AbortExpired: "abort-expired",
    Cancel: "cancel",
    Commit: "commit",
    End: "end",
    Delete: "delete",
}


def _tell_init(state: State, command: Init) -> list[Event]:
    if not command.registry:
        raise InvalidArgument("registry", "must not be empty")
    deadline = to_timestamp(command.deadline)
    if state.code is not StateCode.UNINITIALIZED:
        # A repeated init is a no-op only when it asks for exactly what was recorded.
        check_idempotent("registry", state.registry, command.registry)
        check_idempotent("deadline", state.deadline, command.deadline)
        return []
    return [pb.PingRegistryStarted(registry=command.registry, deadline=deadline)]


def _require(state: State, allowed: tuple[StateCode, ...], what: str) -> None:
    if state.code not in allowed:
        raise WrongState(state.code.value, what)


def _same_summary(summary: Summary, code: int, message: str) -> None:
    check_idempotent("code", summary.code, code)
    check_idempotent("message", summary.message, message)


def _gathered(state: State, code: int, message: str) -> pb.ServerPingsGathered:
    # The summary carries exactly the pings gathered so far, so a reader of
    # this one event needs no earlier ones.
    pings = [
        pb.Ping(code=p.code, message=p.message, pinger=p.pinger, event_id=p.event_id.bytes)
        for p in state.pings
    ]
    return pb.ServerPingsGathered(code=code, message=message, pings=pings)


class PingRegistryBehaviour(ProtoCodec[Event]):
    """The workflow as a :class:`~tailrunner.workflows.behaviour.Behaviour`, for ``Aggregates``."""

    def __init__(self) -> None:
        super().__init__(*EVENT_TYPES)

    def new_state(self, id: UUID) -> State:
        """:func:`~tailrunner.workflows.pingregistry.state.new_state`."""
        return new_state(id)

    def tell(self, state: State, command: Command) -> list[Event]:
        """:func:`tell`."""
        return tell(state, command)

    def advance(self, state: State, event: Event, event_id: ULID) -> State:
        """:func:`advance`."""
        return advance(state, event, event_id)
