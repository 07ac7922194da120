"""A damaged SQLite store is refused at open, never served (issue 15, defect 9).

The files are damaged for real: pages of the database overwritten, the
write-ahead log's header or frames scrambled, the log cut mid-frame. A
"crashed" store is a copy of the files taken while the store is open (its
commits are in the log, not yet in the database), as a killed process
leaves them.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import struct
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tailrunner.errors import StoreError
from tailrunner.journal.open import open_store
from tailrunner.journal.server import SERVICE_NAME, JournalServer
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc
from tailrunner.sqlite_wal import check_wal, is_damage
from tailrunner.tails.open import open_tail_store
from tailrunner.tails.sqlite import SQLiteTailStore

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
AGGREGATE = AggregateRef(type="order", id=uuid.UUID(int=7))
WAL_HEADER = 32
FRAME_HEADER = 24


def wal(path: Path) -> Path:
    return Path(f"{path}-wal")


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "-" for p in paths]


async def append_each(store: SQLiteJournalStore, count: int, size: int = 100) -> None:
    """``count`` appends of one event each: ``count`` transactions in the log."""
    for i in range(count):
        await store.append(
            AGGREGATE, [NewEvent(type="e", data=bytes([i]) * size)], expected_tail=None
        )


async def crashed_journal(tmp_path: Path, appends: int = 5) -> Path:
    """A journal whose ``appends`` commits are all in its log, as a killed server leaves it."""
    live = tmp_path / "live" / "journal.db"
    live.parent.mkdir()
    store = await SQLiteJournalStore.open(live)
    try:
        await append_each(store, appends)
        crashed = tmp_path / "journal.db"
        shutil.copyfile(live, crashed)
        shutil.copyfile(wal(live), wal(crashed))
    finally:
        await store.aclose()
    return crashed


async def count_events(path: Path, **options: object) -> int:
    store = await SQLiteJournalStore.open(path, **options)  # type: ignore[arg-type]
    try:
        return len(await store.read(AGGREGATE.id, after=None, limit=1000))
    finally:
        await store.aclose()


def frames(path: Path) -> list[tuple[int, int]]:
    """Each frame of the log of ``path``: its offset and its commit field (0: not a commit)."""
    data = wal(path).read_bytes()
    (page_size,) = struct.unpack_from(">I", data, 8)
    size = FRAME_HEADER + page_size
    return [
        (offset, struct.unpack_from(">I", data, offset + 4)[0])
        for offset in range(WAL_HEADER, len(data) - size + 1, size)
    ]


def scramble(path: Path, offset: int, length: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        old = file.read(length)
        file.seek(offset)
        file.write(bytes(b ^ 0x5A for b in old))


# --------------------------------------------------------------------------- the log


async def test_a_crashed_journal_opens_with_every_commit_of_its_log(tmp_path: Path) -> None:
    path = await crashed_journal(tmp_path)
    assert check_wal(str(path)).committed == len(frames(path))
    assert await count_events(path) == 5


async def test_a_scrambled_log_header_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = await crashed_journal(tmp_path)
    scramble(wal(path), 0, 4)  # the magic number
    before = digest(path, wal(path))
    with pytest.raises(StoreError) as caught:
        await SQLiteJournalStore.open(path)
    message = str(caught.value)
    assert str(wal(path)) in message
    assert "damaged header: its magic number" in message
    assert "commits in it would be lost" in message
    assert "discard the whole log" in message
    assert "move it and the -shm file aside" in message  # what the operator can do
    assert digest(path, wal(path)) == before  # nothing deleted or truncated
    # Not even with ?check=off: the header check costs nothing.
    with pytest.raises(StoreError, match="damaged header"):
        await open_store(f"sqlite:///{path}?check=off")
    assert digest(path, wal(path)) == before


@pytest.mark.parametrize(
    ("offset", "words"),
    [(12, "checksum does not match"), (16, "checksum does not match"), (8, "page size")],
)
async def test_a_log_header_damaged_anywhere_is_refused(
    tmp_path: Path, offset: int, words: str
) -> None:
    path = await crashed_journal(tmp_path)
    scramble(wal(path), offset, 4)  # checkpoint number, a salt, the page size
    with pytest.raises(StoreError, match=words):
        await SQLiteJournalStore.open(path)


async def test_a_torn_last_transaction_is_dropped_and_the_commits_before_it_kept(
    tmp_path: Path,
) -> None:
    path = await crashed_journal(tmp_path)
    commits = [offset for offset, commit in frames(path) if commit]
    assert len(commits) >= 5
    # The last commit frame's page, half written.
    scramble(wal(path), commits[-1] + FRAME_HEADER + 100, 200)
    state = check_wal(str(path))
    assert state.problem is None
    assert state.dropped >= 1
    assert await count_events(path) == 4


async def test_a_log_cut_mid_frame_opens(tmp_path: Path) -> None:
    path = await crashed_journal(tmp_path)
    last, _ = frames(path)[-1]
    with wal(path).open("r+b") as file:
        file.truncate(last + 1000)
    assert await count_events(path) == 4


async def test_commits_after_a_damaged_frame_are_not_dropped_silently(tmp_path: Path) -> None:
    path = await crashed_journal(tmp_path)
    first, _ = frames(path)[0]
    scramble(wal(path), first + FRAME_HEADER + 10, 10)  # the first frame's page
    before = digest(path, wal(path))
    with pytest.raises(StoreError) as caught:
        await SQLiteJournalStore.open(path)
    assert "damaged frame (1 of" in str(caught.value)
    assert "committed transactions of its own" in str(caught.value)
    assert "discard the log from that frame on" in str(caught.value)
    assert "?check=off" in str(caught.value)  # the way to accept the loss
    assert digest(path, wal(path)) == before
    # The operator's way out: ?check=off skips the frame scan (SQLite then drops them).
    assert await count_events(path, check=False) == 0


async def test_an_empty_log_is_normal(tmp_path: Path) -> None:
    path = await crashed_journal(tmp_path)
    store = await SQLiteJournalStore.open(path)  # checkpointed and removed on close
    await store.aclose()
    wal(path).write_bytes(b"")
    assert await count_events(path) == 5


async def test_a_log_shorter_than_its_header_is_refused(tmp_path: Path) -> None:
    path = await crashed_journal(tmp_path)
    with wal(path).open("r+b") as file:
        file.truncate(20)
    with pytest.raises(StoreError, match="20 bytes long, shorter than a WAL header"):
        await SQLiteJournalStore.open(path)


async def test_an_older_log_after_a_restart_is_normal(tmp_path: Path) -> None:
    """After a checkpoint the log restarts at its start: the frames after the new
    ones are an older log's (other salts), which SQLite ignores."""
    path = tmp_path / "journal.db"
    store = await SQLiteJournalStore.open(path)
    try:
        await append_each(store, 20)
        await store.aclose()  # checkpoints; the log is removed
        store = await SQLiteJournalStore.open(path)
        await append_each(store, 20)
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        conn.close()
        await append_each(store, 1)  # restarts the log: one new frame or two
        copy = tmp_path / "copy.db"
        shutil.copyfile(path, copy)
        shutil.copyfile(wal(path), wal(copy))
    finally:
        await store.aclose()
    state = check_wal(str(copy))
    assert state.problem is None
    assert state.committed < state.frames
    assert state.dropped == 0
    assert await count_events(copy) == 41


