"""``Aggregates`` against a real loopback journal: load, tell, version modes and the cache."""

from __future__ import annotations

import uuid

import anyio
import pytest
from google.protobuf.wrappers_pb2 import Int64Value
from ulid import ULID

from tailrunner.errors import (
    AggregateTypeMismatch,
    ArgumentNotIdempotent,
    NotFound,
    RetryLimit,
    Uninitialized,
    VersionConflict,
    WrongState,
)
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.testing import LoopbackJournal
from tailrunner.workflows.aggregates import NO_VC, RETRY_NO_VC, Aggregates
from tailrunner.workflows.behaviour import encode
from tests.workflows.counter import (
    Add,
    Close,
    Command,
    Counter,
    CounterBehaviour,
    CounterEvent,
    Init,
)
from tests.workflows.journals import SpyJournal

TYPE = "counter"
CounterAggregates = Aggregates[Counter, Command, CounterEvent]


def aggregates(
    spy: SpyJournal, *, cache_size: int = 1024, retries: int = 5, pause: float = 0.001
) -> CounterAggregates:
    return Aggregates(
        spy, CounterBehaviour(), TYPE, cache_size=cache_size, retries=retries, pause=pause
    )


async def other_writer_adds(journal: LoopbackJournal, aggregate: AggregateRef) -> ULID:
    event = Int64Value(value=100)
    result = await journal.client.append(
        aggregate, [NewEvent(type="google.protobuf.Int64Value", data=encode(event))]
    )
    return result.tail


async def test_an_unknown_id_loads_as_new_or_is_not_found(spy: SpyJournal) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    assert await counters.load(id) == (Counter(id=id), None)
    with pytest.raises(NotFound, match=str(id)):
        await counters.load(id, missing_ok=False)


async def test_tell_appends_and_load_replays(spy: SpyJournal) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    v1 = await counters.tell(id, Init("a"), None)
    v2 = await counters.tell(id, Add(2), v1)
    assert v1 is not None and v2 is not None and v1 < v2
    fresh = aggregates(SpyJournal(spy.inner))
    assert await fresh.load(id) == (Counter(id=id, name="a", value=2, last=v2), v2)


async def test_a_refused_command_appends_nothing(spy: SpyJournal) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    with pytest.raises(Uninitialized):
        await counters.tell(id, Add(1))
    await counters.tell(id, Init("a"))
    with pytest.raises(ArgumentNotIdempotent, match="name"):
        await counters.tell(id, Init("b"))
    assert spy.appends == 1


async def test_a_command_without_events_is_a_no_op_returning_the_version(spy: SpyJournal) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    version = await counters.tell(id, Init("a"))
    assert await counters.tell(id, Init("a"), version) == version
    assert await counters.tell(id, Add(0)) == version
    assert spy.appends == 1


async def test_a_stale_version_is_a_conflict_naming_both(spy: SpyJournal) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    v1 = await counters.tell(id, Init("a"))
    v2 = await counters.tell(id, Add(1), v1)
    with pytest.raises(VersionConflict) as caught:
        await counters.tell(id, Add(1), v1)
    assert (caught.value.expected, caught.value.actual) == (v1, v2)
    assert str(v1) in str(caught.value) and str(v2) in str(caught.value)
    with pytest.raises(VersionConflict) as caught:
        await counters.tell(id, Init("a"), None)
    assert (caught.value.expected, caught.value.actual) == (None, v2)
    assert spy.appends == 2


async def test_no_vc_tells_on_whatever_is_current(
    spy: SpyJournal, journal: LoopbackJournal
) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    await counters.tell(id, Init("a"))
    await other_writer_adds(journal, counters.ref(id))
    version = await counters.tell(id, Add(1), NO_VC)
    assert await counters.load(id) == (
        Counter(id=id, name="a", value=101, last=version),
        version,
    )


