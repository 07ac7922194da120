"""Prometheus metrics: run counters from the engine's observer, lag from the journal, /metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from contextlib import aclosing
from uuid import UUID

import anyio
from prometheus_client.parser import text_string_to_metric_families
from ulid import ULID

from tailrunner.admin.lag import LagTracker
from tailrunner.admin.metrics import Metrics, serve_metrics
from tailrunner.engines.lazy import LazyEngine
from tailrunner.journal.api import JournalApi
from tailrunner.model import EventBatch
from tailrunner.runner import Runner
from tailrunner.states import TaskState
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.testing import LoopbackJournal

from .conftest import Behaviour, Changes, append, fast_options, new_aggregate


async def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    """GET ``path``: the status line and the body."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        chunks = []
        with anyio.fail_after(5):
            try:
                while True:
                    chunks.append(await stream.receive())
            except anyio.EndOfStream:
                pass
    head, _, body = b"".join(chunks).decode().partition("\r\n\r\n")
    return head.split("\r\n")[0], body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


async def test_metrics_count_runs_and_the_lag_falls_to_zero_once_caught_up(
    journal: LoopbackJournal,
) -> None:
    from_start, from_middle, poisoned = new_aggregate(), new_aggregate(), new_aggregate()
    await append(journal, from_start, 3)
    middle_ids = await append(journal, from_middle, 4)
    await append(journal, poisoned, 1)
    behaviour = Behaviour(fail={poisoned.id})
    act = behaviour.activity()
    runner = Runner(
        journal=journal.client,
        tails=MemoryTailStore(),
        activities=[act],
        options=dataclasses.replace(fast_options(max_attempts=2), discovery_interval=3600),
    )
    # Known before the runner runs, so that the lag is measured before any run.
    runner.engine.start_activity(from_start, act, None)
    runner.engine.start_activity(from_middle, act, middle_ids[0])
    runner.engine.start_activity(poisoned, act, None)
    metrics = Metrics(engine=runner.engine, journal=journal.client, lag_interval=0)
    changes = Changes()
    runner.engine.add_observer(changes.notify)
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_metrics, metrics, "127.0.0.1:0")
        status, before = await scrape(port)

        await tg.start(runner.run)
        engine = runner.engine
        assert isinstance(engine, LazyEngine)
        with anyio.fail_after(5):
            await engine.connected.wait()  # its resync wakes every task once: let it
        await changes.wait_until(
            lambda: all(
                t.state in (TaskState.SLEEPING, TaskState.SUSPENDED) for t in engine.tasks()
            )
        )
        _, after = await scrape(port)
        not_found, _ = await scrape(port, "/nope")
        tg.cancel_scope.cancel()

    assert status == "HTTP/1.1 200 OK"
    # 3 from epoch, 3 after the middle tail, 1 for the poisoned aggregate.
    assert value(before, "tailrunner_lag_events", activity="follow") == 7
    assert value(before, "tailrunner_runs_total", activity="follow", outcome="eof") == 0
    assert value(after, "tailrunner_lag_events", activity="follow") == 1, "only the poisoned one"
    assert value(after, "tailrunner_runs_total", activity="follow", outcome="eof") >= 2
    assert value(after, "tailrunner_runs_total", activity="follow", outcome="error") == 2
    assert value(after, "tailrunner_retries_total", activity="follow") == 1
    assert value(after, "tailrunner_events_processed_total", activity="follow") >= 6
    assert value(after, "tailrunner_suspended_tasks", activity="follow") == 1
    assert value(after, "tailrunner_tasks", activity="follow", state="SLEEPING") == 2
    assert value(after, "tailrunner_open_streams") == 0
    assert value(after, "tailrunner_run_duration_seconds_count", activity="follow") >= 4
    assert not_found == "HTTP/1.1 404 Not Found"


class CountingJournal:
    """Passes calls through, counting the Events streams opened."""

    def __init__(self, inner: JournalApi) -> None:
        self._inner = inner
        self.streams = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def events(
        self,
        aggregate_id: UUID,
        *,
        after: ULID | None = None,
        watch: bool = False,
        max_batch: int = 0,
    ) -> AsyncGenerator[EventBatch, None]:
        self.streams += 1
        async with aclosing(
            self._inner.events(aggregate_id, after=after, watch=watch, max_batch=max_batch)
        ) as batches:
            async for batch in batches:
                yield batch


async def test_lag_counts_events_after_a_tail_once_then_reuses_its_position(
    journal: LoopbackJournal,
) -> None:
    behind, at_head, at_epoch = new_aggregate(), new_aggregate(), new_aggregate()
    ids = await append(journal, behind, 5)
    head = (await append(journal, at_head, 2))[-1]
    await append(journal, at_epoch, 4)
    counting = CountingJournal(journal.client)
    tracker = LagTracker(counting)  # type: ignore[arg-type]  # a pass-through proxy
    tasks = [("a", behind, ids[1]), ("a", at_head, head), ("b", at_epoch, None)]

    first = await tracker.lag_by_activity(tasks, ["a", "b", "idle"])
    await append(journal, behind, 2)
    second = await tracker.lag_by_activity(tasks)

    assert first == {"a": 3, "b": 4, "idle": 0}
    assert second == {"a": 5, "b": 4}
    assert counting.streams == 1, "only the task between epoch and head is counted, once"
