"""What an activity reports is checked; one bad value or observer cannot stop the engine.

Issue 10, defect 5: an observer that raised ended ``engine.run``, and a
``SilentRetryAfter`` whose tzinfo gives no offset passed its constructor and
raised ``TypeError`` deep in the scheduler. Defect 6: returned tails were not
checked: ``EOF("01AR…")``, ``EOF(42)``, ``EOF(b"…")`` were accepted (every later
run failed, the SQLite store could not save them) and a tail from another
aggregate or from the future silently skipped events. An outcome's tail must
be ``None``, the run's start tail, a checkpointed tail or an event id the
stream handed to this run; anything else is an error naming the value and
the activity, and the task resumes from its last good tail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from ulid import ULID

from tailrunner import EOF, ActivityContext, Done, EventStream, Failed, SilentRetry
from tailrunner.activities.outcomes import Outcome, SilentRetryAfter
from tailrunner.model import AggregateRef
from tailrunner.states import OutcomeKind
from tailrunner.tails.sqlite import SQLiteTailStore
from tailrunner.tails.store import TailRecord
from tailrunner.testing import LoopbackJournal

from .conftest import (
    Call,
    Script,
    append,
    make_engine,
    new_aggregate,
    observed,
    read,
    read_to_eof,
    running,
)

NAME = "checked"


class NoOffset(tzinfo):
    """A time zone that does not know its offset (``utcoffset()`` is ``None``)."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None

    def __repr__(self) -> str:
        return "NoOffset()"


NO_OFFSET_TIME = datetime(2031, 5, 6, 7, 8, 9, tzinfo=NoOffset())


@pytest.fixture
async def sqlite_tails(tmp_path: Path) -> AsyncIterator[SQLiteTailStore]:
    store = await SQLiteTailStore.open(tmp_path / "tails.db")
    try:
        yield store
    finally:
        await store.aclose()


# -- defect 5: observers are isolated ---------------------------------------------


def _boom(*args: object) -> None:
    raise RuntimeError("the observer is broken")


@pytest.mark.parametrize("kind", ["run", "progress"])
async def test_an_observer_that_raises_is_logged_and_the_engine_and_other_tasks_keep_running(
    engine_kind: str, journal: LoopbackJournal, kind: str
) -> None:
    first, second = new_aggregate(), new_aggregate()
    before = {agg: await append(journal, agg, "a") for agg in (first, second)}
    script = Script()
    engine = make_engine(engine_kind, journal, [script.activity()])
    if kind == "run":
        engine.add_observer(_boom)
    else:
        engine.add_progress_observer(_boom)
    for agg in (first, second):
        engine.start_activity(agg, engine.activities["script"], None)
    with capture_logs() as logs:
        async with running(engine):
            await script.wait_for(lambda: all(ids[0] in script.seen() for ids in before.values()))
            # Runs after the observer failed: the engine is still dispatching.
            later = await append(journal, second, "b")
            await script.wait_for(lambda: later[0] in script.seen())
    failed = [e for e in logs if e["event"] == "observer failed"]
    assert failed, "the observer's failure is logged"
    assert failed[0]["activity"] == "script" and failed[0]["log_level"] == "error"
    assert "_boom" in failed[0]["observer"]


# -- defect 5: SilentRetryAfter's time names an instant ------------------------


@pytest.mark.parametrize(
    "when", [NO_OFFSET_TIME, datetime(2031, 5, 6, 7, 8, 9)], ids=["no-offset", "naive"]
)
def test_silent_retry_after_refuses_a_time_that_names_no_instant(when: datetime) -> None:
    with pytest.raises(ValueError) as refused:
        SilentRetryAfter(when, tail=None)
    assert repr(when) in str(refused.value), "the error names the value"


class _Unchecked(SilentRetryAfter):
    """A subclass that skips the constructor's check."""

    def __init__(self, when: datetime, *, tail: ULID | None) -> None:
        Exception.__init__(self, "unchecked")
        self.when = when
        self.tail = tail
        self.reason = ""


