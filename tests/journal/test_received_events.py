"""ReceivedEvent: the reader's events, decoded field by field, behave as plain Events."""

from __future__ import annotations

import copy
import dataclasses
import gc
import pickle
from collections.abc import AsyncIterator, Iterator, Mapping
from types import MappingProxyType
from uuid import UUID, uuid4

import pytest
from ulid import ULID

from tailrunner.activities.stream import EventStream
from tailrunner.ids import next_ulids
from tailrunner.journal.client import JournalClient
from tailrunner.journal.received import CHUNK, ReceivedBatch, ReceivedEvent, received_batch
from tailrunner.journal.store import JournalStore
from tailrunner.model import AggregateRef, Event, EventBatch, NewEvent
from tailrunner.proto.v1 import journal_pb2

NO_METADATA: Mapping[str, str] = MappingProxyType({})
AGGREGATE_ID = UUID("0b6e0d3c-9a59-4d0e-8a51-6f0c7a1f3e21")


def _response(
    count: int = 3, *, metadata: Mapping[int, dict[str, str]] | None = None
) -> tuple[bytes, list[Event]]:
    """A serialized EventsResponse, and its events as the client made them eagerly before."""
    metadata = metadata or {}
    ids = next_ulids(None, count)
    response = journal_pb2.EventsResponse(will_block=True)
    plain = []
    for n, event_id in enumerate(ids):
        parent = ids[n - 1] if n else None
        response.events.add(
            id=event_id.bytes,
            parent=parent.bytes if parent else b"",
            aggregate_type="order",
            aggregate_id=AGGREGATE_ID.bytes,
            type=f"e{n}",
            data=b'{"n": %d}' % n,
            metadata=metadata.get(n, {}),
        )
        plain.append(
            Event(
                id=event_id,
                parent=parent,
                aggregate_type="order",
                aggregate_id=AGGREGATE_ID,
                type=f"e{n}",
                data=b'{"n": %d}' % n,
                metadata=dict(metadata[n]) if n in metadata else NO_METADATA,
            )
        )
    return response.SerializeToString(), plain


def _received(raw: bytes) -> tuple[ReceivedEvent, ...]:
    batch = received_batch(journal_pb2.EventsResponse.FromString(raw), AGGREGATE_ID)
    assert batch.will_block
    assert all(type(event) is ReceivedEvent for event in batch.events)
    return batch.events  # type: ignore[return-value]


def _wire_and_plain(
    count: int = 3, *, metadata: Mapping[int, dict[str, str]] | None = None
) -> tuple[tuple[ReceivedEvent, ...], list[Event]]:
    """A batch as the client receives it, and the same events made eagerly."""
    raw, plain = _response(count, metadata=metadata)
    return _received(raw), plain


def _fields(event: Event) -> tuple[object, ...]:
    return tuple(getattr(event, field.name) for field in dataclasses.fields(Event))


def test_a_received_event_has_the_fields_of_the_plain_one() -> None:
    events, plain = _wire_and_plain(metadata={1: {"by": "alice"}})

    assert [_fields(e) for e in events] == [_fields(p) for p in plain]
    assert events[0].parent is None
    assert events[1].parent == events[0].id
    assert all(e.aggregate == AggregateRef(type="order", id=AGGREGATE_ID) for e in events)
    assert events[1].json() == {"n": 1}
    assert isinstance(events[0], Event)


def test_every_field_of_event_is_decoded_by_received_event() -> None:
    # A field added to Event and not here would read Event's empty slot.
    for field in dataclasses.fields(Event):
        assert isinstance(ReceivedEvent.__dict__.get(field.name), property), field.name
    assert [f.name for f in dataclasses.fields(ReceivedEvent)] == [
        f.name for f in dataclasses.fields(Event)
    ]


def test_equality_both_ways_with_plain_events() -> None:
    events, plain = _wire_and_plain(metadata={0: {"k": "v"}})
    again, _ = _wire_and_plain()

    assert list(events) == plain
    assert plain == list(events)
    assert events[0] == plain[0] and plain[0] == events[0]
    assert (events[0] != plain[0]) is False and (plain[0] != events[0]) is False
    assert events[0] != plain[1] and plain[1] != events[0]
    changed = dataclasses.replace(plain[1], data=b"other")
    assert events[1] != changed and changed != events[1]
    # Two received events with the same fields, from two batches.
    assert dataclasses.replace(again[2]) == again[2]
    assert events[2] != again[2]  # other ids
    assert events[0] != "e0"
    assert events[0] != NewEvent(type="e0")


