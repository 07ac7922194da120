"""The kit plugin authors use, used the way they would: the pytest11 fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from ulid import ULID

from tailrunner import EOF, ActivityContext, Done, EventStream, activity
from tailrunner.activities.builtin import counter
from tailrunner.activities.outcomes import Outcome
from tailrunner.engines.execute import OutcomeKind
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.testing import ActivityRun, LoopbackJournal, activity_context, make_events


async def test_an_activity_called_directly_with_a_fake_stream(
    fake_stream: Callable[..., EventStream],
) -> None:
    events = make_events([("hello", {"n": 1}), ("hello", {"n": 2})], aggregate_type="demo")
    assert events[1].parent == events[0].id and events[0].parent is None
    outcome = await counter(activity_context("counter"), None, fake_stream(events, batch_size=1))
    assert outcome == EOF(events[-1].id)


async def test_a_test_context_refuses_journal_use_with_a_clear_message() -> None:
    ctx = activity_context()
    with pytest.raises(RuntimeError, match="has no journal"):
        await ctx.journal.append(ctx.aggregate, [NewEvent(type="x")])


@pytest.mark.parametrize("engine", ["lazy", "eager", "cron"])
async def test_run_activity_runs_until_idle_under_every_engine(
    engine: str,
    tailrunner_journal: LoopbackJournal,
    run_activity: Callable[..., Awaitable[ActivityRun]],
) -> None:
    agg = AggregateRef(type="demo", id=uuid.uuid4())
    result = await tailrunner_journal.client.append(agg, [NewEvent(type="hello")] * 3)
    run = await run_activity(counter, aggregate=agg, engine=engine)
    assert run.tail == result.tail
    if engine != "eager":  # the eager counter never returns: it watches
        assert run.outcomes == [OutcomeKind.EOF]


async def test_run_activity_reports_done_and_errors(
    tailrunner_journal: LoopbackJournal,
    run_activity: Callable[..., Awaitable[ActivityRun]],
) -> None:
    agg = AggregateRef(type="demo", id=uuid.uuid4())
    await tailrunner_journal.client.append(agg, [NewEvent(type="hello")])
    calls: list[Any] = []

    @activity(name="flaky", aggregate_types=["demo"])
    async def flaky(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        calls.append(tail)
        async for event in stream:
            tail = event.id
        if len(calls) == 1:
            raise ValueError("first time")
        return Done(tail)

    failed = await run_activity(flaky, aggregate=agg)
    assert failed.outcomes == [OutcomeKind.ERROR]
    assert "first time" in (failed.results[0].error_text or "")
    done = await run_activity(flaky, aggregate=agg, stop_on_retry=False)
    assert done.outcomes == [OutcomeKind.DONE]
