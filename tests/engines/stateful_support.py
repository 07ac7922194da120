"""Deterministic parts for the engines' stateful test: a virtual-clock loop, a journal, a store.

Nothing here reads the wall clock to decide anything or waits in real time:

- :class:`VirtualClockLoop` is an asyncio loop whose :meth:`~VirtualClockLoop.time`
  moves only when the test says so (``anyio.current_time()``, ``anyio.sleep``
  and every timeout read it), and which can say whether anything is runnable
  right now, so a test can let it run to idleness counting loop steps.
- :class:`FakeJournal` is an in-memory :class:`~tailrunner.journal.api.JournalApi`:
  events per aggregate, ``events`` with ``will_block`` on the batch that
  catches up (and, with ``watch``, blocking for new events), ``signals``
  (a ``resync`` batch first, then one signal per append, bringing the
  appended events along when there are at most two) and ``read_aggregates``.
- :class:`SlowTailStore` wraps a :class:`~tailrunner.tails.memory.MemoryTailStore`
  so that a save takes time: it waits for the test to release it, or for
  some virtual time to pass.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream
from ulid import ULID

from tailrunner.ids import next_ulid
from tailrunner.model import (
    AggregateInfo,
    AggregateRef,
    AppendResult,
    Event,
    EventBatch,
    NewEvent,
    Signal,
    SignalBatch,
)
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.store import QueryCursor, RunRecord, TailRecord


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock stands still until :meth:`advance` moves it.

    Drive it only with coroutines that keep something runnable (a driver that
    awaits ``asyncio.sleep(0)`` in a loop): the selector then never waits, so
    no real time passes however far the virtual clock jumps.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._virtual_now = start
        super().__init__()

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward; timers that fall due fire on the next loop steps."""
        if seconds < 0:
            raise ValueError(f"advance({seconds}): the clock only moves forward")
        self._virtual_now += seconds

    def _live_timers(self) -> list[asyncio.TimerHandle]:
        # BaseEventLoop keeps its timers in ``_scheduled`` and its runnable
        # callbacks in ``_ready``: the only way to tell "idle" from "busy".
        scheduled: list[asyncio.TimerHandle] = getattr(self, "_scheduled")  # noqa: B009
        return [h for h in scheduled if not h.cancelled()]

    def runnable(self) -> bool:
        """Whether a callback is queued or a timer is due (besides the caller's own step)."""
        ready: Collection[object] = getattr(self, "_ready")  # noqa: B009
        if ready:
            return True
        return any(h.when() <= self._virtual_now for h in self._live_timers())

    def next_timer(self) -> float | None:
        """The loop time of the earliest pending timer, if any."""
        whens = [h.when() for h in self._live_timers()]
        return min(whens) if whens else None


async def settle(loop: VirtualClockLoop, *, max_steps: int = 5000) -> bool:
    """Let ``loop`` run until nothing is runnable; ``False`` if still busy after ``max_steps``.

    Counts loop iterations, never time: the virtual clock does not move here.
    """
    quiet = 0
    for _ in range(max_steps):
        await asyncio.sleep(0)
        if loop.runnable():
            quiet = 0
        else:
            quiet += 1
            if quiet >= 2:
                return True
    return False


@dataclass(slots=True)
class _Stored:
    ref: AggregateRef
    events: list[Event] = field(default_factory=list)
    #: The events' ids as integers, for bisecting (ULID order is integer order).
    keys: list[int] = field(default_factory=list)
    changed: anyio.Event | None = None


