"""``ReadAhead``: the events of the tasks about to run, read for many tasks in one call.

A lazy or cron run reads its aggregate to the end. When the journal can read
many aggregates in one call (:class:`~tailrunner.journal.api.AggregatesReader`,
``ReadAggregates``), the engine reads for the runs it starts, and for the
next ready tasks, in one call instead of one ``Events`` stream per run: a
first run of very many aggregates, or a cron tick over caught-up tasks,
costs one round trip per few hundred tasks instead of one per task. A
signal that brings the new events along (``Signal.events``) is a read-ahead
too (:meth:`ReadAhead.give`): the woken run reads nothing.

Why it stays exact: a read-ahead batch holds the events after a task's tail
as of the read. A run uses it only if it starts from that very tail (a
restart moved it: discarded), and only if no wake-up came for the task after
the read was planned: every signal, resync, tick and backstop, and every
change of state, drops the task's read-ahead (:meth:`ReadAhead.forget`). So
an event appended after the read is either signalled before the run starts
(the batch is dropped and the run reads for itself) or during the run (the
task is ``signalled`` and runs again right after), exactly as with a stream
opened at the run's start. A batch cut by the call's budget is read on with
``Events`` after its last event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing
from uuid import UUID

import structlog
from ulid import ULID

from tailrunner.engines.task import Task
from tailrunner.journal.api import AggregatesReader, Cursor, JournalApi
from tailrunner.model import EventBatch
from tailrunner.states import TaskState

log = structlog.get_logger(__name__)

#: Tasks per ``ReadAggregates`` call: about one round trip per this many runs.
DEFAULT_READ_AHEAD = 256
#: The most reads one ``ReadAggregates`` call takes (journal.proto).
MAX_READ_AHEAD = 1000
#: Seconds without reading ahead after a call failed: the runs read for
#: themselves meanwhile (a journal that is down, or one without ReadAggregates).
FAILED_PAUSE = 5.0


class _Read:
    """One ``ReadAggregates`` call in flight (or done): its batches by task."""

    __slots__ = ("batches", "done")

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.batches: dict[Task, EventBatch] = {}

    def finish(self, _: object = None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class ReadAhead:
    """Plans reads for tasks about to run and hands each run its batch.

    :param reader: the journal's many-read; ``None``: only what signals bring
        (:meth:`give`) is read ahead.
    :param batch: tasks per call; the planned reads hold at most four times
        that many tasks that have not run yet.
    """

    def __init__(self, reader: AggregatesReader | None, *, batch: int = DEFAULT_READ_AHEAD) -> None:
        if batch < 1:
            raise ValueError(f"read_ahead {batch}: must be at least 1")
        self._reader = reader
        self._batch = batch
        self._limit = 4 * batch
        #: Each planned task: the read that covers it, and the tail (bytes) it read after.
        self._planned: dict[Task, tuple[_Read, bytes | None]] = {}
        #: The calls in flight, kept so that they are not collected mid-call.
        self._calls: set[asyncio.Task[None]] = set()
        #: Loop time before which no call is planned (after a failed one).
        self._paused_until = -float("inf")

    @property
    def planned(self) -> int:
        """Tasks with a read planned or done, not yet taken (for tests and status)."""
        return len(self._planned)

    def forget(self, task: Task) -> None:
        """A wake-up or a change of state: the task's read-ahead may be stale."""
        self._planned.pop(task, None)

    def plan(self, started: Sequence[Task], upcoming: Iterable[Task]) -> None:
        """Read for the runs just ``started`` that have nothing planned, and for ``upcoming``.

        ``upcoming`` is looked at lazily, only as far as a call has room.
        """
        planned = self._planned
        reader = self._reader
        needed = [task for task in started if task not in planned]
        if not needed or reader is None:
            return
        if asyncio.get_running_loop().time() < self._paused_until:
            return
        if len(planned) >= self._limit:
            self._drop_stale()
        room = self._limit - len(planned) - len(needed)
        if room > 0 and len(needed) % self._batch:
            chosen = set(needed)
            want = min(room, self._batch - len(needed) % self._batch)
            for task in upcoming:
                if want <= 0:
                    break
                if task not in planned and task not in chosen:
                    needed.append(task)
                    chosen.add(task)
                    want -= 1
        for start in range(0, len(needed), self._batch):
            self._call(reader, needed[start : start + self._batch])

    def give(self, task: Task, batch: EventBatch) -> bool:
        """Plan ``batch``, the events a signal brought along, for ``task``'s next run.

        Only when they follow on from its tail (the first one's parent is its
        tail): then they are every event up to the signalled head. Whether
        they were planned.
        """
        # .events, not iter_events(): the run reads the same (at most 64) events.
        if not batch.event_count() or batch.events[0].parent != task.tail:
            return False
        if len(self._planned) >= self._limit:
            self._drop_stale()
            if len(self._planned) >= self._limit:
                return False  # bounded: the run reads for itself
        read = _Read()
        read.batches[task] = batch
        read.finish()
        self._planned[task] = (read, task.tail_bytes)
        return True

    async def take(self, task: Task) -> EventBatch | None:
        """The batch read ahead for this run of ``task``, or ``None``: read for yourself."""
        entry = self._planned.pop(task, None)
        if entry is None:
            return None
        read, after = entry
        if not read.done.done():
            # Shielded: a run cancelled while it waits must not cancel the
            # call that other runs wait for too.
            await asyncio.shield(read.done)
        # Taken out: the call's other batches need not outlive their runs.
        batch = read.batches.pop(task, None)
        if after != task.tail_bytes:
            return None  # the tail moved (a restart) since the read
        return batch

    def _call(self, reader: AggregatesReader, tasks: list[Task]) -> None:
        read = _Read()
        cursors: list[Cursor] = []
        for task in tasks:
            self._planned[task] = (read, task.tail_bytes)
            cursors.append((UUID(int=task.aggregate_key), task.tail))
        call = asyncio.get_running_loop().create_task(self._read(reader, read, tasks, cursors))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        # Also when the call is cancelled before it began: takers must not hang.
        call.add_done_callback(read.finish)

    async def _read(
        self, reader: AggregatesReader, read: _Read, tasks: list[Task], cursors: list[Cursor]
    ) -> None:
        try:
            batches = await reader.read_aggregates(cursors)
            read.batches = dict(zip(tasks, batches, strict=True))
        except Exception as exc:
            # Each run then reads for itself, and meets the journal's error there.
            self._paused_until = asyncio.get_running_loop().time() + FAILED_PAUSE
            log.debug("read-ahead failed", tasks=len(tasks), error=f"{type(exc).__name__}: {exc}")
        finally:
            read.finish()

    def _drop_stale(self) -> None:
        """Forget planned tasks that will not run soon (stopped, suspended, retired).

        Not a run that started and has yet to take its batch (a cluster's run
        stores its mark first).
        """
        waiting = (TaskState.PENDING, TaskState.RUNNING)
        for task in [t for t in self._planned if t.retired or t.state not in waiting]:
            del self._planned[task]

    async def aclose(self) -> None:
        """Wait for the calls in flight (engine shutdown)."""
        for call in list(self._calls):
            call.cancel()
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        self._planned.clear()


async def read_on(
    journal: JournalApi, aggregate_id: UUID, tail: ULID | None, batch: EventBatch
) -> AsyncGenerator[EventBatch, None]:
    """``batch`` (read ahead after ``tail``), then the events after it if the budget cut it."""
    count = batch.event_count()
    if count:
        yield batch
    if batch.will_block:
        return
    after = batch.event_id(count - 1) if count else tail
    async with aclosing(journal.events(aggregate_id, after=after)) as rest:
        async for more in rest:
            yield more
