"""How both SQLite stores open their files: mode, integrity checks, WAL mode, ``synchronous``.

Opening checks the store before it is used (issue 15, defect 9):

- the write-ahead log's header (:func:`check_wal`), *before* SQLite opens the
  database: SQLite silently discards a ``-wal`` file whose header is damaged,
  and with it every commit that was in it and not yet in the database. A
  store whose log is in that state is refused (nothing is deleted or
  truncated here); the operator decides;
- the log's frames (the checksum chain): a log is refused when commits
  follow a damaged frame, as SQLite would drop them too. A log whose last
  frames are torn (a crash mid-commit) is normal and opens: only the
  transaction that was being written is lost, and it was never acknowledged;
- the database's pages (``PRAGMA quick_check``, :func:`quick_check`), once
  it is open, so that a damaged file is refused at start instead of failing
  every later call with "database disk image is malformed".

The frame scan and ``quick_check`` read the whole log and the whole database,
O(size): the frames at about 70 MB/s (pure Python checksums; a log is a few
MB, SQLite checkpoints it every 1000 pages), ``quick_check`` a 1.4 GB file in
0.7 s from the page cache (a cold disk reads slower). ``quick_check`` stops
after :data:`QUICK_CHECK_BUDGET` seconds, and the store opens unchecked then
(with a warning). ``?check=off`` in the store's URL skips both; the 32-byte
header check is always made.

Under ``synchronous=NORMAL`` a power cut may tear more than the last
transaction (those commits were acknowledged before they were synced): the
frame check then refuses the log too, and ``?check=off`` accepts the loss.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import struct
import time
from dataclasses import dataclass, replace
from typing import BinaryIO, Literal, get_args

import structlog

from tailrunner.errors import InvalidArgument, StoreError
from tailrunner.stores import StoreUrl, redact, store_options

log = structlog.get_logger(__name__)

#: ``PRAGMA synchronous`` levels. ``FULL`` (the stores' default) syncs the WAL
#: on every commit, so what was acknowledged survives a power cut; ``NORMAL``
#: survives a killed process but may lose the last commits on a power cut.
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
SYNCHRONOUS_LEVELS: tuple[str, ...] = get_args(Synchronous)

#: How long opening a file waits for other connections' locks (ms), as
#: ``PRAGMA busy_timeout``.
BUSY_TIMEOUT_MS = 5000
_RETRY_EVERY = 0.01


#: The mode a store creates its database file with unless its URL says
#: ``file_mode``: its owner's only. SQLite gives the ``-wal`` and ``-shm``
#: files the database file's mode.
FILE_MODE = 0o600

#: Seconds ``PRAGMA quick_check`` may take at open before it is given up
#: (the store then opens unchecked, with a warning): a huge database still
#: starts in bounded time.
QUICK_CHECK_BUDGET = 30.0

_OPTION_NAMES = ("synchronous", "file_mode", "check")
_CHECK_VALUES = ("on", "off")
_FILE_MODE = re.compile(r"(?:0o?)?([0-7]{3})\Z", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SQLiteOptions:
    """What a ``sqlite:///PATH?…`` URL says about its file.

    :ivar synchronous: ``?synchronous=``: the durability of writes.
    :ivar file_mode: ``?file_mode=0640``: the mode a new file is created with.
    :ivar check: ``?check=off`` makes it ``False``: no frame scan of the
        WAL nor ``quick_check`` at open.
    """

    synchronous: Synchronous = "FULL"
    file_mode: int = FILE_MODE
    check: bool = True


def sqlite_options(
    store: StoreUrl, *, field: str, names: tuple[str, ...] = _OPTION_NAMES
) -> SQLiteOptions:
    """The options of a SQLite store URL, validated.

    :param field: what an error names (``--store``, ``tails.store``).
    :param names: the options this store takes (a subset of ``synchronous``,
        ``file_mode``, ``check``).
    :raises InvalidArgument: naming ``field``: an unknown option, or a bad value.
    """
    shown = redact(store.url)
    options = SQLiteOptions()
    rest: list[tuple[str, str]] = []
    for key, value in store.options:
        if key == "file_mode" and key in names:
            options = replace(options, file_mode=parse_file_mode(value, field=field, url=shown))
        elif key == "check" and key in names:
            if value.lower() not in _CHECK_VALUES:
                raise InvalidArgument(field, f"check={value!r} in {shown!r}: expected on or off")
            options = replace(options, check=value.lower() == "on")
        else:
            rest.append((key, value))
    # The others (synchronous, and the error for an unknown one, which lists all).
    choices = {name: SYNCHRONOUS_LEVELS if name == "synchronous" else () for name in names}
    found = store_options(replace(store, options=tuple(rest)), field=field, choices=choices)
    if "synchronous" in found:
        level: Synchronous = found["synchronous"]  # type: ignore[assignment]
        options = replace(options, synchronous=level)
    return options


def parse_file_mode(value: str, *, field: str, url: str = "") -> int:
    """A ``file_mode`` value (``0640``, ``640`` or ``0o640``) as an int.

    :raises InvalidArgument: naming ``field`` and the value: not three octal
        digits, world-writable, or not readable and writable by the owner
        (SQLite could not use the file).
    """
    where = f"file_mode={value!r}" + (f" in {url!r}" if url else "")
    match = _FILE_MODE.match(value)
    if match is None:
        raise InvalidArgument(field, f"{where}: expected an octal mode such as 0600 or 0640")
    mode = int(match.group(1), 8)
    if mode & 0o002:
        raise InvalidArgument(
            field, f"{where}: world-writable; anyone could change the store (e.g. 0640)"
        )
    if mode & 0o600 != 0o600:
        raise InvalidArgument(field, f"{where}: the owner needs read and write (0600 at least)")
    return mode


def connect(path: str, *, file_mode: int = FILE_MODE) -> sqlite3.Connection:
    """A connection to the database file ``path``, created with ``file_mode`` if it is new.

    ``isolation_level=None``: transactions are the store's (``BEGIN
    IMMEDIATE``), not the module's. An existing file keeps its mode.
    """
    # An empty file is an empty database; O_EXCL: never touch one that exists.
    # Any other failure (no such folder, no permission) sqlite3 reports as it did.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode)
        try:
            os.fchmod(fd, file_mode)  # the mode asked for, whatever the umask
        finally:
            os.close(fd)
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def use_wal(conn: sqlite3.Connection) -> str:
    """Set the busy timeout and WAL mode on ``conn``; the journal mode the file ends in.

    Switching a file into WAL needs an exclusive lock, and SQLite reports
    "database is locked" at once, without its busy handler, while another
    connection holds the file (two processes opening a new file together):
    so the switch is retried here, within the busy timeout. Runs in a
    worker thread (it may sleep).
    """
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(_RETRY_EVERY)
            continue
        return str(mode).lower()


# --------------------------------------------------------------------------- damage

#: SQLite's primary result codes that mean the file (or the disk under it)
#: cannot be read or is damaged; not busy, full or read-only (reads still
#: work then, so a read probe could not tell when it recovered).
_DAMAGE_CODES = frozenset(
    {
        10,  # SQLITE_IOERR
        11,  # SQLITE_CORRUPT
        14,  # SQLITE_CANTOPEN
        26,  # SQLITE_NOTADB
    }
)


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` says the store's file or disk is failing: unreadable or damaged.

    Not a busy lock, a full disk, a read-only file, nor a bug.
    """
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _DAMAGE_CODES
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.OperationalError | sqlite3.IntegrityError | sqlite3.ProgrammingError
    )


