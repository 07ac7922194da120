"""Whether a store works, as its calls find it, and a server's health that follows it.

A store (the SQLite journal store) reports each failure of its file or disk
to its :class:`StoreHealth` (nothing is done on the hot path of a call that
works). A server watching it (:class:`HealthWatch`) reports ``NOT_SERVING``
at the first failure, so that probes and load balancers stop sending calls
that would all fail ``UNAVAILABLE``, then probes the store every
:data:`PROBE_INTERVAL` seconds and reports ``SERVING`` once a probe passes.
Recovery is judged by the probe alone, not by a call that happened to work
(one that reads undamaged pages would make the health flap).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import structlog

log = structlog.get_logger(__name__)

#: Seconds between probes of a store that failed.
PROBE_INTERVAL = 1.0

#: Told ``False`` when the store starts failing, ``True`` when it works again.
HealthListener = Callable[[bool], None]


class StoreHealth:
    """A store's own account of whether it works; listeners hear each change."""

    def __init__(self) -> None:
        #: Why the store is failing (the first error), or ``None``.
        self.failing: str | None = None
        self._listeners: list[HealthListener] = []

    @property
    def working(self) -> bool:
        return self.failing is None

    def add_listener(self, listener: HealthListener) -> None:
        self._listeners.append(listener)

    def failed(self, reason: str) -> None:
        """A call found the store's file or disk failing."""
        if self.failing is None:
            self.failing = reason
            log.error("store failing", error=reason)
            self._tell(working=False)

    def works(self) -> None:
        """A probe found the store working."""
        if self.failing is not None:
            self.failing = None
            log.info("store works again")
            self._tell(working=True)

    def _tell(self, *, working: bool) -> None:
        for listener in list(self._listeners):
            listener(working)


@runtime_checkable
class ProbedStore(Protocol):
    """A store that reports its health and can be probed."""

    @property
    def health(self) -> StoreHealth: ...

    async def probe(self) -> None:
        """Check that the store works (marking it working if so).

        :raises StoreError: it does not.
        """
        ...


class HealthWatch:
    """Follows a store's health in a server's: ``set_serving(False)`` while it fails.

    Runs on the server's event loop (asyncio: grpc.aio's); :meth:`close` ends it.
    """

    def __init__(
        self,
        store: ProbedStore,
        set_serving: Callable[[bool], Awaitable[None]],
        *,
        interval: float = PROBE_INTERVAL,
    ) -> None:
        self._store = store
        self._set_serving = set_serving
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        store.health.add_listener(self._changed)

    def _changed(self, working: bool) -> None:
        if working or self._closed or self._task is not None:
            return
        # Called on the loop by the store's failing call.
        self._task = asyncio.get_running_loop().create_task(self._until_it_works())

    async def _until_it_works(self) -> None:
        health = self._store.health
        try:
            while True:
                await self._set_serving(False)
                while not health.working:
                    await asyncio.sleep(self._interval)
                    try:
                        await self._store.probe()
                    except Exception as exc:  # a StoreError, or worse: still failing
                        log.debug("store probe failed", error=str(exc))
                await self._set_serving(True)
                if health.working:  # not failed again meanwhile
                    return
        finally:
            self._task = None

    def close(self) -> None:
        """Stop probing (the server is stopping)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
