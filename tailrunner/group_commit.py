"""Group commit: the writes that queue while one commit runs share the next.

Both SQLite stores sync every commit to disk. Under a store's write lock one
commit syncs at a time; the writes that arrive meanwhile queue here, and one
of their callers, the next leader, takes the lock and commits all of them
together (one transaction, one fsync), in the order they came.

Only a leader waits for the lock. The other callers (followers) each wait for
their own write: a commit wakes all of its group's followers at once, and the
leader that ends hands the lead to the caller at the head of the queue. (When
every caller queued on the lock, a group of N woke one after the other, one
loop iteration each, and the next group's commit began only after them.)

Each write is *queued*, then *taken* by a leader into its group, then
*done*: committed (its outcome recorded on it), or dropped, never to be
committed. Cancellation never turns into another exception, and is raised
only once the write's fate is settled:

- A caller cancelled while its write is still queued drops it: the write is
  never committed, not even with a later group.
- A write that a leader has taken cannot be recalled, so a **taken write
  completes**: its caller's cancellation waits, shielded, until that commit
  ends, then is raised. If the commit returned, the write is committed with
  its group (and its own outcome recorded on it, as if :meth:`~GroupCommit.
  submit` had returned); if the commit raised, the write is dropped.
- The leader's commit runs to its end even if the leader is cancelled, by a
  cancel scope or by a native ``Task.cancel()`` (which grpc.aio uses on a
  handler whose call was cancelled, and which goes through a shield): it
  holds the other callers' writes, and it may be half-way through a worker
  thread that cannot be stopped. The leader's cancellation is raised after.

So once a cancellation leaves :meth:`~GroupCommit.submit`, no commit of the
write is in flight: reading the store back tells whether it is in.

A database error fails a whole transaction, and so a whole group; a store's
commit function passes it through :func:`commit_each_alone_on`, which then
commits each write of the group alone, so that one bad write fails only its
own caller.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


class _State(enum.Enum):
    QUEUED = enum.auto()
    TAKEN = enum.auto()
    COMMITTED = enum.auto()
    DROPPED = enum.auto()


class _Entry(Generic[T]):
    __slots__ = ("cancelled", "item", "state", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.state = _State.QUEUED
        #: Its caller was cancelled while the entry was taken: never re-queue it.
        self.cancelled = False
        #: A follower's: set when its write is done, or when it is to lead.
        self.wake: anyio.Event | None = None

    def settle(self, state: _State) -> None:
        self.state = state
        # Back in the queue, a follower waits on: the next leader takes it.
        if state is not _State.QUEUED and self.wake is not None:
            self.wake.set()


class GroupCommit(Generic[T]):
    """Queue writes of type ``T`` and commit them in groups under ``lock``.

    ``commit`` gets a group in arrival order and records each write's own
    outcome on the write (the caller reads it when :meth:`submit` returns).
    It raises only when none of the group was committed: the leader gets
    that error, the group's other writes go back to the head of the queue.
    """

    def __init__(
        self,
        lock: anyio.Lock,
        commit: Callable[[list[T]], Awaitable[None]],
        check_open: Callable[[], None],
    ) -> None:
        self._lock = lock
        self._commit = commit
        self._check_open = check_open
        self._queue: list[_Entry[T]] = []
        #: The entry whose caller commits the queue next: it waits for the
        #: lock, holds it, or was woken to lead. ``None``: the next caller leads.
        self._leader: _Entry[T] | None = None

    @property
    def pending(self) -> int:
        """How many writes wait for the next group."""
        return len(self._queue)

    async def submit(self, item: T) -> None:
        """Return once ``item`` was committed in a group, or its commit failed.

        A cancelled caller gets its cancellation back, once ``item`` is
        settled: dropped if it was still queued, committed with its group if
        a leader had taken it (see the module's docstring).

        :raises Exception: what ``check_open`` raises (the write is dropped),
            or, to the leader only, what ``commit`` raised.
        """
        entry = _Entry(item)
        self._queue.append(entry)
        if self._leader is None:
            self._leader = entry
        else:
            entry.wake = anyio.Event()
            try:
                await entry.wake.wait()
            except BaseException:
                await self._abandon(entry)
                raise
            if entry.state is _State.COMMITTED:
                return
            # Not done, so woken to lead (a failed group's writes are re-queued).
        try:
            if len(self._queue) == 1:
                # Alone so far: one loop step lets the writes started in the
                # same turn (a batch of appends) join this group rather than
                # wait for the next commit. A lone writer pays that step only.
                await anyio.lowlevel.checkpoint()
            await self._lock.acquire()
        except BaseException:
            await self._abandon(entry)
            raise
        try:
            await self._lead(entry)
        finally:
            self._lock.release()
            self._hand_on()

    def _hand_on(self) -> None:
        """The leader is done: the head of the queue (a follower) leads next."""
        self._leader = None
        if self._queue:
            head = self._leader = self._queue[0]
            assert head.wake is not None  # queued behind a leader, so a follower
            head.wake.set()

    async def _abandon(self, entry: _Entry[T]) -> None:
        """Settle the entry of a caller that stops waiting (cancelled)."""
        if entry.state is _State.TAKEN:
            entry.cancelled = True
            assert entry.wake is not None  # a leader's own entry is never taken by another
            await _run_to_end(entry.wake.wait)
        if entry.state is _State.QUEUED:  # still queued, or re-queued by a failed group
            self._queue.remove(entry)
            entry.state = _State.DROPPED
            if self._leader is entry:  # it was to lead: the next one does
                self._hand_on()

    async def _lead(self, entry: _Entry[T]) -> None:
        """Commit the queue (with ``entry`` in it) as one group; under the lock."""
        try:
            self._check_open()
        except BaseException:
            self._queue.remove(entry)
            entry.state = _State.DROPPED
            raise
        group, self._queue = self._queue, []
        for e in group:
            e.state = _State.TAKEN
        failure: BaseException | None = None

        async def commit() -> None:
            nonlocal failure
            try:
                await self._commit([e.item for e in group])
            except BaseException as exc:  # the leader's to raise, below
                failure = exc
                # Not committed: the others go back to the head of the queue
                # for the next group, but not those whose callers gave up.
                requeued: list[_Entry[T]] = []
                for e in group:
                    if e is entry or e.cancelled:
                        e.settle(_State.DROPPED)
                    else:
                        requeued.append(e)
                        e.settle(_State.QUEUED)
                self._queue[:0] = requeued
            else:
                for e in group:
                    e.settle(_State.COMMITTED)

        try:
            await _run_to_end(commit)
        except BaseException:
            if failure is not None:
                # The leader's cancellation wins; the failure must not vanish.
                log.warning("commit failed", error=repr(failure), writes=len(group))
            raise
        if failure is not None:
            raise failure


async def _run_to_end(func: Callable[[], Awaitable[None]]) -> None:
    """Await ``func()`` to its end, then raise the caller's cancellation, if any.

    A shielded cancel scope alone is not enough: a native ``Task.cancel()``
    goes through it. ``func`` runs in a task of its own, which nothing
    cancels; the caller waits for it through every cancellation. A plain
    asyncio task, not an anyio task group: the group's cancel scopes and
    loop iterations took a one-event SQLite append from about 150 µs to 280
    (in process, ``synchronous=NORMAL``).
    """
    task = asyncio.get_running_loop().create_task(_shielded(func))
    cancelled: BaseException | None = None
    while True:
        try:
            # Shielded, so that a cancel scope does not wake the caller
            # again and again while the commit runs.
            with anyio.CancelScope(shield=True):
                await asyncio.shield(task)
            break
        except asyncio.CancelledError as exc:  # a native Task.cancel() goes through
            cancelled = exc
            if task.done():
                break
    if cancelled is not None:
        raise cancelled
    # A cancel scope's cancellation, held back by the shield, is raised now.
    await anyio.lowlevel.checkpoint_if_cancelled()
    task.result()


async def _shielded(func: Callable[[], Awaitable[None]]) -> None:
    with anyio.CancelScope(shield=True):
        await func()


async def commit_each_alone_on(
    error: type[E],
    commit: Callable[[list[T]], Awaitable[None]],
    group: list[T],
    failed: Callable[[T, E], None],
) -> None:
    """``commit(group)``; when that raises ``error``, ``commit([write])`` for each write.

    A group's transaction fails as a whole, so after a failed group each
    write is tried again alone, in order, and only those that fail alone get
    their own error, through ``failed(write, exc)``; a group of one is not
    tried again. For the ``commit`` function a store gives
    :class:`GroupCommit`: what it raises besides ``error`` passes through.
    """
    try:
        await commit(group)
    except error as exc:
        if len(group) == 1:
            failed(group[0], exc)
            return
        for write in group:
            try:
                await commit([write])
            except error as one:
                failed(write, one)
