"""Activities that ship with tailrunner."""

from __future__ import annotations

from ulid import ULID

from tailrunner.activities.context import ActivityContext
from tailrunner.activities.decorator import activity
from tailrunner.activities.outcomes import EOF, Outcome
from tailrunner.activities.stream import EventStream

#: The aggregate type the demo appends to and the counter follows.
DEMO_TYPE = "demo"


@activity(name="counter", aggregate_types=[DEMO_TYPE])
async def counter(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
    """Log every event of a ``demo`` aggregate and how many it has seen this run.

    It keeps no state of its own beyond the tail: a restart resumes after the
    last logged event. Under the eager engine it checkpoints each event, as a
    long-running watch should.
    """
    count = 0
    async for event in stream:
        count += 1
        ctx.log.info("counted", event_id=str(event.id), event_type=event.type, count=count)
        tail = event.id
        if ctx.engine == "eager":
            await ctx.checkpoint(tail)
    return EOF(tail)
