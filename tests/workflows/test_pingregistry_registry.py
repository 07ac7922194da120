"""``PingRegistry`` against a real journal over loopback gRPC (memory and SQLite stores).

Each multi-step command is interrupted between its steps by telling the
first steps directly, then finished by running it again or by the index
keeper's ``catch_up_index``; counting the stored events afterwards shows
that no step was done twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import anyio
import pytest

from tailrunner.errors import InvalidArgument, NotFound
from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.journal.store import JournalStore
from tailrunner.model import AggregateRef
from tailrunner.workflows.aggregates import RETRY_NO_VC
from tailrunner.workflows.pingregistry.behaviour import (
    EXPIRED_CODE,
    EXPIRED_MESSAGE,
    Commit,
    Init,
)
from tailrunner.workflows.pingregistry.errors import ArgumentNotIdempotent, WrongState
from tailrunner.workflows.pingregistry.index import EntryCode, RecordCompleted
from tailrunner.workflows.pingregistry.registry import (
    INDEX_TYPE,
    SUMMARY_MESSAGE,
    WORKFLOW_TYPE,
    PingRegistry,
    index_id,
)
from tailrunner.workflows.pingregistry.state import StateCode
from tests.workflows.journals import SpyJournal

REGISTRY = "main"
DEADLINE = datetime(2026, 12, 1, 13, 0, 30, 250_000, tzinfo=UTC)

# The event types, by their short names (the journal stores the full ones).
STARTED = "PingRegistryStarted"
PINGED = "ServerPinged"
GATHERED = "ServerPingsGathered"
COMPLETED = "PingRegistryCompleted"
COMMITTED = "PingRegistryCommitted"
INDEX_STARTED = "IndexWorkflowStarted"
INDEX_COMPLETED = "IndexWorkflowCompleted"
INDEX_DELETED = "IndexWorkflowDeleted"


@pytest.fixture(params=["memory", "sqlite"])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JournalClient]:
    """A client of a real journal server on 127.0.0.1, over each store in turn."""
    store: JournalStore
    if request.param == "memory":
        store = MemoryJournalStore()
    else:
        store = await SQLiteJournalStore.open(tmp_path / "journal.db")
    async with (
        JournalServer(store, listen="127.0.0.1:0", close_store=True) as server,
        JournalClient.connect(server.address, timeout=10) as journal_client,
    ):
        yield journal_client


@pytest.fixture
def registry(client: JournalClient) -> PingRegistry:
    return PingRegistry(client)


async def stored(client: JournalClient, aggregate: UUID) -> Counter[str]:
    """How many events of each type ``aggregate`` has in the journal (short type names)."""
    counts: Counter[str] = Counter()
    async with aclosing(client.events(aggregate)) as batches:
        async for batch in batches:
            for event in batch.events:
                counts[event.type.removeprefix("tailrunner.v1.")] += 1
    return counts


async def summarized(registry: PingRegistry, *, pings: int = 1) -> UUID:
    """A begun workflow with ``pings`` pings from ``server-1`` and its summary."""
    workflow = await registry.begin(REGISTRY, DEADLINE)
    await registry.ping(workflow, pinger="server-1", count=pings)
    await registry.summarize(workflow)
    return workflow


# --------------------------------------------------------------------------- begin


async def test_begin_then_show_and_list(registry: PingRegistry, client: JournalClient) -> None:
    workflow = await registry.begin(REGISTRY, DEADLINE)

    state = await registry.show(workflow)
    assert (state.id, state.code, state.registry, state.deadline) == (
        workflow,
        StateCode.INITIALIZED,
        REGISTRY,
        DEADLINE,
    )
    assert (state.pings, state.summary) == ((), None)
    listed = await registry.list(REGISTRY)
    assert [(e.workflow, e.deadline, e.code) for e in listed] == [
        (workflow, DEADLINE, EntryCode.STARTED)
    ]
    assert await registry.list("other") == ()
    assert await stored(client, workflow) == {STARTED: 1}
    assert await stored(client, index_id(REGISTRY)) == {INDEX_STARTED: 1}


async def test_begin_again_with_the_same_id_is_a_no_op_and_another_deadline_is_named(
    registry: PingRegistry, client: JournalClient
) -> None:
    workflow = await registry.begin(REGISTRY, DEADLINE)

    assert await registry.begin(REGISTRY, DEADLINE, workflow=workflow) == workflow
    with pytest.raises(ArgumentNotIdempotent, match="deadline"):
        await registry.begin(REGISTRY, DEADLINE + timedelta(seconds=1), workflow=workflow)
    assert await stored(client, workflow) == {STARTED: 1}
    assert await stored(client, index_id(REGISTRY)) == {INDEX_STARTED: 1}


async def test_workflows_are_listed_by_their_own_registry_oldest_first(
    registry: PingRegistry,
) -> None:
    first = await registry.begin(REGISTRY, DEADLINE)
    elsewhere = await registry.begin("backup", DEADLINE)
    second = await registry.begin(REGISTRY, DEADLINE + timedelta(seconds=5))

    assert [e.workflow for e in await registry.list(REGISTRY)] == [first, second]
    assert [e.workflow for e in await registry.list("backup")] == [elsewhere]


@pytest.mark.parametrize(
    ("registry_name", "deadline", "field"),
    [
        ("", DEADLINE, "registry"),
        (REGISTRY, DEADLINE.replace(tzinfo=None), "deadline"),
    ],
)
async def test_begin_refuses_bad_arguments_naming_them(
    registry: PingRegistry,
    client: JournalClient,
    registry_name: str,
    deadline: datetime,
    field: str,
) -> None:
    workflow = uuid4()
    with pytest.raises(InvalidArgument) as caught:
        await registry.begin(registry_name, deadline, workflow=workflow)
    assert caught.value.field == field
    assert await stored(client, workflow) == {}


async def test_list_refuses_an_empty_registry_name(registry: PingRegistry) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await registry.list("")
    assert caught.value.field == "registry"


async def test_a_begin_interrupted_after_init_is_indexed_by_catch_up_index(
    registry: PingRegistry, client: JournalClient
) -> None:
    workflow = uuid4()
    await registry.workflows.tell(workflow, Init(registry=REGISTRY, deadline=DEADLINE), RETRY_NO_VC)
    assert await registry.list(REGISTRY) == ()

    state = await registry.catch_up_index(workflow)
    again = await registry.catch_up_index(workflow)

    assert state.code is StateCode.INITIALIZED and again == state
    assert [(e.workflow, e.code) for e in await registry.list(REGISTRY)] == [
        (workflow, EntryCode.STARTED)
    ]
    assert await stored(client, workflow) == {STARTED: 1}
    assert await stored(client, index_id(REGISTRY)) == {INDEX_STARTED: 1}


async def test_catch_up_index_of_an_unknown_workflow_does_nothing(
    registry: PingRegistry, client: JournalClient
) -> None:
    workflow = uuid4()

    state = await registry.catch_up_index(workflow)

    assert state.code is StateCode.UNINITIALIZED
    assert await stored(client, workflow) == {}


# --------------------------------------------------------------------------- commit


async def test_commit_completes_indexes_and_terminates(
    registry: PingRegistry, client: JournalClient
) -> None:
    workflow = await summarized(registry)

    state = await registry.commit(workflow)
    again = await registry.commit(workflow)

    assert state.code is StateCode.TERMINATED and again.code is StateCode.TERMINATED
    assert [(e.workflow, e.code) for e in await registry.list(REGISTRY)] == [
        (workflow, EntryCode.COMPLETED)
    ]
    assert await stored(client, workflow) == {
        STARTED: 1,
        PINGED: 1,
        GATHERED: 1,
        COMPLETED: 1,
        COMMITTED: 1,
    }
    assert await stored(client, index_id(REGISTRY)) == {INDEX_STARTED: 1, INDEX_COMPLETED: 1}


@pytest.mark.parametrize("interrupted_after", [1, 2])
@pytest.mark.parametrize("finisher", ["commit", "catch_up_index"])
async def test_an_interrupted_commit_is_finished_once(
    registry: PingRegistry, client: JournalClient, interrupted_after: int, finisher: str
) -> None:
    workflow = await summarized(registry)
    # The commit's steps, told one by one as an interrupted commit left them.
    await registry.workflows.tell(workflow, Commit(), RETRY_NO_VC)
    if interrupted_after == 2:
        await registry.indexes.tell(
            index_id(REGISTRY), RecordCompleted(workflow=workflow), RETRY_NO_VC
        )
    assert (await registry.show(workflow)).code is StateCode.COMPLETED

    finish = registry.commit if finisher == "commit" else registry.catch_up_index
    state = await finish(workflow)
    # Whoever comes later (the admin again, the index keeper) finds nothing to do.
    await registry.commit(workflow)
    await registry.catch_up_index(workflow)

    assert state.code is StateCode.TERMINATED
    assert (await registry.show(workflow)).code is StateCode.TERMINATED
    assert [(e.workflow, e.code) for e in await registry.list(REGISTRY)] == [
        (workflow, EntryCode.COMPLETED)
    ]
    assert await stored(client, workflow) == {
        STARTED: 1,
        PINGED: 1,
        GATHERED: 1,
        COMPLETED: 1,
        COMMITTED: 1,
    }
    assert await stored(client, index_id(REGISTRY)) == {INDEX_STARTED: 1, INDEX_COMPLETED: 1}


@pytest.mark.parametrize("pings", [0, 1])
async def test_commit_before_the_summary_names_the_state(
    registry: PingRegistry, client: JournalClient, pings: int
) -> None:
    workflow = await registry.begin(REGISTRY, DEADLINE)
    await registry.ping(workflow, pinger="server-1", count=pings)
    state = "appending" if pings else "initialized"

    with pytest.raises(WrongState, match=f"commit is not allowed in state {state}"):
        await registry.commit(workflow)

    assert (await registry.show(workflow)).code.value == state
    assert COMPLETED not in await stored(client, workflow)
    assert await stored(client, index_id(REGISTRY)) == {INDEX_STARTED: 1}


# --------------------------------------------------------------------------- delete


@pytest.mark.parametrize("committed", [True, False])
async def test_delete_removes_a_completed_workflow_for_good(
    registry: PingRegistry, client: JournalClient, committed: bool
) -> None:
    workflow = await summarized(registry)
    kept = await summarized(registry)
    if committed:
        await registry.commit(workflow)
    else:
        # Interrupted after the commit's first step: no final committed event.
        await registry.workflows.tell(workflow, Commit(), RETRY_NO_VC)

    state = await registry.delete(workflow)
    await registry.delete(workflow)  # a repeat is a no-op

    assert state.code is (StateCode.TERMINATED if committed else StateCode.COMPLETED)
    assert [e.workflow for e in await registry.list(REGISTRY)] == [kept]
    # The index keeper, late, finishes the commit but does not list it again.
    late = await registry.catch_up_index(workflow)
    assert late.code is StateCode.TERMINATED
    assert [e.workflow for e in await registry.list(REGISTRY)] == [kept]
    assert (await stored(client, workflow))[COMMITTED] == 1
    index = await stored(client, index_id(REGISTRY))
    assert index == {INDEX_STARTED: 2, INDEX_COMPLETED: 1, INDEX_DELETED: 1}


@pytest.mark.parametrize("step", ["begun", "pinged", "summarized"])
async def test_delete_of_a_workflow_not_completed_names_its_state(
    registry: PingRegistry, client: JournalClient, step: str
) -> None:
    workflow = await registry.begin(REGISTRY, DEADLINE)
    if step != "begun":
        await registry.ping(workflow, pinger="server-1", count=1)
    if step == "summarized":
        await registry.summarize(workflow)
    state = (await registry.show(workflow)).code.value

    with pytest.raises(WrongState, match=f"delete is not allowed in state {state}"):
        await registry.delete(workflow)

    assert [e.workflow for e in await registry.list(REGISTRY)] == [workflow]
    assert INDEX_DELETED not in await stored(client, index_id(REGISTRY))


# --------------------------------------------------------------------------- ping


async def test_ping_posts_only_what_is_missing(
    registry: PingRegistry, client: JournalClient
) -> None:
    workflow = await registry.begin(REGISTRY, DEADLINE)

    assert await registry.ping(workflow, pinger="server-1", count=3, message="fine") == 3
    assert await registry.ping(workflow, pinger="server-1", count=3) == 0
    assert await registry.ping(workflow, pinger="server-1", count=4, code=2) == 1

    state = await registry.show(workflow)
    assert state.code is StateCode.APPENDING
    assert [(p.pinger, p.code, p.message) for p in state.pings] == [
        ("server-1", 0, "fine"),
        ("server-1", 0, "fine"),
        ("server-1", 0, "fine"),
        ("server-1", 2, "ok"),
    ]
    assert await stored(client, workflow) == {STARTED: 1, PINGED: 4}


async def test_each_ping_records_the_id_of_its_event(
    registry: PingRegistry, client: JournalClient
) -> None:
    workflow = await registry.begin(REGISTRY, DEADLINE)
    await registry.ping(workflow, pinger="server-1", count=2)

    async with aclosing(client.events(workflow)) as batches:
        ids = [e.id async for b in batches for e in b.events if e.type.endswith(PINGED)]
    assert [p.event_id for p in (await registry.show(workflow)).pings] == ids


async def test_two_pingers_at_once_each_post_their_count(client: JournalClient) -> None:
    workflow = await PingRegistry(client).begin(REGISTRY, DEADLINE)

    # Two servers, each with a registry of its own (as in two processes).
    async with anyio.create_task_group() as tg:
        tg.start_soon(_ping, PingRegistry(client), workflow, "server-1", 4)
        tg.start_soon(_ping, PingRegistry(client), workflow, "server-2", 3)

    state = await PingRegistry(client).show(workflow)
    assert (state.pings_by("server-1"), state.pings_by("server-2")) == (4, 3)
    assert await stored(client, workflow) == {STARTED: 1, PINGED: 7}


async def test_the_same_pinger_twice_at_once_posts_its_count_once(client: JournalClient) -> None:
    workflow = await PingRegistry(client).begin(REGISTRY, DEADLINE)

    # A pinger that restarted while its first run was still posting.
    async with anyio.create_task_group() as tg:
        tg.start_soon(_ping, PingRegistry(client), workflow, "server-1", 3)
        tg.start_soon(_ping, PingRegistry(client), workflow, "server-1", 3)

    state = await PingRegistry(client).show(workflow)
    assert state.pings_by("server-1") == 3
    assert await stored(client, workflow) == {STARTED: 1, PINGED: 3}


async def test_a_pinger_that_read_a_stale_state_posts_nothing_twice(
    client: JournalClient,
) -> None:
    workflow = await PingRegistry(client).begin(REGISTRY, DEADLINE)
    spy = SpyJournal(client)
    stale = PingRegistry(spy)

    async def other_run(aggregate: AggregateRef) -> None:
        # Between the stale pinger's read (no pings) and its first append,
        # another run of the same pinger posts all of them.
        await PingRegistry(client).ping(workflow, pinger="server-1", count=3)

    spy.race, spy.races = other_run, 1
    await stale.ping(workflow, pinger="server-1", count=3)

    # Its append of ping 0 was a repeat (the journal returned the other run's
    # result, though the tail it expected was stale); 1 and 2 likewise.
    assert spy.request_ids == ["ping/server-1/0", "ping/server-1/1", "ping/server-1/2"]
    assert (await stale.show(workflow)).pings_by("server-1") == 3
    assert await stored(client, workflow) == {STARTED: 1, PINGED: 3}


async def test_ping_after_the_summary_names_the_state(
    registry: PingRegistry, client: JournalClient
) -> None:
    workflow = await summarized(registry)

    with pytest.raises(WrongState, match="append-ping is not allowed in state summarized"):
        await registry.ping(workflow, pinger="late-server", count=1)
    assert (await stored(client, workflow))[PINGED] == 1


@pytest.mark.parametrize("name", ["", "two words", "tab\there", "x" * 65, "caf\u00e9"])
async def test_a_bad_pinger_name_is_refused_naming_pinger(
    registry: PingRegistry, client: JournalClient, name: str
) -> None:
    workflow = await registry.begin(REGISTRY, DEADLINE)

    with pytest.raises(InvalidArgument) as caught:
        await registry.ping(workflow, pinger=name, count=1)

    assert caught.value.field == "pinger"
    assert repr(name) in str(caught.value)
    assert await stored(client, workflow) == {STARTED: 1}


async def test_the_longest_pinger_name_fits_a_request_id(registry: PingRegistry) -> None:
    workflow = await registry.begin(REGISTRY, DEADLINE)

    assert await registry.ping(workflow, pinger="~" * 64, count=1) == 1


# --------------------------------------------------------------------------- summary


async def test_summarize_gathers_the_pings_and_a_repeat_is_a_no_op(
    registry: PingRegistry, client: JournalClient
) -> None:
    workflow = await registry.begin(REGISTRY, DEADLINE)
    await registry.ping(workflow, pinger="server-1", count=2)
    await registry.ping(workflow, pinger="server-2", count=1, code=5, message="disk full")

    state = await registry.summarize(workflow)
    again = await registry.summarize(workflow)

    assert state.code is StateCode.SUMMARIZED and again == state
    assert state.summary is not None
    assert (state.summary.code, state.summary.message) == (0, SUMMARY_MESSAGE)
    assert state.summary.pings == state.pings and len(state.pings) == 3
    assert await stored(client, workflow) == {STARTED: 1, PINGED: 3, GATHERED: 1}


async def test_abort_expired_posts_the_expired_summary_once(
    registry: PingRegistry, client: JournalClient
) -> None:
    workflow = await registry.begin(REGISTRY, DEADLINE)
    await registry.ping(workflow, pinger="server-1", count=1)

    state = await registry.abort_expired(workflow)
    again = await registry.abort_expired(workflow)

    assert state.code is StateCode.SUMMARIZED and again == state
    assert state.summary is not None
    assert (state.summary.code, state.summary.message) == (EXPIRED_CODE, EXPIRED_MESSAGE)
    assert state.summary.pings == state.pings
    assert await stored(client, workflow) == {STARTED: 1, PINGED: 1, GATHERED: 1}


async def test_abort_expired_after_the_summary_changes_nothing(
    registry: PingRegistry, client: JournalClient
) -> None:
    workflow = await summarized(registry)

    state = await registry.abort_expired(workflow)

    assert state.summary is not None and state.summary.code == 0
    assert (await stored(client, workflow))[GATHERED] == 1


# --------------------------------------------------------------------------- unknown ids


@pytest.mark.parametrize("command", ["show", "ping", "commit", "delete"])
async def test_an_unknown_workflow_is_not_found(
    registry: PingRegistry, client: JournalClient, command: str
) -> None:
    workflow = uuid4()

    with pytest.raises(NotFound, match=str(workflow)):
        match command:
            case "show":
                await registry.show(workflow)
            case "ping":
                await registry.ping(workflow, pinger="server-1", count=1)
            case "commit":
                await registry.commit(workflow)
            case "delete":
                await registry.delete(workflow)

    assert await stored(client, workflow) == {}


async def test_workflows_and_indexes_are_aggregates_of_their_own_types(
    registry: PingRegistry, client: JournalClient
) -> None:
    workflow = await registry.begin(REGISTRY, DEADLINE)

    types = {(info.type, info.id) for info in (await client.list_aggregates())[0]}

    assert types == {(WORKFLOW_TYPE, workflow), (INDEX_TYPE, index_id(REGISTRY))}


async def _ping(registry: PingRegistry, workflow: UUID, pinger: str, count: int) -> None:
    await registry.ping(workflow, pinger=pinger, count=count)
