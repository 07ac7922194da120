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
from collections.abc import Mapping
from itertools import repeat
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


def received_batch(response: journal_pb2.EventsResponse, aggregate_id: UUID) -> EventBatch:
    """The :class:`EventBatch` of one ``EventsResponse`` of the aggregate ``aggregate_id``.

    Nothing is decoded here but the aggregate type, once per batch (the
    journal sends one aggregate per stream).
    """
    messages = response.events
    if not messages:
        return EventBatch(events=(), will_block=response.will_block)
    batch = _Batch(messages[0].aggregate_type, aggregate_id)
    # The hot path of every reader: map() runs these loops in C, a Python
    # loop over the events costs more than the work in it.
    events: tuple[ReceivedEvent, ...] = tuple(map(_new, repeat(ReceivedEvent, len(messages))))
    deque(map(_set_message, events, messages), 0)
    deque(map(_set_batch, events, repeat(batch)), 0)
    return EventBatch(events=events, will_block=response.will_block)
