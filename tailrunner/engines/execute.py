"""Run one task once: open its stream, call the activity, classify what it reported.

Every engine runs activities through :func:`run_once`, so the activity
contract (which outcome means what, which tail travels with it, which tails
are allowed) is decided in one place; the engines differ only in what they
do next.

Cancellation is told apart here, once: the run's own cancel scope
(:attr:`Task.scope`, which an operator's control cancels) gives a
``CANCELLED`` result; a cancelled enclosing scope (engine shutdown) saves
the progress and propagates; any other ``CancelledError`` (an awaited task
or future that something else cancelled) and any gRPC ``CANCELLED`` status
are errors of the run, retried like any other.
"""

from __future__ import annotations

import asyncio
import math
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
import structlog
from ulid import ULID

from tailrunner.activities.context import ActivityContext
from tailrunner.activities.outcomes import (
    EOF,
    Done,
    Failed,
    SilentRetry,
    SilentRetryAfter,
    check_when,
)
from tailrunner.activities.stream import EventStream
from tailrunner.engines.read_ahead import read_on
from tailrunner.engines.task import Task
from tailrunner.errors import InvalidOutcome
from tailrunner.journal.api import JournalApi
from tailrunner.journal.lookup import is_event_of
from tailrunner.model import EventBatch
from tailrunner.states import OutcomeKind
from tailrunner.tails.store import MAX_ERROR_TEXT

log = structlog.get_logger(__name__)

#: ``await saver(task, tail)`` stores a tail the activity checkpointed.
CheckpointSaver = Callable[[Task, ULID | None], Awaitable[None]]
#: ``async with opener(task, tail) as conn`` commits the activity's writes with ``tail``.
TransactionOpener = Callable[[Task, ULID | None], AbstractAsyncContextManager[Any]]
#: ``await on_progress(task, tail, events)``: a watching run caught up at ``tail``.
ProgressSaver = Callable[[Task, ULID | None, int], Awaitable[None]]
#: ``await on_resumed(task)``: a watching run that had caught up gets new events.
ResumeSaver = Callable[[Task], Awaitable[None]]
#: ``await take(task)``: the events read ahead for this run (``None``: read them).
ReadAheadTaker = Callable[[Task], Awaitable[EventBatch | None]]


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
    #: The error's traceback, bounded to :data:`MAX_ERROR_TEXT` characters.
    traceback: str | None = None
    events_seen: int = 0
    started_at: datetime
    finished_at: datetime

    @property
    def progressed(self) -> bool:
        return self.tail != self.tail_before

    @property
    def error_text(self) -> str | None:
        """One line: ``"ValueError: bad event"``."""
        if self.error is None:
            return None
        return f"{type(self.error).__name__}: {self.error}"


def format_traceback(exc: BaseException) -> str:
    """``exc``'s traceback, at most :data:`MAX_ERROR_TEXT` characters, ending in its last line."""
    text = "".join(traceback.format_exception(exc)).rstrip("\n")
    if len(text) <= MAX_ERROR_TEXT:
        return text
    marker = "… (traceback shortened)\n"
    return marker + text[len(text) - (MAX_ERROR_TEXT - len(marker)) :]


def _cancel_pending() -> bool:
    """Whether a scope around the current code, or ``Task.cancel()``, is cancelling it."""
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        return True
    return anyio.current_effective_deadline() == -math.inf


async def run_once(
    task: Task,
    *,
    journal: JournalApi,
    engine: str,
    watch: bool,
    checkpoint: CheckpointSaver,
    transaction: TransactionOpener | None = None,
    on_progress: ProgressSaver | None = None,
    on_resumed: ResumeSaver | None = None,
    read_ahead: ReadAheadTaker | None = None,
) -> RunResult:
    """Run ``task``'s activity once from ``task.tail`` and classify the outcome.

    The run has its own cancel scope, set as ``task.scope`` while it runs:
    cancelling it (an operator's control) ends the run with a ``CANCELLED``
    result carrying the progress made. When an enclosing scope is cancelled
    (engine shutdown), the progress is saved (shielded) through
    ``checkpoint`` and the cancellation propagates. Every other ending,
    errors and stray cancellations included, becomes a :class:`RunResult`.

    :param on_progress: awaited when a watching run's reader catches up
        (``will_block``) with the tail it has finished, so that a stream that
        never ends still records its progress.
    :param on_resumed: awaited when a watching run that had caught up is
        about to get new events.
    :param read_ahead: a run that reads to the end (not ``watch``) may find
        its events read already (see :mod:`tailrunner.engines.read_ahead`).
    """
    run = _Run(
        task,
        journal=journal,
        engine=engine,
        checkpoint=checkpoint,
        transaction=transaction,
        on_progress=on_progress,
        on_resumed=on_resumed,
        read_ahead=None if watch else read_ahead,
    )
    return await run.execute(watch)


