"""An operation's commands and its pure behaviour: tell and advance.

``tell(state, command)`` checks a command against the state and returns the
events it yields (none when it would change nothing) or raises an error
naming the operation and its state; ``advance(state, event, event_id)``
returns the state after one event. Neither does I/O nor mutates anything.

==================  ==========================  ====================================
command             allowed in                  yields
==================  ==========================  ====================================
``Create``          unknown                     created; else OperationAlreadyExists
``UpdateMetadata``  pending, running            metadata-updated
``SetSuccessful``   pending, running            succeeded
``SetFailed``       pending, running            failed (code 1: a cancelled operation)
``RequestCancel``   pending, running            cancel-requested; once requested, or
                                                when done: nothing
``SetCancelled``    pending, running            cancelled
``Delete``          complete, fail, stopped     deleted; else OperationNotDone
==================  ==========================  ====================================

Finishing a finished operation (``SetSuccessful``, ``SetFailed``,
``SetCancelled``), or updating its metadata, raises
:class:`~tailrunner.errors.OperationFinished` (AIP-151: a finished operation
cannot be finished again) -- except a repeat of the finish it recorded (the
same response or error, and no other metadata), which yields nothing: a
caller that retries a finish after a timeout, not knowing whether it landed,
succeeds without finishing anything twice.

Any command but ``Create`` on an operation that does not exist, or was
deleted, raises :class:`~tailrunner.errors.OperationNotFound`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from uuid import UUID

from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2
from ulid import ULID

from tailrunner.errors import (
    InvalidArgument,
    OperationAlreadyExists,
    OperationFinished,
    OperationNotDone,
    OperationNotFound,
)
from tailrunner.operations.names import parse_name
from tailrunner.operations.state import (
    OperationState,
    StateCode,
    cancelled_status,
    new_state,
)
from tailrunner.proto.v1 import operations_pb2 as pb
from tailrunner.workflows.behaviour import ProtoCodec


@dataclass(frozen=True, slots=True, kw_only=True)
class Create:
    """Create the operation ``name`` (``operations/{id}``), a child of ``parent`` if set."""

    name: str
    parent: str | None = None
    metadata: any_pb2.Any | None = None
    kind: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateMetadata:
    """Replace the operation's metadata (its progress)."""

    metadata: any_pb2.Any


