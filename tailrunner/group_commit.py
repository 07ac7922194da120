"""Group commit: the writes that queue while one commit runs share the next.

Both SQLite stores sync every commit to disk. Under a store's write lock one
commit syncs at a time; the writes that arrive meanwhile queue here, and the
caller that takes the lock next commits all of them together (one
transaction, one fsync), in the order they came.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class _Entry(Generic[T]):
    __slots__ = ("done", "item")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False


class GroupCommit(Generic[T]):
    """Queue writes of type ``T`` and commit them in groups under ``lock``.

    ``commit`` gets a group in arrival order and records each write's own
    outcome on the write (the caller reads it when :meth:`submit` returns).
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
        self._pending: list[_Entry[T]] = []

    @property
    def pending(self) -> int:
        """How many writes wait for the next group."""
        return len(self._pending)

    async def submit(self, item: T) -> None:
        """Return once ``item`` was committed in a group, or its commit failed.

        An item cancelled while it waits in the queue is dropped: it is
        never committed later.
        """
        entry = _Entry(item)
        self._pending.append(entry)
        try:
            await self._lock.acquire()
        except BaseException:
            if not entry.done:
                self._pending.remove(entry)
            raise
        try:
            if not entry.done:
                self._check_open()
                group, self._pending = self._pending, []
                # Shielded: the group holds other callers' writes, and each
                # must learn its outcome.
                try:
                    with anyio.CancelScope(shield=True):
                        await self._commit([e.item for e in group])
                except BaseException:
                    # Not committed: this caller gets the error, the others
                    # go back to the head of the queue for the next group.
                    self._pending[:0] = [e for e in group if e is not entry]
                    raise
                for e in group:
                    e.done = True
        finally:
            self._lock.release()
