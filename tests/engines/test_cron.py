"""The cron engine's ticks, on a fake wall clock and chosen loop times (issue 10, defect 8).

``_periodic(now)`` is what the dispatcher calls on every pass, with the loop
time; it returns the loop time it wants to be called again. These tests call
it directly, as a dispatcher that is on time, late, woken for other reasons,
or running beside a wall clock that disagrees with the loop clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from tailrunner.engines.cron import CronEngine
from tailrunner.engines.options import EngineOptions
from tailrunner.journal.api import JournalApi
from tailrunner.states import TaskState, WaitReason
from tailrunner.tails.memory import MemoryTailStore

from .conftest import Script, new_aggregate

#: The wall time at loop time 0 in these tests: a minute's boundary.
START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class FakeWall:
    """A wall clock the test sets; ``at(loop, skew)`` keeps it beside a loop time."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def at(self, loop: float, *, skew: float = 0.0) -> None:
        """Wall time = START + ``loop`` seconds + ``skew`` (negative: behind the loop)."""
        self.now = START + timedelta(seconds=loop + skew)


class Ticking(CronEngine):
    """A cron engine that records the wall time of each tick."""

    def __init__(self, wall: FakeWall, *, activities: Any = (), **options: Any) -> None:
        super().__init__(
            EngineOptions(kind="cron", **options),
            clock=wall,
            journal=cast(JournalApi, object()),  # never called: nothing runs here
            tails=MemoryTailStore(),
            activities=list(activities),
        )
        self.wall = wall
        self.ticks: list[datetime] = []

    def _tick(self) -> None:
        self.ticks.append(self.wall.now)
        super()._tick()


def minute(n: int) -> datetime:
    return START + timedelta(minutes=n)


def drive(
    engine: Ticking,
    *,
    until: float,
    skew: Callable[[float], float] = lambda loop: 0.0,
    start: float = 30.0,
) -> None:
    """Be the dispatcher: call ``_periodic`` at each loop time it asks for, up to ``until``.

    It starts at ``start`` (mid-minute), so that the first boundary is minute 1.
    """
    loop = start
    engine.wall.at(loop, skew=skew(loop))
    wanted = engine._periodic(loop)
    for _ in range(10_000):
        assert wanted is not None
        if wanted > until:
            return
        assert wanted >= loop, "asked to be called in the past"
        loop = wanted
        engine.wall.at(loop, skew=skew(loop))
        wanted = engine._periodic(loop)
    raise AssertionError("the dispatcher spins: too many passes")


async def test_every_minute_ticks_exactly_at_each_boundary() -> None:
    wall = FakeWall()
    wall.at(30.0)
    engine = Ticking(wall, cron="* * * * *")

    assert engine._periodic(30.0) == 60.0  # the first boundary: no tick at start
    assert engine.ticks == []
    assert engine.next_tick_at == minute(1)
    for n in range(1, 4):
        wall.at(60.0 * n)
        assert engine._periodic(60.0 * n) == 60.0 * (n + 1)
        assert engine.next_tick_at == minute(n + 1)
    assert engine.ticks == [minute(1), minute(2), minute(3)]


async def test_a_dispatcher_2s_late_ticks_once_and_the_next_tick_stays_on_the_boundary() -> None:
    wall = FakeWall()
    engine = Ticking(wall, cron="* * * * *")
    engine._periodic(0.0)
    wall.at(60.0)
    engine._periodic(60.0)

    wall.at(122.0)  # the 120 s boundary, seen 2 s late
    assert engine._periodic(122.0) == 180.0  # not 178 (drift), not 182 (late carried on)
    wall.at(122.5)  # woken again meanwhile (a run ended, say)
    assert engine._periodic(122.5) == 180.0
    assert engine.next_tick_at == minute(3)
    wall.at(180.0)
    engine._periodic(180.0)

    assert engine.ticks == [minute(1), START + timedelta(seconds=122), minute(3)]


@pytest.mark.parametrize("skew", [-0.01, 0.01, -0.5])
async def test_a_wall_clock_beside_the_loop_clock_ticks_once_per_boundary(skew: float) -> None:
    wall = FakeWall()
    engine = Ticking(wall, cron="* * * * *")

    drive(engine, until=630.0, skew=lambda loop: skew)

    assert len(engine.ticks) == 10
    for n, tick in enumerate(engine.ticks, start=1):
        assert minute(n) <= tick < minute(n) + timedelta(seconds=1)  # never early


@pytest.mark.parametrize("skew", [-0.01, 0.01])
async def test_a_wall_clock_that_moves_10ms_against_the_loop_ticks_once_per_boundary(
    skew: float,
) -> None:
    wall = FakeWall()
    engine = Ticking(wall, cron="* * * * *")

    # The first boundary is planned with the clocks agreeing; then the wall
    # clock is 10 ms behind (or ahead of) the loop clock.
    drive(engine, until=630.0, skew=lambda loop: 0.0 if loop < 45.0 else skew)

    assert len(engine.ticks) == 10
    for n, tick in enumerate(engine.ticks, start=1):
        assert minute(n) <= tick < minute(n) + timedelta(seconds=1)  # never early


