"""Events as a reader receives them: each field decoded when it is read.

A batch of the ``Events`` stream holds up to 1,000 events, and an activity
often reads only some fields of each (its id, for its tail). Decoding every
field of every event up front (two ULIDs, the metadata map, five protobuf
reads) cost several times what parsing the message does. A
:class:`ReceivedEvent` keeps its protobuf message instead and decodes a field
when it is read: a reader pays for the fields it reads.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from itertools import chain, repeat
from types import MappingProxyType
from typing import Any, SupportsIndex
from uuid import UUID

from ulid import ULID

from tailrunner.model import Event, EventBatch
from tailrunner.proto.v1 import journal_pb2

_NO_METADATA: Mapping[str, str] = MappingProxyType({})
_new = object.__new__


def _ulid_is_its_bytes() -> bool:
    """Whether a ULID made by ``__new__`` and given its ``bytes`` is a whole ULID.

    That costs well under what ``ULID(raw)`` does (no ``__init__`` call, no
    length check: the journal sends 16 bytes). It is the same thing only
    while a ULID holds nothing but its bytes; otherwise ULIDs are made the
    plain way.
    """
    probe = _new(ULID)
    probe.bytes = bytes(16)
    return vars(probe) == vars(ULID(bytes(16)))


_RAW_ULIDS = _ulid_is_its_bytes()


class _Batch:
    """What the events of one batch share: their aggregate, and their decoded metadata."""

    __slots__ = ("aggregate_id", "aggregate_type", "metadata")

    def __init__(self, aggregate_type: str, aggregate_id: UUID) -> None:
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        #: Decoded metadata by event id: a dict, so that it is one dict for
        #: the event's lifetime, as a plain Event's is.
        self.metadata: dict[bytes, dict[str, str]] = {}


class ReceivedEvent(Event):
    """An :class:`Event` read from the journal, decoded field by field when read.

    It behaves as the plain :class:`Event` with its fields: it compares equal
    to it (both ways), hashes and prints the same, and is immutable;
    :func:`dataclasses.replace`, :mod:`pickle` and :mod:`copy` give plain
    Events. ``id`` and ``parent`` are new (equal) ULIDs on each read: caching
    them cost more than reading them twice does.

    While it lives it keeps its batch's message (the whole decoded
    ``EventsResponse``) alive; keep plain Events (``dataclasses.replace(event)``)
    to hold many events long.
    """

    # Event's own slots stay empty: every field is a property over these.
    __slots__ = ("_batch", "_message")

    _message: journal_pb2.Event
    _batch: _Batch

    def __new__(cls, **fields: Any) -> Event:  # type: ignore[misc]
        # Making one by its fields (dataclasses.replace does) makes a plain
        # Event; the reader makes them with object.__new__ (received_batch).
        return Event(**fields)

    @property
    def id(self) -> ULID:
        raw = self._message.id
        if _RAW_ULIDS:
            ulid = _new(ULID)
            ulid.bytes = raw
            return ulid
        return ULID(raw)

    @property
    def parent(self) -> ULID | None:
        raw = self._message.parent
        if not raw:
            return None
        if _RAW_ULIDS:
            ulid = _new(ULID)
            ulid.bytes = raw
            return ulid
        return ULID(raw)

    @property
    def aggregate_type(self) -> str:
        return self._batch.aggregate_type

    @property
    def aggregate_id(self) -> UUID:
        return self._batch.aggregate_id

    @property
    def type(self) -> str:
        return self._message.type

    @property
    def data(self) -> bytes:
        return self._message.data

    @property
    def metadata(self) -> Mapping[str, str]:
        message = self._message
        if not message.metadata:
            return _NO_METADATA
        decoded = self._batch.metadata
        key = message.id
        metadata = decoded.get(key)
        if metadata is None:
            metadata = decoded[key] = dict(message.metadata)
        return metadata

    def __repr__(self) -> str:
        return repr(dataclasses.replace(self))

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        # Pickled and copied as (a copy of) the plain Event; the message stays
        # behind. No metadata is an empty dict there: a mappingproxy (what a
        # plain Event from the journal has) cannot be pickled.
        plain = dataclasses.replace(self, metadata=self.metadata or {})
        return dataclasses.replace, (plain,)

    # Event's (generated) ones let a subclass set names that are not fields;
    # here every name is refused, as a plain Event refuses them.
    def __setattr__(self, name: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


# ReceivedEvent refuses attribute assignment: its slots are set through their
# descriptors.
_set_message = ReceivedEvent.__dict__["_message"].__set__
_set_batch = ReceivedEvent.__dict__["_batch"].__set__

#: Events made at a time for a reader of one event at a time. Few enough
#: that what lives at once stays far below the garbage collector's first
#: threshold (700 new objects): made for a whole batch (1,000 events and
#: their 1,000 messages), they outlived collections, were promoted and
#: triggered full collections, which took half a stream's time. 128 events
#: and their messages are 256 objects; 64 cost ~5% more per event (the
#: per-chunk work), 256 gained little more.
CHUNK = 128


def _received_events(
    messages: Iterator[journal_pb2.Event], shared: _Batch, count: int
) -> tuple[ReceivedEvent, ...]:
    """The next ``count`` messages of ``messages`` as ReceivedEvents."""
    # The hot path of every reader: map() runs these loops in C, a Python
    # loop over the events costs more than the work in it. map() stops at
    # its first iterable's end, so ``messages`` is not read past ``count``.
    events: tuple[ReceivedEvent, ...] = tuple(map(_new, repeat(ReceivedEvent, count)))
    deque(map(_set_message, events, messages), 0)
    deque(map(_set_batch, events, repeat(shared)), 0)
    return events


class ReceivedBatch(EventBatch):
    """An :class:`EventBatch` of the journal's: its events are made when they are read.

    ``events`` makes them all (once); :meth:`iter_events` makes them
    :data:`CHUNK` at a time, so a reader that goes on to the next event and
    drops the last keeps few alive. It equals, hashes, prints, pickles and
    copies as the plain batch with its events.
    """

    __slots__ = ("_events", "_messages", "_shared")

    _messages: Sequence[journal_pb2.Event]
    _shared: _Batch
    _events: tuple[Event, ...] | None

    def __new__(cls, **fields: Any) -> EventBatch:  # type: ignore[misc]
        # Making one by its fields (dataclasses.replace does) makes a plain
        # EventBatch; the reader makes them with object.__new__ (received_batch).
        return EventBatch(**fields)

    @property
    def events(self) -> tuple[Event, ...]:
        events = self._events
        if events is None:
            messages = self._messages
            events = _received_events(iter(messages), self._shared, len(messages))
            object.__setattr__(self, "_events", events)
        return events

    def event_count(self) -> int:
        return len(self._messages)

    def event_id(self, index: int) -> ULID:
        raw = self._messages[index].id
        if _RAW_ULIDS:
            ulid = _new(ULID)
            ulid.bytes = raw
            return ulid
        return ULID(raw)

    def iter_events(self) -> Iterator[Event]:
        if self._events is not None:
            return iter(self._events)
        messages = self._messages
        full, rest = divmod(len(messages), CHUNK)
        sizes = chain(repeat(CHUNK, full), (rest,) if rest else ())
        return chain.from_iterable(
            map(partial(_received_events, iter(messages), self._shared), sizes)
        )

    def _plain(self) -> EventBatch:
        return EventBatch(events=self.events, will_block=self.will_block)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventBatch):
            return NotImplemented
        return (self.events, self.will_block) == (other.events, other.will_block)

    def __hash__(self) -> int:
        return hash(self._plain())

    def __repr__(self) -> str:
        return repr(self._plain())

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        # Pickled and copied as (a copy of) the plain batch; the messages stay behind.
        return dataclasses.replace, (self._plain(),)


def received_batch(response: journal_pb2.EventsResponse, aggregate_id: UUID) -> EventBatch:
    """The :class:`EventBatch` of one ``EventsResponse`` of the aggregate ``aggregate_id``.

    Nothing is decoded here but the aggregate type, once per batch (the
    journal sends one aggregate per stream); no event is made yet.
    """
    return received_events(response.events, aggregate_id, will_block=response.will_block)


def received_events(
    messages: Sequence[journal_pb2.Event], aggregate_id: UUID, *, will_block: bool
) -> EventBatch:
    """The :class:`EventBatch` of received ``Event`` messages of one aggregate.

    As :func:`received_batch`, for events that came in another message (a
    ``Signal``'s ``events``): the messages are kept, not copied.
    """
    if not messages:
        return EventBatch(events=(), will_block=will_block)
    batch: ReceivedBatch = _new(ReceivedBatch)
    # Frozen: set as the dataclass's own __init__ does.
    setattr_ = object.__setattr__
    setattr_(batch, "will_block", will_block)
    setattr_(batch, "_messages", messages)
    setattr_(batch, "_shared", _Batch(messages[0].aggregate_type, aggregate_id))
    setattr_(batch, "_events", None)
    return batch
