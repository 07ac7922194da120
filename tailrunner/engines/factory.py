"""Build an engine by name from typed options (what the config's ``[engine]`` says)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tailrunner.activities.decorator import Activity
from tailrunner.engines.cron import CronEngine
from tailrunner.engines.eager import EagerEngine
from tailrunner.engines.kinds import ENGINE_KINDS, EngineKind
from tailrunner.engines.lazy import LazyEngine
from tailrunner.engines.reconnect import ReconnectPolicy
from tailrunner.engines.retry import RetryPolicy
from tailrunner.engines.scheduler import DEFAULT_SHUTDOWN_GRACE, Scheduler
from tailrunner.journal.api import JournalApi
from tailrunner.model import AggregateRef
from tailrunner.tails.store import TailStore


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    kind: EngineKind = "lazy"
    #: At most this many runs (open streams) at once.
    capacity: int = 100
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_overrides: Mapping[str, RetryPolicy] = field(default_factory=dict)
    #: How the engine reconnects to the journal (not the activities' retry).
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    activity_limits: Mapping[str, int] = field(default_factory=dict)
    #: Seconds shutdown waits for cancelled runs before it names them and exits.
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    #: Lazy: seconds after which a sleeping task is re-checked without a signal.
    backstop: float = 300.0
    #: Cron: seconds between ticks, or a cron expression.
    interval: float | None = 30.0
    cron: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise ValueError(f"engine {self.kind!r}: expected one of {', '.join(ENGINE_KINDS)}")


def build_engine(
    options: EngineOptions,
    *,
    journal: JournalApi,
    tails: TailStore,
    activities: Sequence[Activity],
    on_unknown: Callable[[AggregateRef], Awaitable[None]] | None = None,
    on_resync: Callable[[], None] | None = None,
) -> Scheduler:
    """The engine ``options.kind`` names, ready to :meth:`~Scheduler.run`.

    :param on_unknown: lazy only: awaited for a signal about an aggregate
        without tasks.
    :param on_resync: lazy only: called when every aggregate must be re-checked.
    """
    common: dict[str, Any] = {
        "journal": journal,
        "tails": tails,
        "activities": activities,
        "capacity": options.capacity,
        "retry": options.retry,
        "retry_overrides": options.retry_overrides,
        "activity_limits": options.activity_limits,
        "reconnect": options.reconnect,
        "shutdown_grace": options.shutdown_grace,
    }
    if options.kind == "lazy":
        return LazyEngine(
            backstop=options.backstop, on_unknown=on_unknown, on_resync=on_resync, **common
        )
    if options.kind == "eager":
        return EagerEngine(**common)
    if options.cron is not None:
        return CronEngine(cron=options.cron, **common)
    return CronEngine(interval=options.interval, **common)