# --------------------------------------------------------------------------- the database


async def damaged_journal(tmp_path: Path) -> Path:
    """A journal of many pages, all in the database file, some overwritten mid-file."""
    path = tmp_path / "journal.db"
    store = await SQLiteJournalStore.open(path)
    try:
        await append_each(store, 200, size=2000)
    finally:
        await store.aclose()
    assert not wal(path).exists()
    pages = path.stat().st_size // 4096
    assert pages > 50
    with path.open("r+b") as file:
        file.seek(4096 * (pages // 3))
        file.write(b"\xde\xad" * 2048 * (pages // 3))  # a third of the pages: garbage
    return path


async def test_a_database_with_overwritten_pages_is_refused(tmp_path: Path) -> None:
    path = await damaged_journal(tmp_path)
    before = digest(path)
    with pytest.raises(StoreError) as caught:
        await SQLiteJournalStore.open(path)
    message = str(caught.value)
    assert f"cannot open the journal store {path}: it is damaged (quick_check:" in message
    assert ".recover" in message
    assert "?check=off" in message
    assert digest(path) == before


async def test_check_off_opens_a_damaged_database_unchecked(tmp_path: Path) -> None:
    path = await damaged_journal(tmp_path)
    store = await open_store(f"sqlite:///{path}?check=off")
    try:
        with pytest.raises(StoreError, match="malformed"):
            await store.read(AGGREGATE.id, after=None, limit=1000)
    finally:
        await store.aclose()


async def test_a_quick_check_out_of_time_opens_the_store(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    store = await SQLiteJournalStore.open(path)
    await append_each(store, 50, size=2000)
    await store.aclose()
    assert await count_events(path, check_budget=0.0) == 50


def test_journal_serve_refuses_a_damaged_store_in_one_line(tmp_path: Path) -> None:
    path = anyio.run(damaged_journal, tmp_path)
    script = Path(sys.executable).with_name("tailrunner")
    done = subprocess.run(
        [
            str(script),
            "journal",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            f"sqlite:///{path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "it is damaged (quick_check:" in lines[0]
    assert str(path) in lines[0]


# --------------------------------------------------------------------------- the tail store


@pytest.fixture
async def tails_path(tmp_path: Path) -> AsyncIterator[Path]:
    path = tmp_path / "tails.db"
    store = await SQLiteTailStore.open(path)
    await store.aclose()
    yield path


async def test_the_tail_store_refuses_a_scrambled_log_header(tmp_path: Path) -> None:
    path = await crashed_journal(tmp_path)  # a tail store may share the journal's file
    scramble(wal(path), 0, 8)
    with pytest.raises(StoreError, match=r"cannot open the tail store .*damaged header"):
        await open_tail_store(f"sqlite:///{path}")


async def test_the_tail_store_refuses_overwritten_pages(tmp_path: Path) -> None:
    path = await damaged_journal(tmp_path)
    with pytest.raises(StoreError, match=r"cannot open the tail store .*it is damaged"):
        await SQLiteTailStore.open(path)


async def test_the_tail_store_opens_a_sound_file(tails_path: Path) -> None:
    store = await open_tail_store(f"sqlite:///{tails_path}?check=on")
    await store.aclose()


# --------------------------------------------------------------------------- at run time


async def health_of(channel: grpc.aio.Channel) -> set[int]:
    stub = health_pb2_grpc.HealthStub(channel)
    return {
        (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)).status
        for name in ("", SERVICE_NAME)
    }


async def read_all(channel: grpc.aio.Channel) -> int:
    stub = journal_pb2_grpc.JournalStub(channel)
    request = journal_pb2.EventsRequest(aggregate_id=AGGREGATE.id.bytes, watch=False)
    return sum([len(batch.events) async for batch in stub.Events(request, timeout=10)])


async def wait_for_health(channel: grpc.aio.Channel, status: int) -> None:
    """Until both services report ``status`` (health's Watch streams each change)."""
    stub = health_pb2_grpc.HealthStub(channel)
    with anyio.fail_after(60):  # bounds a hang only; the probe runs every second
        for name in ("", SERVICE_NAME):
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=name))
            async for response in watch:
                if response.status == status:
                    break
            watch.cancel()


async def test_health_follows_a_store_that_fails_while_serving_and_recovers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    store = await SQLiteJournalStore.open(path)
    await append_each(store, 200, size=2000)
    await store.aclose()
    sound = path.read_bytes()
    pages = len(sound) // 4096
    store = await SQLiteJournalStore.open(path)
    async with (
        JournalServer(store, listen="127.0.0.1:0", close_store=True) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        assert await health_of(channel) == {SERVING}
        # Damaged under the running server (no read has cached its pages yet).
        with path.open("r+b") as file:
            file.seek(4096 * (pages // 3))
            file.write(b"\xde\xad" * 2048 * (pages // 3))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_all(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "malformed" in (caught.value.details() or "")
        await wait_for_health(channel, NOT_SERVING)
        assert store.health.failing is not None
        # Still failing a few probes later: a probe reads the whole file.
        await anyio.sleep(2.5)
        assert await health_of(channel) == {NOT_SERVING}
        path.write_bytes(sound)  # repaired (restored from a backup, say)
        await wait_for_health(channel, SERVING)
        assert store.health.working
        assert await read_all(channel) == 200


def test_a_busy_file_is_not_damage_and_a_malformed_one_is(tmp_path: Path) -> None:
    """Only a failing file or disk turns health off, not a lock another process holds."""
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as busy:
            other.execute("BEGIN IMMEDIATE")
        assert not is_damage(busy.value)
    finally:
        holder.close()
        other.close()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 1000)
    conn = sqlite3.connect(garbage)
    try:
        with pytest.raises(sqlite3.DatabaseError) as broken:
            conn.execute("SELECT * FROM sqlite_master").fetchall()
        assert is_damage(broken.value)
    finally:
        conn.close()


KILLED_WRITER = """
import anyio, os, signal, sys, uuid
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.model import AggregateRef, NewEvent

async def main() -> None:
    store = await SQLiteJournalStore.open(sys.argv[1])
    for i in range(5):
        await store.append(
            AggregateRef(type="order", id=uuid.UUID(int=7)), [NewEvent(type="e")],
            expected_tail=None,
        )
    print("acknowledged", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint

anyio.run(main)
"""


def test_a_killed_writer_leaves_a_log_that_opens_with_every_acknowledged_append(
    tmp_path: Path,
) -> None:
    import anyio

    path = tmp_path / "journal.db"
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    assert done.stdout.endswith("acknowledged\n")  # after the debug log lines
    assert wal(path).stat().st_size > 0  # the commits are in the log only
    assert check_wal(str(path)).problem is None
    assert anyio.run(count_events, path) == 5


async def test_a_server_whose_store_fails_stops_cleanly_while_it_probes(tmp_path: Path) -> None:
    path = await damaged_journal(tmp_path)
    store = await open_store(f"sqlite:///{path}?check=off")  # served although damaged
    async with (
        JournalServer(store, listen="127.0.0.1:0", close_store=True) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError):
            await read_all(channel)
        await wait_for_health(channel, NOT_SERVING)
        # The probe reads the whole file even with ?check=off (that is about starting).
        await anyio.sleep(2.5)
        assert await health_of(channel) == {NOT_SERVING}
        with anyio.fail_after(30):  # bounds a hang only: the probe loop must not hold it
            await server.stop()