def damage_hint(path: str) -> str:
    """What an operator can do about a damaged database ``path``."""
    return (
        f"keep a copy of {path} (and its -wal), then restore it from a backup or try"
        f" `sqlite3 {path} .recover`; ?check=off in the store URL opens it unchecked"
    )


def quick_check(
    conn: sqlite3.Connection, *, budget: float = QUICK_CHECK_BUDGET, quiet: bool = False
) -> str | None:
    """``PRAGMA quick_check`` on ``conn``, for at most ``budget`` seconds.

    :param quiet: do not log a check that ran out of time.
    :returns: what it found wrong (its first lines), or ``None`` when the
        file is sound or the check ran out of time (logged unless ``quiet``).
    :raises sqlite3.Error: the file cannot even be read.
    """
    deadline = time.monotonic() + budget
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        rows = conn.execute("PRAGMA quick_check(5)").fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupt" not in str(exc):
            raise
        if quiet:
            return None
        log.warning(
            "quick_check ran out of time; the store opened without it",
            seconds=budget,
            hint="a huge file: ?check=off skips the check",
        )
        return None
    finally:
        conn.set_progress_handler(None, 0)
    found = [str(row[0]) for row in rows]
    if found == ["ok"]:
        return None
    return "; ".join(found)


# --------------------------------------------------------------------------- the WAL

