"""``Hub``: in-process fan-out of committed appends to watchers and signal subscribers.

The store calls :meth:`Hub.notify` (an append listener) right after each
commit, on the event loop. The hub wakes the aggregate's watchers there and
records the signal: nothing polls.

Signals live once, in the hub, for every subscriber: a table of the newest
head of each recently appended aggregate, ordered by a sequence number that
each append advances. A subscriber only keeps its cursor, the sequence
number it has read up to, and takes the entries after it: a reader that fell
behind sees the newest head of each aggregate, once. So an append costs the
same whatever the number of subscribers, and subscribers with the same
cursor share one batch (and its encoding, see the journal service).

The table keeps the newest ``max_pending`` aggregates. A reader that fell
further behind than that (an entry it had not read was dropped) gets a
resync instead. An append never waits for a reader. Every subscriber also
starts owing a resync: it may have missed appends before it subscribed, and
its first batch tells it so.

Subscribers are woken together, at most once per *publish interval*, which
grows with their number (``publish_interval_per_subscriber`` each, at most
``max_publish_interval``): sending a message to every subscriber costs the
loop time per subscriber, and under a stream of appends this bounds the
share of the loop the fan-out takes, whatever the number of subscribers. The
first append after a quiet interval is published at once.

Fresh events: the store hands the hub each append's events in their stored
form (:class:`~tailrunner.journal.store.FreshEvents`); the hub keeps them,
bounded (:data:`MAX_FRESH_EVENTS`, :data:`MAX_FRESH_BYTES`; over that:
none), with the watchers' wake-up and with the signal's entry, so that a
woken reader whose cursor is their parent need not read them back. Several
appends before a reader took them are joined when contiguous and within
the bound, else left out: never a gap. The entries share one copy of the
rows (``max_fresh_table_bytes`` in all), whatever the number of subscribers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple
from uuid import UUID

import anyio
import structlog
from ulid import ULID

from tailrunner.journal.store import FreshEvents, takes_fresh_events
from tailrunner.model import AggregateRef, Signal, SignalBatch

log = structlog.get_logger(__name__)

#: How many aggregates the hub remembers for readers that fell behind.
DEFAULT_MAX_PENDING = 10_000
#: Loop time to leave between two wake-ups of the subscribers, per
#: subscriber. A signal message costs the server about 40 µs of loop time
#: per subscriber (grpc.aio's send and the task's wake-up), so the fan-out
#: takes at most about a fifth of the loop under a stream of appends.
#: Measured (bench/signal_fanout.py --quick, 100 reading subscribers): 50 µs
#: kept 0.34 of the append rate without subscribers, 100 µs 0.47, 200 µs
#: 0.55 (0.70 in the full run); it costs a signal up to 20 ms of delay at
#: 100 subscribers under load, nothing after a quiet spell.
DEFAULT_PUBLISH_INTERVAL_PER_SUBSCRIBER = 200e-6
#: The longest a signal waits for its wake-up, however many subscribers.
DEFAULT_MAX_PUBLISH_INTERVAL = 0.05

#: The most events, and bytes of them in the stored form, kept with one
#: signal or one wake-up (journal.proto's ``Signal.events``: 64 and 16 KiB).
MAX_FRESH_EVENTS = 64
MAX_FRESH_BYTES = 16 * 1024
#: Bytes of fresh events the signal table keeps in all (over that, new
#: entries come without): 10,000 entries of 16 KiB would be 160 MiB.
DEFAULT_MAX_FRESH_TABLE_BYTES = 4 * 1024 * 1024


class Fresh(NamedTuple):
    """Fresh events the hub keeps: contiguous rows in the stored form, within the bound."""

    #: The aggregate's head before the rows, raw (``b""``: none).
    parent: bytes
    #: The rows, oldest first, as ``Events`` serves them (see :mod:`.wire_format`).
    rows: Sequence[bytes]
    #: Their bytes in all.
    size: int
    #: The last row's id, raw: the head they end at.
    head: bytes


def _bounded(fresh: FreshEvents | None, head: ULID) -> Fresh | None:
    """What the hub keeps of one append's events: all of them, or none when over the bound."""
    if fresh is None:
        return None
    rows = fresh.rows
    if not rows or len(rows) > MAX_FRESH_EVENTS:
        return None
    size = sum(map(len, rows))
    if size > MAX_FRESH_BYTES:
        return None
    return Fresh(fresh.parent, rows, size, head.bytes)


