"""The ping-registry activities, run in-process by the real lazy engine against a loopback journal.

The runner discovers each new workflow by the journal's signals, as a
runner process would; the activities get their settings the way
``Config.configure_activities`` gives them (``dataclasses.replace``). The
tests wait on the journal (a watch on the aggregate) and on the engine's run
results, never on the clock.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest

from tailrunner.activities.decorator import Activity
from tailrunner.activities.pingregistry import (
    KeeperSettings,
    PingerSettings,
    SummarizerSettings,
    index_keeper,
    pinger,
    summarizer,
    tailrunner_activities,
)
from tailrunner.config import load_config
from tailrunner.engines.execute import RunResult
from tailrunner.engines.options import EngineOptions
from tailrunner.engines.retry import RetryPolicy
from tailrunner.engines.task import Task
from tailrunner.errors import ConfigError
from tailrunner.journal.api import JournalApi
from tailrunner.model import AggregateRef, Event
from tailrunner.plugins import is_enabled
from tailrunner.runner import Runner
from tailrunner.states import OutcomeKind
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.testing import LoopbackJournal
from tailrunner.workflows.aggregates import RETRY_NO_VC
from tailrunner.workflows.pingregistry.behaviour import EXPIRED_CODE, EXPIRED_MESSAGE, Commit, Init
from tailrunner.workflows.pingregistry.index import EntryCode
from tailrunner.workflows.pingregistry.registry import SUMMARY_MESSAGE, PingRegistry, index_id
from tailrunner.workflows.pingregistry.state import StateCode
from tests.workflows.journals import SpyJournal

#: Generous: the tests wait for events, this only bounds a hang.
TIMEOUT = 30.0

GATHERED = "tailrunner.v1.ServerPingsGathered"


class Runs:
    """Every run result of an engine, and a wake-up for whoever waits on them."""

    def __init__(self) -> None:
        self.results: list[tuple[Task, RunResult]] = []
        self._changed = anyio.Event()

    def __call__(self, task: Task, result: RunResult) -> None:
        self.results.append((task, result))
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, activity: str, workflow: UUID) -> list[RunResult]:
        return [
            r for t, r in self.results if t.activity.name == activity and t.aggregate.id == workflow
        ]

    async def wait_for(self, holds: Callable[[], bool]) -> None:
        with anyio.fail_after(TIMEOUT):
            while not holds():
                await self._changed.wait()


@asynccontextmanager
async def running(
    journal: LoopbackJournal, *activities: Activity, journal_api: JournalApi | None = None
) -> AsyncIterator[Runs]:
    """A runner with ``activities`` under the lazy engine, for the ``async with`` body.

    :param journal_api: what the runner talks to instead of ``journal``'s client.
    """
    runner = Runner(
        journal=journal.client if journal_api is None else journal_api,
        tails=MemoryTailStore(),
        activities=list(activities),
        options=EngineOptions(
            kind="lazy", retry=RetryPolicy(initial=0.02, max_delay=0.2, jitter=0.0)
        ),
    )
    runs = Runs()
    runner.engine.add_observer(runs)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        await runner.discovered.wait()
        yield runs
        tg.cancel_scope.cancel()


def configured(act: Activity, settings: object) -> Activity:
    """``act`` with ``settings``, as ``Config.configure_activities`` makes it."""
    return dataclasses.replace(act, settings=settings)


async def watch_until(
    journal: LoopbackJournal, aggregate: UUID, holds: Callable[[list[Event]], bool]
) -> list[Event]:
    """The aggregate's events, once ``holds`` is true of them (checked as each batch arrives)."""
    seen: list[Event] = []
    with anyio.fail_after(TIMEOUT):
        async with aclosing(journal.client.events(aggregate, watch=True)) as batches:
            async for batch in batches:
                seen.extend(batch.events)
                if holds(seen):
                    return seen
    raise AssertionError(f"the journal ended the watch of {aggregate} first")


async def stored(journal: LoopbackJournal, aggregate: UUID) -> list[Event]:
    """Every event of ``aggregate`` in the journal now."""
    async with aclosing(journal.client.events(aggregate)) as batches:
        return [e async for batch in batches for e in batch.events]


def count(events: list[Event]) -> Counter[str]:
    return Counter(e.type.removeprefix("tailrunner.v1.") for e in events)