async def test_a_wall_clock_that_drifts_behind_never_ticks_early_or_twice() -> None:
    wall = FakeWall()
    engine = Ticking(wall, cron="* * * * *")

    # The wall clock loses 1 ms per loop second: woken at the loop time of a
    # boundary, the wall clock has not reached it yet.
    drive(engine, until=630.0, skew=lambda loop: -0.001 * loop)

    boundaries = [minute(n) for n in range(1, 11)]
    assert len(engine.ticks) == len(boundaries)
    for boundary, tick in zip(boundaries, engine.ticks, strict=True):
        assert boundary <= tick < boundary + timedelta(seconds=1)


async def test_extra_passes_between_boundaries_never_tick() -> None:
    wall = FakeWall()
    engine = Ticking(wall, cron="* * * * *")
    engine._periodic(0.0)
    for step in range(1, 600):  # the dispatcher, woken every 0.7 s by runs ending
        loop = step * 0.7
        wall.at(loop)
        engine._periodic(loop)

    # The first pass at or after each boundary ticks, and no other.
    assert engine.ticks == [
        START + timedelta(seconds=s * 0.7) for s in (86, 172, 258, 343, 429, 515)
    ]


async def test_a_wall_clock_jumping_over_several_boundaries_ticks_once() -> None:
    wall = FakeWall()
    engine = Ticking(wall, cron="* * * * *")
    engine._periodic(0.0)
    wall.at(60.0)
    engine._periodic(60.0)

    wall.at(70.0, skew=600.0)  # the wall clock steps ten minutes ahead
    wanted = engine._periodic(70.0)
    assert engine.ticks == [minute(1), minute(11) + timedelta(seconds=10)]
    assert engine.next_tick_at == minute(12)
    assert wanted == pytest.approx(120.0)  # 50 s to the next boundary, in loop time
    for loop in (70.0, 71.0, 100.0):  # no burst for the boundaries it jumped over
        wall.at(loop, skew=600.0)
        engine._periodic(loop)
    assert len(engine.ticks) == 2


async def test_a_wall_clock_stepping_back_does_not_repeat_a_boundary() -> None:
    wall = FakeWall()
    engine = Ticking(wall, cron="* * * * *")
    engine._periodic(0.0)
    for n in (1, 2):
        wall.at(60.0 * n)
        engine._periodic(60.0 * n)

    wall.at(121.0, skew=-90.0)  # the wall clock steps back to 12:00:31
    assert engine._periodic(121.0) == pytest.approx(121.0 + 149.0)  # until 12:03:00
    for loop in (150.0, 181.0, 241.0):  # 12:01:00 and 12:02:00 again: fired already
        wall.at(loop, skew=-90.0)
        engine._periodic(loop)
    assert engine.ticks == [minute(1), minute(2)]
    wall.at(270.0, skew=-90.0)
    engine._periodic(270.0)
    assert engine.ticks == [minute(1), minute(2), minute(3)]


async def test_a_cron_expression_with_seconds_ticks_at_its_boundaries() -> None:
    wall = FakeWall()
    engine = Ticking(wall, cron="*/5 * * * * 30")  # minute 0, 5, ... at second 30

    drive(engine, until=1200.0, start=0.0)

    assert engine.ticks == [START + timedelta(minutes=m, seconds=30) for m in (0, 5, 10, 15)]


async def test_an_interval_keeps_its_cadence_on_the_loop_clock() -> None:
    wall = FakeWall()
    wall.at(100.0)
    engine = Ticking(wall, interval=30.0)

    assert engine._periodic(100.0) == 130.0
    assert engine.next_tick_at == START + timedelta(seconds=130)
    wall.at(135.0, skew=-3600.0)  # the wall clock is irrelevant to an interval
    assert engine._periodic(135.0) == 160.0  # 5 s late: the cadence holds
    assert engine.next_tick_at == START + timedelta(seconds=160 - 3600)
    wall.at(300.0)
    assert engine._periodic(300.0) == 330.0  # many ticks late: one tick, then from now
    assert len(engine.ticks) == 2


async def test_a_tick_wakes_sleeping_tasks_and_the_status_shows_the_next_tick() -> None:
    reader = Script().activity()  # never runs here: only its tasks' states matter

    wall = FakeWall()
    engine = Ticking(wall, cron="*/15 * * * *", activities=[reader])
    sleeping = engine.start_activity(new_aggregate(), reader, None, state=TaskState.SLEEPING)
    suspended = engine.start_activity(new_aggregate(), reader, None, state=TaskState.SUSPENDED)
    wall.at(60.0)
    engine._periodic(60.0)

    waiting = engine.waiting(sleeping)
    assert waiting.reason is WaitReason.CRON_TICK
    assert waiting.next_run_at == minute(15)
    wall.at(900.0)
    engine._periodic(900.0)
    assert sleeping.state is TaskState.PENDING
    assert suspended.state is TaskState.SUSPENDED


async def test_a_clock_without_a_timezone_is_refused_naming_the_value() -> None:
    engine = CronEngine(
        EngineOptions(kind="cron", cron="* * * * *"),
        clock=lambda: datetime(2024, 5, 1, 12, 0),  # naive: the bad value
        journal=cast(JournalApi, object()),
        tails=MemoryTailStore(),
        activities=[],
    )
    with pytest.raises(ValueError, match=r"datetime\.datetime\(2024, 5, 1, 12, 0\).*aware"):
        engine._periodic(0.0)
