"""Run one task once: open its stream, call the activity, classify what it reported.

Every engine runs activities through :func:`run_once`, so the activity
contract (which outcome means what, which tail travels with it) is decided
in one place; the engines differ only in what they do next.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import grpc
import structlog
from ulid import ULID

from tailrunner.activities.context import ActivityContext
from tailrunner.activities.outcomes import EOF, Done, Failed, SilentRetry, SilentRetryAfter
from tailrunner.activities.stream import EventStream
from tailrunner.engines.task import Task
from tailrunner.errors import StreamCancelled
from tailrunner.journal.api import JournalApi

log = structlog.get_logger(__name__)

#: ``await saver(task, tail)`` stores a tail the activity checkpointed.
CheckpointSaver = Callable[[Task, ULID | None], Awaitable[None]]
#: ``async with opener(task, tail) as conn`` commits the activity's writes with ``tail``.
TransactionOpener = Callable[[Task, ULID | None], AbstractAsyncContextManager[Any]]


class OutcomeKind(enum.StrEnum):
    DONE = "done"
    EOF = "eof"
    CANCELLED = "cancelled"
    SILENT_RETRY = "silent_retry"
    RETRY_AFTER = "retry_after"
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """What one run of a task came to."""

    kind: OutcomeKind
    #: The tail to resume from (``None``: replay from the first event).
    tail: ULID | None
    tail_before: ULID | None
    #: ``RETRY_AFTER``: when to run again.
    when: datetime | None = None
    error: BaseException | None = None
    events_seen: int = 0
    started_at: datetime
    finished_at: datetime

    @property
    def progressed(self) -> bool:
        return self.tail != self.tail_before

    @property
    def error_text(self) -> str | None:
        if self.error is None:
            return None
        return f"{type(self.error).__name__}: {self.error}"


def _is_grpc_cancelled(exc: BaseException) -> bool:
    return isinstance(exc, StreamCancelled) or (
        isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.CANCELLED
    )


async def run_once(
    task: Task,
    *,
    journal: JournalApi,
    engine: str,
    watch: bool,
    checkpoint: CheckpointSaver,
    transaction: TransactionOpener | None = None,
) -> RunResult:
    """Run ``task``'s activity once from ``task.tail`` and classify the outcome.

    Engine shutdown and operator stops cancel the run: the last checkpointed
    tail is saved (shielded) through ``checkpoint`` and the cancellation
    propagates. Every other ending, errors included, becomes a
    :class:`RunResult`; this function raises nothing else.
    """
    tail_before = task.tail
    started = datetime.now(UTC)

    async def save_checkpoint(tail: ULID | None) -> None:
        await checkpoint(task, tail)

    @asynccontextmanager
    async def in_transaction(tail: ULID | None) -> AsyncIterator[Any]:
        if transaction is None:
            raise RuntimeError("this engine offers no tail-store transactions")
        async with transaction(task, tail) as conn:
            yield conn
        ctx._tail = tail  # committed: the tail counts as checkpointed

    ctx = ActivityContext(
        activity=task.activity.name,
        aggregate=task.aggregate,
        engine=engine,
        attempt=task.errors + 1,
        journal=journal,
        _checkpoint=save_checkpoint,
        _transaction=in_transaction,
        _tail=tail_before,
    )
    stream: EventStream | None = None

    def result(
        kind: OutcomeKind,
        tail: ULID | None,
        *,
        when: datetime | None = None,
        error: BaseException | None = None,
    ) -> RunResult:
        return RunResult(
            kind=kind,
            tail=tail,
            tail_before=tail_before,
            when=when,
            error=error,
            events_seen=stream.events_seen if stream is not None else 0,
            started_at=started,
            finished_at=datetime.now(UTC),
        )

    try:
        async with aclosing(
            journal.events(task.aggregate.id, after=tail_before, watch=watch)
        ) as batches:
            stream = EventStream(batches)
            outcome = await task.activity(ctx, tail_before, stream)
    except anyio.get_cancelled_exc_class():
        # Shutdown or an operator stop: keep the tail, then let it through.
        with anyio.CancelScope(shield=True):
            try:
                await checkpoint(task, ctx.tail)
            except Exception as exc:
                log.error("tail not saved on stop", error=str(exc), activity=task.activity.name)
        raise
    except SilentRetryAfter as exc:
        return result(OutcomeKind.RETRY_AFTER, exc.tail, when=exc.when)
    except SilentRetry as exc:
        return result(OutcomeKind.SILENT_RETRY, exc.tail, error=exc)
    except Failed as exc:
        return result(OutcomeKind.ERROR, exc.tail, error=exc)
    except Exception as exc:
        if _is_grpc_cancelled(exc):
            return result(OutcomeKind.CANCELLED, ctx.tail)
        return result(OutcomeKind.ERROR, ctx.tail, error=exc)

    match outcome:
        case EOF(tail=tail):
            return result(OutcomeKind.EOF, tail)
        case Done(tail=tail):
            return result(OutcomeKind.DONE, tail)
        case SilentRetryAfter():
            return result(OutcomeKind.RETRY_AFTER, outcome.tail, when=outcome.when)
        case SilentRetry():
            return result(OutcomeKind.SILENT_RETRY, outcome.tail, error=outcome)
        case _:
            error = TypeError(
                f"activity {task.activity.name!r} returned {outcome!r}; expected EOF(tail),"
                " Done(tail), SilentRetry or SilentRetryAfter"
            )
            return result(OutcomeKind.ERROR, ctx.tail, error=error)