def has(event_type: str) -> Callable[[list[Event]], bool]:
    return lambda events: any(e.type == event_type for e in events)


def soon(seconds: float) -> datetime:
    """A deadline ``seconds`` from now, in whole milliseconds (a ULID's resolution)."""
    now = datetime.now(UTC) + timedelta(seconds=seconds)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# --------------------------------------------------------------------------- the pinger


async def test_a_pinger_pings_workflows_of_watched_registries_only(
    journal: LoopbackJournal,
) -> None:
    registry = PingRegistry(journal.client)
    settings = PingerSettings(name="server-1", registries=("main", "lab-*"), pings=2, message="up")
    async with running(journal, configured(pinger, settings)) as runs:
        watched = await registry.begin("lab-3", soon(3600))
        unwatched = await registry.begin("backup", soon(3600))

        events = await watch_until(journal, watched, lambda ev: count(ev)["ServerPinged"] >= 2)
        await runs.wait_for(
            lambda: any(r.kind is OutcomeKind.DONE for r in runs.of("ping-pinger", unwatched))
        )
        # Done with the watched one too: it pings each workflow once.
        await runs.wait_for(
            lambda: any(r.kind is OutcomeKind.DONE for r in runs.of("ping-pinger", watched))
        )

    assert count(events)["ServerPinged"] == 2
    state = await registry.show(watched)
    assert [(p.pinger, p.code, p.message) for p in state.pings] == [("server-1", 0, "up")] * 2
    assert (await registry.show(unwatched)).pings == ()
    assert count(await stored(journal, watched)) == {
        "PingRegistryStarted": 1,
        "ServerPinged": 2,
    }


async def test_a_pinger_leaves_a_summarized_workflow_alone(journal: LoopbackJournal) -> None:
    registry = PingRegistry(journal.client)
    workflow = await registry.begin("main", soon(3600))
    await registry.summarize(workflow)

    async with running(journal, configured(pinger, PingerSettings(name="server-1"))) as runs:
        await runs.wait_for(
            lambda: any(r.kind is OutcomeKind.DONE for r in runs.of("ping-pinger", workflow))
        )

    assert (await registry.show(workflow)).pings == ()


# --------------------------------------------------------------------------- the summarizer


async def test_the_summarizer_pings_then_summarizes_only_after_the_deadline(
    journal: LoopbackJournal,
) -> None:
    registry = PingRegistry(journal.client)
    deadline = soon(5)  # room for a loaded machine: the first run must come before it
    settings = SummarizerSettings(name="registry-daemon", registries=("main",), pings=2)
    async with running(journal, configured(summarizer, settings)) as runs:
        workflow = await registry.begin("main", deadline)
        events = await watch_until(journal, workflow, has(GATHERED))

    (summary_event,) = [e for e in events if e.type == GATHERED]
    # The journal stamps each event's ULID with the time it stored it.
    assert summary_event.id.datetime >= deadline
    assert all(e.type != GATHERED for e in events if e.id.datetime < deadline)
    # It waited for the deadline itself, not for a wake-up that happened to be late.
    first = runs.of("ping-summarizer", workflow)[0]
    assert (first.kind, first.when) == (OutcomeKind.RETRY_AFTER, deadline)
    state = await registry.show(workflow)
    assert state.code is StateCode.SUMMARIZED and state.summary is not None
    assert (state.summary.code, state.summary.message) == (0, SUMMARY_MESSAGE)
    assert state.summary.event_id == summary_event.id
    assert [p.pinger for p in state.summary.pings] == ["registry-daemon"] * 2
    assert count(events) == {"PingRegistryStarted": 1, "ServerPinged": 2, "ServerPingsGathered": 1}


async def test_the_summary_gathers_the_servers_pings_posted_before_it(
    journal: LoopbackJournal,
) -> None:
    registry = PingRegistry(journal.client)
    workflow = await registry.begin("main", soon(3600))
    await registry.ping(workflow, pinger="server-1", count=1, code=3, message="slow disk")
    # Its deadline passed a moment ago: summarized, not expired.
    late = await registry.begin("main", soon(-1))
    await registry.ping(late, pinger="server-1", count=1)

    settings = SummarizerSettings(pings=0)
    async with running(journal, configured(summarizer, settings)):
        events = await watch_until(journal, late, has(GATHERED))

    state = await registry.show(late)
    assert state.summary is not None and state.summary.code == 0
    assert [(p.pinger, p.event_id) for p in state.summary.pings] == [
        ("server-1", e.id) for e in events if e.type == "tailrunner.v1.ServerPinged"
    ]
    # The workflow whose deadline is an hour away is still open.
    assert (await registry.show(workflow)).code is StateCode.APPENDING