def _joined(old: Fresh | None, new: Fresh | None) -> Fresh | None:
    """``old``'s rows then ``new``'s, when they are contiguous and within the bound; else none."""
    if old is None or new is None or new.parent != old.head:
        return None
    size = old.size + new.size
    if len(old.rows) + len(new.rows) > MAX_FRESH_EVENTS or size > MAX_FRESH_BYTES:
        return None
    return Fresh(old.parent, (*old.rows, *new.rows), size, new.head)


class TakenSignals(NamedTuple):
    """What :meth:`Subscriber.take_with_events` gives: a batch and each signal's fresh events."""

    batch: SignalBatch
    #: One per signal of ``batch``, in order (``None``: not at hand).
    fresh: tuple[Fresh | None, ...]


_RESYNC = SignalBatch(signals=(), resync=True)
_TAKEN_RESYNC = TakenSignals(_RESYNC, ())


class Watcher:
    """Woken by every append to one aggregate; see :meth:`Hub.watch`."""

    __slots__ = ("_closed", "_event", "_pending", "aggregate_type", "fresh", "head")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._closed = False
        #: The newest head the hub reported (``None`` until the first append).
        self.head: ULID | None = None
        #: The aggregate's type, once an append told it.
        self.aggregate_type = ""
        #: The events of the appends the last :meth:`wait` returned for,
        #: joined (``None``: not at hand; read them).
        self.fresh: Fresh | None = None
        # What the next wait returns for: the appends since the last one.
        self._pending: Fresh | None = None

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
        wait then returns at once. :attr:`fresh` then holds the events of
        the appends it returned for, when the hub has them.

        :returns: ``True`` after an append; ``False`` once the hub closed.
        """
        if not self._event.is_set():
            await self._event.wait()
        if self._closed:
            self.fresh = self._pending = None
            return False
        self._event = anyio.Event()
        # Taken with the reset, in one step: appends from now on are the next wait's.
        self.fresh, self._pending = self._pending, None
        return True

    def _wake(self, aggregate_type: str, head: ULID, fresh: Fresh | None) -> None:
        self.head = head
        self.aggregate_type = aggregate_type
        if self._event.is_set():
            # The reader has not woken for the last append yet: it gets both.
            self._pending = _joined(self._pending, fresh)
        else:
            self._pending = fresh
            self._event.set()

    def _nudge(self) -> None:
        # Wake without a head: the reader re-reads from its own cursor.
        self._pending = None
        self._event.set()

    def _close(self) -> None:
        self._closed = True
        self._event.set()


class Subscriber:
    """Receives coalesced signals of appends; see :meth:`Hub.subscribe`."""

    __slots__ = ("_cursor", "_hub", "_resync", "_types")

    def __init__(self, hub: Hub, aggregate_types: frozenset[str]) -> None:
        self._hub = hub
        self._types = aggregate_types
        self._cursor = hub._sequence
        # Owed from the start: appends before the subscription were not seen.
        self._resync = True

    @property
    def pending(self) -> int:
        """How many aggregates have a signal waiting to be taken (0 while a resync is owed)."""
        if self._owes_resync():
            return 0
        return len(self._hub._entries_after(self._cursor, self._types))

    async def take(self) -> SignalBatch | None:
        """Wait for signals and take all that are pending.

        :returns: the signals (newest head per aggregate, oldest first) and
            whether signals were dropped (``resync``); ``None`` once the hub
            closed. Subscribers that take the same signals get the same batch.
        """
        taken = await self.take_with_events()
        return None if taken is None else taken.batch

    async def take_with_events(self) -> TakenSignals | None:
        """:meth:`take`, with the fresh events the hub has of each signal.

        Subscribers that take the same signals get the same object.
        """
        hub = self._hub
        while True:
            while not hub._closed and not self._resync and hub._published <= self._cursor:
                if hub._wakeup is None:
                    hub._wakeup = anyio.Event()
                await hub._wakeup.wait()
            if hub._closed:
                return None
            if self._owes_resync():
                # The reader re-checks everything, which covers every entry so far.
                self._resync = False
                self._cursor = hub._taken = hub._sequence
                return _TAKEN_RESYNC
            taken = hub._batch_after(self._cursor, self._types)
            self._cursor = hub._taken = hub._sequence
            if taken.batch.signals:  # else the new entries were of other types
                return taken

    def _owes_resync(self) -> bool:
        if self._resync:
            return True
        if self._hub._dropped_after(self._cursor, self._types):
            log.warning("signals_dropped", max_pending=self._hub._max_pending)
            self._resync = True
        return self._resync


class Hub:
    """Fans out committed appends to :class:`Watcher` and :class:`Subscriber` objects.

    Register :meth:`notify` with the store (``store.add_listener(hub.notify, hub.resync)``).
    Everything runs on the event loop; nothing here blocks.
    """

    def __init__(
        self,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        publish_interval_per_subscriber: float = DEFAULT_PUBLISH_INTERVAL_PER_SUBSCRIBER,
        max_publish_interval: float = DEFAULT_MAX_PUBLISH_INTERVAL,
        max_fresh_table_bytes: int = DEFAULT_MAX_FRESH_TABLE_BYTES,
    ) -> None:
        """:param max_pending: how many aggregates are remembered for readers that fell
            behind; one further behind gets a resync.
        :param publish_interval_per_subscriber: seconds between wake-ups of the
            subscribers, per subscriber (0: wake them at every append).
        :param max_publish_interval: the cap of that interval, in seconds.
        :param max_fresh_table_bytes: bytes of fresh events the signals keep in all.
        """
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if publish_interval_per_subscriber < 0 or max_publish_interval < 0:
            raise ValueError("publish intervals must not be negative")
        self._max_pending = max_pending
        self._interval_per_subscriber = publish_interval_per_subscriber
        self._max_interval = max_publish_interval
        self._watchers: dict[UUID, set[Watcher]] = {}
        self._subscribers: set[Subscriber] = set()
        self._closed = False
        # The newest signal of each recent aggregate and its sequence number,
        # in the order of those numbers (an update moves the entry to the end).
        self._entries: dict[UUID, tuple[int, Signal, Fresh | None]] = {}
        self._sequence = 0
        #: The newest sequence number a subscriber took (entries after it nobody has).
        #: One for all subscribers, whatever their types: a reader of other
        #: types moves it too, and an entry is then not joined but replaced
        #: (its readers read for themselves), which is never wrong, only slower.
        self._taken = 0
        self._max_fresh_table_bytes = max_fresh_table_bytes
        #: Bytes of fresh events the entries hold.
        self._fresh_bytes = 0
        #: The newest sequence number subscribers were woken for.
        self._published = 0
        #: The newest sequence number dropped from the entries, overall and per type.
        self._dropped = 0
        self._dropped_of_type: dict[str, int] = {}
        # Set at the next publish; made by the first subscriber to wait for it.
        self._wakeup: anyio.Event | None = None
        self._last_publish = -float("inf")
        self._publish_timer: asyncio.TimerHandle | None = None
        # The batch last made for each (cursor, types): shared by subscribers alike.
        self._batches: dict[tuple[int, frozenset[str]], TakenSignals] = {}
        self._batches_sequence = 0

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

    @takes_fresh_events
    def notify(self, aggregate: AggregateRef, head: ULID, fresh: FreshEvents | None = None) -> None:
        """Wake the aggregate's watchers and signal the subscribers (an ``AppendListener``).

        :param fresh: the appended events, when the store has them.

        Its cost does not depend on the number of subscribers.
        """
        watchers = self._watchers.get(aggregate.id)
        subscribed = bool(self._subscribers)
        if not watchers and not subscribed:
            return
        kept = _bounded(fresh, head)
        if watchers:
            for watcher in watchers:
                watcher._wake(aggregate.type, head, kept)
        if not subscribed:
            return
        entries = self._entries
        self._sequence += 1
        old = entries.pop(aggregate.id, None)
        if old is not None:
            self._fresh_bytes -= _size(old[2])
            last = old[1].head
            if last is not None and head < last:
                # Heard out of commit order (PostgreSQL notifies after the
                # pool's release; other servers' appends come by NOTIFY): the
                # entry keeps the newer head, and no events, which would let a
                # reader at their parent end its run short of that head.
                head, kept = last, None
            elif old[0] > self._taken:
                # Nobody took the old entry: the new one must hold its events too.
                kept = _joined(old[2], kept)
            elif kept is not None and last is not None and kept.parent != last.bytes:
                # Not going on from the head readers were told last: none.
                kept = None
            # Else a reader that took it has its events; one that did not
            # finds the new events' parent is not its tail, and reads.
        if kept is not None:
            if self._fresh_bytes + kept.size > self._max_fresh_table_bytes:
                kept = None
            else:
                self._fresh_bytes += kept.size
        entries[aggregate.id] = (
            self._sequence,
            Signal(aggregate_type=aggregate.type, aggregate_id=aggregate.id, head=head),
            kept,
        )
        if len(entries) > self._max_pending:
            oldest = next(iter(entries))
            sequence, signal, dropped_fresh = entries.pop(oldest)
            self._fresh_bytes -= _size(dropped_fresh)
            self._dropped = sequence
            self._dropped_of_type[signal.aggregate_type] = sequence
        self._schedule_publish()

    def resync(self) -> None:
        """Appends may have been missed (the store lost its notifications from other servers).

        Every watcher wakes and re-reads from its cursor; every subscriber
        gets a resync in its next batch, as a slow reader does.
        """
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher._nudge()
        for subscriber in self._subscribers:
            subscriber._resync = True
        if self._publish_timer is not None:
            self._publish_timer.cancel()
        self._publish()

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
        subscriber = Subscriber(self, frozenset(aggregate_types))
        if self._closed:
            yield subscriber
            return
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)
            if not self._subscribers:
                # Nobody reads them: forget the signals (appends stop keeping them).
                self._entries.clear()
                self._fresh_bytes = 0
                self._batches.clear()

    def close(self) -> None:
        """Wake every watcher and subscriber for the last time: the journal is stopping."""
        self._closed = True
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher._close()
        if self._publish_timer is not None:
            self._publish_timer.cancel()
            self._publish_timer = None
        self._wake_subscribers()

    # -- the subscribers' side --------------------------------------------------

    def _schedule_publish(self) -> None:
        if self._publish_timer is not None:
            return  # the next wake-up is due already and takes this append along
        interval = min(self._max_interval, self._interval_per_subscriber * len(self._subscribers))
        wait = self._last_publish + interval - time.monotonic()
        if wait <= 0:
            self._publish()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the loop (a test): nothing to wait on
            self._publish()
            return
        self._publish_timer = loop.call_later(wait, self._publish)

    def _publish(self) -> None:
        self._publish_timer = None
        if self._closed:
            return
        self._last_publish = time.monotonic()
        self._published = self._sequence
        self._wake_subscribers()

    def _wake_subscribers(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.set()

    def _entries_after(
        self, cursor: int, types: frozenset[str]
    ) -> list[tuple[int, Signal, Fresh | None]]:
        """The entries after ``cursor`` of the given types (all when empty), oldest first."""
        found: list[tuple[int, Signal, Fresh | None]] = []
        for entry in reversed(self._entries.values()):
            if entry[0] <= cursor:
                break
            if not types or entry[1].aggregate_type in types:
                found.append(entry)
        found.reverse()
        return found

    def _batch_after(self, cursor: int, types: frozenset[str]) -> TakenSignals:
        if self._batches_sequence != self._sequence:
            self._batches.clear()
            self._batches_sequence = self._sequence
        key = (cursor, types)
        taken = self._batches.get(key)
        if taken is None:
            entries = self._entries_after(cursor, types)
            taken = TakenSignals(
                SignalBatch(signals=tuple(entry[1] for entry in entries)),
                tuple(entry[2] for entry in entries),
            )
            self._batches[key] = taken
        return taken

    def _dropped_after(self, cursor: int, types: frozenset[str]) -> bool:
        """An entry after ``cursor`` that a reader of ``types`` needed was dropped."""
        if not types:
            return self._dropped > cursor
        if self._dropped <= cursor:
            return False
        dropped = self._dropped_of_type
        return any(dropped.get(type_, 0) > cursor for type_ in types)


def _size(fresh: Fresh | None) -> int:
    return 0 if fresh is None else fresh.size