class _Run:
    """One run of one task: its context, its stream, and the tails it may report."""

    def __init__(
        self,
        task: Task,
        *,
        journal: JournalApi,
        engine: str,
        checkpoint: CheckpointSaver,
        transaction: TransactionOpener | None,
        on_progress: ProgressSaver | None,
        on_resumed: ResumeSaver | None = None,
        read_ahead: ReadAheadTaker | None = None,
    ) -> None:
        self.task = task
        self.read_ahead = read_ahead
        self.name = task.activity.name
        self.journal = journal
        self.tail_before = task.tail
        self.started = datetime.now(UTC)
        self.stream: EventStream | None = None
        self.checkpoint = checkpoint
        self.transaction = transaction
        self.on_progress = on_progress
        self.on_resumed = on_resumed
        #: Events already reported to ``on_progress``.
        self.reported = 0
        self.ctx = ActivityContext(
            activity=self.name,
            aggregate=task.aggregate,
            engine=engine,
            attempt=task.errors + 1,
            journal=journal,
            settings=task.activity.settings,
            _checkpoint=self.save_checkpoint,
            _transaction=self.in_transaction,
            _tail=self.tail_before,
        )

    async def execute(self, watch: bool) -> RunResult:
        task = self.task
        outcome: object = None
        raised: BaseException | None = None
        cancelled: BaseException | None = None
        with anyio.CancelScope() as scope:
            task.scope = scope
            if task.controls:
                # A control came before this scope existed (while the run
                # was being marked, say): it stops the run now, not never.
                scope.cancel()
            try:
                async with aclosing(await self.open(watch)) as batches:
                    self.stream = EventStream(
                        batches,
                        start=self.tail_before,
                        on_caught_up=self.caught_up
                        if watch and self.on_progress is not None
                        else None,
                        on_resumed=self.resumed if watch and self.on_resumed is not None else None,
                    )
                    if task.activity.auto_checkpoint:
                        self.ctx._stream = self.stream
                    outcome = await task.activity(self.ctx, self.tail_before, self.stream)
            except anyio.get_cancelled_exc_class() as exc:
                if scope.cancel_called or _cancel_pending():
                    cancelled = exc
                else:
                    # Not the engine's cancellation: something the activity
                    # awaited was cancelled elsewhere. An error, or the task
                    # would be lost.
                    raised = RuntimeError(
                        "the activity raised CancelledError although its run was not"
                        " cancelled (a task or future it awaited was cancelled by something"
                        " else)"
                    )
                    raised.__cause__ = exc
            except Exception as exc:
                if scope.cancel_called:
                    cancelled = exc  # the stop landed as an error of the activity's
                else:
                    raised = exc
            finally:
                task.scope = None
        if _cancel_pending():
            await self.shut_down(outcome if cancelled is None else None, cancelled)
        if cancelled is not None:
            return self.result(OutcomeKind.STOPPED, self.ctx.tail)
        if raised is not None:
            return await self.classify_error(raised)
        return await self.classify_outcome(outcome)

    async def open(self, watch: bool) -> AsyncGenerator[EventBatch, None]:
        """The run's batches: read ahead if the engine did, else a stream of their own."""
        aggregate_id = self.ctx.aggregate.id  # built once per run (Task.aggregate builds anew)
        if self.read_ahead is not None:
            batch = await self.read_ahead(self.task)
            if batch is not None:
                return read_on(self.journal, aggregate_id, self.tail_before, batch)
        return self.journal.events(aggregate_id, after=self.tail_before, watch=watch)

    async def shut_down(self, outcome: object, cancelled: BaseException | None) -> None:
        """Engine shutdown: keep the progress, then let the cancellation through."""
        stopped_at = self.ctx.tail
        if isinstance(outcome, EOF | Done):
            with suppress(InvalidOutcome):
                stopped_at = await self.check_tail(outcome.tail, "returned")
        with anyio.CancelScope(shield=True):
            try:
                await self.checkpoint(self.task, stopped_at)
            except Exception as exc:
                log.error(
                    "tail not saved on stop",
                    error=f"{type(exc).__name__}: {exc}",
                    activity=self.name,
                    aggregate_id=str(self.ctx.aggregate.id),
                )
        if isinstance(cancelled, anyio.get_cancelled_exc_class()):
            raise cancelled
        await anyio.lowlevel.checkpoint()  # raises the pending cancellation

    async def check_tail(self, value: object, what: str) -> ULID | None:
        """``value`` if this run may report it as its tail (see the module docstring).

        :raises InvalidOutcome: naming the value and what is allowed.
        """
        before = self.tail_before
        stream = self.stream
        last = stream.last_handed if stream is not None else None
        # The type first: a ULID compares equal to its text, bytes and int.
        if value is None or (isinstance(value, ULID) and value == before):
            return before if value is not None else None
        if isinstance(value, ULID) and last is not None:
            in_range = value <= last and (before is None or value > before)
            # Every event after the start tail up to the newest handed out was
            # handed to this run, so being one of the aggregate's events is
            # enough; the journal is asked only for an older tail than the
            # current batch's.
            if in_range and (
                value in (last, self.ctx._tail)
                or (stream is not None and stream.handed_in_current_batch(value))
                or await is_event_of(self.journal, self.ctx.aggregate.id, value)
            ):
                return value
        raise InvalidOutcome(
            f"activity {self.name!r} on aggregate {self.ctx.aggregate}: {what} tail"
            f" {value!r} is not one this run may report: expected None, the run's start"
            f" tail {before}, a checkpointed tail or an event id its stream handed out"
            f" (the newest: {last})"
        )

    async def save_checkpoint(self, tail: ULID | None) -> None:
        await self.checkpoint(self.task, await self.check_tail(tail, "checkpointed"))

    @asynccontextmanager
    async def in_transaction(self, tail: ULID | None) -> AsyncIterator[Any]:
        if self.transaction is None:
            raise RuntimeError("this engine offers no tail-store transactions")
        checked = await self.check_tail(tail, "transaction")
        async with self.transaction(self.task, checked) as conn:
            yield conn
        self.ctx._tail = checked  # committed: the tail counts as checkpointed

    async def resumed(self) -> None:
        assert self.on_resumed is not None
        await self.on_resumed(self.task)

    async def caught_up(self) -> None:
        assert self.on_progress is not None and self.stream is not None
        seen = self.stream.events_seen
        await self.on_progress(self.task, self.ctx.tail, seen - self.reported)
        self.reported = seen

    def result(
        self,
        kind: OutcomeKind,
        tail: ULID | None,
        *,
        when: datetime | None = None,
        error: BaseException | None = None,
    ) -> RunResult:
        seen = self.stream.events_seen if self.stream is not None else 0
        return RunResult(
            kind=kind,
            tail=tail,
            tail_before=self.tail_before,
            when=when,
            error=error,
            traceback=None if error is None else format_traceback(error),
            events_seen=seen - self.reported,
            started_at=self.started,
            finished_at=datetime.now(UTC),
        )

    async def classify_error(self, exc: BaseException) -> RunResult:
        try:
            if isinstance(exc, SilentRetryAfter):
                when = check_when(exc.when)
                tail = await self.check_tail(exc.tail, "SilentRetryAfter")
                return self.result(OutcomeKind.RETRY_AFTER, tail, when=when)
            if isinstance(exc, SilentRetry):
                tail = await self.check_tail(exc.tail, "SilentRetry")
                return self.result(OutcomeKind.SILENT_RETRY, tail, error=exc)
            if isinstance(exc, Failed):
                tail = await self.check_tail(exc.tail, "Failed")
                return self.result(OutcomeKind.ERROR, tail, error=exc)
        except (InvalidOutcome, ValueError) as bad:
            return self.result(OutcomeKind.ERROR, self.ctx.tail, error=self.invalid(bad))
        return self.result(OutcomeKind.ERROR, self.ctx.tail, error=exc)

    async def classify_outcome(self, outcome: object) -> RunResult:
        try:
            match outcome:
                case EOF():
                    return self.result(OutcomeKind.EOF, await self.check_tail(outcome.tail, "EOF"))
                case Done():
                    tail = await self.check_tail(outcome.tail, "Done")
                    return self.result(OutcomeKind.DONE, tail)
                case SilentRetryAfter():
                    when = check_when(outcome.when)
                    tail = await self.check_tail(outcome.tail, "SilentRetryAfter")
                    return self.result(OutcomeKind.RETRY_AFTER, tail, when=when)
                case SilentRetry():
                    tail = await self.check_tail(outcome.tail, "SilentRetry")
                    return self.result(OutcomeKind.SILENT_RETRY, tail, error=outcome)
        except (InvalidOutcome, ValueError) as bad:
            return self.result(OutcomeKind.ERROR, self.ctx.tail, error=self.invalid(bad))
        error = InvalidOutcome(
            f"activity {self.name!r} returned {outcome!r}; expected EOF(tail), Done(tail),"
            " SilentRetry or SilentRetryAfter"
        )
        return self.result(OutcomeKind.ERROR, self.ctx.tail, error=error)

    def invalid(self, exc: Exception) -> InvalidOutcome:
        if isinstance(exc, InvalidOutcome):
            return exc
        invalid = InvalidOutcome(f"activity {self.name!r}: {exc}")
        invalid.__cause__ = exc
        return invalid
