"""Ping-registry workflows shown as long-running operations, and ``tailrunner.v1.Workflows``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_status import rpc_status
from ulid import ULID

from tailrunner.errors import OperationNotDone, WrongState
from tailrunner.journal.client import JournalClient
from tailrunner.operations.pingregistry import (
    KIND,
    PingRegistrySource,
    WorkflowsService,
    operation_state,
    to_operation,
)
from tailrunner.operations.state import StateCode
from tailrunner.proto.v1 import workflows_pb2 as pb
from tailrunner.proto.v1 import workflows_pb2_grpc
from tailrunner.workflows.pingregistry.behaviour import (
    AppendPing,
    Cancel,
    Command,
    Commit,
    End,
    Init,
    PostSummary,
    advance,
    tell,
)
from tailrunner.workflows.pingregistry.registry import PingRegistry
from tailrunner.workflows.pingregistry.state import State, new_state

DEADLINE = datetime(2030, 1, 1, tzinfo=UTC)
INIT = Init(registry="main", deadline=DEADLINE)
PING = AppendPing(code=0, message="up", pinger="a")


def given(*commands: Command) -> State:
    """The state after ``commands``, each event given a fresh id (as the journal would)."""
    state = new_state(uuid4())
    for command in commands:
        for event in tell(state, command):
            state = advance(state, event, ULID())
    return state


@pytest.mark.parametrize(
    ("commands", "expected", "done"),
    [
        ((INIT,), StateCode.PENDING, False),
        ((INIT, PING), StateCode.RUNNING, False),
        ((INIT, PING, PostSummary(code=0, message="ok")), StateCode.COMPLETE, True),
        ((INIT, PostSummary(code=0, message="ok"), Commit(), End()), StateCode.COMPLETE, True),
        ((INIT, PING, Cancel()), StateCode.STOPPED, True),
        ((INIT, PostSummary(code=4, message="late")), StateCode.FAIL, True),
    ],
    ids=["initialized", "appending", "summarized", "terminated", "cancelled", "failed"],
)
def test_each_workflow_state_shows_as_one_operation_state(
    commands: tuple[Command, ...], expected: StateCode, done: bool
) -> None:
    state = given(*commands)

    operation = to_operation(state)

    assert operation_state(state) is expected
    assert operation.name == f"operations/{state.id}"
    assert operation.done is done
    metadata = pb.PingRegistryMetadata()
    assert operation.metadata.Unpack(metadata)
    assert (metadata.kind, metadata.state, metadata.workflow_state) == (
        KIND,
        expected.value,
        state.code.value,
    )
    assert metadata.registry == "main"
    assert metadata.pings_gathered == len(state.pings)
    assert metadata.deadline.ToDatetime(tzinfo=UTC) == DEADLINE
    assert state.started is not None
    assert metadata.create_time.ToDatetime(tzinfo=UTC) == state.started.datetime
    # What google-api-core needs: a done operation has exactly one of them.
    result = operation.WhichOneof("result")
    assert result == (
        None if not done else "response" if expected is StateCode.COMPLETE else "error"
    )


def test_the_response_is_the_summary_and_an_error_carries_the_summary_code() -> None:
    summarized = to_operation(given(INIT, PING, PostSummary(code=0, message="all here")))
    summary = pb.ServerPingsGathered()
    assert summarized.response.Unpack(summary)
    assert (summary.code, summary.message, len(summary.pings)) == (0, "all here", 1)
    assert summary.pings[0].pinger == "a"

    cancelled = to_operation(given(INIT, Cancel()))
    assert (cancelled.error.code, cancelled.error.message) == (
        1,
        "cancelled before it was summarized",
    )


# --------------------------------------------------------------------------- over a journal


@pytest.fixture
def source(client: JournalClient) -> PingRegistrySource:
    return PingRegistrySource(client)


async def test_a_workflow_is_viewed_from_its_first_event_on(source: PingRegistrySource) -> None:
    registry = source.registry
    assert await source.view(uuid4()) is None
    workflow = await registry.begin("main", DEADLINE)

    view = await source.view(workflow)

    assert view is not None
    assert (view.kind, view.state, view.parent, view.done) == (KIND, StateCode.PENDING, None, False)
    assert view.create_time <= view.update_time
    state, version = await registry.workflows.load(workflow)
    assert view.version == version
    assert view.operation == to_operation(state, version)


async def test_cancel_closes_an_open_workflow_and_leaves_a_done_one(
    source: PingRegistrySource,
) -> None:
    registry = source.registry
    open_one = await registry.begin("main", DEADLINE)
    done_one = await registry.begin("main", DEADLINE)
    await registry.summarize(done_one)

    await source.cancel(open_one)
    await source.cancel(done_one)
    await source.cancel(open_one)  # again: best effort, nothing more

    cancelled = await source.view(open_one)
    assert cancelled is not None and cancelled.state is StateCode.STOPPED and cancelled.done
    assert cancelled.operation.error.code == 1
    untouched = await source.view(done_one)
    assert untouched is not None and untouched.state is StateCode.COMPLETE
    with pytest.raises(WrongState, match="summarized"):
        await registry.ping(open_one, pinger="late", count=1)


async def test_delete_needs_a_done_workflow_and_then_it_is_not_found(
    source: PingRegistrySource,
) -> None:
    registry = source.registry
    workflow = await registry.begin("main", DEADLINE)

    with pytest.raises(OperationNotDone, match="delete is not allowed"):
        await source.delete(workflow)

    await registry.summarize(workflow)
    await source.delete(workflow)

    assert await source.view(workflow) is None
    assert (await registry.show(workflow)).code.value == "terminated", "delete commits first"
    assert await registry.list("main") == ()
    await source.delete(workflow)  # a repeat finds it deleted already: no error


# --------------------------------------------------------------------------- the gRPC service


@pytest.fixture
async def workflows(client: JournalClient) -> AsyncIterator[workflows_pb2_grpc.WorkflowsStub]:
    server = grpc.aio.server()
    workflows_pb2_grpc.add_WorkflowsServicer_to_server(
        WorkflowsService(PingRegistry(client)), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield workflows_pb2_grpc.WorkflowsStub(channel)
    finally:
        await server.stop(None)


async def test_begin_returns_the_running_operation(
    workflows: workflows_pb2_grpc.WorkflowsStub, client: JournalClient
) -> None:
    before = datetime.now(UTC)
    operation = await workflows.BeginPingRegistry(
        pb.BeginPingRegistryRequest(registry="main", deadline=Duration(seconds=60))
    )

    assert operation.name.startswith("operations/") and not operation.done
    workflow = UUID(operation.name.removeprefix("operations/"))
    state = await PingRegistry(client).show(workflow)
    assert state.registry == "main"
    assert state.deadline is not None
    assert before + timedelta(seconds=60) <= state.deadline


async def test_a_repeated_request_id_begins_nothing_new(
    workflows: workflows_pb2_grpc.WorkflowsStub, client: JournalClient
) -> None:
    request = pb.BeginPingRegistryRequest(registry="main", request_id="begin-1")

    first = await workflows.BeginPingRegistry(request)
    second = await workflows.BeginPingRegistry(request)

    assert first.name == second.name
    assert len(await PingRegistry(client).list("main")) == 1


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.BeginPingRegistryRequest(registry=""), "registry"),
        (pb.BeginPingRegistryRequest(registry="a", deadline=Duration(seconds=-1)), "deadline"),
        (pb.BeginPingRegistryRequest(registry="a", request_id="has space"), "request_id"),
    ],
    ids=["empty-registry", "negative-deadline", "bad-request-id"],
)
async def test_a_bad_begin_is_invalid_argument_naming_the_field(
    workflows: workflows_pb2_grpc.WorkflowsStub, request_: Any, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await workflows.BeginPingRegistry(request_)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    assert field in caught.value.details() or any(field.encode() in d.value for d in status.details)
