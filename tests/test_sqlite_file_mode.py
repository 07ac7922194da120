"""The SQLite stores create their files owner-only (issue 15, defect 9, in part).

A journal or tail database is readable by nobody but its owner, whatever
the umask: 0600 for the file and, as SQLite gives them the file's mode, for
its ``-wal`` and ``-shm`` files. A file that exists keeps its mode.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.states import TaskState
from tailrunner.tails.sqlite import SQLiteTailStore
from tailrunner.tails.store import TailRecord


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: 0644 files
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
async def test_a_new_journal_database_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    store = await SQLiteJournalStore.open(path)
    try:
        await store.append(
            AggregateRef(type="t", id=uuid.uuid4()), [NewEvent(type="e")], expected_tail=None
        )
        files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
        assert Path(f"{path}-wal") in files
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        await store.aclose()


@pytest.mark.usefixtures("open_umask")
async def test_a_new_tail_database_is_owner_only_and_an_existing_one_keeps_its_mode(
    tmp_path: Path,
) -> None:
    new = tmp_path / "tails.db"
    existing = tmp_path / "shared.db"
    existing.touch(mode=0o640)
    existing.chmod(0o640)
    for path in (new, existing):
        store = await SQLiteTailStore.open(path)
        try:
            await store.save(
                TailRecord(
                    activity="a",
                    aggregate=AggregateRef(type="t", id=uuid.uuid4()),
                    tail=None,
                    state=TaskState.SLEEPING,
                    updated_at=datetime.now(UTC),
                )
            )
        finally:
            await store.aclose()
    assert mode(new) == 0o600
    assert mode(existing) == 0o640
