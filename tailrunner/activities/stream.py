"""``EventStream``: the events an activity reads, after its tail."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from tailrunner.model import Event, EventBatch


class EventStream:
    """The events of one aggregate after the activity's tail.

    Iterate it for events one by one (``async for event in stream``), or call
    :meth:`batches` to see the journal's batches and their ``will_block``
    flag (with the eager engine, ``will_block`` says that the activity has
    caught up and further reads wait for new events).

    Under the lazy and cron engines the stream ends after the last event;
    under the eager engine it blocks for new events until the engine stops.
    """

    __slots__ = ("_batches", "_caught_up", "_events_seen")

    def __init__(self, batches: AsyncIterator[EventBatch]) -> None:
        self._batches = batches
        self._caught_up = False
        self._events_seen = 0

    @property
    def caught_up(self) -> bool:
        """Whether the last batch read had ``will_block`` set."""
        return self._caught_up

    @property
    def events_seen(self) -> int:
        """How many events the activity has been handed so far."""
        return self._events_seen

    async def batches(self) -> AsyncGenerator[EventBatch, None]:
        """The journal's batches as they arrive."""
        async for batch in self._batches:
            self._caught_up = batch.will_block
            self._events_seen += len(batch.events)
            yield batch

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncGenerator[Event, None]:
        async for batch in self.batches():
            for event in batch.events:
                yield event
