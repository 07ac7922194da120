"""Tools for tests that cancel a caller half-way: each caller in its own task and scope."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import anyio.from_thread

#: The two ways a caller is cancelled: its anyio cancel scope, or a native
#: ``Task.cancel()`` (what grpc.aio does to a handler whose call was
#: cancelled; it goes through anyio's shields).
HOW = ["scope", "task.cancel()"]


class Caller:
    """Run ``call`` in a task and cancel scope of its own; record how it ended.

    :ivar ended: ``None`` while it runs, then ``"returned"``, or the class of
        what it raised (a cancellation included).
    """

    def __init__(self, call: Callable[[], Awaitable[object]]) -> None:
        self._call = call
        self._scope = anyio.CancelScope()
        self._task: asyncio.Task[object] | None = None
        self.ended: type[BaseException] | str | None = None

    async def run(self) -> None:
        """Run the call; start it with ``tg.start_soon(caller.run)``."""
        self._task = asyncio.current_task()
        with self._scope:
            try:
                await self._call()
                self.ended = "returned"
            except asyncio.CancelledError:
                self.ended = asyncio.CancelledError
                if self._scope.cancel_called:
                    raise  # for the scope, which swallows its own cancellation
                # A native cancel ends this task alone, not the test's task group.
            except Exception as exc:
                self.ended = type(exc)

    def cancel(self, how: str) -> None:
        """Cancel the call, one of :data:`HOW`."""
        if how == "scope":
            self._scope.cancel()
        else:
            assert how == "task.cancel()", how
            assert self._task is not None, "not started"
            self._task.cancel()


async def queue_behind(lock: anyio.Lock, tg: anyio.abc.TaskGroup, callers: list[Caller]) -> None:
    """Start ``callers`` while ``lock`` is held, so that they queue as one group."""
    await lock.acquire()
    for caller in callers:
        tg.start_soon(caller.run)
    await anyio.wait_all_tasks_blocked()
    lock.release()


class HeldCommit:
    """Hold the worker thread of ``conn``'s next ``BEGIN IMMEDIATE`` until :meth:`release`.

    A slow commit, in the real store: its thread is inside SQLite (the
    thread cannot be stopped, as a real fsync cannot).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.entered = anyio.Event()
        self._released = threading.Event()
        self._armed = True
        conn.set_trace_callback(self._trace)

    def _trace(self, statement: str) -> None:
        if statement == "BEGIN IMMEDIATE" and self._armed:
            self._armed = False
            anyio.from_thread.run_sync(self.entered.set)
            # Bounded, so that a failing test fails instead of hanging.
            self._released.wait(10)

    def release(self) -> None:
        """Let the held commit go on."""
        self._released.set()