def _smuggled(when: datetime, tail: ULID | None) -> SilentRetryAfter:
    """A ``SilentRetryAfter`` made without its constructor."""
    made = SilentRetryAfter.__new__(SilentRetryAfter)
    made.when = when
    made.tail = tail
    made.reason = ""
    return made


@pytest.mark.parametrize("how", ["returned", "raised"])
async def test_a_silent_retry_after_smuggled_past_its_check_is_an_error_naming_it(
    engine_kind: str, journal: LoopbackJournal, how: str
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b")

    async def wait_for_no_instant(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        await read(stream, call, tail)
        await ctx.checkpoint(ids[0])
        if how == "raised":
            raise _Unchecked(NO_OFFSET_TIME, tail=ids[-1])
        return _smuggled(NO_OFFSET_TIME, ids[-1])

    script = Script(steps=[wait_for_no_instant, read_to_eof])
    engine = make_engine(engine_kind, journal, [script.activity(NAME)])
    seen = observed(engine)
    engine.start_activity(agg, engine.activities[NAME], None)
    async with running(engine):
        await script.wait_for(lambda: len(seen) >= 2)
    bad = seen[0][1]
    assert bad.kind is OutcomeKind.ERROR
    text = bad.error_text or ""
    assert repr(NO_OFFSET_TIME) in text and repr(NAME) in text, text
    # The engine went on: the task ran again, from its checkpoint.
    assert seen[1][1].kind is OutcomeKind.EOF
    assert script.calls[1].tail == ids[0]


# -- defect 6: tails are checked ---------------------------------------------------


async def _foreign_between(journal: LoopbackJournal) -> tuple[AggregateRef, ULID, ULID, ULID]:
    """An aggregate with events ``a1 < a2`` and another aggregate's event ``x`` between them.

    Ids are ordered within an aggregate, not across: try fresh aggregates
    until the three interleave (the first try does, unless two appends fell
    in one millisecond).
    """
    for _ in range(100):
        agg, other = new_aggregate(), new_aggregate()
        (a1,) = await append(journal, agg, "a")
        (x,) = await append(journal, other, "x")
        (a2,) = await append(journal, agg, "b")
        if a1 < x < a2:
            return agg, a1, x, a2
    raise AssertionError("no interleaving of appends in 100 tries")


def _not_an_event_between(a1: ULID, x: ULID, a2: ULID) -> ULID:
    for candidate in (int(a1) + 1, int(x) + 1, int(x) - 1):
        if int(a1) < candidate < int(a2) and candidate != int(x):
            return ULID.from_int(candidate)
    raise AssertionError(f"no gap between {a1} and {a2}")


#: The bad outcomes: how the activity reports ``value``, and the value, from
#: the events ``a1 < x < a2`` (``x`` another aggregate's) and a future id.
_BAD: dict[str, tuple[str, Callable[[ULID, ULID, ULID, ULID], object]]] = {
    "eof-str": ("eof", lambda a1, x, a2, future: str(a2)),
    "eof-int": ("eof", lambda a1, x, a2, future: 42),
    "eof-bytes": ("eof", lambda a1, x, a2, future: a2.bytes),
    "done-other-aggregate": ("done", lambda a1, x, a2, future: x),
    "eof-future": ("eof", lambda a1, x, a2, future: future),
    "done-future": ("done", lambda a1, x, a2, future: future),
    "eof-between-events": ("eof", lambda a1, x, a2, future: _not_an_event_between(a1, x, a2)),
    "silent-retry-garbage": ("silent_retry", lambda a1, x, a2, future: "garbage"),
    "silent-retry-other-aggregate": ("silent_retry", lambda a1, x, a2, future: x),
    "failed-garbage": ("failed", lambda a1, x, a2, future: 3.5),
    "failed-future": ("failed", lambda a1, x, a2, future: future),
    "checkpoint-garbage": ("checkpoint", lambda a1, x, a2, future: "garbage"),
    "checkpoint-future": ("checkpoint", lambda a1, x, a2, future: future),
}


async def _report(how: str, value: Any, ctx: ActivityContext, last: ULID | None) -> Outcome:
    if how == "eof":
        return EOF(value)
    if how == "done":
        return Done(value)
    if how == "silent_retry":
        raise SilentRetry(tail=value, reason="busy")
    if how == "failed":
        raise Failed("could not handle it", tail=value)
    assert how == "checkpoint"
    await ctx.checkpoint(value)
    return EOF(last)


async def _assert_store_works(store: SQLiteTailStore, path: Path, agg: AggregateRef) -> None:
    """The store still saves and loads, and the file reopens with the task's tail."""
    probe = new_aggregate()
    record = TailRecord(
        activity="probe",
        aggregate=probe,
        tail=ULID(),
        state="SLEEPING",
        updated_at=datetime.now(UTC),
    )
    await store.save(record)
    assert await store.get("probe", probe.id) == record
    reopened = await SQLiteTailStore.open(path)
    try:
        stored = await reopened.load(NAME)
        assert set(stored) == {agg.id}
    finally:
        await reopened.aclose()


@pytest.mark.parametrize("case", list(_BAD))
async def test_a_bad_tail_is_an_error_naming_it_and_the_task_resumes_from_its_last_good_tail(
    engine_kind: str,
    journal: LoopbackJournal,
    sqlite_tails: SQLiteTailStore,
    tmp_path: Path,
    case: str,
) -> None:
    agg, a1, x, a2 = await _foreign_between(journal)
    future = ULID.from_datetime(datetime.now(UTC) + timedelta(days=1))
    how, make = _BAD[case]
    value = make(a1, x, a2, future)

    async def report_bad(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        last = await read(stream, call, tail)
        await ctx.checkpoint(a1)  # the last good tail
        return await _report(how, value, ctx, last)

    script = Script(steps=[report_bad, read_to_eof])
    engine = make_engine(engine_kind, journal, [script.activity(NAME)], tails=sqlite_tails)
    seen = observed(engine)
    task = engine.start_activity(agg, engine.activities[NAME], None)
    async with running(engine):
        await script.wait_for(lambda: len(seen) >= 2)
    bad = seen[0][1]
    text = bad.error_text or ""
    assert bad.kind is OutcomeKind.ERROR, f"{case}: {bad.kind} ({text})"
    assert repr(value) in text and repr(NAME) in text, f"names the value and the activity: {text}"
    assert bad.tail == a1, "the bad run ends at the last good tail"
    assert script.calls[1].tail == a1, "the next run resumes from it"
    assert seen[1][1].kind is OutcomeKind.EOF and task.tail == a2
    # Nothing was stored with the bad value: the task's record, every run record.
    record = await sqlite_tails.get(NAME, agg.id)
    assert record is not None and record.tail == a2 and type(record.tail) is ULID
    assert record.state != "COMPLETE"
    runs = await sqlite_tails.list_runs(NAME, agg.id)
    assert runs and runs[-1].outcome == "error" and repr(value) in (runs[-1].error or "")
    for run in runs:
        assert run.tail_before in (None, a1, a2) and run.tail_after in (None, a1, a2), run
    await _assert_store_works(sqlite_tails, tmp_path / "tails.db", agg)


#: A tail of the wrong type that compares equal to the start tail (a ULID
#: equals its str, bytes and int): still not a tail.
_WRONG_TYPE: dict[str, Callable[[ULID], object]] = {
    "str": str,
    "bytes": lambda start: start.bytes,
    "int": int,
}


@pytest.mark.parametrize("how", ["eof", "checkpoint"])
@pytest.mark.parametrize("kind", list(_WRONG_TYPE))
async def test_a_tail_of_the_wrong_type_is_refused_even_when_it_equals_the_start_tail(
    engine_kind: str,
    journal: LoopbackJournal,
    sqlite_tails: SQLiteTailStore,
    tmp_path: Path,
    kind: str,
    how: str,
) -> None:
    agg = new_aggregate()
    start, later = await append(journal, agg, "a", "b")
    value: Any = _WRONG_TYPE[kind](start)

    async def report_wrong_type(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        if how == "checkpoint":
            # Checkpointed before anything is read, then the run fails: the
            # run's tail is its checkpoint.
            await ctx.checkpoint(value)
            raise RuntimeError("failed after the checkpoint")
        await read(stream, call, tail)
        return EOF(value)

    script = Script(steps=[report_wrong_type, read_to_eof])
    engine = make_engine(engine_kind, journal, [script.activity(NAME)], tails=sqlite_tails)
    seen = observed(engine)
    engine.start_activity(agg, engine.activities[NAME], start)
    async with running(engine):
        await script.wait_for(lambda: len(seen) >= 2)
    bad = seen[0][1]
    text = bad.error_text or ""
    assert bad.kind is OutcomeKind.ERROR and repr(value) in text, f"{bad.kind}: {text}"
    assert type(bad.tail) is ULID and bad.tail == start
    assert script.calls[1].tail == start and type(script.calls[1].tail) is ULID
    record = await sqlite_tails.get(NAME, agg.id)
    assert record is not None and record.tail == later and type(record.tail) is ULID
    await _assert_store_works(sqlite_tails, tmp_path / "tails.db", agg)


# -- defect 6: the tails that are allowed ------------------------------------------


async def _eof_none(ctx: ActivityContext, stream: EventStream, call: Call, ids: list[ULID]) -> Any:
    await read(stream, call, None)
    return None


async def _eof_start(ctx: ActivityContext, stream: EventStream, call: Call, ids: list[ULID]) -> Any:
    await read(stream, call, None)
    return ids[0]  # the start tail (the run starts after the first event)


async def _eof_checkpointed(
    ctx: ActivityContext, stream: EventStream, call: Call, ids: list[ULID]
) -> Any:
    await read(stream, call, None)
    await ctx.checkpoint(ids[1])
    return ids[1]


async def _eof_last(ctx: ActivityContext, stream: EventStream, call: Call, ids: list[ULID]) -> Any:
    return await read(stream, call, None)


async def _eof_older(ctx: ActivityContext, stream: EventStream, call: Call, ids: list[ULID]) -> Any:
    await read(stream, call, None)
    return ids[1]  # handed out, older than the last, not checkpointed


async def _eof_earlier_batch(
    ctx: ActivityContext, stream: EventStream, call: Call, ids: list[ULID]
) -> Any:
    last = await read(stream, call, None)
    assert last == ids[-1]
    return ids[1]  # handed out in the first of several batches


_ALLOWED: dict[str, Callable[..., Any]] = {
    "none": _eof_none,
    "start": _eof_start,
    "checkpointed": _eof_checkpointed,
    "last-handed-out": _eof_last,
    "older-handed-out": _eof_older,
    "from-an-earlier-batch": _eof_earlier_batch,
}


@pytest.mark.parametrize("case", list(_ALLOWED))
async def test_the_allowed_tails_are_accepted(
    engine_kind: str, journal: LoopbackJournal, sqlite_tails: SQLiteTailStore, case: str
) -> None:
    agg = new_aggregate()
    # More events than the journal's batch (1000): several batches.
    count = 1005 if case == "from-an-earlier-batch" else 4
    ids = await append(journal, agg, *["e"] * count)
    choose = _ALLOWED[case]
    chosen: list[ULID | None] = []

    async def report(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        value = await choose(ctx, stream, call, ids)
        chosen.append(value)
        return EOF(value)

    script = Script(steps=[report, read_to_eof])
    engine = make_engine(engine_kind, journal, [script.activity(NAME)], tails=sqlite_tails)
    seen = observed(engine)
    engine.start_activity(agg, engine.activities[NAME], ids[0])
    async with running(engine):
        await script.wait_for(lambda: len(seen) >= 2, timeout=20)
    first = seen[0][1]
    assert first.kind is OutcomeKind.EOF, first.error_text
    assert first.tail == chosen[0]
    assert script.calls[1].tail == chosen[0], "the next run resumes from it"
