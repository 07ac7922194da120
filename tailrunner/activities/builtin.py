"""Activities that ship with tailrunner, registered as the plugin ``builtin``.

tailrunner's own ``pyproject.toml`` names this module in the entry-point
group ``tailrunner`` (``builtin = "tailrunner.activities.builtin"``), so an
installed tailrunner loads these as any plugin's: ``tailrunner plugins``
lists them and ``activities.enabled = ["*"]`` runs them.
"""

from __future__ import annotations

from collections.abc import Iterable

from ulid import ULID

from tailrunner.activities.context import ActivityContext
from tailrunner.activities.decorator import Activity, activity
from tailrunner.activities.outcomes import EOF, Outcome
from tailrunner.activities.stream import EventStream
from tailrunner.hooks import hookimpl

#: The aggregate type the demo appends to and the counter follows.
DEMO_TYPE = "demo"


@activity(name="counter", aggregate_types=[DEMO_TYPE])
async def counter(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
    """Log every event of a ``demo`` aggregate and how many it has seen this run.

    It keeps no state of its own beyond the tail: a restart resumes after the
    last logged event. It needs no checkpoints, under the eager engine either:
    the engine records how far it read.
    """
    count = 0
    async for event in stream:
        count += 1
        ctx.log.info("counted", event_id=str(event.id), event_type=event.type, count=count)
        tail = event.id
    return EOF(tail)


@hookimpl
def tailrunner_activities() -> Iterable[Activity]:
    """The built-in activities, for the plugin loader.

    :returns: ``[counter]``.
    """
    return [counter]
