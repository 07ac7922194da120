"""Shutdown: every run is cancelled; one that ignores it is named and left after a grace period."""

from __future__ import annotations

import anyio
from structlog.testing import capture_logs
from ulid import ULID

from tailrunner import ActivityContext, EventStream
from tailrunner.activities.outcomes import Outcome
from tailrunner.testing import LoopbackJournal

from .conftest import Call, Script, append, make_engine, new_aggregate, read


async def test_shutdown_names_an_activity_that_ignores_cancellation_and_returns_anyway(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    # Defect 10 of issue 10: shutdown waited forever, and said nothing.
    stubborn_agg, polite_agg = new_aggregate(), new_aggregate()
    await append(journal, stubborn_agg, "a")
    await append(journal, polite_agg, "a")
    holding = anyio.Event()
    let_go = anyio.Event()
    ended = anyio.Event()
    held = 0

    async def ignore_cancellation(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        nonlocal held
        await read(stream, call, tail)
        held += 1
        if held == 2:
            holding.set()
        if ctx.aggregate != stubborn_agg:
            await anyio.sleep_forever()
        try:
            while not let_go.is_set():
                try:
                    await let_go.wait()
                except anyio.get_cancelled_exc_class():
                    pass  # what an activity must not do
        finally:
            ended.set()
        raise AssertionError("let go")

    script = Script(steps=[ignore_cancellation])
    engine = make_engine(engine_kind, journal, [script.activity()], shutdown_grace=0.2)
    stubborn = engine.start_activity(stubborn_agg, engine.activities["script"], None)
    engine.start_activity(polite_agg, engine.activities["script"], None)
    try:
        with capture_logs() as logs, anyio.fail_after(30):  # a hang guard, not a timing claim
            async with anyio.create_task_group() as tg:
                await tg.start(engine.run)
                await holding.wait()
                tg.cancel_scope.cancel()
        assert engine.abandoned == [stubborn]
        named = [e for e in logs if e["event"] == "still running after the shutdown grace period"]
        assert len(named) == 1
        assert named[0]["activity"] == "script"
        assert named[0]["aggregate_id"] == str(stubborn_agg.id)
        assert named[0]["grace"] == 0.2
    finally:
        let_go.set()
        with anyio.fail_after(5):
            await ended.wait()