@dataclass(frozen=True, slots=True, kw_only=True)
class SetSuccessful:
    """Finish the operation with ``response``; ``metadata``, if set, replaces the metadata."""

    response: any_pb2.Any
    metadata: any_pb2.Any | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetFailed:
    """Finish the operation with ``error`` (never code 0, OK).

    An error with code 1 (``CANCELLED``) makes it a cancelled operation
    (``STOPPED``): what google-api-core's ``cancelled()`` says of it.
    """

    error: status_pb2.Status
    metadata: any_pb2.Any | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCancel:
    """Ask whoever works on the operation to cancel it (best effort)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SetCancelled:
    """Finish the operation as cancelled (``error.code == CANCELLED``)."""

    metadata: any_pb2.Any | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    """Delete the finished operation: it is not found afterwards."""


Command = (
    Create | UpdateMetadata | SetSuccessful | SetFailed | RequestCancel | SetCancelled | Delete
)
"""Every command of an operation."""

Event = (
    pb.OperationCreated
    | pb.OperationMetadataUpdated
    | pb.OperationSucceeded
    | pb.OperationFailed
    | pb.OperationCancelRequested
    | pb.OperationCancelled
    | pb.OperationDeleted
)
"""Every event of an operation."""

EVENT_TYPES: tuple[type[Event], ...] = (
    pb.OperationCreated,
    pb.OperationMetadataUpdated,
    pb.OperationSucceeded,
    pb.OperationFailed,
    pb.OperationCancelRequested,
    pb.OperationCancelled,
    pb.OperationDeleted,
)
"""The event classes, to decode a journal event by its type name."""

_NAMES: dict[type[Command], str] = {
    Create: "create",
    UpdateMetadata: "update-metadata",
    SetSuccessful: "set-successful",
    SetFailed: "set-failed",
    RequestCancel: "request-cancel",
    SetCancelled: "set-cancelled",
    Delete: "delete",
}


def tell(state: OperationState, command: Command) -> list[Event]:
    """The events ``command`` yields in ``state`` (none when it changes nothing).

    :raises OperationAlreadyExists: ``Create`` on an operation that has events.
    :raises OperationNotFound: any other command on an operation that does not
        exist or was deleted.
    :raises OperationFinished: a finish (other than a repeat of the recorded
        one) or a metadata update on a finished operation.
    :raises OperationNotDone: ``Delete`` on an unfinished operation.
    :raises InvalidOperationName: ``Create`` with a malformed name or parent.
    :raises InvalidArgument: ``SetFailed`` with code 0 (OK).
    """
    if isinstance(command, Create):
        return _tell_create(state, command)
    if not state.exists:
        raise OperationNotFound(_name(state))
    what = _NAMES[type(command)]
    match command:
        case UpdateMetadata(metadata=metadata):
            _require_unfinished(state, what)
            return [pb.OperationMetadataUpdated(metadata=metadata)]
        case SetSuccessful(response=response, metadata=metadata):
            if _repeats_finish(state, StateCode.COMPLETE, response, None, metadata, what):
                return []
            return [pb.OperationSucceeded(response=response, metadata=metadata)]
        case SetFailed(error=error, metadata=metadata):
            if error.code == code_pb2.OK:
                raise InvalidArgument("error.code", "must not be 0 (OK): a failure needs a code")
            code = StateCode.STOPPED if error.code == code_pb2.CANCELLED else StateCode.FAIL
            if _repeats_finish(state, code, None, error, metadata, what):
                return []
            return [pb.OperationFailed(error=error, metadata=metadata)]
        case RequestCancel():
            if state.done or state.cancel_requested:
                return []
            return [pb.OperationCancelRequested()]
        case SetCancelled(metadata=metadata):
            if _repeats_finish(state, StateCode.STOPPED, None, cancelled_status(), metadata, what):
                return []
            return [pb.OperationCancelled(metadata=metadata)]
        case Delete():
            if not state.done:
                raise OperationNotDone(state.name, state.code.value, what)
            return [pb.OperationDeleted()]
    raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover


def advance(state: OperationState, event: Event, event_id: ULID) -> OperationState:
    """The state after ``event`` (whose journal id is ``event_id``); ``state`` is unchanged.

    Events are trusted: they were checked by :func:`tell` before they were stored.
    """
    time = event_id.datetime
    match event:
        case pb.OperationCreated():
            return replace(
                state,
                code=StateCode.PENDING,
                name=event.name,
                parent=event.parent or None,
                kind=event.kind,
                metadata=event.metadata if event.HasField("metadata") else None,
                create_time=time,
                update_time=time,
            )
        case pb.OperationMetadataUpdated():
            return replace(state, code=StateCode.RUNNING, metadata=event.metadata, update_time=time)
        case pb.OperationSucceeded():
            return replace(
                state,
                code=StateCode.COMPLETE,
                response=event.response,
                metadata=_final_metadata(state, event),
                update_time=time,
            )
        case pb.OperationFailed():
            cancelled = event.error.code == code_pb2.CANCELLED
            return replace(
                state,
                code=StateCode.STOPPED if cancelled else StateCode.FAIL,
                error=event.error,
                metadata=_final_metadata(state, event),
                update_time=time,
            )
        case pb.OperationCancelRequested():
            return replace(state, cancel_requested=True, update_time=time)
        case pb.OperationCancelled():
            return replace(
                state,
                code=StateCode.STOPPED,
                error=cancelled_status(),
                metadata=_final_metadata(state, event),
                update_time=time,
            )
        case pb.OperationDeleted():
            return replace(state, deleted=True, update_time=time)
    raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover


def metadata_of(event: Event) -> any_pb2.Any | None:
    """The metadata ``event`` sets (``None`` when it leaves the metadata as it was).

    What a waiter's ``on_metadata`` sees: each update, and a finish's final metadata.
    """
    match event:
        case pb.OperationMetadataUpdated():
            return event.metadata
        case (
            pb.OperationCreated()
            | pb.OperationSucceeded()
            | pb.OperationFailed()
            | pb.OperationCancelled()
        ):
            return event.metadata if event.HasField("metadata") else None
    return None


def _tell_create(state: OperationState, command: Create) -> list[Event]:
    parse_name(command.name)
    if command.parent is not None:
        parse_name(command.parent, field="parent")
    if state.code is not StateCode.UNKNOWN:
        raise OperationAlreadyExists(state.name or command.name)
    return [
        pb.OperationCreated(
            name=command.name,
            parent=command.parent or "",
            metadata=command.metadata,
            kind=command.kind,
        )
    ]


def _name(state: OperationState) -> str:
    # Only a created operation knows its name; the caller names the others.
    return state.name or f"operation {state.id}"


def _require_unfinished(state: OperationState, what: str) -> None:
    if state.done:
        raise OperationFinished(state.name, state.code.value, what)


def _repeats_finish(  # noqa: PLR0917 (the parts of one finish, in their order)
    state: OperationState,
    code: StateCode,
    response: any_pb2.Any | None,
    error: status_pb2.Status | None,
    metadata: any_pb2.Any | None,
    what: str,
) -> bool:
    """Whether a finish repeats the recorded one; refuses any other finish of a finished one."""
    if not state.done:
        return False
    same = (
        state.code is code
        and state.response == response
        and state.error == error
        and (metadata is None or metadata == state.metadata)
    )
    if not same:
        raise OperationFinished(state.name, state.code.value, what)
    return True


def _final_metadata(
    state: OperationState,
    event: pb.OperationSucceeded | pb.OperationFailed | pb.OperationCancelled,
) -> any_pb2.Any | None:
    return event.metadata if event.HasField("metadata") else state.metadata


class OperationBehaviour(ProtoCodec[Event]):
    """An operation as a :class:`~tailrunner.workflows.behaviour.Behaviour`, for ``Aggregates``."""

    def __init__(self) -> None:
        super().__init__(*EVENT_TYPES)

    def new_state(self, id: UUID) -> OperationState:
        """:func:`~tailrunner.operations.state.new_state`."""
        return new_state(id)

    def tell(self, state: OperationState, command: Command) -> list[Event]:
        """:func:`tell`."""
        return tell(state, command)

    def advance(self, state: OperationState, event: Event, event_id: ULID) -> OperationState:
        """:func:`advance`."""
        return advance(state, event, event_id)
