"""``Operations``: AIP-151 long-running operations kept as aggregates in the journal.

Service authors call it to create, update, finish and wait for the
operations of their own long-running methods (seed 001's library, on the
journal); the ``google.longrunning.Operations`` servicer is built on it.

Each operation is an aggregate of type :data:`OPERATION_TYPE` (its events in
``operations.proto``, its rules in :mod:`tailrunner.operations.behaviour`);
each parent has a children index (:mod:`tailrunner.operations.children`).

Waiting is pushed, never polled: a waiter loads the operation, and unless it
is done reads the journal's events after the version it loaded with
``watch=True``. The journal serves every event after that version, the ones
appended between the load and the subscription included, then blocks until
the next one: no completion can fall between the check and the wait, and a
waiter learns of it as soon as the journal has it. Each waiter holds one
watch stream of the journal while it waits (the journal serves each from its
in-memory hub: no store read until an event lands).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass
from uuid import UUID

import anyio
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from ulid import ULID

from tailrunner.errors import (
    AggregateTypeMismatch,
    InvalidArgument,
    JournalUnavailable,
    OperationAlreadyExists,
    OperationNotFound,
    WaitDeadlineExceeded,
)
from tailrunner.journal.api import JournalApi
from tailrunner.operations.behaviour import (
    Command,
    Create,
    Delete,
    Event,
    OperationBehaviour,
    RequestCancel,
    SetCancelled,
    SetFailed,
    SetSuccessful,
    UpdateMetadata,
    metadata_of,
)
from tailrunner.operations.children import (
    CHILDREN_TYPE,
    AddChild,
    ChildrenBehaviour,
    decode_page_token,
    encode_page_token,
)
from tailrunner.operations.messages import pack, pack_optional, pack_response, status_of
from tailrunner.operations.names import (
    check_id,
    children_index_id,
    new_id,
    operation_name,
    parse_name,
)
from tailrunner.operations.state import Operation, OperationState, to_operation
from tailrunner.workflows.aggregates import DEFAULT_CACHE_SIZE, RETRY_NO_VC, Aggregates

#: The aggregate type of an operation.
OPERATION_TYPE = "operation"
#: Children listed per page when the caller does not say (AIP-158).
DEFAULT_PAGE_SIZE = 50
#: The most children per page; a larger page size is coerced down to it.
MAX_PAGE_SIZE = 1000
#: How many children's states a listing loads at once.
_LOAD_CONCURRENCY = 16

MetadataCallback = Callable[[any_pb2.Any], Awaitable[None] | None]
"""Called with each metadata an operation gets while it is waited for (sync or async)."""


@dataclass(frozen=True, slots=True)
class OperationNode:
    """An operation and its children, as :meth:`Operations.traverse` found them.

    :ivar children: empty for a leaf, or at the depth limit.
    """

    name: str
    children: tuple[OperationNode, ...] = ()


class Operations:
    """The long-running operations in one journal.

    Every method that takes a ``name`` raises
    :class:`~tailrunner.errors.InvalidOperationName` for a malformed one and
    :class:`~tailrunner.errors.OperationNotFound` for an operation that does
    not exist, was deleted, or is an aggregate of another type; and
    :class:`~tailrunner.errors.JournalUnavailable` when the journal cannot be
    reached. Concurrent writers are safe: each command is decided on the
    operation's newest state (``RETRY_NO_VC``).
    """

    def __init__(self, journal: JournalApi, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        """:param cache_size: how many operations' states are kept (LRU)."""
        self._journal = journal
        self._behaviour = OperationBehaviour()
        self._operations = Aggregates(
            journal, self._behaviour, OPERATION_TYPE, cache_size=cache_size
        )
        self._children = Aggregates(
            journal, ChildrenBehaviour(), CHILDREN_TYPE, cache_size=cache_size
        )

    # -- create and read ------------------------------------------------------

    async def create(
        self,
        id: str | None = None,
        *,
        parent: str | None = None,
        metadata: Message | None = None,
        kind: str = "",
    ) -> Operation:
        """Create an operation (not done) named ``operations/{id}``.

        :param id: the caller's id (a UUID's text, or 1 to 63 of
            ``[a-z0-9-]``); a new UUID by default. Ids are never reused.
        :param parent: the operation this one works for (see
            :func:`~tailrunner.operations.propagation.parent_from_context`); it
            must exist, and lists this one among its children.
        :param metadata: the first metadata (an ``Any``, or a message to pack).
        :param kind: what the operation does, for listings ("" if unsaid).
        :raises InvalidOperationName: ``id`` or ``parent`` is malformed.
        :raises OperationAlreadyExists: an operation (or another aggregate) has the id;
            of two concurrent creates of one id, exactly one succeeds.
        :raises OperationNotFound: the parent does not exist (names the parent).
        """
        if id is None:
            id = new_id()
        aggregate = check_id(id)
        name = operation_name(id)
        if parent is not None:
            parent_id = parse_name(parent, field="parent")
            await self._load(parent, parent_id)
            # The index first: an entry whose create then fails is skipped by
            # readers, while a child missing from the index would stay hidden.
            await self._children.tell(
                children_index_id(parent_id), AddChild(name=name), RETRY_NO_VC
            )
        command = Create(name=name, parent=parent, metadata=pack_optional(metadata), kind=kind)
        try:
            await self._operations.tell(aggregate, command, RETRY_NO_VC)
        except AggregateTypeMismatch as exc:
            raise OperationAlreadyExists(name) from exc
        state, _ = await self._load(name, aggregate)
        return to_operation(state)

    async def get(self, name: str) -> Operation:
        """The operation ``name`` as it is now."""
        return to_operation(await self.get_state(name))

    async def get_state(self, name: str) -> OperationState:
        """The state behind :meth:`get`: also its state code, kind, parent and times."""
        state, _ = await self._load(name, parse_name(name))
        return state

    # -- change ---------------------------------------------------------------

    async def update_metadata(self, name: str, metadata: Message) -> Operation:
        """Replace the operation's metadata (its progress); waiters see it at once.

        :raises OperationFinished: the operation is finished.
        """
        return await self._tell(name, UpdateMetadata(metadata=pack(metadata)))

    async def set_successful(
        self, name: str, response: Message | None = None, metadata: Message | None = None
    ) -> Operation:
        """Finish the operation with ``response`` (``google.protobuf.Empty`` for ``None``).

        :param metadata: when set, the final metadata.
        :raises OperationFinished: it finished already, otherwise than this
            call would finish it (a repeat of the same finish changes nothing).
        """
        command = SetSuccessful(response=pack_response(response), metadata=pack_optional(metadata))
        return await self._tell(name, command)

    async def set_failed(
        self,
        name: str,
        error: status_pb2.Status | BaseException,
        metadata: Message | None = None,
    ) -> Operation:
        """Finish the operation with ``error``.

        :param error: a ``google.rpc.Status`` (code not 0), or an exception:
            its gRPC code if it carries one, else ``UNKNOWN``, and its text
            (see :func:`~tailrunner.operations.messages.status_of`). Code 1
            (``CANCELLED``) makes it a cancelled operation.
        :param metadata: when set, the final metadata.
        :raises OperationFinished: it finished already, otherwise than this
            call would finish it.
        :raises InvalidArgument: a status with code 0 (OK).
        """
        command = SetFailed(error=status_of(error), metadata=pack_optional(metadata))
        return await self._tell(name, command)

    async def request_cancel(self, name: str) -> Operation:
        """Ask whoever works on the operation to cancel it (AIP-151's best effort).

        Records the request, which wakes :meth:`until_cancel_requested`; a
        finished operation is left as it is. The worker then finishes it
        (with :meth:`set_cancelled`, or otherwise).
        """
        return await self._tell(name, RequestCancel())

    async def set_cancelled(self, name: str, metadata: Message | None = None) -> Operation:
        """Finish the operation as cancelled: ``error.code`` is 1 (``CANCELLED``).

        :param metadata: when set, the final metadata.
        :raises OperationFinished: it finished already, otherwise than cancelled.
        """
        return await self._tell(name, SetCancelled(metadata=pack_optional(metadata)))

    async def delete(self, name: str) -> None:
        """Delete the finished operation; it is not found afterwards (nor its id reused).

        :raises OperationNotDone: the operation is not finished.
        """
        await self._tell(name, Delete())

    # -- wait -----------------------------------------------------------------

    async def wait(
        self,
        name: str,
        timeout: float | None,  # noqa: ASYNC109 (AIP-151's WaitOperation timeout: not an error)
        on_metadata: MetadataCallback | None = None,
        *,
        raise_on_timeout: bool = False,
    ) -> Operation:
        """The operation once it is done, or as it is after ``timeout`` seconds.

        Returns at once when it is done already; never polls (see the module
        docstring).

        :param timeout: seconds (``None``: no limit); at the timeout the
            operation is returned not done, which is not an error.
        :param on_metadata: called with each metadata the operation gets
            while waited for, in order: every update, and the final metadata
            of the finish when it sets one. An exception it raises ends the
            wait.
        :param raise_on_timeout: at the timeout raise instead of returning.
        :raises InvalidArgument: ``timeout`` is negative or not a number.
        :raises WaitDeadlineExceeded: ``raise_on_timeout`` and the timeout came first.
        """
        deadline = _deadline(timeout)
        aggregate = parse_name(name)
        loaded = await self._load(name, aggregate)
        state = await self._wait_state(
            name, aggregate, loaded, deadline=deadline, on_metadata=on_metadata
        )
        if raise_on_timeout and not state.done:
            assert timeout is not None, "without a timeout the wait ends only when done"
            raise WaitDeadlineExceeded(name, timeout)
        return to_operation(state)

    async def batch_wait(
        self,
        names: Sequence[str],
        timeout: float | None,  # noqa: ASYNC109 (as wait's)
    ) -> list[Operation]:
        """:meth:`wait` for each of ``names`` at once, with one deadline for all.

        :returns: the operations in the order of ``names``, each done or as it
            was at the deadline.
        """
        deadline = _deadline(timeout)
        aggregates = [parse_name(name) for name in names]
        loaded = [
            await self._load(name, aggregate)
            for name, aggregate in zip(names, aggregates, strict=True)
        ]
        states = [state for state, _ in loaded]
        failures: list[Exception] = []

        async def wait_one(index: int) -> None:
            try:
                states[index] = await self._wait_state(
                    names[index],
                    aggregates[index],
                    loaded[index],
                    deadline=deadline,
                    on_metadata=None,
                )
            except Exception as exc:  # reraised below, unwrapped from the task group's group
                failures.append(exc)

        async with anyio.create_task_group() as group:
            for index, (state, _) in enumerate(loaded):
                if not state.done:
                    group.start_soon(wait_one, index)
        if failures:
            raise failures[0]
        return [to_operation(state) for state in states]

    async def cancel_requested(self, name: str) -> bool:
        """Whether a cancel of the operation was requested (it may have finished since)."""
        return (await self.get_state(name)).cancel_requested

    async def until_cancel_requested(self, name: str) -> bool:
        """Wait until a cancel of the operation is requested, or it finished.

        For the code that works on an operation: run it beside the work and
        cancel the work when it returns ``True``. Push, like :meth:`wait`.

        :returns: ``True`` once a cancel was requested, ``False`` when the
            operation finished without one (there is nothing left to cancel).
        """
        aggregate = parse_name(name)
        state, version = await self._load(name, aggregate)
        if state.cancel_requested or state.done:
            return state.cancel_requested
        async with aclosing(self._changes(name, aggregate, state, version)) as changes:
            async for state, _ in changes:
                if state.cancel_requested or state.done:
                    return state.cancel_requested
        raise AssertionError("the watch ended without an error")  # pragma: no cover

    # -- children -------------------------------------------------------------

    async def list_children(
        self, name: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Operation], str]:
        """One page of the operation's children, oldest first, and the next page's token.

        Children created between pages are listed on a later page: a listing
        neither skips nor repeats one. Deleted children are not listed.

        :param page_size: at most this many (0: :data:`DEFAULT_PAGE_SIZE`;
            above :data:`MAX_PAGE_SIZE`: that). A page may hold fewer.
        :param page_token: "" for the first page, else the token the previous
            page gave.
        :returns: the page, and "" when it is the last.
        :raises InvalidArgument: ``page_size`` is negative.
        :raises InvalidPageToken: the token is not one a listing of this
            operation's children gave.
        """
        size = _page_size(page_size)
        parent = parse_name(name)
        await self._load(name, parent)
        index, _ = await self._children.load(children_index_id(parent))
        entries = index.children
        position = decode_page_token(name, parent, page_token, len(entries))
        page: list[Operation] = []
        while position < len(entries) and len(page) < size:
            chunk = entries[position : position + size - len(page)]
            position += len(chunk)
            for state in await self._load_children(chunk):
                if state is not None and state.exists and state.parent == name:
                    page.append(to_operation(state))
        next_token = encode_page_token(parent, position) if position < len(entries) else ""
        return page, next_token

    async def traverse(self, name: str, max_depth: int | None = None) -> OperationNode:
        """The tree of the operation's children, their children, and so on.

        :param max_depth: how many levels below ``name`` (0: ``name`` alone;
            ``None``: the whole tree).
        :raises InvalidArgument: ``max_depth`` is negative.
        """
        if max_depth is not None and max_depth < 0:
            raise InvalidArgument("max_depth", f"must be 0 or more (or unset), not {max_depth}")
        await self.get_state(name)
        return await self._node(name, max_depth, {name})

    # -- internals ------------------------------------------------------------

    async def _load(self, name: str, aggregate: UUID) -> tuple[OperationState, ULID | None]:
        try:
            state, version = await self._operations.load(aggregate)
        except AggregateTypeMismatch as exc:
            raise OperationNotFound(name) from exc
        if not state.exists:
            raise OperationNotFound(name)
        return state, version

    async def _tell(self, name: str, command: Command) -> Operation:
        aggregate = parse_name(name)
        try:
            await self._operations.tell(aggregate, command, RETRY_NO_VC)
        except OperationNotFound:
            # The behaviour knows only the aggregate id of an operation never created.
            raise OperationNotFound(name) from None
        except AggregateTypeMismatch as exc:
            raise OperationNotFound(name) from exc
        # A read of the cached state at the tell's version (or a newer one).
        state, _ = await self._operations.load(aggregate)
        return to_operation(state)

    async def _wait_state(
        self,
        name: str,
        aggregate: UUID,
        loaded: tuple[OperationState, ULID | None],
        *,
        deadline: float,
        on_metadata: MetadataCallback | None,
    ) -> OperationState:
        """The ``loaded`` state advanced until done, or as far as it got by ``deadline``."""
        state, version = loaded
        if state.done:
            return state
        with anyio.CancelScope(deadline=deadline):
            async with aclosing(self._changes(name, aggregate, state, version)) as changes:
                async for state, event in changes:
                    if on_metadata is not None:
                        metadata = metadata_of(event)
                        if metadata is not None:
                            await _call(on_metadata, metadata)
                    if state.done:
                        break
        return state

    async def _changes(
        self, name: str, aggregate: UUID, state: OperationState, version: ULID | None
    ) -> AsyncGenerator[tuple[OperationState, Event], None]:
        """Each state after ``version`` with the event that made it, as the journal has them.

        :raises JournalUnavailable: the journal ended the watch (it shut down).
        """
        stream = self._journal.events(aggregate, after=version, watch=True)
        async with aclosing(stream) as batches:
            async for batch in batches:
                for stored in batch.events:
                    event = self._behaviour.decode(stored.type, stored.data)
                    state = self._behaviour.advance(state, event, stored.id)
                    yield state, event
        raise JournalUnavailable(f"{name}: the journal ended the watch of the operation")

    async def _load_children(self, names: Sequence[str]) -> list[OperationState | None]:
        """The states of ``names`` (``None`` for one that is no operation), loaded at once."""
        states: list[OperationState | None] = [None] * len(names)
        limiter = anyio.CapacityLimiter(_LOAD_CONCURRENCY)

        async def load(index: int) -> None:
            async with limiter:
                # An id taken by another kind of aggregate: not a child.
                with suppress(AggregateTypeMismatch):
                    states[index], _ = await self._operations.load(parse_name(names[index]))

        async with anyio.create_task_group() as group:
            for index in range(len(names)):
                group.start_soon(load, index)
        return states

    async def _all_children(self, name: str) -> list[Operation]:
        children: list[Operation] = []
        token = ""
        while True:
            page, token = await self.list_children(name, MAX_PAGE_SIZE, token)
            children.extend(page)
            if not token:
                return children

    async def _node(self, name: str, depth: int | None, seen: set[str]) -> OperationNode:
        if depth == 0:
            return OperationNode(name)
        nodes: list[OperationNode] = []
        for child in await self._all_children(name):
            # A child's parent is fixed when it is created, after the parent:
            # there are no cycles, but a tree read while it grows stays finite.
            if child.name in seen:
                continue
            seen.add(child.name)
            nodes.append(await self._node(child.name, None if depth is None else depth - 1, seen))
        return OperationNode(name, tuple(nodes))


def _deadline(timeout: float | None) -> float:
    if timeout is None:
        return math.inf
    if math.isnan(timeout) or timeout < 0:
        raise InvalidArgument("timeout", f"must be 0 or more seconds (or None), not {timeout}")
    return anyio.current_time() + timeout


def _page_size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument("page_size", f"must be 0 or more, not {page_size}")
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


async def _call(callback: MetadataCallback, metadata: any_pb2.Any) -> None:
    # A copy: the state keeps the event's message.
    result = callback(pack(metadata))
    if inspect.isawaitable(result):
        await result
