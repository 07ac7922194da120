"""An operation's state as its events made it, and the ``Operation`` message it shows.

States use one vocabulary, seed 002's job states where they fit
(:class:`StateCode`); :data:`FILTER_NAMES` maps them to the names seed 000's
``ListOperations`` filter uses (``state=RUNNING|SUCCEEDED|FAILED|CANCELLED``).

An :class:`OperationState` is a frozen value; its protobuf fields
(``metadata``, ``response``, ``error``) are shared by cached states and must
be treated as read-only: :func:`to_operation` copies them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import TypeAlias
from uuid import UUID

# googleapis-common-protos ships .pyi files but no py.typed marker, so mypy will not
# read them: Operation is Any to it.
from google.longrunning import operations_proto_pb2
from google.protobuf import any_pb2, empty_pb2
from google.rpc import code_pb2, status_pb2

Operation: TypeAlias = operations_proto_pb2.Operation
"""``google.longrunning.Operation`` (the same class as ``operations_pb2.Operation``)."""

#: The message of the error a cancelled operation carries (code ``CANCELLED``).
CANCELLED_MESSAGE = "the operation was cancelled"


class StateCode(enum.StrEnum):
    """How far an operation is (seed 002's job states; the spellings of :class:`~tailrunner.
    states.TaskState` where they share a name)."""

    UNKNOWN = "UNKNOWN"
    """No event yet: the operation does not exist."""
    PENDING = "PENDING"
    """Created; its metadata was never updated."""
    RUNNING = "RUNNING"
    """Its metadata was updated at least once (the service reports progress)."""
    COMPLETE = "COMPLETE"
    """Finished successfully: it has a ``response``."""
    FAIL = "FAIL"
    """Finished with an error other than ``CANCELLED``."""
    STOPPED = "STOPPED"
    """Cancelled: finished with ``error.code == CANCELLED`` (1)."""


#: The states of a finished operation (``done``).
TERMINAL: frozenset[StateCode] = frozenset({StateCode.COMPLETE, StateCode.FAIL, StateCode.STOPPED})

#: Each state's name in seed 000's ``state=`` filter; a pending operation counts as running.
FILTER_NAMES: Mapping[StateCode, str] = MappingProxyType(
    {
        StateCode.PENDING: "RUNNING",
        StateCode.RUNNING: "RUNNING",
        StateCode.COMPLETE: "SUCCEEDED",
        StateCode.FAIL: "FAILED",
        StateCode.STOPPED: "CANCELLED",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationState:
    """One operation as its events have made it.

    :ivar id: the aggregate id.
    :ivar name: ``operations/{id}``; empty until created.
    :ivar parent: the parent operation's name, ``None`` for a top-level one.
    :ivar kind: what the operation does, as its service named it ("" if not).
    :ivar metadata: the latest metadata, ``None`` if never set.
    :ivar response: set once ``COMPLETE`` (an ``Empty`` when there was no result).
    :ivar error: set once ``FAIL`` or ``STOPPED``.
    :ivar cancel_requested: someone asked for a cancel (it may have finished otherwise).
    :ivar deleted: deleted after it finished: it is not found any more.
    :ivar create_time: the time of its first event.
    :ivar update_time: the time of its latest event.
    """

    id: UUID
    code: StateCode = StateCode.UNKNOWN
    name: str = ""
    parent: str | None = None
    kind: str = ""
    metadata: any_pb2.Any | None = None
    response: any_pb2.Any | None = None
    error: status_pb2.Status | None = None
    cancel_requested: bool = False
    deleted: bool = False
    create_time: datetime | None = None
    update_time: datetime | None = None

    @property
    def done(self) -> bool:
        """Finished: succeeded, failed or cancelled."""
        return self.code in TERMINAL

    @property
    def exists(self) -> bool:
        """Created and not deleted: what a caller may see."""
        return self.code is not StateCode.UNKNOWN and not self.deleted


def new_state(id: UUID) -> OperationState:
    """The state of an operation without events."""
    return OperationState(id=id)


def cancelled_status() -> status_pb2.Status:
    """The error of a cancelled operation (a new message each time)."""
    return status_pb2.Status(code=code_pb2.CANCELLED, message=CANCELLED_MESSAGE)


def to_operation(state: OperationState) -> Operation:
    """The ``google.longrunning.Operation`` that shows ``state``.

    A done operation carries exactly one of ``response`` or ``error`` (what
    google-api-core's clients need): a succeeded one without a response
    shows a packed ``google.protobuf.Empty``.
    """
    operation = Operation(name=state.name, done=state.done)
    if state.metadata is not None:
        operation.metadata.CopyFrom(state.metadata)
    if state.code is StateCode.COMPLETE:
        if state.response is not None:
            operation.response.CopyFrom(state.response)
        else:
            operation.response.Pack(empty_pb2.Empty())
    elif state.done:
        operation.error.CopyFrom(state.error if state.error is not None else cancelled_status())
    return operation