class _FrozenMapping(Mapping[str, str]):
    """A hashable mapping: hash(Event) is defined only with one."""

    def __init__(self, items: dict[str, str]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)


def test_hash_is_the_plain_events_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    events, plain = _wire_and_plain()
    # As with plain Events, a metadata dict (or mappingproxy) is unhashable.
    with pytest.raises(TypeError):
        hash(plain[0])
    with pytest.raises(TypeError):
        hash(events[0])

    empty = _FrozenMapping({})
    monkeypatch.setattr("tailrunner.journal.received._NO_METADATA", empty)
    hashable = [dataclasses.replace(p, metadata=empty) for p in plain]
    assert [hash(e) for e in events] == [hash(p) for p in hashable]
    assert hash(hashable[0]) == hash(_fields(hashable[0]))
    assert {events[0], hashable[0]} == {hashable[0]}


def test_repr_is_the_plain_events_repr() -> None:
    events, plain = _wire_and_plain(metadata={2: {"k": "v"}})

    assert [repr(e) for e in events] == [repr(p) for p in plain]
    assert repr(events[0]).startswith("Event(id=ULID(")


def test_replace_gives_a_plain_event() -> None:
    events, plain = _wire_and_plain(metadata={1: {"k": "v"}})

    same = dataclasses.replace(events[1])
    assert type(same) is Event
    assert same == plain[1]
    changed = dataclasses.replace(events[1], type="renamed", parent=None)
    assert type(changed) is Event
    assert changed == dataclasses.replace(plain[1], type="renamed", parent=None)
    # (asdict deep-copies: a plain Event's empty mappingproxy cannot be copied so.)
    assert dataclasses.asdict(events[1]) == dataclasses.asdict(plain[1])


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip_gives_a_plain_event(protocol: int) -> None:
    events, plain = _wire_and_plain(metadata={1: {"k": "v"}})

    for event, expected in zip(events, plain, strict=True):
        back = pickle.loads(pickle.dumps(event, protocol=protocol))
        assert type(back) is Event
        assert back == expected and back == event
    # No metadata comes back as an empty dict (a mappingproxy cannot be pickled).
    assert type(pickle.loads(pickle.dumps(events[0])).metadata) is dict


def test_copies_are_plain_events() -> None:
    events, plain = _wire_and_plain(metadata={1: {"k": "v"}})

    for event, expected in zip(events, plain, strict=True):
        for copied in (copy.copy(event), copy.deepcopy(event)):
            assert type(copied) is Event
            assert copied == expected


