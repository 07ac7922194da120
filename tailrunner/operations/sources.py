"""What the ``google.longrunning.Operations`` service shows: operations of every kind.

An operation the service shows is an aggregate of one of its **sources**:
the library's own operations (aggregate type ``operation``), or a workflow
(a ping-registry workflow is ``operations/{workflow uuid}``). Each source
says how one of its aggregates looks as an :class:`OperationView` and how it
is cancelled and deleted; the service finds the source by the aggregate's
type, and waits on any of them the same way, by the journal's push of the
aggregate's next events after the view's ``version``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from ulid import ULID

from tailrunner.operations.state import TERMINAL, Operation, StateCode


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationView:
    """One operation as the service shows it, whatever its source.

    :ivar operation: the ``google.longrunning.Operation`` (a done one
        carries exactly one of ``response`` or ``error``).
    :ivar kind: what it is: ``""`` or the service's own kind for a library
        operation, ``"ping-registry"`` for that workflow, …
    :ivar state: its state in the one vocabulary of :class:`StateCode`.
    :ivar parent: the parent operation's name, or ``None``.
    :ivar create_time: the time of its first event (the list is ordered by it).
    :ivar update_time: the time of its newest event.
    :ivar version: its aggregate's head when this view was made: a waiter
        reads the events after it.
    """

    operation: Operation
    kind: str
    state: StateCode
    parent: str | None
    create_time: datetime
    update_time: datetime
    version: ULID

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


class OperationSource(Protocol):
    """The aggregates of one type, shown as operations."""

    @property
    def aggregate_type(self) -> str:
        """The journal aggregate type whose aggregates this source shows."""
        ...

    async def view(self, aggregate_id: UUID) -> OperationView | None:
        """The operation of aggregate ``aggregate_id``; ``None`` when it has none to show
        (no events, or deleted).
        """
        ...

    async def cancel(self, aggregate_id: UUID) -> None:
        """Ask for the operation to be cancelled (best effort).

        A terminal operation is left as it is. Otherwise the request is
        recorded as an event first; whoever works on the operation then sees
        it and stops; the operation ends with ``error.code = CANCELLED``.
        """
        ...

    async def delete(self, aggregate_id: UUID) -> None:
        """Delete a done operation: it is not found afterwards.

        :raises OperationNotDone: (or the source's refusal that maps to
            ``FAILED_PRECONDITION``) the operation is not done.
        """
        ...
