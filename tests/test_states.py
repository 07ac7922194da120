"""The vocabulary of tasks and runs, as the stores give it back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from tailrunner.model import AggregateRef
from tailrunner.states import OutcomeKind, TaskState
from tailrunner.tails.sqlite import SQLiteTailStore
from tailrunner.tails.store import RunRecord, TailRecord


def test_a_run_stored_as_cancelled_by_an_older_tailrunner_reads_as_stopped() -> None:
    assert OutcomeKind.stored("cancelled") is OutcomeKind.STOPPED
    assert all(OutcomeKind.stored(kind.value) is kind for kind in OutcomeKind)


async def test_records_come_back_typed_with_the_vocabulary(tmp_path: Path) -> None:
    store = await SQLiteTailStore.open(tmp_path / "tails.db")
    agg = AggregateRef(type="thing", id=uuid.uuid4())
    now = datetime.now(UTC)
    try:
        await store.save_with_run(
            TailRecord(
                activity="a", aggregate=agg, tail=None, state=TaskState.WAITING, updated_at=now
            ),
            RunRecord(
                activity="a",
                aggregate=agg,
                attempt=1,
                started_at=now,
                finished_at=now,
                tail_before=None,
                tail_after=None,
                outcome=OutcomeKind.RETRY_AFTER,
            ),
        )
        record = await store.get("a", agg.id)
        (run,) = await store.list_runs("a", agg.id)
    finally:
        await store.aclose()
    assert record is not None and record.state is TaskState.WAITING
    assert run.outcome is OutcomeKind.RETRY_AFTER
