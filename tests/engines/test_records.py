"""What the engines write to the tail store: run records, failures of the store, transactions."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ulid import ULID

from tailrunner import EOF, ActivityContext, EventStream
from tailrunner.activities.outcomes import Outcome
from tailrunner.states import TaskState
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.sqlite import SQLiteTailStore
from tailrunner.tails.store import TailRecord
from tailrunner.testing import LoopbackJournal

from .conftest import Call, Script, append, make_engine, new_aggregate, read, running


async def test_every_run_is_recorded_with_its_outcome_and_try_number(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b")

    async def fail_once(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        await read(stream, call, tail)
        raise RuntimeError("first try fails")

    script = Script(steps=[fail_once, _eof])
    tails = MemoryTailStore()
    engine = make_engine(engine_kind, journal, [script.activity()], tails=tails)
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: task.runs >= 2)
    runs = await tails.list_runs("script", agg.id)
    oldest, newer = runs[-1], runs[-2]
    assert (oldest.outcome, oldest.attempt, oldest.tail_before) == ("error", 1, None)
    assert "first try fails" in (oldest.error or "")
    assert oldest.events_seen == 2
    assert (newer.outcome, newer.attempt, newer.tail_after) == ("eof", 2, ids[-1])
    assert oldest.started_at <= oldest.finished_at <= newer.started_at


async def _eof(ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call) -> Outcome:
    return EOF(await read(stream, call, tail))


class FlakyTails(MemoryTailStore):
    """Fails the first ``failures`` saves, as a database that went away would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def save(self, record: TailRecord) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk I/O error")
        await super().save(record)


async def test_a_failing_tail_store_retries_the_task_instead_of_acting_on_it(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a")
    script = Script()
    tails = FlakyTails(failures=1)
    engine = make_engine(engine_kind, journal, [script.activity()], tails=tails)
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: len(script.calls) >= 2)
        await script.wait_for(lambda: task.state is not TaskState.RUNNING)
    record = await tails.get("script", agg.id)
    assert record is not None and record.tail == ids[-1], "the retry stored the tail"
    assert script.calls[1].tail == ids[-1], "the retry resumed from the tail in memory"


async def test_transaction_commits_the_activity_write_with_the_tail(
    engine_kind: str, journal: LoopbackJournal, tmp_path: Path
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b", "c")
    tails = await SQLiteTailStore.open(tmp_path / "tails.db")
    conn = sqlite3.connect(tmp_path / "tails.db")
    conn.execute("CREATE TABLE seen (event TEXT PRIMARY KEY)")
    conn.commit()
    conn.close()

    async def exactly_once(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        async for batch in stream.batches():
            for event in batch.events:
                call.events.append(event.id)
                if event.id == ids[2] and len(script.calls) == 2:
                    # Fails inside the transaction: the write and the tail roll back.
                    async with ctx.transaction(event.id) as db:
                        _insert(db, event.id)
                        raise RuntimeError("crash between write and commit")
                async with ctx.transaction(event.id) as db:
                    _insert(db, event.id)
                if event.id == ids[1] and len(script.calls) == 1:
                    raise RuntimeError("crash after the commit")
                tail = event.id
            if batch.will_block:
                break
        return EOF(tail)

    script = Script(steps=[exactly_once])
    engine = make_engine(engine_kind, journal, [script.activity()], tails=tails)
    task = engine.start_activity(agg, engine.activities["script"], None)
    try:
        async with running(engine):
            await script.wait_for(
                lambda: task.tail == ids[-1] and task.state is not TaskState.RUNNING
            )
    finally:
        await tails.aclose()
    conn = sqlite3.connect(tmp_path / "tails.db")
    written = [
        ULID.from_str(row[0]) for row in conn.execute("SELECT event FROM seen ORDER BY event")
    ]
    conn.close()
    assert written == ids, "each event written exactly once, across two crashes"
    assert [c.tail for c in script.calls[:3]] == [None, ids[1], ids[1]]


def _insert(db: Any, event_id: ULID) -> None:
    db.execute("INSERT INTO seen (event) VALUES (?)", (str(event_id),))
