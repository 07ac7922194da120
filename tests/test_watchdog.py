"""The loop-lag watchdog names the activity that blocks the runner's event loop (issue 15).

A real runner (loopback journal, memory tails) runs an activity that calls
``time.sleep`` in its handler: the watchdog's warnings name that activity,
its aggregate and the plugin's line. An activity that awaits is never named.
Thresholds and stalls are far apart (0.2 s against 1.5 s), and nothing here
asserts how long anything took.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from ulid import ULID

from tailrunner import EOF, ActivityContext, EventStream, activity
from tailrunner.activities.outcomes import Outcome
from tailrunner.admin.metrics import Metrics
from tailrunner.config import load_config
from tailrunner.engines.factory import EngineOptions
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.runner import Runner
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.testing import LoopbackJournal, loopback_journal
from tailrunner.watchdog import LoopWatchdog

AGGREGATE = AggregateRef(type="thing", id=uuid.uuid4())


@pytest.fixture
async def journal() -> AsyncIterator[LoopbackJournal]:
    async with loopback_journal() as j:
        yield j


def warnings_about(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event and e["log_level"] == "warning"]


async def run_until(
    journal: LoopbackJournal,
    act: Any,
    threshold: float,
    until: Callable[[list[dict[str, Any]]], bool],
) -> tuple[Runner, Metrics, list[dict[str, Any]]]:
    """Run ``act`` on one aggregate in a lazy runner until ``until(logs)``; the logs."""
    await journal.client.append(AGGREGATE, [NewEvent(type="e")])
    runner = Runner(
        journal=journal.client,
        tails=MemoryTailStore(),
        activities=[act],
        options=EngineOptions(kind="lazy", loop_lag_warning=threshold),
    )
    metrics = Metrics(engine=runner.engine, journal=journal.client, watchdog=runner.watchdog)
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            with anyio.fail_after(60):  # bounds a hang only
                # The watchdog logs from its own thread: polled, not awaited.
                while not until(logs):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    return runner, metrics, logs


async def test_an_activity_that_blocks_the_loop_is_named_with_its_line(
    journal: LoopbackJournal,
) -> None:
    ran = anyio.Event()

    @activity(name="sleepy", aggregate_types=("thing",))
    async def sleepy(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        async for batch in stream.batches():
            for event in batch.events:
                tail = event.id
            if not ran.is_set():
                time.sleep(1.5)  # noqa: ASYNC251 (the mistake: blocks every other run)
            if batch.will_block:
                break
        ran.set()
        return EOF(tail)

    source, first = inspect.getsourcelines(sleepy.func)
    blocking_line = first + next(i for i, s in enumerate(source) if "time.sleep(1.5)" in s)

    runner, metrics, logs = await run_until(
        journal, sleepy, 0.2, lambda logs: bool(warnings_about(logs, "event loop was blocked"))
    )
    [blocked] = warnings_about(logs, "event loop blocked")
    [ended_line] = warnings_about(logs, "event loop was blocked")
    here = f"{Path(__file__)}:{blocking_line} in sleepy"
    for entry in (blocked, ended_line):
        assert entry["activity"] == "sleepy"
        assert entry["aggregate_type"] == "thing"
        assert entry["aggregate_id"] == str(AGGREGATE.id)
        assert entry["where"] == here  # time.sleep is C: the plugin's line is innermost
        assert entry["activity_code"] == here
    # Longer than the threshold; how much longer is the machine's business.
    assert ended_line["seconds"] > 0.2
    assert runner.watchdog is not None
    assert runner.watchdog.stalls == 1
    assert metrics.registry.get_sample_value("tailrunner_event_loop_stalls_total") == 1.0


async def test_an_activity_that_awaits_is_never_named(journal: LoopbackJournal) -> None:
    done = anyio.Event()

    @activity(name="polite", aggregate_types=("thing",))
    async def polite(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        async for batch in stream.batches():
            for event in batch.events:
                tail = event.id
            for _ in range(6):
                await anyio.sleep(0.25)  # as long as the other one, never blocking
            if batch.will_block:
                break
        done.set()
        return EOF(tail)

    _, metrics, logs = await run_until(journal, polite, 0.2, lambda _: done.is_set())
    named = [e for e in logs if e.get("activity") == "polite" and "event loop" in e["event"]]
    assert named == []
    assert metrics.registry.get_sample_value("tailrunner_event_loop_stalls_total") is not None


async def test_the_watchdog_is_off_at_zero_and_its_key_is_read_from_config(
    journal: LoopbackJournal, tmp_path: Path
) -> None:
    @activity(name="any", aggregate_types=("thing",))
    async def anything(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        return EOF(tail)

    def runner(threshold: float) -> Runner:
        return Runner(
            journal=journal.client,
            tails=MemoryTailStore(),
            activities=[anything],
            options=EngineOptions(loop_lag_warning=threshold),
        )

    assert runner(0).watchdog is None
    assert EngineOptions().loop_lag_warning == 1.0
    with pytest.raises(ValueError, match="loop_lag_warning"):
        EngineOptions(loop_lag_warning=-1)
    path = tmp_path / "runner.toml"
    path.write_text('[engine]\nloop_lag_warning = "250ms"\n')
    assert load_config(path).engine.loop_lag_warning == 0.25
    with pytest.raises(ValueError, match="positive"):
        LoopWatchdog(0)