async def test_no_vc_with_a_writer_racing_the_append_is_a_conflict(
    spy: SpyJournal, journal: LoopbackJournal
) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    loaded = await counters.tell(id, Init("a"))
    raced: list[ULID] = []

    async def race(aggregate: AggregateRef) -> None:
        raced.append(await other_writer_adds(journal, aggregate))

    spy.race, spy.races = race, 1
    with pytest.raises(VersionConflict) as caught:
        await counters.tell(id, Add(1), NO_VC)
    assert (caught.value.expected, caught.value.actual) == (loaded, raced[0])


async def test_retry_no_vc_tells_again_after_a_racing_writer(
    spy: SpyJournal, journal: LoopbackJournal
) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    await counters.tell(id, Init("a"))

    async def race(aggregate: AggregateRef) -> None:
        await other_writer_adds(journal, aggregate)

    spy.race, spy.races = race, 2
    version = await counters.tell(id, Add(1), RETRY_NO_VC)
    state, head = await counters.load(id)
    assert (state.value, head) == (201, version)
    # Three attempts; the retries only read what the racer added.
    assert spy.appends == 4


async def test_retry_no_vc_gives_up_after_its_bound(
    spy: SpyJournal, journal: LoopbackJournal
) -> None:
    counters = aggregates(spy, retries=2)
    id = uuid.uuid4()
    await counters.tell(id, Init("a"))

    async def race(aggregate: AggregateRef) -> None:
        await other_writer_adds(journal, aggregate)

    spy.race, spy.races = race, 10
    with pytest.raises(RetryLimit) as caught:
        await counters.tell(id, Add(1), RETRY_NO_VC)
    assert caught.value.attempts == 3
    assert str(id) in str(caught.value)
    assert (await counters.load(id))[0].value == 300


async def test_a_hot_aggregate_reads_only_the_events_after_the_cached_version(
    spy: SpyJournal, journal: LoopbackJournal
) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    versions = [await counters.tell(id, Init("a"))]
    for _ in range(5):
        versions.append(await counters.tell(id, Add(1), versions[-1]))
    # Each tell read after the version the previous tell cached: nothing new.
    assert spy.reads == [None, *versions[:-1]]
    assert spy.events_read == 0
    await other_writer_adds(journal, counters.ref(id))
    version = await counters.tell(id, Close())
    assert spy.events_read == 1
    assert await counters.load(id) == (
        Counter(id=id, name="a", value=105, closed=True, last=version),
        version,
    )


async def test_the_cache_is_bounded(spy: SpyJournal) -> None:
    counters = aggregates(spy, cache_size=1)
    first, second = uuid.uuid4(), uuid.uuid4()
    await counters.tell(first, Init("a"))
    await counters.tell(second, Init("b"))
    spy.reads.clear()
    await counters.load(first)
    assert spy.reads == [None]


async def test_an_aggregate_of_another_type_is_refused(
    spy: SpyJournal, journal: LoopbackJournal
) -> None:
    id = uuid.uuid4()
    await other_writer_adds(journal, AggregateRef(type="gauge", id=id))
    with pytest.raises(AggregateTypeMismatch, match="gauge"):
        await aggregates(spy).load(id)


async def test_close_then_add_is_refused_through_aggregates(spy: SpyJournal) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    await counters.tell(id, Init("a"))
    await counters.tell(id, Close())
    with pytest.raises(WrongState, match="closed"):
        await counters.tell(id, Add(1))


async def test_each_tell_appends_with_a_request_id_of_its_own(spy: SpyJournal) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    await counters.tell(id, Init("a"))
    await counters.tell(id, Add(1))
    assert len(spy.request_ids) == 2
    assert None not in spy.request_ids and len(set(spy.request_ids)) == 2


async def test_a_tell_repeated_with_its_request_id_appends_once(spy: SpyJournal) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    await counters.tell(id, Init("a"))
    first = await counters.tell(id, Add(1), request_id="add-1")
    # The caller timed out and repeats: the state already has the first add,
    # the behaviour adds again, and the journal returns the first append.
    again = await counters.tell(id, Add(1), request_id="add-1")
    assert again == first
    state, head = await counters.load(id)
    assert (state.value, head, state.last) == (1, first, first)
    assert spy.request_ids[1:] == ["add-1", "add-1"]


