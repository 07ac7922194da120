"""``Hub``: in-process fan-out of committed appends to watchers and signal subscribers.

The store calls :meth:`Hub.notify` (an append listener) right after each
commit, on the event loop. The hub wakes the aggregate's watchers there and
then, in the same step of the loop, and records a signal for every
subscriber: nothing polls.

A subscriber's pending signals are a dict keyed by aggregate, so a reader that
falls behind sees only the newest head of each aggregate. The dict is bounded:
when a slow reader would make it grow past ``max_pending``, the hub drops it
and owes that reader a resync instead. An append never waits for a reader.
Every subscriber also starts owing a resync: it may have missed appends
before it subscribed, and its first batch tells it so.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from uuid import UUID

import anyio
import structlog
from ulid import ULID

from tailrunner.model import AggregateRef, Signal, SignalBatch

log = structlog.get_logger(__name__)

#: How many aggregates a subscriber may have pending before it gets a resync.
DEFAULT_MAX_PENDING = 10_000


class Watcher:
    """Woken by every append to one aggregate; see :meth:`Hub.watch`."""

    __slots__ = ("_closed", "_event", "head")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._closed = False
        #: The newest head the hub reported (``None`` until the first append).
        self.head: ULID | None = None

    @property
    def notified(self) -> bool:
        """An append (or the hub's closing) happened since the last :meth:`wait`."""
        return self._event.is_set()

    @property
    def closed(self) -> bool:
        """The hub closed: no more wake-ups will come."""
        return self._closed

    async def wait(self) -> bool:
        """Wait for an append after the watch began or after the last wait.

        An append that happened while the caller was busy is not lost: the
        wait then returns at once.

        :returns: ``True`` after an append; ``False`` once the hub closed.
        """
        if not self._event.is_set():
            await self._event.wait()
        if self._closed:
            return False
        self._event = anyio.Event()
        return True

    def _wake(self, head: ULID) -> None:
        self.head = head
        self._event.set()

    def _nudge(self) -> None:
        # Wake without a head: the reader re-reads from its own cursor.
        self._event.set()

    def _close(self) -> None:
        self._closed = True
        self._event.set()


class Subscriber:
    """Receives coalesced signals of appends; see :meth:`Hub.subscribe`."""

    __slots__ = ("_closed", "_event", "_max_pending", "_pending", "_resync", "_types")

    def __init__(self, aggregate_types: frozenset[str], max_pending: int) -> None:
        self._types = aggregate_types
        self._max_pending = max_pending
        self._pending: dict[UUID, tuple[str, ULID]] = {}
        # Owed from the start: appends before the subscription were not seen.
        self._resync = True
        self._closed = False
        self._event = anyio.Event()

    @property
    def pending(self) -> int:
        """How many aggregates have a signal waiting to be taken."""
        return len(self._pending)

    async def take(self) -> SignalBatch | None:
        """Wait for signals and take all that are pending.

        :returns: the signals (newest head per aggregate) and whether signals
            were dropped (``resync``); ``None`` once the hub closed.
        """
        while not (self._pending or self._resync):
            if self._closed:
                return None
            await self._event.wait()
            self._event = anyio.Event()
        if self._closed:
            return None
        pending, self._pending = self._pending, {}
        resync, self._resync = self._resync, False
        signals = tuple(
            Signal(aggregate_type=type_, aggregate_id=aggregate_id, head=head)
            for aggregate_id, (type_, head) in pending.items()
        )
        return SignalBatch(signals=signals, resync=resync)

    def _offer(self, aggregate: AggregateRef, head: ULID) -> None:
        if self._types and aggregate.type not in self._types:
            return
        if self._resync:
            # The reader re-checks everything once it takes the resync,
            # which includes this append: nothing to keep.
            return
        pending = self._pending
        if len(pending) >= self._max_pending and aggregate.id not in pending:
            pending.clear()
            self._resync = True
            log.warning("signals_dropped", max_pending=self._max_pending)
        else:
            pending[aggregate.id] = (aggregate.type, head)
        self._event.set()

    def _owe_resync(self) -> None:
        self._pending.clear()
        self._resync = True
        self._event.set()

    def _close(self) -> None:
        self._closed = True
        self._event.set()


class Hub:
    """Fans out committed appends to :class:`Watcher` and :class:`Subscriber` objects.

    Register :meth:`notify` with the store (``store.add_listener(hub.notify, hub.resync)``).
    Everything runs on the event loop; nothing here blocks.
    """

    def __init__(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        """:param max_pending: the bound of each subscriber's pending signals."""
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._max_pending = max_pending
        self._watchers: dict[UUID, set[Watcher]] = {}
        self._subscribers: set[Subscriber] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        """:meth:`close` was called: watches and subscriptions end at once."""
        return self._closed

    @property
    def subscriber_count(self) -> int:
        """Open signal subscriptions (for status)."""
        return len(self._subscribers)

    @property
    def watcher_count(self) -> int:
        """Open watches, over all aggregates (for status)."""
        return sum(len(watchers) for watchers in self._watchers.values())

    def notify(self, aggregate: AggregateRef, head: ULID) -> None:
        """Wake the aggregate's watchers and signal the subscribers (an ``AppendListener``)."""
        watchers = self._watchers.get(aggregate.id)
        if watchers:
            for watcher in watchers:
                watcher._wake(head)
        for subscriber in self._subscribers:
            subscriber._offer(aggregate, head)

    def resync(self) -> None:
        """Appends may have been missed (the store lost its notifications from other servers).

        Every watcher wakes and re-reads from its cursor; every subscriber
        gets a resync in its next batch, as a slow reader does.
        """
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher._nudge()
        for subscriber in self._subscribers:
            subscriber._owe_resync()

    @contextmanager
    def watch(self, aggregate_id: UUID) -> Iterator[Watcher]:
        """Watch one aggregate for as long as the ``with`` block runs.

        Enter it *before* reading the aggregate: an append that commits after
        the read then still wakes the watcher, so none is missed.
        """
        watcher = Watcher()
        if self._closed:
            watcher._close()
            yield watcher
            return
        watchers = self._watchers.setdefault(aggregate_id, set())
        watchers.add(watcher)
        try:
            yield watcher
        finally:
            watchers.discard(watcher)
            if not watchers and self._watchers.get(aggregate_id) is watchers:
                del self._watchers[aggregate_id]

    @contextmanager
    def subscribe(self, aggregate_types: Iterable[str] = ()) -> Iterator[Subscriber]:
        """Receive signals for the given aggregate types (all when empty) within the block.

        The first :meth:`Subscriber.take` gives a resync at once: whatever
        happened before the subscription must be checked once; every append
        from then on is signalled.
        """
        subscriber = Subscriber(frozenset(aggregate_types), self._max_pending)
        if self._closed:
            subscriber._close()
            yield subscriber
            return
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)

    def close(self) -> None:
        """Wake every watcher and subscriber for the last time: the journal is stopping."""
        self._closed = True
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher._close()
        for subscriber in self._subscribers:
            subscriber._close()