class FakeJournal:
    """An in-memory :class:`~tailrunner.journal.api.JournalApi` for one event loop.

    :param batch_size: at most this many events per :class:`EventBatch`, so
        that reading to the end takes several batches.
    :param read_budget: events per ``read_aggregates`` call (it is an
        :class:`~tailrunner.journal.api.AggregatesReader`: the lazy and cron
        engines read ahead through it).
    """

    def __init__(self, *, batch_size: int = 2, read_budget: int = 3) -> None:
        self._read_budget = read_budget
        self._aggregates: dict[uuid.UUID, _Stored] = {}
        self._subscribers: list[tuple[tuple[str, ...], MemoryObjectSendStream[Signal]]] = []
        self._batch_size = batch_size

    # -- what the test reads --------------------------------------------------

    def head(self, aggregate_id: uuid.UUID) -> ULID | None:
        stored = self._aggregates.get(aggregate_id)
        return stored.events[-1].id if stored is not None and stored.events else None

    def event_ids(self, aggregate_id: uuid.UUID) -> list[ULID]:
        stored = self._aggregates.get(aggregate_id)
        return [e.id for e in stored.events] if stored is not None else []

    # -- JournalApi -------------------------------------------------------------

    async def append(
        self,
        aggregate: AggregateRef,
        events: Sequence[NewEvent],
        *,
        expected_tail: ULID | None = None,
    ) -> AppendResult:
        """Append at once (no await), then signal every subscriber and wake watchers."""
        if not events:
            raise ValueError("append: needs at least one event")
        stored = self._aggregates.setdefault(aggregate.id, _Stored(ref=aggregate))
        if stored.ref.type != aggregate.type:
            raise ValueError(f"aggregate {aggregate.id} has type {stored.ref.type!r}")
        ids: list[ULID] = []
        for new in events:
            parent = stored.events[-1].id if stored.events else None
            event_id = next_ulid(parent)
            stored.events.append(
                Event(
                    id=event_id,
                    parent=parent,
                    aggregate_type=aggregate.type,
                    aggregate_id=aggregate.id,
                    type=new.type,
                    data=bytes(new.data),
                )
            )
            stored.keys.append(int(event_id))
            ids.append(event_id)
        if stored.changed is not None:
            stored.changed.set()
            stored.changed = None
        # Small appends bring their events along, as the journal's signals do
        # (Signal.events); bigger ones do not: the lazy engine meets both.
        fresh = (
            EventBatch(events=tuple(stored.events[-len(ids) :]), will_block=True)
            if len(ids) <= 2
            else None
        )
        signal = Signal(
            aggregate_type=aggregate.type, aggregate_id=aggregate.id, head=ids[-1], events=fresh
        )
        for types, send in self._subscribers:
            if not types or aggregate.type in types:
                send.send_nowait(signal)
        return AppendResult(tail=ids[-1], event_ids=tuple(ids))

    async def events(
        self,
        aggregate_id: uuid.UUID,
        *,
        after: ULID | None = None,
        watch: bool = False,
        max_batch: int = 0,
    ) -> AsyncGenerator[EventBatch, None]:
        """Batches after ``after``, read live; ``will_block`` on the one that catches up.

        Caught up with nothing new yields one empty ``will_block`` batch. Without
        ``watch`` the generator then ends; with it, it waits for the next append.
        """
        stored = self._aggregates.setdefault(
            aggregate_id, _Stored(ref=AggregateRef(type="thing", id=aggregate_id))
        )
        size = min(self._batch_size, max_batch) if max_batch > 0 else self._batch_size
        position = 0 if after is None else bisect.bisect_right(stored.keys, int(after))
        while True:
            # One loop step per batch, as a network read takes: signals,
            # controls and cancellations can land between batches.
            await anyio.lowlevel.checkpoint()
            chunk = tuple(stored.events[position : position + size])
            position += len(chunk)
            caught_up = position >= len(stored.events)
            yield EventBatch(events=chunk, will_block=caught_up)
            if not caught_up:
                continue
            if not watch:
                return
            while position >= len(stored.events):
                if stored.changed is None:
                    stored.changed = anyio.Event()
                await stored.changed.wait()

    async def read_aggregates(
        self, reads: Sequence[tuple[uuid.UUID, ULID | None]], *, max_events: int = 0
    ) -> list[EventBatch]:
        """One snapshot of every read, taken between two loop steps (a network call's).

        The budget (``max_events``, else ``read_budget``) is small, so that the
        engines' read-ahead meets cut batches and reads on.
        """
        await anyio.lowlevel.checkpoint()
        budget = max_events or self._read_budget
        batches: list[EventBatch] = []
        for aggregate_id, after in reads:
            stored = self._aggregates.get(aggregate_id)
            events = stored.events if stored is not None else []
            keys = stored.keys if stored is not None else []
            position = 0 if after is None else bisect.bisect_right(keys, int(after))
            chunk = tuple(events[position : position + budget])
            budget -= len(chunk)
            batches.append(
                EventBatch(events=chunk, will_block=position + len(chunk) >= len(events))
            )
        # The reply travels: appends can land after the snapshot, before the engine has it.
        await anyio.lowlevel.checkpoint()
        return batches

    async def signals(
        self, aggregate_types: Sequence[str] = ()
    ) -> AsyncGenerator[SignalBatch, None]:
        """A ``resync`` batch first (as every new connection gets), then a signal per append."""
        send, receive = anyio.create_memory_object_stream[Signal](math.inf)
        entry = (tuple(aggregate_types), send)
        self._subscribers.append(entry)
        try:
            with send, receive:
                yield SignalBatch(signals=(), resync=True)
                async for signal in receive:
                    yield SignalBatch(signals=(signal,))
        finally:
            self._subscribers.remove(entry)

    async def list_aggregates(
        self,
        aggregate_type: str | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[AggregateInfo], str]:
        """Every aggregate (one page)."""
        infos = [
            AggregateInfo(
                type=s.ref.type,
                id=s.ref.id,
                head=s.events[-1].id if s.events else None,
                event_count=len(s.events),
            )
            for s in self._aggregates.values()
            if aggregate_type is None or s.ref.type == aggregate_type
        ]
        return infos, ""


