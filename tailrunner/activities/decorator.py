"""``Activity`` and the ``@activity`` decorator that makes one."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
    #: The frozen dataclass its ``[activities.settings.NAME]`` table is read
    #: into (``None``: it takes no settings, and such a table is an error).
    settings_type: type[Any] | None = None
    #: What ``ctx.settings`` is: the configured settings once the runner has
    #: read them, before that the settings type's defaults (``None`` when a
    #: field has no default, or there is no settings type).
    settings: Any = None
    #: Not enabled by the catch-all ``activities.enabled = ["*"]``: only by a
    #: pattern that names it (``"ping-pinger"``, ``"ping-*"``). For
    #: activities that act on the world and must be configured first.
    opt_in: bool = False

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
        if self.settings_type is not None and not (
            dataclasses.is_dataclass(self.settings_type) and isinstance(self.settings_type, type)
        ):
            raise TypeError(
                f"activity {self.name!r}: settings must be a dataclass, not {self.settings_type!r}"
            )

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
    settings: type[Any] | None = None,
    opt_in: bool = False,
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
    :param settings: a frozen dataclass of the activity's settings; the
        runner reads ``[activities.settings.NAME]`` into it at start-up
        (checking each key, naming the bad one) and the activity finds it as
        ``ctx.settings``. Fields may be ``str``, ``int``, ``float``, ``bool``,
        ``tuple[str, ...]`` or ``datetime.timedelta`` (a duration: ``"30s"``).
    :param opt_in: not enabled by ``activities.enabled = ["*"]``; only by a
        pattern that names it.
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
            settings_type=settings,
            settings=_default_settings(settings),
            opt_in=opt_in,
        )

    return wrap


def _default_settings(kind: type[Any] | None) -> Any:
    """``kind()`` when every field has a default, else ``None`` (config must say them)."""
    if kind is None or not dataclasses.is_dataclass(kind):
        return None
    for f in dataclasses.fields(kind):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            return None
    return kind()