_WAL_MAGIC = (0x377F0682, 0x377F0683)  # checksums in little-endian, big-endian words
_WAL_VERSION = 3007000
_WAL_HEADER = 32
_FRAME_HEADER = 24
_MASK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class WalState:
    """What :func:`check_wal` found in a ``-wal`` file.

    :ivar problem: why SQLite would lose committed data (``None``: it would not).
    :ivar lost: what of the log SQLite would discard (with a ``problem``).
    :ivar way_out: how the operator accepts that loss (with a ``problem``).
    :ivar frames: the frames the file holds (valid or not).
    :ivar committed: the frames SQLite will use (up to the last valid commit).
    :ivar dropped: frames of this log after that, which SQLite drops (an
        unfinished or torn last transaction).
    """

    problem: str | None
    lost: str = ""
    way_out: str = ""
    frames: int = 0
    committed: int = 0
    dropped: int = 0


def wal_path(path: str) -> str:
    """The write-ahead log of the database ``path``."""
    return f"{path}-wal"


def check_wal(path: str, *, frames: bool = True) -> WalState:
    """Read the write-ahead log of database ``path`` as SQLite's recovery would.

    The header: its magic number, version, page size and checksum; SQLite
    discards a log whose header is wrong, so any problem there is one. With
    ``frames``, the checksum chain of its frames: SQLite uses the frames up
    to the last commit before the first invalid frame. After a crash only the
    transaction being written can be torn (under ``synchronous=FULL`` it was
    not acknowledged); a commit of this log *after* an invalid frame, followed
    by more of its frames, means acknowledged commits would be lost.

    No log, or an empty one, is normal. Reads only; never changes the file.
    """
    name = wal_path(path)
    try:
        with open(name, "rb") as file:
            return _read_wal(file, frames=frames)
    except FileNotFoundError:
        return WalState(None)
    except OSError as exc:
        return _whole_log(f"cannot be read: {exc.strerror or exc}")


def _read_wal(file: BinaryIO, *, frames: bool) -> WalState:
    header = file.read(_WAL_HEADER)
    if not header:
        return WalState(None)
    if len(header) < _WAL_HEADER:
        return _whole_log(f"is {len(header)} bytes long, shorter than a WAL header (32)")
    magic, version, page_size, _, salt1, salt2, sum1, sum2 = struct.unpack(">8I", header)
    if magic not in _WAL_MAGIC:
        return _whole_log(
            f"has a damaged header: its magic number is 0x{magic:08x},"
            " not a WAL's (0x377f0682 or 0x377f0683)"
        )
    if version != _WAL_VERSION:
        return _whole_log(f"has a damaged header: format version {version}, not {_WAL_VERSION}")
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return _whole_log(f"has a damaged header: page size {page_size}")
    order = ">" if magic & 1 else "<"
    sums = _checksum(struct.unpack(f"{order}6I", header[:24]), (0, 0))
    if sums != (sum1, sum2):
        return _whole_log("has a damaged header: its checksum does not match its contents")
    if not frames:
        return WalState(None)
    return _read_frames(file, page_size, (salt1, salt2), f"{order}{(8 + page_size) // 4}I", sums)


