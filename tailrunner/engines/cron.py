"""The cron engine: at every interval or cron boundary, run each task that is caught up.

Runs read ``Events(watch=false)`` to the end. A tick makes every sleeping
task ready; running, retrying and pending tasks are left alone. A failed
task waits for its backoff and at least for the next tick; a
``SilentRetryAfter`` runs at its time, not at a tick.

Two clocks: an interval keeps its cadence on the event loop's clock
(monotonic, immune to the wall clock's steps). A cron expression names
wall-clock instants (read in UTC), so each of its ticks is one boundary of
the wall clock: it fires when the wall clock has reached the boundary (never
before), once (never twice for one boundary), and the next is the boundary
after it, or after now if the dispatcher was so late, or the wall clock
jumped so far, that several went by (one tick for all of them, no burst).
The loop clock only says how long to sleep until then.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from croniter import croniter

from tailrunner.activities.decorator import Activity
from tailrunner.engines.base import Engine
from tailrunner.engines.execute import RunResult
from tailrunner.engines.options import EngineOptions
from tailrunner.engines.ownership import TaskOwnership
from tailrunner.engines.task import Task, Waiting
from tailrunner.journal.api import JournalApi
from tailrunner.states import TaskState, WaitReason
from tailrunner.tails.store import TailStore


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CronEngine(Engine):
    """Its schedule is ``options.cron`` (a cron expression, read in UTC) or else
    ``options.interval`` (seconds between ticks).

    :param clock: the wall clock (aware datetimes); tests give a fake one.
    :raises ValueError: not exactly one of ``interval`` and ``cron``, an
        interval that is not positive, or an invalid cron expression.
    """

    name: ClassVar[str] = "cron"
    watch: ClassVar[bool] = False

    def __init__(
        self,
        options: EngineOptions,
        *,
        journal: JournalApi,
        tails: TailStore,
        activities: Sequence[Activity],
        clock: Callable[[], datetime] = _utc_now,
        ownership: TaskOwnership | None = None,
    ) -> None:
        super().__init__(
            options, journal=journal, tails=tails, activities=activities, ownership=ownership
        )
        # A cron expression, when given, wins over the interval.
        cron = options.cron
        interval = None if cron is not None else options.interval
        if cron is not None and not croniter.is_valid(cron):
            raise ValueError(f"cron engine: {cron!r} is not a cron expression")
        self._interval = interval
        self._cron = cron
        self._clock = clock
        #: Loop time of the next tick: the interval's own clock, or, for a
        #: cron expression, when the dispatcher wakes to look at the wall clock.
        self._next_tick: float | None = None
        #: Cron expression: the wall-clock boundary of the next tick.
        self._next_boundary: datetime | None = None
        #: The loop and wall times of the dispatcher's last pass: an
        #: interval's loop-time tick in wall time is relative to them.
        self._last_pass: tuple[float, datetime] | None = None

    @property
    def next_tick(self) -> float | None:
        """The loop time (:func:`anyio.current_time`) of the next tick, as of the last pass."""
        return self._next_tick

    @property
    def next_tick_at(self) -> datetime | None:
        """The wall-clock time (aware, UTC) of the next tick; ``None`` before the engine runs.

        For an interval, it is the loop-time gap from the dispatcher's last
        pass to the tick, added to the wall time of that pass.
        """
        if self._next_boundary is not None:
            return self._next_boundary
        if self._next_tick is None or self._last_pass is None:
            return None
        loop_now, wall_now = self._last_pass
        return wall_now + timedelta(seconds=self._next_tick - loop_now)

    def _wall_now(self) -> datetime:
        wall = self._clock()
        if wall.tzinfo is None or wall.utcoffset() is None:
            raise ValueError(f"cron engine: the clock gave {wall!r}: it must be timezone-aware")
        return wall.astimezone(UTC)

    def _boundary_after(self, wall: datetime) -> datetime:
        """The first boundary of the cron expression strictly after ``wall``."""
        assert self._cron is not None
        following: datetime = croniter(self._cron, wall).get_next(datetime)
        return following

    def _periodic(self, now: float) -> float | None:
        wall = self._wall_now()
        self._last_pass = (now, wall)
        if self._interval is not None:
            self._next_tick = self._interval_pass(now, self._interval)
        else:
            self._next_tick = self._cron_pass(now, wall)
        return self._next_tick

    def _interval_pass(self, now: float, interval: float) -> float:
        if self._next_tick is None:
            return now + interval
        if now < self._next_tick:
            return self._next_tick
        self._tick()
        # Keep the cadence: the next tick is one interval after this one,
        # not after however late the dispatcher got round to it.
        following = self._next_tick + interval
        return following if following > now else now + interval

    def _cron_pass(self, now: float, wall: datetime) -> float:
        if self._next_boundary is None:
            self._next_boundary = self._boundary_after(wall)
        elif wall >= self._next_boundary:
            self._tick()
            following = self._boundary_after(self._next_boundary)
            # Missed several boundaries (a late dispatcher, a wall-clock jump):
            # one tick stands for them all.
            self._next_boundary = following if following > wall else self._boundary_after(wall)
        # A wall clock stepped back leaves the boundary where it is: the ones
        # before it have fired already. Woken early (the clocks disagree by a
        # little), the next pass simply looks again.
        return now + max(0.0, (self._next_boundary - wall).total_seconds())

    def _tick(self) -> None:
        for task in self.tasks():
            if task.state is TaskState.SLEEPING:
                self._make_ready(task)

    def _after_eof(
        self, task: Task, result: RunResult, now: float
    ) -> tuple[TaskState, float | None]:
        return TaskState.SLEEPING, None

    def _sleeping(self, task: Task) -> Waiting:
        return Waiting(reason=WaitReason.CRON_TICK, next_run_at=self.next_tick_at)

    def _retry_due(self, now: float, delay: float) -> float:
        tick = self._next_tick if self._next_tick is not None else now
        return max(now + delay, tick)