async def test_a_workflow_long_past_its_deadline_is_aborted_as_expired(
    journal: LoopbackJournal,
) -> None:
    registry = PingRegistry(journal.client)
    workflow = await registry.begin("main", datetime.now(UTC) - timedelta(hours=1))
    await registry.ping(workflow, pinger="server-1", count=1)

    settings = SummarizerSettings(pings=0, expire_after=timedelta(minutes=5))
    async with running(journal, configured(summarizer, settings)) as runs:
        await watch_until(journal, workflow, has(GATHERED))
        await runs.wait_for(
            lambda: any(r.kind is OutcomeKind.DONE for r in runs.of("ping-summarizer", workflow))
        )

    state = await registry.show(workflow)
    assert state.code is StateCode.SUMMARIZED and state.summary is not None
    assert (state.summary.code, state.summary.message) == (EXPIRED_CODE, EXPIRED_MESSAGE)
    assert [p.pinger for p in state.summary.pings] == ["server-1"]


async def test_a_summary_posted_by_someone_else_meanwhile_ends_the_summarizer_quietly(
    journal: LoopbackJournal,
) -> None:
    registry = PingRegistry(journal.client)
    workflow = await registry.begin("main", soon(-1))
    spy = SpyJournal(journal.client)

    async def other_summarizer(aggregate: AggregateRef) -> None:
        # Between this summarizer's read (open) and its append, another one
        # found the workflow expired and closed it.
        await registry.abort_expired(workflow)

    spy.race, spy.races = other_summarizer, 1
    settings = SummarizerSettings(pings=0)
    async with running(journal, configured(summarizer, settings), journal_api=spy) as runs:
        await runs.wait_for(
            lambda: any(r.kind is OutcomeKind.DONE for r in runs.of("ping-summarizer", workflow))
        )

    assert spy.races == 0, "the race ran"
    assert [r.kind for r in runs.of("ping-summarizer", workflow)] == [OutcomeKind.DONE]
    state = await registry.show(workflow)
    assert state.summary is not None and state.summary.code == EXPIRED_CODE
    assert count(await stored(journal, workflow))["ServerPingsGathered"] == 1


# --------------------------------------------------------------------------- the index keeper


async def test_the_index_keeper_indexes_a_started_workflow_and_finishes_its_commit(
    journal: LoopbackJournal,
) -> None:
    registry = PingRegistry(journal.client)
    index = index_id("main")
    keeper = configured(index_keeper, KeeperSettings(registries=("main",)))
    async with running(journal, keeper) as runs:
        # A begin interrupted after the workflow's started: not in the index yet.
        workflow = uuid4()
        await registry.workflows.tell(
            workflow, Init(registry="main", deadline=soon(3600)), RETRY_NO_VC
        )
        await watch_until(journal, index, has("tailrunner.v1.IndexWorkflowStarted"))
        assert [(e.workflow, e.code) for e in await registry.list("main")] == [
            (workflow, EntryCode.STARTED)
        ]

        # A commit interrupted after its first step.
        await registry.summarize(workflow)
        await registry.workflows.tell(workflow, Commit(), RETRY_NO_VC)
        events = await watch_until(journal, workflow, has("tailrunner.v1.PingRegistryCommitted"))
        await runs.wait_for(
            lambda: any(r.kind is OutcomeKind.DONE for r in runs.of("ping-index-keeper", workflow))
        )

    assert (await registry.show(workflow)).code is StateCode.TERMINATED
    assert [(e.workflow, e.code) for e in await registry.list("main")] == [
        (workflow, EntryCode.COMPLETED)
    ]
    assert count(events) == {
        "PingRegistryStarted": 1,
        "ServerPingsGathered": 1,
        "PingRegistryCompleted": 1,
        "PingRegistryCommitted": 1,
    }
    index_events = await stored(journal, index)
    assert count(index_events) == {"IndexWorkflowStarted": 1, "IndexWorkflowCompleted": 1}