def _read_frames(
    file: BinaryIO, page_size: int, salts: tuple[int, int], words: str, sums: tuple[int, int]
) -> WalState:
    """The frames after a valid header: where the checksum chain breaks, and what follows."""
    count = committed = valid = 0
    broken: int | None = None  # the index of the first invalid frame
    dropped = 0  # frames of this log's after the last valid commit
    commits_after: list[int] = []  # the indexes of this log's commits after ``broken``
    last_ours = -1
    while True:
        frame = file.read(_FRAME_HEADER + page_size)
        if len(frame) < _FRAME_HEADER + page_size:
            break  # a partial frame at the end: a torn write, never used
        index, count = count, count + 1
        page, commit_size, salt1, salt2, sum1, sum2 = struct.unpack_from(">6I", frame)
        # Frames of an older log (before the last restart) have other salts.
        ours = (salt1, salt2) == salts and page != 0
        if not ours:
            if broken is None:
                broken = index
            continue
        last_ours = index
        if broken is None:
            chained = _checksum(struct.unpack(words, frame[:8] + frame[_FRAME_HEADER:]), sums)
            if chained == (sum1, sum2):
                sums, valid = chained, count
                if commit_size:
                    committed = count
                continue
            broken = index
        elif commit_size:
            commits_after.append(index)
        dropped += 1
    dropped += valid - committed
    # A torn transaction ends at its commit, the log's last frame of its own:
    # a commit of the log's followed by more of its frames means more than one.
    if (
        broken is not None
        and commits_after
        and (len(commits_after) > 1 or commits_after[-1] != last_ours)
    ):
        return WalState(
            f"has a damaged frame ({broken + 1} of {count}) followed by"
            f" {len(commits_after)} committed transactions of its own",
            lost="the log from that frame on",
            way_out="to give those commits up, open it with ?check=off in the store URL",
            frames=count,
            committed=committed,
            dropped=dropped,
        )
    return WalState(None, frames=count, committed=committed, dropped=dropped)


def _whole_log(problem: str) -> WalState:
    return WalState(
        problem,
        lost="the whole log",
        way_out="to give up what the log holds, move it and the -shm file aside",
    )


def _checksum(words: tuple[int, ...], start: tuple[int, int]) -> tuple[int, int]:
    """SQLite's WAL checksum of ``words`` (32-bit, in pairs), continuing from ``start``."""
    s0, s1 = start
    pairs = iter(words)
    for a, b in zip(pairs, pairs, strict=True):
        s0 = (s0 + a + s1) & _MASK
        s1 = (s1 + b + s0) & _MASK
    return s0, s1


def refuse_damaged_wal(path: str, *, what: str, frames: bool) -> None:
    """Check the log of ``path`` before SQLite opens it; refuse a log SQLite would lose.

    A problem is checked twice, a moment apart, so that a log another
    process is rewriting at that instant is not taken for a damaged one.

    :param what: the store, for the message (``"journal store"``).
    :raises StoreError: naming the file, what is wrong, and what to do.
    """
    state = check_wal(path, frames=frames)
    if state.problem is not None:
        time.sleep(0.1)
        state = check_wal(path, frames=frames)
    if state.problem is not None:
        name = wal_path(path)
        raise StoreError(
            f"cannot open the {what} {path}: its write-ahead log {name} {state.problem};"
            f" SQLite would silently discard {state.lost}, and the commits in it would be"
            f" lost. Nothing was changed. Keep a copy of {name}; restore the store from a"
            f" backup, or, {state.way_out}"
        )
    if state.dropped:
        log.warning(
            "the write-ahead log ends in a transaction that did not commit (a crash);"
            " SQLite drops it",
            path=wal_path(path),
            frames=state.frames,
            committed=state.committed,
            dropped=state.dropped,
        )


def check_database(
    conn: sqlite3.Connection, path: str, *, what: str, budget: float = QUICK_CHECK_BUDGET
) -> None:
    """Refuse a database file that ``PRAGMA quick_check`` finds damaged.

    :param what: the store, for the message (``"journal store"``).
    :raises StoreError: naming the file, what the check found, and what to do.
    """
    try:
        found = quick_check(conn, budget=budget)
    except sqlite3.Error as exc:
        found = str(exc)
    if found is not None:
        raise StoreError(
            f"cannot open the {what} {path}: it is damaged (quick_check: {found});"
            f" {damage_hint(path)}"
        )
