"""What the ``google.longrunning.Operations`` service shows: operations of every kind.

An operation the service shows is an aggregate of one of its **sources**:
the library's own operations (aggregate type ``operation``), or a workflow
(a ping-registry workflow is ``operations/{workflow uuid}``). Each source
says how one of its aggregates looks as an :class:`OperationView` and how it
is cancelled and deleted; the service finds the source by the aggregate's
type, and waits on any of them the same way, by the journal's push of the
aggregate's next events after the view's ``version``.

:class:`LibrarySource` is the source of the library's operations
(:class:`~tailrunner.operations.manager.Operations`); the ping-registry
workflows' is :class:`~tailrunner.operations.pingregistry.PingRegistrySource`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from ulid import ULID

from tailrunner.errors import AggregateTypeMismatch, OperationNotFound
from tailrunner.journal.api import JournalApi
from tailrunner.operations.behaviour import OperationBehaviour
from tailrunner.operations.manager import OPERATION_TYPE, Operations
from tailrunner.operations.names import operation_name
from tailrunner.operations.state import (
    TERMINAL,
    Operation,
    OperationState,
    StateCode,
    to_operation,
)
from tailrunner.workflows.aggregates import DEFAULT_CACHE_SIZE, Aggregates


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


class LibrarySource:
    """The library's operations (aggregate type ``operation``) as an :class:`OperationSource`.

    Views are made from the operation's state and version, loaded through an
    ``Aggregates`` of its own (:class:`Operations` keeps its version to itself);
    cancels and deletes go through :class:`Operations`, so the library's rules
    apply.

    **Cancel records the request, nothing more** (AIP-151: best effort). The
    code that works on the operation sees it
    (:meth:`Operations.until_cancel_requested`) and finishes it, usually with
    :meth:`Operations.set_cancelled`. The service does not mark the
    operation cancelled itself, not even when nobody seems to work on it: it
    cannot tell a worker that is gone from one between two steps or about to
    start, and finishing the operation under a live worker would turn that
    worker's own finish into ``OperationFinished`` and lose its result. An
    operation nobody works on stays not done, with its cancel requested.
    """

    def __init__(
        self,
        journal: JournalApi,
        operations: Operations | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        """:param operations: the library to cancel and delete through (a new one by default).
        :param cache_size: how many operations' states the views keep (LRU).
        """
        self._operations = operations if operations is not None else Operations(journal)
        self._states = Aggregates(
            journal, OperationBehaviour(), OPERATION_TYPE, cache_size=cache_size
        )

    @property
    def aggregate_type(self) -> str:
        return OPERATION_TYPE

    @property
    def operations(self) -> Operations:
        """The library this source cancels and deletes through."""
        return self._operations

    async def view(self, aggregate_id: UUID) -> OperationView | None:
        loaded = await self._load(aggregate_id)
        if loaded is None:
            return None
        state, version = loaded
        assert state.create_time is not None and state.update_time is not None
        return OperationView(
            operation=to_operation(state),
            kind=state.kind,
            state=state.code,
            parent=state.parent,
            create_time=state.create_time,
            update_time=state.update_time,
            version=version,
        )

    async def cancel(self, aggregate_id: UUID) -> None:
        """Record a cancel request (see the class docstring); a done operation is left as is."""
        await self._operations.request_cancel(await self._name(aggregate_id))

    async def delete(self, aggregate_id: UUID) -> None:
        """Delete the done operation.

        :raises OperationNotDone: it is not done.
        """
        await self._operations.delete(await self._name(aggregate_id))

    async def _load(self, aggregate_id: UUID) -> tuple[OperationState, ULID] | None:
        try:
            state, version = await self._states.load(aggregate_id)
        except AggregateTypeMismatch:
            return None
        if version is None or not state.exists:
            return None
        return state, version

    async def _name(self, aggregate_id: UUID) -> str:
        # A name chosen by its creator maps to its id by uuid5: only the state knows it.
        loaded = await self._load(aggregate_id)
        if loaded is None:
            raise OperationNotFound(operation_name(str(aggregate_id)))
        return loaded[0].name
