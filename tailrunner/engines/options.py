"""``EngineOptions``: every setting of an engine, in one typed, validated object.

The config's ``[engine]`` section, with ``[retry]``, the per-activity
settings and the journal's reconnect policy, is one of these
(``Config.engine``); every engine's constructor and the runner take it, and
each reads the fields that concern it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tailrunner.engines.kinds import ENGINE_KINDS, EngineKind
from tailrunner.engines.read_ahead import DEFAULT_READ_AHEAD, MAX_READ_AHEAD
from tailrunner.engines.retry import RetryPolicy
from tailrunner.reconnect import DEFAULT_RECONNECT, ReconnectPolicy

#: Seconds shutdown waits for runs to end after cancelling them.
DEFAULT_SHUTDOWN_GRACE = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    """How an engine runs its tasks.

    :raises ValueError: naming the field, for a value no engine can use.
    """

    kind: EngineKind = "lazy"
    #: At most this many runs (open streams) at once.
    capacity: int = 100
    #: The activities' retry policy, and overrides by activity name.
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_overrides: Mapping[str, RetryPolicy] = field(default_factory=dict)
    #: How runs that cannot reach the journal, the lazy signal stream and
    #: failed saves are retried (not the activities' retry).
    reconnect: ReconnectPolicy = DEFAULT_RECONNECT
    #: At most this many runs at once, by activity name (also
    #: ``Activity.max_concurrency``; the lower wins).
    activity_limits: Mapping[str, int] = field(default_factory=dict)
    #: Seconds shutdown waits for cancelled runs before it names them and returns.
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    #: Lazy: seconds after which a sleeping task is re-checked without a signal.
    backstop: float = 300.0
    #: Cron: seconds between ticks; ``cron``, when set, wins.
    interval: float | None = 30.0
    #: Cron: a cron expression (UTC) instead of an interval.
    cron: str | None = None
    #: Seconds between the runner's listings of the aggregates (it starts a
    #: task for each new one; lazy also hears of new ones by signal).
    discovery_interval: float = 30.0
    #: Seconds the event loop may make no progress (an activity that blocks
    #: it) before the runner's watchdog warns, naming the activity; 0: no watchdog.
    loop_lag_warning: float = 1.0
    #: Lazy and cron: tasks whose events one ``ReadAggregates`` call reads
    #: ahead for the runs about to start; 0: every run opens its own stream.
    read_ahead: int = DEFAULT_READ_AHEAD

    def __post_init__(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise ValueError(f"engine {self.kind!r}: expected one of {', '.join(ENGINE_KINDS)}")
        if self.capacity < 1:
            raise ValueError(f"capacity {self.capacity}: must be at least 1")
        if self.shutdown_grace < 0:
            raise ValueError(f"shutdown_grace {self.shutdown_grace}: must not be negative")
        if self.backstop <= 0:
            raise ValueError(f"backstop {self.backstop}: must be positive")
        if self.interval is not None and self.interval <= 0:
            raise ValueError(f"interval {self.interval}: must be positive")
        if self.discovery_interval <= 0:
            raise ValueError(f"discovery_interval {self.discovery_interval}: must be positive")
        if not 0 <= self.read_ahead <= MAX_READ_AHEAD:
            raise ValueError(
                f"read_ahead {self.read_ahead}: must be from 0 to {MAX_READ_AHEAD}"
                " (the reads one ReadAggregates call takes)"
            )
        if self.loop_lag_warning < 0:
            raise ValueError(f"loop_lag_warning {self.loop_lag_warning}: must not be negative")
        if self.interval is None and self.cron is None:
            raise ValueError("interval or cron: give one (the cron engine's schedule)")
        for name, limit in self.activity_limits.items():
            if limit < 1:
                raise ValueError(f"activity_limits[{name!r}] {limit}: must be at least 1")
