"""``Activity`` and the ``@activity`` decorator that makes one."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ulid import ULID

from tailrunner.activities.context import ActivityContext
from tailrunner.activities.outcomes import Outcome
from tailrunner.activities.stream import EventStream

ActivityFunc = Callable[[ActivityContext, ULID | None, EventStream], Awaitable[Outcome]]

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Activity:
    """An activity: a name, the aggregate types it follows, and its function."""

    name: str
    aggregate_types: tuple[str, ...]
    func: ActivityFunc
    #: At most this many runs of this activity at once (``None``: only the global limit).
    max_concurrency: int | None = None
    #: The engine records how far the activity read its stream (a sequential
    #: reader is done with an event when it asks for the next one). ``False``
    #: for an activity that hands events to background work: only its own
    #: checkpoints and returned tails count.
    auto_checkpoint: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"activity name {self.name!r}: expected lowercase letters, digits, '_', '.', '-',"
                " starting with a letter"
            )
        if not self.aggregate_types or any(not t for t in self.aggregate_types):
            raise ValueError(f"activity {self.name!r}: aggregate_types must name at least one type")
        if not inspect.iscoroutinefunction(self.func):
            raise TypeError(f"activity {self.name!r}: {self.func!r} is not an async function")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"activity {self.name!r}: max_concurrency must be at least 1")

    async def __call__(
        self, ctx: ActivityContext, tail: ULID | None, stream: EventStream
    ) -> Outcome:
        return await self.func(ctx, tail, stream)


def activity(
    *,
    name: str,
    aggregate_types: Sequence[str],
    max_concurrency: int | None = None,
    auto_checkpoint: bool = True,
) -> Callable[[ActivityFunc], Activity]:
    """Make an async function an :class:`Activity`.

    ::

        @activity(name="counter", aggregate_types=["demo"])
        async def counter(ctx, tail, stream):
            async for event in stream:
                tail = event.id
            return EOF(tail)

    :param name: unique among the runner's activities; used in logs, tails and config.
    :param aggregate_types: the aggregate types whose aggregates it follows,
        one task per (activity, aggregate).
    :param max_concurrency: at most this many runs at once.
    :param auto_checkpoint: the engine records how far the activity read its
        stream, so that it resumes after the last event it finished with
        (it asked for the next one), also when the run is cancelled or the
        stream never ends (eager). ``False`` for an activity that hands
        events to background work and checkpoints (``ctx.checkpoint``) what
        that work has finished.
    """
    types = (aggregate_types,) if isinstance(aggregate_types, str) else tuple(aggregate_types)

    def wrap(func: ActivityFunc) -> Activity:
        return Activity(
            name=name,
            aggregate_types=types,
            func=func,
            max_concurrency=max_concurrency,
            auto_checkpoint=auto_checkpoint,
            description=inspect.getdoc(func) or "",
        )

    return wrap
