"""The ping-registry index: one aggregate per registry, listing its workflows.

The index records, for each workflow of its registry, that it was started,
completed and deleted. Every command is idempotent, because the admin's
commit and the index keeper may both run a step, and either may be
interrupted and run it again:

=====================  ====================  ==========================================
command                entry before          yields
=====================  ====================  ==========================================
``RecordStarted``      none                  started; any other: nothing if the
                                             deadline is the same, else
                                             ArgumentNotIdempotent
``RecordCompleted``    started               completed; completed, deleted: nothing
``RecordDeleted``      completed             deleted; deleted: nothing; started:
                                             WrongState
=====================  ====================  ==========================================

``RecordCompleted`` and ``RecordDeleted`` of a workflow the index never saw
raise :class:`~.errors.UnknownWorkflow`. A deleted entry is kept (as
deleted), so that a late ``RecordStarted`` cannot bring it back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

from ulid import ULID

from tailrunner.proto.v1 import workflows_pb2 as pb
from tailrunner.workflows.behaviour import ProtoCodec, check_idempotent
from tailrunner.workflows.pingregistry.deadlines import from_timestamp, to_timestamp
from tailrunner.workflows.pingregistry.errors import (
    UnknownWorkflow,
    WrongState,
)


class EntryCode(enum.Enum):
    """How far a workflow is, as its registry's index knows it."""

    STARTED = "started"
    COMPLETED = "completed"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexEntry:
    """One workflow in the index."""

    workflow: UUID
    deadline: datetime
    code: EntryCode


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexState:
    """A registry's index: its entries in the order the workflows were started."""

    id: UUID
    entries: tuple[IndexEntry, ...] = ()

    def get(self, workflow: UUID) -> IndexEntry | None:
        """The entry of ``workflow``, or ``None`` when the index never saw it."""
        return next((e for e in self.entries if e.workflow == workflow), None)

    def listed(self) -> tuple[IndexEntry, ...]:
        """The entries not deleted: what ``list`` shows."""
        return tuple(e for e in self.entries if e.code is not EntryCode.DELETED)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordStarted:
    """Record that ``workflow`` was started, with its deadline (timezone-aware)."""

    workflow: UUID
    deadline: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordCompleted:
    """Record that ``workflow`` was completed: the commit's middle step."""

    workflow: UUID


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordDeleted:
    """Remove the completed ``workflow`` from the index."""

    workflow: UUID


IndexCommand = RecordStarted | RecordCompleted | RecordDeleted
"""Every command of the index."""

IndexEvent = pb.IndexWorkflowStarted | pb.IndexWorkflowCompleted | pb.IndexWorkflowDeleted
"""Every event of the index."""

INDEX_EVENT_TYPES: tuple[type[IndexEvent], ...] = (
    pb.IndexWorkflowStarted,
    pb.IndexWorkflowCompleted,
    pb.IndexWorkflowDeleted,
)
"""The event classes, to decode a journal event by its type name."""


def new_index_state(index_id: UUID) -> IndexState:
    """The state of an index that has no events yet."""
    return IndexState(id=index_id)


def tell_index(state: IndexState, command: IndexCommand) -> list[IndexEvent]:
    """The events ``command`` yields on the index (none for an idempotent repeat).

    :raises ArgumentNotIdempotent: ``RecordStarted`` again with another deadline.
    :raises UnknownWorkflow: completing or deleting a workflow the index never saw.
    :raises WrongState: deleting a workflow that is not completed; names its state.
    :raises InvalidArgument: a deadline without a timezone.
    """
    entry = state.get(command.workflow)
    workflow_id = command.workflow.bytes
    match command:
        case RecordStarted(deadline=deadline):
            stamp = to_timestamp(deadline)
            if entry is not None:
                check_idempotent("deadline", entry.deadline, deadline)
                return []
            return [pb.IndexWorkflowStarted(workflow_id=workflow_id, deadline=stamp)]
        case RecordCompleted():
            if entry is None:
                raise UnknownWorkflow(command.workflow, "complete")
            if entry.code is not EntryCode.STARTED:
                return []
            return [pb.IndexWorkflowCompleted(workflow_id=workflow_id)]
        case RecordDeleted():
            if entry is None:
                raise UnknownWorkflow(command.workflow, "delete")
            if entry.code is EntryCode.DELETED:
                return []
            if entry.code is not EntryCode.COMPLETED:
                raise WrongState(entry.code.value, "delete")
            return [pb.IndexWorkflowDeleted(workflow_id=workflow_id)]
    raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover


def advance_index(state: IndexState, event: IndexEvent) -> IndexState:
    """The index after ``event``; ``state`` is unchanged.

    Events are trusted: they were checked by :func:`tell_index` before they were stored.
    """
    workflow = UUID(bytes=event.workflow_id)
    match event:
        case pb.IndexWorkflowStarted():
            entry = IndexEntry(
                workflow=workflow,
                deadline=from_timestamp(event.deadline),
                code=EntryCode.STARTED,
            )
            return replace(state, entries=(*state.entries, entry))
        case pb.IndexWorkflowCompleted():
            return _set_code(state, workflow, EntryCode.COMPLETED)
        case pb.IndexWorkflowDeleted():
            return _set_code(state, workflow, EntryCode.DELETED)
    raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover


def _set_code(state: IndexState, workflow: UUID, code: EntryCode) -> IndexState:
    entries = tuple(replace(e, code=code) if e.workflow == workflow else e for e in state.entries)
    return replace(state, entries=entries)


class IndexBehaviour(ProtoCodec[IndexEvent]):
    """The index as a :class:`~tailrunner.workflows.behaviour.Behaviour`, for ``Aggregates``."""

    def __init__(self) -> None:
        super().__init__(*INDEX_EVENT_TYPES)

    def new_state(self, id: UUID) -> IndexState:
        """The state of an index that has no events yet."""
        return new_index_state(id)

    def tell(self, state: IndexState, command: IndexCommand) -> list[IndexEvent]:
        """:func:`tell_index`."""
        return tell_index(state, command)

    def advance(self, state: IndexState, event: IndexEvent, event_id: ULID) -> IndexState:
        """:func:`advance_index`; the index has no use for ``event_id``."""
        return advance_index(state, event)
