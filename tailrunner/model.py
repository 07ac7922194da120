"""Value objects shared by the journal, the engines and activities."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from ulid import ULID


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregateRef:
    """Which aggregate: its type (``"repo"``, ``"ping-registry"`` …) and id."""

    type: str
    id: UUID

    def __str__(self) -> str:
        return f"{self.type}/{self.id}"


# eq=False: Event has its own __eq__ and __hash__ (below).
@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Event:
    """One event of an aggregate, as the journal stored it.

    Events are equal when their fields are, whatever their class: the
    reader's events (:class:`~tailrunner.journal.received.ReceivedEvent`)
    equal the plain ones with the same fields.
    """

    id: ULID
    #: The event before this one in the same aggregate; ``None`` for the first.
    parent: ULID | None
    aggregate_type: str
    aggregate_id: UUID
    type: str
    data: bytes = b""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def aggregate(self) -> AggregateRef:
        return AggregateRef(type=self.aggregate_type, id=self.aggregate_id)

    def json(self) -> Any:
        """The payload decoded as JSON.

        :raises ValueError: when the payload is not JSON.
        """
        return json.loads(self.data)

    # What the dataclass would generate, except that the other side may be
    # any Event (the generated __eq__ wants the same class).
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        # As generated: every field, so a dict of metadata makes it unhashable.
        return hash(self._values())

    def _values(self) -> tuple[object, ...]:
        return (
            self.id,
            self.parent,
            self.aggregate_type,
            self.aggregate_id,
            self.type,
            self.data,
            self.metadata,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEvent:
    """An event to append; the journal gives it its id and parent."""

    type: str
    data: bytes = b""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBatch:
    """A batch of events from the journal's ``Events`` stream."""

    events: tuple[Event, ...]
    #: The reader has caught up; with ``watch`` the next read blocks.
    will_block: bool

    # What a stream needs of a batch without its ``events`` tuple: a batch
    # from the journal (journal.received.ReceivedBatch) makes its events only
    # when they are read, and these let a reader of one event at a time never
    # make the tuple.

    def event_count(self) -> int:
        """How many events the batch has."""
        return len(self.events)

    def event_id(self, index: int) -> ULID:
        """The id of the event at ``index`` (negative counts from the end)."""
        return self.events[index].id

    def iter_events(self) -> Iterator[Event]:
        """The events in order, one at a time."""
        return iter(self.events)


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregateInfo:
    """What ``ListAggregates`` says of one aggregate."""

    type: str
    id: UUID
    head: ULID | None
    event_count: int

    @property
    def ref(self) -> AggregateRef:
        return AggregateRef(type=self.type, id=self.id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Signal:
    """The journal's hint that an aggregate changed: its new head."""

    aggregate_type: str
    aggregate_id: UUID
    head: ULID | None
    #: The newest events up to ``head`` when the journal sent them along
    #: (``Signal.events`` in journal.proto): contiguous, ending at ``head``,
    #: the first one's parent the head before them. ``None``: read them.
    events: EventBatch | None = None

    @property
    def aggregate(self) -> AggregateRef:
        return AggregateRef(type=self.aggregate_type, id=self.aggregate_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalBatch:
    """One message of the ``AggregateSignals`` stream."""

    signals: tuple[Signal, ...]
    #: The journal dropped signals: every aggregate must be re-checked.
    resync: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResult:
    """What an append committed."""

    tail: ULID
    event_ids: tuple[ULID, ...]
