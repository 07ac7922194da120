"""One conformance suite: every engine and every outcome, over a real journal on loopback."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from structlog.testing import capture_logs
from ulid import ULID

from tailrunner import (
    EOF,
    ActivityContext,
    Done,
    EventStream,
    Failed,
    SilentRetry,
    SilentRetryAfter,
)
from tailrunner.activities.outcomes import Outcome
from tailrunner.engines.retry import RetryPolicy
from tailrunner.errors import StreamCancelled
from tailrunner.states import OutcomeKind, TaskState
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.testing import LoopbackJournal

from .conftest import (
    Call,
    Script,
    append,
    make_engine,
    new_aggregate,
    observed,
    read,
    read_to_eof,
    running,
)


async def test_eof_hands_back_tail_and_next_run_sees_only_new_events(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    first = await append(journal, agg, "a", "b")
    script = Script()
    engine = make_engine(engine_kind, journal, [script.activity()])
    engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: first[-1] in script.seen())
        second = await append(journal, agg, "c")
        await script.wait_for(lambda: second[-1] in script.seen())
    assert script.calls[0].tail is None
    assert script.seen() == first + second, "every event seen once, in order"
    later = next(c for c in script.calls if second[-1] in c.events)
    assert later.tail == first[-1], "the next run resumes from the EOF tail"


async def test_done_is_never_run_again(engine_kind: str, journal: LoopbackJournal) -> None:
    agg = new_aggregate()
    await append(journal, agg, "a")
    done_script = Script(steps=[_done])
    witness = Script()
    engine = make_engine(
        engine_kind, journal, [done_script.activity("done"), witness.activity("witness")]
    )
    for act in engine.activities.values():
        engine.start_activity(agg, act, None)
    async with running(engine):
        await done_script.wait_for(lambda: len(done_script.calls) == 1)
        # The witness follows the same aggregate: once it has seen the new
        # event, the engine has had every chance to wake the done task too.
        new = await append(journal, agg, "b")
        await witness.wait_for(lambda: new[-1] in witness.seen())
        task = engine.find("done", agg.id)
        assert task is not None and task.state is TaskState.COMPLETE
    assert len(done_script.calls) == 1


async def _done(
    ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
) -> Outcome:
    return Done(await read(stream, call, tail))


async def test_silent_retry_resumes_from_its_tail(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b", "c")

    async def handle_one_then_retry(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        async for event in stream:
            call.events.append(event.id)
            raise SilentRetry(tail=event.id, reason="lease busy")
        return EOF(tail)

    script = Script(steps=[handle_one_then_retry, handle_one_then_retry, _read_eof])
    engine = make_engine(engine_kind, journal, [script.activity()])
    seen = observed(engine)
    engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: len(script.calls) >= 3)
    assert [c.tail for c in script.calls[:3]] == [None, ids[0], ids[1]]
    assert [r.kind for _, r in seen[:2]] == [OutcomeKind.SILENT_RETRY] * 2
    assert script.seen()[:3] == ids


async def _read_eof(
    ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
) -> Outcome:
    return EOF(await read(stream, call, tail))


async def test_silent_retry_after_runs_at_its_time(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    await append(journal, agg, "a")
    wanted: list[datetime] = []

    async def wait_a_while(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        when = datetime.now(UTC) + timedelta(milliseconds=300)
        wanted.append(when)
        return SilentRetryAfter(when, tail=await read(stream, call, tail))

    script = Script(steps=[wait_a_while, _read_eof])
    # A cron interval far longer than the wait: the retry must not wait for a tick.
    engine = make_engine(engine_kind, journal, [script.activity()], interval=30.0)
    waits: list[tuple[TaskState, datetime | None]] = []
    engine.add_observer(
        lambda task, result: waits.append((task.state, engine.waiting(task).next_run_at))
    )
    engine.start_activity(agg, engine.activities["script"], None)
    started_wall: list[datetime] = []
    async with running(engine):
        await script.wait_for(lambda: len(script.calls) >= 2)
        started_wall.append(
            datetime.now(UTC) - timedelta(seconds=time.monotonic() - script.calls[1].started)
        )
    # The engine's timer is set for `when` itself (not a tick, not a backoff);
    # the run did not start before it. (How late it started is machine noise.)
    state, due = waits[0]
    assert state is TaskState.WAITING, "a retry-after wait is not an error's RETRY"
    assert due is not None and abs((due - wanted[0]).total_seconds()) < 0.005
    assert started_wall[0] >= wanted[0] - timedelta(milliseconds=5)
    assert script.calls[1].tail == script.calls[0].events[-1]


async def test_errors_retry_with_growing_backoff_from_the_checkpointed_tail(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b")

    async def checkpoint_then_fail(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        async for event in stream:
            call.events.append(event.id)
            await ctx.checkpoint(event.id)
            raise RuntimeError("boom")
        raise RuntimeError("boom at the end")

    script = Script(
        steps=[checkpoint_then_fail, checkpoint_then_fail, _fail_plain, _fail_plain, _read_eof]
    )
    retry = RetryPolicy(initial=0.05, multiplier=2.0, max_delay=1.0, jitter=0.0)
    engine = make_engine(engine_kind, journal, [script.activity()], retry=retry, interval=0.01)
    seen = observed(engine)
    # The delays the engine chose, as it chose them: the loop time between
    # that choice and an observer is load, not policy.
    delays: list[float] = []
    retry_due = engine._retry_due

    def recording(now: float, delay: float) -> float:
        delays.append(delay)
        return retry_due(now, delay)

    engine._retry_due = recording  # type: ignore[method-assign]
    # And the retry is due no later than that delay (cron: its next tick) after
    # the choice; load between the choice and the observer only shortens this.
    remaining: list[float] = []
    engine.add_observer(
        lambda task, result: remaining.append((task.due or 0) - anyio.current_time())
    )
    engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: len(script.calls) >= 5)
    assert [r.kind for _, r in seen[:4]] == [OutcomeKind.ERROR] * 4
    assert "boom" in (seen[0][1].error_text or "")
    # The tail after an error is the last checkpoint: the first two runs each
    # handled one event; the plain failures keep the tail they started from.
    assert [c.tail for c in script.calls[:5]] == [None, ids[0], ids[1], ids[1], ids[1]]
    # Progress resets the backoff, failures at one tail double it.
    assert delays[:4] == pytest.approx([0.05, 0.05, 0.1, 0.2])
    for left, delay in zip(remaining[:4], delays[:4], strict=True):
        assert left <= delay + 0.011, f"due {left:.3f} s after the choice of {delay} s"


async def _fail_plain(
    ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
) -> Outcome:
    raise ValueError("plain failure, no tail")


async def test_failed_with_no_tail_replays_from_the_first_event(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b")

    async def fail_while_loading(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        await read(stream, call, tail)
        raise Failed("view did not load", tail=None)

    script = Script(steps=[fail_while_loading, _read_eof])
    engine = make_engine(engine_kind, journal, [script.activity()])
    engine.start_activity(agg, engine.activities["script"], ids[-1])
    async with running(engine):
        await script.wait_for(lambda: len(script.calls) >= 2)
    assert script.calls[0].tail == ids[-1]
    assert script.calls[1].tail is None
    assert script.calls[1].events == ids, "replayed from the first event"


async def test_signal_during_a_run_leads_to_a_run_that_sees_it(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    first = await append(journal, agg, "a")
    appended: list[ULID] = []

    async def append_while_running(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        tail = await read(stream, call, tail)
        # The stream has ended (or caught up): this event lands between the
        # end of the stream and the return.
        appended.extend(await append(journal, agg, "during"))
        return EOF(tail)

    script = Script(steps=[append_while_running, _read_eof])
    engine = make_engine(engine_kind, journal, [script.activity()])
    engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: bool(appended) and appended[0] in script.seen())
    assert script.seen() == first + appended


async def test_a_cancelled_status_from_inside_the_activity_is_an_error_and_retried(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    # Only the engine's shutdown or an operator's stop is a stop: a CANCELLED
    # status from a call the activity made is an error (defect 3 of issue 10).
    agg = new_aggregate()
    ids = await append(journal, agg, "a")

    async def cancelled(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        await ctx.checkpoint(await read(stream, call, tail))
        raise StreamCancelled("a downstream call was cancelled")

    script = Script(steps=[cancelled, read_to_eof])
    tails = MemoryTailStore()
    engine = make_engine(engine_kind, journal, [script.activity("stops")], tails=tails)
    seen = observed(engine)
    engine.start_activity(agg, engine.activities["stops"], None)
    async with running(engine):
        await script.wait_for(lambda: len(seen) >= 2)
    assert [r.kind for _, r in seen[:2]] == [OutcomeKind.ERROR, OutcomeKind.EOF]
    assert "StreamCancelled" in (seen[0][1].error_text or "")
    assert script.calls[1].tail == ids[-1], "retried from its checkpoint"
    record = await tails.get("stops", agg.id)
    assert record is not None and record.state != "STOPPED"


async def test_a_stray_cancellation_inside_the_activity_is_an_error_and_retried(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    # An activity awaiting a future that something else cancelled raises
    # CancelledError without the engine's scope being cancelled: an error,
    # retried, never a task stranded as RUNNING (defect 1 of issue 10).
    agg = new_aggregate()
    ids = await append(journal, agg, "a")

    async def awaits_a_cancelled_future(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        await read(stream, call, tail)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future
        raise AssertionError("unreachable")

    script = Script(steps=[awaits_a_cancelled_future, read_to_eof])
    engine = make_engine(engine_kind, journal, [script.activity()])
    seen = observed(engine)
    engine.start_activity(agg, engine.activities["script"], None)
    with capture_logs() as logs:
        async with running(engine):
            await script.wait_for(lambda: len(seen) >= 2)
    assert [r.kind for _, r in seen[:2]] == [OutcomeKind.ERROR, OutcomeKind.EOF]
    assert "CancelledError" in (seen[0][1].error_text or "")
    assert seen[1][0].tail == ids[-1]
    warned = [e for e in logs if e["event"] == "will retry"]
    assert warned and warned[0]["activity"] == "script"


async def test_attempt_limit_suspends_only_the_poisoned_task(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    poisoned, healthy = new_aggregate(), new_aggregate()
    await append(journal, poisoned, "poison")
    healthy_ids = await append(journal, healthy, "fine")

    async def choke(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        async for event in stream:
            if event.type == "poison":
                raise ValueError("cannot digest")
            call.events.append(event.id)
            tail = event.id
        return EOF(tail)

    script = Script(steps=[choke])
    retry = RetryPolicy(initial=0.01, max_delay=0.05, jitter=0.0, max_attempts=3)
    engine = make_engine(engine_kind, journal, [script.activity()], retry=retry, interval=0.01)
    act = engine.activities["script"]
    bad = engine.start_activity(poisoned, act, None)
    good = engine.start_activity(healthy, act, None)
    async with running(engine):
        await script.wait_for(lambda: bad.state is TaskState.SUSPENDED)
        assert bad.errors == 3 and "cannot digest" in (bad.last_error or "")
        await script.wait_for(lambda: healthy_ids[0] in script.seen())
        assert good.state is not TaskState.SUSPENDED
        runs_when_suspended = sum(1 for c in script.calls if c.tail is None) - 1
        # Resuming gives it fresh attempts (an operator fixed the cause).
        await engine.resume(bad)
        await script.wait_for(lambda: bad.state is TaskState.SUSPENDED and bad.runs >= 6)
    assert runs_when_suspended >= 3


async def test_cancellation_stops_1000_running_activities_and_keeps_checkpoints(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    aggregates = [new_aggregate() for _ in range(1000)]
    for agg in aggregates[:10]:
        await append(journal, agg, "a")
    holding = anyio.Event()
    running_now = 0
    cancelled = 0

    async def hold(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        nonlocal running_now, cancelled
        tail = await read(stream, call, tail)
        await ctx.checkpoint(tail)
        running_now += 1
        if running_now == 1000:
            holding.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled += 1
            raise
        raise AssertionError("unreachable")

    script = Script(steps=[hold])
    tails = MemoryTailStore()
    # A grace period far longer than the test's guard: shutdown must not lean
    # on it when every activity honours cancellation.
    engine = make_engine(
        engine_kind, journal, [script.activity()], capacity=1000, tails=tails, shutdown_grace=3600
    )
    for agg in aggregates:
        engine.start_activity(agg, engine.activities["script"], None)
    with anyio.fail_after(60):  # a hang guard, not a timing claim
        async with anyio.create_task_group() as tg:
            await tg.start(engine.run)
            await holding.wait()
            tg.cancel_scope.cancel()
    assert cancelled == 1000, "every run saw the cancellation"
    assert engine.running == 0 and engine.abandoned == []
    stored = await tails.load("script")
    assert sum(1 for r in stored.values() if r.tail is not None) == 10, "checkpoints kept"


async def test_capacity_limits_are_never_exceeded(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    aggregates = [new_aggregate() for _ in range(30)]
    for agg in aggregates:
        await append(journal, agg, "a")
    open_now = peak = 0
    per_activity_peak = 0
    limited_now = 0

    async def slow(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        nonlocal open_now, peak, limited_now, per_activity_peak
        open_now += 1
        peak = max(peak, open_now)
        if ctx.activity == "limited":
            limited_now += 1
            per_activity_peak = max(per_activity_peak, limited_now)
        try:
            tail = await read(stream, call, tail)
            await anyio.sleep(0.01)
            return Done(tail)
        finally:
            open_now -= 1
            if ctx.activity == "limited":
                limited_now -= 1

    free, limited = Script(steps=[slow]), Script(steps=[slow])
    engine = make_engine(
        engine_kind,
        journal,
        [free.activity("free"), limited.activity("limited")],
        capacity=5,
        activity_limits={"limited": 2},
    )
    for agg in aggregates:
        for act in engine.activities.values():
            engine.start_activity(agg, act, None)
    async with running(engine):
        await free.wait_for(lambda: len(free.calls) == 30, timeout=20)
        await limited.wait_for(lambda: len(limited.calls) == 30, timeout=20)
    assert peak == 5, f"peak concurrent runs {peak}, capacity 5"
    assert per_activity_peak == 2, f"peak runs of the limited activity {per_activity_peak}"


@pytest.mark.parametrize("outcome", ["eof", "done"])
async def test_returned_garbage_is_an_error(
    engine_kind: str, journal: LoopbackJournal, outcome: str
) -> None:
    agg = new_aggregate()
    await append(journal, agg, "a")

    async def garbage(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        return outcome  # type: ignore[return-value]

    script = Script(steps=[garbage, _read_eof])
    engine = make_engine(engine_kind, journal, [script.activity()])
    seen = observed(engine)
    engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: len(script.calls) >= 2)
    assert seen[0][1].kind is OutcomeKind.ERROR
    assert "expected EOF(tail)" in (seen[0][1].error_text or "")