async def test_the_index_keeper_leaves_other_registries_alone(journal: LoopbackJournal) -> None:
    registry = PingRegistry(journal.client)
    keeper = configured(index_keeper, KeeperSettings(registries=("main",)))
    async with running(journal, keeper) as runs:
        workflow = uuid4()
        await registry.workflows.tell(
            workflow, Init(registry="backup", deadline=soon(3600)), RETRY_NO_VC
        )
        await runs.wait_for(
            lambda: any(r.kind is OutcomeKind.DONE for r in runs.of("ping-index-keeper", workflow))
        )

    assert await registry.list("backup") == ()


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PingerSettings(name="two words"), "name = 'two words': expected 1 to 64"),
        (lambda: PingerSettings(name=""), "name = '': expected 1 to 64 printable"),
        (lambda: PingerSettings(name="s", pings=-1), "pings = -1: must not be negative"),
        (lambda: PingerSettings(name="s", registries=()), "registries = \\[\\]"),
        (lambda: SummarizerSettings(name="a b"), "name = 'a b': expected"),
        (lambda: SummarizerSettings(pings=-2), "pings = -2"),
        (lambda: SummarizerSettings(registries=()), "registries = \\[\\]"),
        (lambda: SummarizerSettings(expire_after=timedelta(0)), "expire_after = 0:00:00"),
        (lambda: SummarizerSettings(expire_after=timedelta(seconds=-1)), "must be positive"),
        (lambda: KeeperSettings(registries=()), "registries = \\[\\]"),
    ],
)
def test_bad_settings_are_refused_naming_the_value(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


BY_NAME = {a.name: a for a in (pinger, summarizer, index_keeper)}


def _config(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "runner.toml"
    path.write_text(text)
    return load_config(path, {})


def test_the_config_reads_each_activitys_table(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        """
[activities.settings.ping-pinger]
name = "server-1"
registries = ["main", "lab-*"]
pings = 3

[activities.settings.ping-summarizer]
expire_after = "90s"

[activities.settings.ping-index-keeper]
registries = ["main"]
""",
    )

    configured_pinger, configured_summarizer, keeper = config.configure_activities(
        [pinger, summarizer, index_keeper]
    )

    assert configured_pinger.settings == PingerSettings(
        name="server-1", registries=("main", "lab-*"), pings=3
    )
    assert configured_summarizer.settings == SummarizerSettings(expire_after=timedelta(seconds=90))
    assert keeper.settings == KeeperSettings(registries=("main",))


@pytest.mark.parametrize(
    ("activity", "table", "message"),
    [
        ("ping-pinger", 'name = "server 1"', "name = 'server 1': expected 1 to 64 printable"),
        ("ping-pinger", 'name = "s"\npings = -1', "pings = -1: must not be negative"),
        ("ping-pinger", 'name = "s"\nregistries = []', r"registries = \[\]"),
        ("ping-pinger", "pings = 1", ": required"),
        ("ping-summarizer", 'expire_after = "0s"', "expire_after = 0:00:00: must be positive"),
        ("ping-index-keeper", "registries = []", r"registries = \[\]"),
    ],
)
def test_the_config_names_the_table_of_a_bad_setting(
    tmp_path: Path, activity: str, table: str, message: str
) -> None:
    config = _config(tmp_path, f"[activities.settings.{activity}]\n{table}\n")

    with pytest.raises(ConfigError, match=rf"activities\.settings\.{activity}.* in .*{message}"):
        config.configure_activities([BY_NAME[activity]])


def test_the_activities_are_opt_in_and_registered_by_the_plugin_hook() -> None:
    activities = list(tailrunner_activities())

    assert [a.name for a in activities] == ["ping-pinger", "ping-summarizer", "ping-index-keeper"]
    assert not any(is_enabled(a, ["*"]) for a in activities)
    assert all(is_enabled(a, ["ping-*"]) for a in activities)
    # The pinger must be named by its config; the others have defaults.
    assert (pinger.settings, summarizer.settings, index_keeper.settings) == (
        None,
        SummarizerSettings(),
        KeeperSettings(),
    )
