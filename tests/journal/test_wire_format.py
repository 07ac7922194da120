"""Events in their stored wire form, framed into ``EventsResponse`` messages."""

from __future__ import annotations

from uuid import uuid4

import pytest
from ulid import ULID

from tailrunner.journal.wire_format import decode_event, encode_event, event_id, events_messages
from tailrunner.proto.v1 import journal_pb2


def _stored(count: int, *, data: bytes = b'{"n":1}') -> tuple[list[ULID], list[bytes]]:
    ids = [ULID() for _ in range(count)]
    parents = [None, *ids[:-1]]
    wires = [
        encode_event(
            i.bytes, None if p is None else p.bytes, f"t{n}", data, {"n": str(n)} if n % 2 else None
        )
        for n, (i, p) in enumerate(zip(ids, parents, strict=True))
    ]
    return ids, wires


def test_framed_events_parse_as_events_responses_with_their_aggregate() -> None:
    aggregate_id = uuid4()
    ids, wires = _stored(3)

    (message,) = events_messages(
        wires, "order", aggregate_id.bytes, will_block=True, budget=1 << 20
    )
    response = journal_pb2.EventsResponse.FromString(message)

    assert response.will_block
    assert [e.id for e in response.events] == [i.bytes for i in ids]
    assert [e.parent for e in response.events] == [b"", ids[0].bytes, ids[1].bytes]
    assert {(e.aggregate_type, e.aggregate_id) for e in response.events} == {
        ("order", aggregate_id.bytes)
    }
    assert [e.type for e in response.events] == ["t0", "t1", "t2"]
    assert [dict(e.metadata) for e in response.events] == [{}, {"n": "1"}, {}]


def test_a_batch_over_the_budget_is_cut_and_only_the_last_message_may_block() -> None:
    _, wires = _stored(10, data=b"x" * 100)

    messages = events_messages(wires, "order", uuid4().bytes, will_block=True, budget=500)
    responses = [journal_pb2.EventsResponse.FromString(m) for m in messages]

    assert len(responses) > 1
    assert all(len(m) <= 500 for m in messages[:-1])
    assert sum(len(r.events) for r in responses) == 10
    assert [r.will_block for r in responses] == [False] * (len(responses) - 1) + [True]


def test_an_event_larger_than_the_budget_travels_alone() -> None:
    big = encode_event(ULID().bytes, None, "big", b"y" * 70_000, None)
    _, small = _stored(2)

    messages = events_messages(
        [small[0], big, small[1]], "t", uuid4().bytes, will_block=False, budget=1000
    )

    counts = [len(journal_pb2.EventsResponse.FromString(m).events) for m in messages]
    assert counts == [1, 1, 1]
    assert journal_pb2.EventsResponse.FromString(messages[1]).events[0].data == b"y" * 70_000
    assert not any(journal_pb2.EventsResponse.FromString(m).will_block for m in messages)


def test_decode_gives_back_what_was_encoded() -> None:
    aggregate_id = uuid4()
    this, parent = ULID(), ULID()
    wire = encode_event(this.bytes, parent.bytes, "placed", b"{}", {"by": "alice"})

    event = decode_event(wire, "order", aggregate_id)

    assert (event.id, event.parent, event.type, event.data) == (this, parent, "placed", b"{}")
    assert (event.aggregate_type, event.aggregate_id) == ("order", aggregate_id)
    assert dict(event.metadata) == {"by": "alice"}
    assert event_id(wire) == this.bytes
    assert (
        decode_event(encode_event(this.bytes, None, "x", b"", None), "o", aggregate_id).parent
        is None
    )


@pytest.mark.parametrize(
    ("parent", "event_type", "data", "metadata"),
    [
        (True, "placed", b'{"sku":"a-1"}', None),
        (False, "x", b"", None),
        (True, "é" * 200, b"z" * 20_000, {"a": "b", "ü": "ß" * 300, "": ""}),
        (False, "t" * 20_000, b"\x00\xff" * 10, {"by": "alice"}),
    ],
    ids=["plain", "first-event-no-data", "long-unicode-metadata", "long-type"],
)
def test_the_stored_form_parses_as_the_message_protobuf_would_build(
    parent: bool, event_type: str, data: bytes, metadata: dict[str, str] | None
) -> None:
    this, before = ULID().bytes, ULID().bytes if parent else None

    parsed = journal_pb2.Event.FromString(encode_event(this, before, event_type, data, metadata))

    assert parsed == journal_pb2.Event(
        id=this, parent=before or b"", type=event_type, data=data, metadata=metadata
    )


def test_ids_that_are_not_16_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        encode_event(b"short", None, "t", b"", None)
    with pytest.raises(ValueError, match="16 bytes"):
        encode_event(ULID().bytes, b"short", "t", b"", None)
