"""The ping-registry's activities: seed 003's servers, registry daemon and index upkeep.

Registered as the plugin ``ping-registry`` (tailrunner's own entry point),
each is **opt-in** (``activities.enabled = ["*"]`` leaves them out) and runs
in the runner process that plays its part, configured by its
``[activities.settings.NAME]``:

- ``ping-pinger``, a server that watches registries: posts its ``pings``
  to every new workflow of those registries, then is done with it;
- ``ping-summarizer``, the registry daemon: posts its own pings, waits for
  the workflow's deadline (``SilentRetryAfter(deadline)``), then posts the
  summary of every ping gathered; a workflow found more than
  ``expire_after`` past its deadline unsummarized is aborted with an error
  summary instead;
- ``ping-index-keeper``: records each workflow in its registry's index,
  and finishes commits that were interrupted between their steps.

Each follows the ``ping-registry`` workflow aggregates and acts once it has
caught up with a workflow's events (at the end of the stream, or at
``will_block`` under the eager engine), so it works alike under every engine.
Every step is idempotent (the pings carry request ids), so a runner killed
at any point and restarted posts nothing twice and misses nothing.
"""

from __future__ import annotations

import fnmatch
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ulid import ULID

from tailrunner.activities.context import ActivityContext
from tailrunner.activities.decorator import Activity, activity
from tailrunner.activities.outcomes import EOF, Done, Outcome, SilentRetryAfter
from tailrunner.activities.stream import EventStream
from tailrunner.errors import ArgumentNotIdempotent, InvalidArgument, WrongState
from tailrunner.hooks import hookimpl
from tailrunner.journal.api import JournalApi
from tailrunner.workflows.pingregistry.registry import WORKFLOW_TYPE, PingRegistry, check_pinger
from tailrunner.workflows.pingregistry.state import State, StateCode

_OPEN = (StateCode.INITIALIZED, StateCode.APPENDING)


@dataclass(frozen=True, slots=True, kw_only=True)
class PingerSettings:
    """``[activities.settings.ping-pinger]``: one server that watches registries.

    :ivar name: who pings, unique among the pingers (it is in each ping).
    :ivar registries: the registries it watches: names or globs.
    :ivar pings: how many pings it posts to each workflow.
    :ivar message: the message of each ping.
    """

    name: str
    registries: tuple[str, ...] = ("*",)
    pings: int = 1
    message: str = "ok"

    def __post_init__(self) -> None:
        _check_common(self.name, self.registries, self.pings)


