"""The SQLite stores create their files owner-only (issue 15, defect 9, in part).

A journal or tail database is readable by nobody but its owner, whatever
the umask: 0600 for the file and, as SQLite gives them the file's mode, for
its ``-wal`` and ``-shm`` files. A file that exists keeps its mode. The
store URL may ask for another mode (``?file_mode=0640``), never a
world-writable one.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tailrunner.config import load_config
from tailrunner.errors import ConfigError, InvalidArgument
from tailrunner.journal.open import open_store
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.states import TaskState
from tailrunner.tails.open import open_tail_store
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


@pytest.fixture
def closed_umask() -> Iterator[None]:
    old = os.umask(0o077)  # the strictest: a mode the URL asks for must still win
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("closed_umask")
async def test_the_journal_url_sets_the_mode_of_a_new_database_and_its_wal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    store = await open_store(f"sqlite:///{path}?file_mode=0640")
    try:
        await store.append(
            AggregateRef(type="t", id=uuid.uuid4()), [NewEvent(type="e")], expected_tail=None
        )
        files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
        assert Path(f"{path}-wal") in files
        assert {p.name: mode(p) for p in files} == {p.name: 0o640 for p in files}
    finally:
        await store.aclose()


@pytest.mark.usefixtures("closed_umask")
async def test_the_tail_store_url_sets_the_mode_of_a_new_database(tmp_path: Path) -> None:
    store = await open_tail_store("sqlite:///tails.db?file_mode=660", base_dir=tmp_path)
    await store.aclose()
    assert mode(tmp_path / "tails.db") == 0o660


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("0666", "world-writable"),
        ("0602", "world-writable"),
        ("0400", "the owner needs read and write"),
        ("0o4600", "expected an octal mode"),
        ("rw-r-----", "expected an octal mode"),
        ("0648", "expected an octal mode"),
        ("", "expected an octal mode"),
    ],
)
async def test_a_bad_file_mode_is_refused_by_name(tmp_path: Path, value: str, words: str) -> None:
    url = f"sqlite:///{tmp_path}/x.db?file_mode={value}"
    for field, opening in (("--store", open_store(url)), ("tails.store", open_tail_store(url))):
        with pytest.raises(InvalidArgument) as caught:
            await opening
        assert caught.value.field == field
        assert f"file_mode={value!r}" in caught.value.reason
        assert words in caught.value.reason
    assert not (tmp_path / "x.db").exists()


async def test_unknown_options_name_the_ones_a_store_takes(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="synchronous, file_mode, check"):
        await open_store(f"sqlite:///{tmp_path}/x.db?mode=0640")
    with pytest.raises(InvalidArgument, match="file_mode, check"):
        await open_tail_store(f"sqlite:///{tmp_path}/x.db?synchronous=FULL")
    with pytest.raises(InvalidArgument, match=r"check='maybe'.*expected on or off"):
        await open_store(f"sqlite:///{tmp_path}/x.db?check=maybe")


def test_a_bad_tail_store_option_fails_the_config_at_load(tmp_path: Path) -> None:
    path = tmp_path / "runner.toml"
    path.write_text('[tails]\nstore = "sqlite:///tails.db?file_mode=0666"\n')
    with pytest.raises(ConfigError, match=r"tails\.store = .*file_mode='0666'.*world-writable"):
        load_config(path)
    path.write_text('[tails]\nstore = "sqlite:///tails.db?file_mode=0640&check=off"\n')
    assert load_config(path).tails.store.endswith("tails.db?file_mode=0640&check=off")
