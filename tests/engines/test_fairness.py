"""Dispatch is fair across activities: one busy activity cannot starve the others.

Issue 10, defect 4: dispatch scanned the activities from the first, so with
capacity 1 the second activity ran last of 22 runs, and never while the
first retried without backoff. These tests count who gets the slots (the
order of runs as the run observer reports them; with capacity 1 that is the
order the runs happened), never wall-clock time.
"""

from __future__ import annotations

from ulid import ULID

from tailrunner import ActivityContext, Done, EventStream, SilentRetry
from tailrunner.activities.outcomes import Outcome
from tailrunner.engines.retry import RetryPolicy
from tailrunner.testing import LoopbackJournal

from .conftest import Call, Script, append, make_engine, new_aggregate, observed, read, running

#: As short a backoff as the policy allows: a retrying task is ready again at once.
SPIN = RetryPolicy(initial=0.001, multiplier=1.0, max_delay=0.001, jitter=0.0)


async def _done(
    ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
) -> Outcome:
    return Done(await read(stream, call, tail))


async def _retry(
    ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
) -> Outcome:
    raise SilentRetry(tail=await read(stream, call, tail), reason="busy, again")


def _longest_streak(names: list[str]) -> int:
    longest = streak = 0
    previous = None
    for name in names:
        streak = streak + 1 if name == previous else 1
        previous = name
        longest = max(longest, streak)
    return longest


async def test_an_activity_with_many_ready_tasks_does_not_make_another_wait_for_all_of_them(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    # 20 ready tasks of "a", 2 of "b", one slot: round robin gives b the 2nd
    # and 4th runs (before the rework b ran 21st and 22nd).
    many, few = Script(steps=[_done]), Script(steps=[_done])
    engine = make_engine(engine_kind, journal, [many.activity("a"), few.activity("b")], capacity=1)
    seen = observed(engine)
    for count, name in ((20, "a"), (2, "b")):
        for _ in range(count):
            agg = new_aggregate()
            await append(journal, agg, "e")
            engine.start_activity(agg, engine.activities[name], None)
    async with running(engine):
        await many.wait_for(lambda: len(seen) >= 22, timeout=30)
    order = [task.activity.name for task, _ in seen]
    assert sorted(order) == ["a"] * 20 + ["b"] * 2, "each task ran once (Done)"
    b_runs = [i + 1 for i, name in enumerate(order) if name == "b"]
    assert b_runs == [2, 4], f"b's runs came at {b_runs} of 22 (order {''.join(order)})"


async def test_slots_alternate_between_two_activities_that_both_retry_without_pause(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    # Both activities keep their tasks ready (a silent retry with a 1 ms
    # backoff, cron: at each tick): over a window of 40 runs each gets about
    # half the slots, and neither holds the slot for long stretches.
    a, b = Script(steps=[_retry]), Script(steps=[_retry])
    engine = make_engine(
        engine_kind, journal, [a.activity("a"), b.activity("b")], capacity=1, retry=SPIN
    )
    seen = observed(engine)
    for name in ("a", "b"):
        for _ in range(4):
            agg = new_aggregate()
            await append(journal, agg, "e")
            engine.start_activity(agg, engine.activities[name], None)
    async with running(engine):
        await a.wait_for(lambda: len(seen) >= 40, timeout=30)
    order = [task.activity.name for task, _ in seen[:40]]
    shown = "".join(order)
    assert 16 <= order.count("b") <= 24, f"b got {order.count('b')} of 40 slots: {shown}"
    assert "b" in order[:2], f"b waited: {shown}"
    assert _longest_streak(order) <= 3, f"one activity held the slot in a row: {shown}"