@dataclass(frozen=True, slots=True, kw_only=True)
class SummarizerSettings:
    """``[activities.settings.ping-summarizer]``: the registry daemon.

    :ivar name: the name its own pings carry.
    :ivar registries: the registries it summarizes: names or globs.
    :ivar pings: how many pings of its own it posts to each workflow.
    :ivar message: the message of each of its pings.
    :ivar expire_after: a workflow first found this long past its deadline,
        unsummarized, is aborted with an error summary (its pings may be
        stale) rather than summarized.
    """

    name: str = "registry-daemon"
    registries: tuple[str, ...] = ("*",)
    pings: int = 1
    message: str = "ok"
    expire_after: timedelta = timedelta(minutes=5)

    def __post_init__(self) -> None:
        _check_common(self.name, self.registries, self.pings)
        if self.expire_after <= timedelta(0):
            raise ValueError(f"expire_after = {self.expire_after}: must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeeperSettings:
    """``[activities.settings.ping-index-keeper]``.

    :ivar registries: the registries whose indexes it keeps: names or globs.
    """

    registries: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        if not self.registries:
            raise ValueError('registries = []: name at least one registry (or "*")')


def _check_common(name: str, registries: tuple[str, ...], pings: int) -> None:
    try:
        check_pinger(name)
    except InvalidArgument as exc:
        # Name the settings key, as the other checks do, not the command's field.
        raise ValueError(f"name = {exc.reason}") from exc
    if not registries:
        raise ValueError('registries = []: name at least one registry (or "*")')
    if pings < 0:
        raise ValueError(f"pings = {pings}: must not be negative")


# --------------------------------------------------------------------------- the activities


@activity(name="ping-pinger", aggregate_types=[WORKFLOW_TYPE], settings=PingerSettings, opt_in=True)
async def pinger(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
    """A server that watches registries: post its pings to each of their workflows."""
    settings: PingerSettings = ctx.settings

    async def step(tail: ULID | None) -> bool:
        state = await _registry(ctx.journal).show(ctx.aggregate.id)
        if not _watched(state, settings.registries) or state.code not in _OPEN:
            return True
        posted = await _ping(ctx, settings.name, settings.pings, settings.message)
        if posted:
            ctx.log.info("pinged", registry=state.registry, pinger=settings.name, posted=posted)
        return True

    return await _follow(stream, tail, step)


@activity(
    name="ping-summarizer",
    aggregate_types=[WORKFLOW_TYPE],
    settings=SummarizerSettings,
    opt_in=True,
)
async def summarizer(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
    """The registry daemon: post its pings, and the summary once the deadline has passed."""
    settings: SummarizerSettings = ctx.settings
    registry = _registry(ctx.journal)

    async def step(tail: ULID | None) -> bool:
        state = await registry.show(ctx.aggregate.id)
        if not _watched(state, settings.registries) or state.code not in _OPEN:
            return True
        assert state.deadline is not None, "an initialized workflow has a deadline"
        late = datetime.now(UTC) - state.deadline
        expired = late > settings.expire_after
        if not expired:
            # An expired workflow gets no pings of ours: only its error summary.
            await _ping(ctx, settings.name, settings.pings, settings.message)
        if late < timedelta(0):
            raise SilentRetryAfter(state.deadline, tail=tail, reason="waiting for the deadline")
        try:
            if expired:
                done = await registry.abort_expired(ctx.aggregate.id)
                ctx.log.warning("aborted expired", registry=state.registry, late=str(late))
            else:
                done = await registry.summarize(ctx.aggregate.id)
                ctx.log.info("summarized", registry=state.registry, pings=_pings(done))
        except ArgumentNotIdempotent:
            # Closed by someone else meanwhile (the other summary, expired or
            # not, differs from ours): nothing left to do. Neither command
            # raises WrongState: a summarized workflow makes them repeats.
            pass
        return True

    return await _follow(stream, tail, step)


@activity(
    name="ping-index-keeper",
    aggregate_types=[WORKFLOW_TYPE],
    settings=KeeperSettings,
    opt_in=True,
)
async def index_keeper(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
    """Keep the registries' indexes current, and finish commits that were interrupted."""
    settings: KeeperSettings = ctx.settings

    async def step(tail: ULID | None) -> bool:
        registry = _registry(ctx.journal)
        state = await registry.show(ctx.aggregate.id)
        if not _watched(state, settings.registries):
            return True
        after = await registry.catch_up_index(ctx.aggregate.id)
        if state.code is StateCode.COMPLETED and after.code is StateCode.TERMINATED:
            ctx.log.info("finished the commit", registry=state.registry)
        return after.code is StateCode.TERMINATED

    return await _follow(stream, tail, step)


@hookimpl
def tailrunner_activities() -> Iterable[Activity]:
    """The ping-registry's activities, for the plugin loader."""
    return [pinger, summarizer, index_keeper]


# --------------------------------------------------------------------------- shared


#: Acts on the workflow once caught up; ``True`` when the activity is done with it.
Step = Callable[[ULID | None], Awaitable[bool]]


async def _follow(stream: EventStream, tail: ULID | None, step: Step) -> Outcome:
    """Read the workflow's events; at each catch-up, take ``step``."""
    async for batch in stream.batches():
        if batch.events:
            tail = batch.events[-1].id
        if batch.will_block and await step(tail):
            return Done(tail)
    if await step(tail):
        return Done(tail)
    return EOF(tail)


async def _ping(ctx: ActivityContext, name: str, count: int, message: str) -> int:
    try:
        return await _registry(ctx.journal).ping(
            ctx.aggregate.id, pinger=name, count=count, message=message
        )
    except WrongState:
        return 0  # summarized meanwhile: no more pings are taken


def _watched(state: State, registries: tuple[str, ...]) -> bool:
    return state.code is not StateCode.UNINITIALIZED and any(
        fnmatch.fnmatchcase(state.registry, pattern) for pattern in registries
    )


def _pings(state: State) -> int:
    return 0 if state.summary is None else len(state.summary.pings)


# One PingRegistry per journal connection, so that loaded states are cached
# across runs (a run of the index keeper replays only what is new).
_registries: weakref.WeakKeyDictionary[JournalApi, PingRegistry] = weakref.WeakKeyDictionary()


def _registry(journal: JournalApi) -> PingRegistry:
    try:
        registry = _registries.get(journal)
        if registry is None:
            registry = _registries[journal] = PingRegistry(journal)
    except TypeError:  # a journal that cannot be weakly referenced
        return PingRegistry(journal)
    return registry
