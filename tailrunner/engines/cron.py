"""The cron engine: every interval, run each task that is caught up.

Runs read ``Events(watch=false)`` to the end. A tick makes every sleeping
task ready; running, retrying and pending tasks are left alone. A failed
task waits for its backoff and at least for the next tick; a
``SilentRetryAfter`` runs at its time, not at a tick.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from croniter import croniter

from tailrunner.engines.execute import RunResult
from tailrunner.engines.scheduler import Scheduler
from tailrunner.engines.task import Task, TaskState


class CronEngine(Scheduler):
    """:param interval: seconds between ticks; or
    :param cron: a cron expression (``"*/5 * * * *"``), read in UTC.
    """

    name: ClassVar[str] = "cron"
    watch: ClassVar[bool] = False

    def __init__(
        self, *, interval: float | None = None, cron: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if (interval is None) == (cron is None):
            raise ValueError("cron engine: give exactly one of interval and cron")
        if interval is not None and interval <= 0:
            raise ValueError(f"cron engine: interval {interval} must be positive")
        if cron is not None and not croniter.is_valid(cron):
            raise ValueError(f"cron engine: {cron!r} is not a cron expression")
        self._interval = interval
        self._cron = cron
        self._next_tick: float | None = None

    @property
    def next_tick(self) -> float | None:
        """The loop time (:func:`anyio.current_time`) of the next tick."""
        return self._next_tick

    def _tick_after(self, now: float) -> float:
        if self._interval is not None:
            return now + self._interval
        assert self._cron is not None
        wall = datetime.now(UTC)
        following: datetime = croniter(self._cron, wall).get_next(datetime)
        return now + (following - wall).total_seconds()

    def _periodic(self, now: float) -> float | None:
        if self._next_tick is None:
            self._next_tick = self._tick_after(now)
        elif now >= self._next_tick:
            self._tick()
            # Keep the cadence: the next tick is one interval after this one,
            # not after however late the dispatcher got round to it.
            following = self._tick_after(self._next_tick)
            self._next_tick = following if following > now else self._tick_after(now)
        return self._next_tick

    def _tick(self) -> None:
        for task in self.tasks():
            if task.state is TaskState.SLEEPING:
                self._set_state(task, TaskState.PENDING)

    def _after_eof(
        self, task: Task, result: RunResult, now: float
    ) -> tuple[TaskState, float | None]:
        return TaskState.SLEEPING, None

    def _retry_due(self, now: float, delay: float) -> float:
        tick = self._next_tick if self._next_tick is not None else now
        return max(now + delay, tick)