async def test_retry_no_vc_keeps_its_request_id_across_attempts(
    spy: SpyJournal, journal: LoopbackJournal
) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    await counters.tell(id, Init("a"))

    async def race(aggregate: AggregateRef) -> None:
        await other_writer_adds(journal, aggregate)

    spy.race, spy.races = race, 1
    await counters.tell(id, Add(1), RETRY_NO_VC, request_id="r")
    assert spy.request_ids[1:] == ["r", "r"]
    assert (await counters.load(id))[0].value == 101


async def test_a_load_that_overlapped_a_tell_keeps_the_newer_cached_version(
    spy: SpyJournal,
) -> None:
    counters = aggregates(spy)
    id = uuid.uuid4()
    await counters.tell(id, Init("a"))
    spy.hold = hold = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(counters.load, id)  # reads nothing new, then waits
            await spy.holding.wait()
            newer = await counters.tell(id, Add(1))
            hold.set()
    spy.reads.clear()
    assert await counters.load(id) == (Counter(id=id, name="a", value=1, last=newer), newer)
    assert spy.reads == [newer]


def _meet_before_appending(*spies: SpyJournal) -> None:
    """Make each spy's next append wait until all of them are about to append.

    So every writer has loaded the aggregate before any appends: their first
    tells race on one and the same "no events yet".
    """
    arrived: list[AggregateRef] = []
    all_loaded = anyio.Event()

    async def meet(aggregate: AggregateRef) -> None:
        arrived.append(aggregate)
        if len(arrived) == len(spies):
            all_loaded.set()
        await all_loaded.wait()

    for spy in spies:
        spy.race, spy.races = meet, 1


@pytest.mark.parametrize("version", [NO_VC, None], ids=["no-vc", "version-none"])
async def test_two_racing_first_tells_of_a_non_idempotent_command_one_is_a_version_conflict(
    journal: LoopbackJournal, version: ULID | None
) -> None:
    spies = SpyJournal(journal.client), SpyJournal(journal.client)
    writers = aggregates(spies[0]), aggregates(spies[1])
    id = uuid.uuid4()
    _meet_before_appending(*spies)
    won: dict[str, ULID | None] = {}
    lost: dict[str, VersionConflict] = {}

    async def init(writer: CounterAggregates, name: str) -> None:
        try:
            won[name] = await writer.tell(id, Init(name), version)
        except VersionConflict as exc:
            lost[name] = exc

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(init, writers[0], "a")
            tg.start_soon(init, writers[1], "b")

    assert [spy.appends for spy in spies] == [1, 1]  # both appended: a real race
    [(winner, tail)] = won.items()
    [conflict] = lost.values()
    assert (conflict.expected, conflict.actual) == (None, tail)
    state, head = await aggregates(SpyJournal(journal.client)).load(id)
    assert (state.name, head, state.last) == (winner, tail, tail)


async def test_retry_no_vc_first_tells_racing_an_idempotent_init_land_once(
    journal: LoopbackJournal,
) -> None:
    spies = SpyJournal(journal.client), SpyJournal(journal.client)
    writers = aggregates(spies[0]), aggregates(spies[1])
    id = uuid.uuid4()
    _meet_before_appending(*spies)
    versions: list[ULID | None] = []

    async def init(writer: CounterAggregates) -> None:
        versions.append(await writer.tell(id, Init("a"), RETRY_NO_VC))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(init, writers[0])
            tg.start_soon(init, writers[1])

    # The loser reloaded, found the counter started with its name: nothing to append.
    assert sorted(spy.appends for spy in spies) == [1, 1]
    state, head = await aggregates(SpyJournal(journal.client)).load(id)
    assert versions == [head, head]
    assert (state.name, state.value, state.last) == ("a", 0, head)