StoreMode = Literal["instant", "gate", "sleep"]


@dataclass(slots=True)
class PendingSave:
    """A save that waits for the test to release it."""

    what: str
    record: TailRecord
    released: anyio.Event
    seq: int


class SlowTailStore:
    """A :class:`~tailrunner.tails.store.TailStore` whose saves take time.

    ``mode``: ``"instant"`` (the memory store as is), ``"gate"`` (each save
    waits in :attr:`pending` until :meth:`release` lets it commit) or
    ``"sleep"`` (each save commits after :attr:`delay` virtual seconds). A
    save commits when it ends, as a database transaction does; a save
    cancelled while it waits commits nothing.
    """

    def __init__(self, inner: MemoryTailStore | None = None) -> None:
        self.inner = inner or MemoryTailStore()
        self.mode: StoreMode = "instant"
        self.delay = 1.0
        self.pending: list[PendingSave] = []
        #: Saves under way (waiting for a release, sleeping, or committing).
        self.busy = 0
        self._seq = 0
        #: Every commit, in order: (what, activity, aggregate id, state, tail).
        self.commits: list[tuple[str, str, uuid.UUID, str, ULID | None]] = []

    def release(self, index: int) -> PendingSave:
        """Let the ``index``-th waiting save commit (any order: commits may land out of order)."""
        pending = self.pending.pop(index)
        pending.released.set()
        return pending

    def release_all(self) -> None:
        while self.pending:
            self.release(0)

    async def _wait(self, what: str, record: TailRecord) -> None:
        self.busy += 1
        try:
            await self._wait_for_mode(what, record)
        except BaseException:
            self.busy -= 1
            raise

    async def _wait_for_mode(self, what: str, record: TailRecord) -> None:
        if self.mode == "gate":
            self._seq += 1
            pending = PendingSave(what, record, anyio.Event(), self._seq)
            self.pending.append(pending)
            try:
                await pending.released.wait()
            finally:
                if pending in self.pending:
                    self.pending.remove(pending)
        elif self.mode == "sleep":
            await anyio.sleep(self.delay)

    def _committed(self, what: str, record: TailRecord) -> None:
        self.commits.append((what, record.activity, record.aggregate.id, record.state, record.tail))

    async def save(self, record: TailRecord) -> None:
        await self._wait("save", record)
        await self.inner.save(record)
        self._committed("save", record)
        self.busy -= 1

    async def save_with_run(self, record: TailRecord, run: RunRecord) -> None:
        await self._wait(f"save_with_run({run.outcome})", record)
        await self.inner.save_with_run(record, run)
        self._committed(f"save_with_run({run.outcome})", record)
        self.busy -= 1

    async def load(self, activity: str) -> dict[uuid.UUID, TailRecord]:
        return await self.inner.load(activity)

    async def get(self, activity: str, aggregate_id: uuid.UUID) -> TailRecord | None:
        return await self.inner.get(activity, aggregate_id)

    async def record_run(self, run: RunRecord) -> None:
        await self.inner.record_run(run)

    async def list_runs(
        self, activity: str, aggregate_id: uuid.UUID, *, limit: int = 100
    ) -> list[RunRecord]:
        return await self.inner.list_runs(activity, aggregate_id, limit=limit)

    async def query(
        self,
        activity: str | None = None,
        states: Collection[str] = (),
        limit: int = 100,
        after: QueryCursor | None = None,
    ) -> list[TailRecord]:
        return await self.inner.query(activity, states, limit, after)

    @asynccontextmanager
    async def transaction(self, record: TailRecord) -> AsyncIterator[Any]:
        """The memory store's transaction, ungated (the test's activity does not use it)."""
        async with self.inner.transaction(record) as conn:
            yield conn

    async def aclose(self) -> None:
        await self.inner.aclose()
