"""The checks of an append, made before any work, for every way into the journal.

The gRPC service (:class:`~tailrunner.journal.service.JournalService`) and
the server's in-process journal (:class:`~tailrunner.journal.local.LocalJournal`,
which the hosted Operations and Workflows services write through) refuse the
same appends with the same :class:`~tailrunner.errors.InvalidArgument`: an
empty or too long type, too many events, an event over the size limit (its
type, data and metadata together).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tailrunner.errors import InvalidArgument

MiB = 1024 * 1024
#: The largest event (type, data and metadata together) an append may carry.
DEFAULT_MAX_EVENT_SIZE = MiB
#: The most events one append may carry: a bigger one would stall the other
#: callers while it commits, and its reply (an id per event) could pass a
#: client's message limit although the append committed.
DEFAULT_MAX_EVENTS_PER_APPEND = 10_000
#: The longest aggregate type or event type, in characters.
MAX_TYPE_LENGTH = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendLimits:
    """The configured limits of one journal's appends."""

    #: Bytes of type, data and metadata allowed per event.
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    #: Events allowed in one append.
    max_events_per_append: int = DEFAULT_MAX_EVENTS_PER_APPEND

    def __post_init__(self) -> None:
        if self.max_event_size < 1:
            raise InvalidArgument("max_event_size", "must be at least 1 byte")
        if self.max_events_per_append < 1:
            raise InvalidArgument("max_events_per_append", "must be at least 1 event")

    def check_aggregate_type(self, aggregate_type: str) -> None:
        """:raises InvalidArgument: naming ``aggregate_type``."""
        _check_type("aggregate_type", aggregate_type)

    def check_event_count(self, count: int) -> None:
        """:raises InvalidArgument: naming ``events``: none, or over the limit."""
        if not count:
            raise InvalidArgument("events", "an append needs at least one event")
        if count > self.max_events_per_append:
            raise InvalidArgument(
                "events",
                f"{count} events, over the limit of {self.max_events_per_append} per append:"
                " split it",
            )

    def check_event(
        self, index: int, event_type: str, data: bytes, metadata: Mapping[str, str]
    ) -> None:
        """:raises InvalidArgument: naming ``events[index].type`` or ``events[index].data``."""
        _check_type(f"events[{index}].type", event_type)
        size = len(data) + len(event_type)
        if metadata:
            size += sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
        if size > self.max_event_size:
            raise InvalidArgument(
                f"events[{index}].data",
                f"the event is {size} bytes (type, data and metadata), over the limit of"
                f" {self.max_event_size}",
            )


def _check_type(field: str, value: str) -> None:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > MAX_TYPE_LENGTH:
        raise InvalidArgument(
            field, f"{len(value)} characters, over the limit of {MAX_TYPE_LENGTH}"
        )