def test_a_received_event_is_immutable() -> None:
    events, _ = _wire_and_plain()
    event = events[1]

    for name in ("id", "parent", "type", "data", "metadata", "aggregate_id", "_message"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, name, None)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(event, name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.unknown = 1  # type: ignore[attr-defined]
    assert event.type == "e1"


def test_metadata_is_a_plain_dict_that_stays_the_same() -> None:
    events, _ = _wire_and_plain(metadata={1: {"by": "alice", "why": "test"}})

    metadata = events[1].metadata
    assert type(metadata) is dict
    assert metadata == {"by": "alice", "why": "test"}
    assert events[1].metadata is metadata  # one dict for the event, as a plain one has
    # No metadata: the shared empty (read-only) mapping, as before.
    assert events[0].metadata == {}
    assert not events[0].metadata


def test_an_empty_response_gives_an_empty_batch() -> None:
    batch = received_batch(journal_pb2.EventsResponse(will_block=True), AGGREGATE_ID)
    assert batch.events == ()
    assert batch.will_block


def test_the_plain_way_of_making_ulids_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    raw, plain = _response()
    fast = _received(raw)
    # A ULID made from its bytes alone is the ULID that ULID(bytes) makes.
    assert [vars(e.id) for e in fast] == [vars(ULID(e.id.bytes)) for e in plain]

    monkeypatch.setattr("tailrunner.journal.received._RAW_ULIDS", False)
    slow = _received(raw)
    assert [_fields(e) for e in slow] == [_fields(e) for e in plain]


async def test_events_read_through_the_journal_decode_as_the_stored_ones(
    store: JournalStore, client: JournalClient
) -> None:
    ref = AggregateRef(type="order", id=uuid4())
    first = await client.append(
        ref,
        [
            NewEvent(type="placed", data=b'{"sku": "a-1"}', metadata={"by": "alice"}),
            *(NewEvent(type="noted", data=b"%d" % n) for n in range(10)),
        ],
    )
    await client.append(ref, [NewEvent(type="shipped")], expected_tail=first.tail)
    stored = await store.read(ref.id, after=None, limit=100)

    received = [e async for b in client.events(ref.id, max_batch=5) for e in b.events]

    assert all(type(e) is ReceivedEvent for e in received)
    assert type(stored[0]) is Event
    assert [_fields(e) for e in received] == [_fields(e) for e in stored]
    assert received == stored and stored == received
    assert received[0].parent is None
    assert type(received[0].metadata) is dict


def _received_batch(count: int) -> tuple[ReceivedBatch, list[Event]]:
    raw, plain = _response(count, metadata={1: {"k": "v"}})
    batch = received_batch(journal_pb2.EventsResponse.FromString(raw), AGGREGATE_ID)
    assert type(batch) is ReceivedBatch
    return batch, plain


def test_a_batch_reads_ids_and_counts_without_making_its_events() -> None:
    batch, plain = _received_batch(5)

    assert batch.event_count() == 5
    assert batch.event_id(0) == plain[0].id and batch.event_id(-1) == plain[-1].id
    assert type(batch.event_id(2)) is ULID
    assert batch._events is None  # no event made yet


def test_a_batch_one_event_at_a_time_is_its_events_in_order() -> None:
    count = 2 * CHUNK + 3  # whole chunks and a short one
    batch, plain = _received_batch(count)

    one_by_one = list(batch.iter_events())

    assert one_by_one == plain
    assert all(type(e) is ReceivedEvent for e in one_by_one)
    assert batch._events is None  # iter_events made its own, not the tuple
    assert batch.events == tuple(plain)
    assert batch.events is batch.events  # made once
    assert list(batch.iter_events()) == plain


def test_one_event_at_a_time_keeps_only_a_chunk_of_events_alive() -> None:
    batch, _ = _received_batch(10 * CHUNK)
    alive: list[int] = []

    for n, _event in enumerate(batch.iter_events()):
        if n % CHUNK == CHUNK // 2:
            alive.append(sum(type(o) is ReceivedEvent for o in gc.get_objects()))

    assert len(alive) == 10
    # The reader holds none: at most the chunk being read is alive.
    assert max(alive) <= CHUNK


def test_a_batch_behaves_as_the_plain_batch_with_its_events() -> None:
    batch, plain = _received_batch(3)
    same = EventBatch(events=tuple(plain), will_block=True)

    assert batch == same and same == batch
    assert batch != EventBatch(events=tuple(plain), will_block=False)
    assert repr(batch) == repr(same)
    for copied in (
        copy.copy(batch),
        copy.deepcopy(batch),
        pickle.loads(pickle.dumps(batch)),
        dataclasses.replace(batch),
    ):
        assert type(copied) is EventBatch
        assert copied == same
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.will_block = False  # type: ignore[misc]


async def test_a_stream_of_received_batches_tracks_progress_without_their_events() -> None:
    first, plain = _received_batch(CHUNK + 2)
    raw, more = _response(1)
    second = received_batch(journal_pb2.EventsResponse.FromString(raw), AGGREGATE_ID)
    batches = [first, second]

    async def journal() -> AsyncIterator[EventBatch]:
        for batch in batches:
            yield batch

    stream = EventStream(journal())
    finished: list[ULID | None] = []
    seen: list[Event] = []
    async for event in stream:
        finished.append(stream.finished)
        seen.append(event)
        if len(seen) == CHUNK + 1:
            assert stream.handed_in_current_batch(plain[0].id)
            assert not stream.handed_in_current_batch(more[0].id)

    assert seen == [*plain, *more]
    # Done with an event when the reader asks for the next one.
    assert finished == [None, *(e.id for e in plain[:-1]), plain[-1].id]
    assert stream.finished == more[0].id == stream.last_handed
    assert stream.events_seen == CHUNK + 3
    assert first._events is None  # the stream made its events a chunk at a time
