"""What reaches the tail store survives a restart: Done stays done, backoff goes on."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
from ulid import ULID

from tailrunner import ActivityContext, Done, EventStream
from tailrunner.activities.outcomes import Outcome
from tailrunner.engines.retry import RetryPolicy
from tailrunner.reconnect import ReconnectPolicy
from tailrunner.states import TaskState
from tailrunner.testing import LoopbackJournal

from .conftest import Call, GatedTails, Script, append, make_engine, new_aggregate, read, running

FAST_RECONNECT = ReconnectPolicy(initial=0.01, max_delay=0.05)


async def _done(
    ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
) -> Outcome:
    return Done(await read(stream, call, tail))


async def test_done_whose_save_failed_is_saved_later_and_never_runs_again(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    # Defect 9 of issue 10: COMPLETE was kept only in memory when its save
    # failed, so a restart ran the task again.
    agg = new_aggregate()
    ids = await append(journal, agg, "a")
    done, witness = Script(steps=[_done]), Script()
    tails = GatedTails()
    down = True
    tails.fail = lambda record: down and record.state == "COMPLETE"
    engine = make_engine(
        engine_kind,
        journal,
        [done.activity("done"), witness.activity("witness")],
        tails=tails,
        reconnect=FAST_RECONNECT,
    )
    task = engine.start_activity(agg, engine.activities["done"], None)
    engine.start_activity(agg, engine.activities["witness"], None)
    async with running(engine):
        await done.wait_for(lambda: task.state is TaskState.COMPLETE)
        # While the store is down the task stays complete and does not run.
        new = await append(journal, agg, "b")
        await witness.wait_for(lambda: new[-1] in witness.seen())
        assert len(done.calls) == 1 and await tails.get("done", agg.id) is None
        down = False
        with anyio.fail_after(5):
            while (record := await tails.get("done", agg.id)) is None:
                await tails.saved.wait()
    assert record.completed and record.state == "COMPLETE" and record.tail == ids[-1]
    # A restarted runner keeps it complete.
    again = make_engine(engine_kind, journal, [done.activity("done")], tails=tails)
    restored = again.restore(agg, again.activities["done"], record)
    assert restored.state is TaskState.COMPLETE
    assert len(done.calls) == 1


async def _fail(
    ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
) -> Outcome:
    raise RuntimeError("still broken")


async def test_the_backoff_goes_on_after_a_restart(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    # Defect 11 of issue 10: after a restart the attempt count was kept but
    # the delay started over, so restarts reached max_attempts fast.
    agg = new_aggregate()
    await append(journal, agg, "a")
    script = Script(steps=[_fail])
    retry = RetryPolicy(initial=0.05, multiplier=2.0, max_delay=60.0, jitter=0.0)
    tails = GatedTails()
    engine = make_engine(engine_kind, journal, [script.activity()], tails=tails, retry=retry)
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: task.runs >= 3 and task.state is TaskState.RETRY)
    record = await tails.get("script", agg.id)
    assert record is not None and record.state == "RETRY"
    assert (record.attempts, record.failures) == (3, 3)
    assert record.next_run_at is not None and record.next_run_at.tzinfo is not None

    again = make_engine(engine_kind, journal, [script.activity()], tails=tails, retry=retry)
    restored = again.restore(agg, again.activities["script"], record)
    assert restored.state is TaskState.RETRY, "it waits for its stored next run"
    when = again.waiting(restored).next_run_at
    assert when is not None
    if record.next_run_at > datetime.now(UTC):
        assert abs((when - record.next_run_at).total_seconds()) < 0.01
    delays: list[float] = []
    again.add_observer(
        lambda t, result: delays.append(round((t.due or 0) - anyio.current_time(), 3))
    )
    async with running(again):
        await script.wait_for(lambda: restored.runs >= 1)
    # The fourth failure waits initial * 2**3, not initial.
    assert 0.4 - 0.002 <= delays[0] <= 0.4 + 0.06, delays
    assert restored.errors == 4
