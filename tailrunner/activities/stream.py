"""``EventStream``: the events an activity reads, after its tail.

The stream also knows how far the activity has got: a sequential reader is
done with an event when it asks for the next one (and with a batch when it
asks for the next batch). The engine reads that progress (:attr:`finished`)
when the stream catches up and when the run ends, so an activity that just
iterates resumes correctly under every engine.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from ulid import ULID

from tailrunner.model import Event, EventBatch

#: Awaited when the reader asks for more after a ``will_block`` batch.
CaughtUp = Callable[[], Awaitable[None]]


class EventStream:
    """The events of one aggregate after the activity's tail.

    Iterate it for events one by one (``async for event in stream``), or call
    :meth:`batches` to see the journal's batches and their ``will_block``
    flag (with the eager engine, ``will_block`` says that the activity has
    caught up and further reads wait for new events).

    Under the lazy and cron engines the stream ends after the last event;
    under the eager engine it blocks for new events until the engine stops.

    :param batches: the journal's batches.
    :param start: the tail the stream starts after (what :attr:`finished` is
        before the reader has finished any event).
    :param on_caught_up: awaited when the reader asks for more after a batch
        with ``will_block`` (the engine records progress there).
    :param on_resumed: awaited before the first events that come after a
        ``will_block`` batch are handed out (a cluster's engine marks the
        task as handling events again).
    """

    __slots__ = (
        "_batch",
        "_batches",
        "_caught_up",
        "_done",
        "_events_seen",
        "_last_handed",
        "_on_caught_up",
        "_on_resumed",
        "_settled",
    )

    def __init__(
        self,
        batches: AsyncIterator[EventBatch],
        *,
        start: ULID | None = None,
        on_caught_up: CaughtUp | None = None,
        on_resumed: CaughtUp | None = None,
    ) -> None:
        self._batches = batches
        self._caught_up = False
        self._on_resumed = on_resumed
        self._events_seen = 0
        self._on_caught_up = on_caught_up
        #: The last event of the batches the reader is done with.
        self._settled = start
        #: The batch being read, and how many of its events the reader is done with.
        self._batch: EventBatch | None = None
        self._done = 0
        self._last_handed: ULID | None = None

    @property
    def caught_up(self) -> bool:
        """Whether the last batch read had ``will_block`` set."""
        return self._caught_up

    @property
    def events_seen(self) -> int:
        """How many events the activity has been handed so far."""
        return self._events_seen

    @property
    def finished(self) -> ULID | None:
        """The last event the reader is done with (it asked for the one after it).

        Before the reader has finished any event: the tail the stream started after.
        """
        batch = self._batch
        if batch is not None and self._done:
            return batch.event_id(self._done - 1)
        return self._settled

    @property
    def last_handed(self) -> ULID | None:
        """The newest event id the stream has handed out (``None``: none yet)."""
        return self._last_handed

    def handed_in_current_batch(self, event_id: ULID) -> bool:
        """Whether ``event_id`` is one of the events of the batch being read."""
        batch = self._batch
        # By id, not by batch.events: a batch from the journal would make
        # every event (the stream makes them a few at a time).
        return batch is not None and any(
            batch.event_id(index) == event_id for index in range(batch.event_count())
        )

    async def batches(self) -> AsyncGenerator[EventBatch, None]:
        """The journal's batches as they arrive."""
        async for batch in self._batches:
            count = batch.event_count()
            if count and self._caught_up and self._on_resumed is not None:
                await self._on_resumed()
            self._caught_up = batch.will_block
            if count:
                self._events_seen += count
                self._batch = batch
                self._done = 0
                self._last_handed = batch.event_id(-1)
            yield batch
            # The reader asks for the next batch: it is done with this one.
            if count:
                self._settled = self._last_handed
                self._batch = None
            if batch.will_block and self._on_caught_up is not None:
                await self._on_caught_up()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncGenerator[Event, None]:
        async for batch in self.batches():
            # An index, not the event's id: ids decode lazily, and most runs
            # never need the finished id of every event.
            done = 0
            # Not batch.events: iter_events() makes a journal batch's events a
            # few at a time, so the ones the reader is done with are freed
            # before the garbage collector sees them.
            for event in batch.iter_events():
                self._done = done
                yield event
                done += 1
            self._done = done
