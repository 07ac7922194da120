"""``ActivityContext``: what an activity knows about the run it is in."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger
from ulid import ULID

from tailrunner.activities.stream import EventStream
from tailrunner.journal.api import JournalApi
from tailrunner.model import AggregateRef

Checkpoint = Callable[[ULID | None], Awaitable[None]]
Transaction = Callable[[ULID | None], AbstractAsyncContextManager[Any]]


async def _no_checkpoint(tail: ULID | None) -> None:
    return None


def _no_transaction(tail: ULID | None) -> AbstractAsyncContextManager[Any]:
    raise RuntimeError("this context has no tail store: transactions need an engine")


@dataclass(slots=True, kw_only=True)
class ActivityContext:
    """Handed to every activity run.

    :ivar activity: the activity's registered name.
    :ivar aggregate: the aggregate this run follows.
    :ivar engine: ``"lazy"``, ``"eager"`` or ``"cron"``.
    :ivar attempt: 1 for the first run at this tail, counting up while runs fail.
    :ivar journal: the journal, for activities that append (commands, workflow events).
    :ivar log: a structlog logger bound to activity, aggregate and engine.
    :ivar settings: the activity's settings (``@activity(settings=…)``), as
        ``[activities.settings.NAME]`` configured them; ``None`` without.
    """

    activity: str
    aggregate: AggregateRef
    engine: str
    attempt: int
    journal: JournalApi
    settings: Any = None
    _logger: FilteringBoundLogger | None = field(default=None, init=False, repr=False)
    _checkpoint: Checkpoint = field(default=_no_checkpoint, repr=False)
    _transaction: Transaction = field(default=_no_transaction, repr=False)
    _tail: ULID | None = field(default=None, repr=False)
    #: The run's stream when the engine tracks progress from it (auto checkpoints).
    _stream: EventStream | None = field(default=None, repr=False)

    @property
    def log(self) -> FilteringBoundLogger:
        # Bound on first use: most runs never log, and binding took about a
        # tenth of a short run.
        logger = self._logger
        if logger is None:
            logger = self._logger = structlog.get_logger("tailrunner.activity").bind(
                activity=self.activity,
                aggregate_type=self.aggregate.type,
                aggregate_id=str(self.aggregate.id),
                engine=self.engine,
            )
        return logger

    @property
    def tail(self) -> ULID | None:
        """The newest tail of this run: the start tail, the last checkpoint or,
        unless the activity opted out (``auto_checkpoint=False``), the last
        event it finished reading (a sequential reader is done with an event
        when it asks for the next one), whichever is newest.
        """
        if self._stream is None:
            return self._tail
        finished = self._stream.finished
        if finished is None:
            return self._tail
        return finished if self._tail is None or finished > self._tail else self._tail

    async def checkpoint(self, tail: ULID | None) -> None:
        """Record that every event up to ``tail`` is handled.

        The engine stores it at once, and resumes from it when the run ends
        without a tail of its own: cancellation, or an exception other than
        the outcomes. An activity that iterates its stream need not
        checkpoint (the engine records how far it read); one that hands
        events to background work opts out (``auto_checkpoint=False``) and
        checkpoints what that work has finished.

        :raises InvalidOutcome: ``tail`` is not ``None``, the run's start tail
            or an event id this run's stream handed out.
        """
        await self._checkpoint(tail)
        self._tail = tail

    def transaction(self, tail: ULID | None) -> AbstractAsyncContextManager[Any]:
        """A transaction of the tail store in which ``tail`` is saved: exactly-once effects.

        ::

            async with ctx.transaction(event.id) as conn:
                conn.execute("INSERT INTO totals …")   # your write, same database

        The activity's own writes through the yielded connection and the new
        tail commit together, or neither does (an exception or cancellation
        rolls both back). The connection is the store's: a
        :class:`sqlite3.Connection` (SQLite) or a psycopg ``AsyncConnection``
        (PostgreSQL); the memory store yields ``None``. On commit the tail
        counts as checkpointed.
        """
        return self._transaction(tail)
