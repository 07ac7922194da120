"""google-api-core's ``Operation`` future drives a ping-registry workflow end to end.

The journal server carries ``google.longrunning.Operations`` and
``tailrunner.v1.Workflows``; the registry daemon (``ping-summarizer``) runs
in a lazy engine here. A client that knows nothing of journals begins a
workflow with ``BeginPingRegistry``, wraps the returned operation with
``google.api_core.operation.from_gapic`` and calls ``result()``: the summary
comes back after the deadline. ``cancel()`` cancels a running one;
``cancelled()`` is then true and ``exception()`` reports it.

The future is sync (it polls ``GetOperation``): it runs in a worker thread
while the server and the engine run on the test's event loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from uuid import UUID

import anyio
import grpc
import pytest
from google.api_core import exceptions, operation, operation_async, operations_v1
from google.protobuf.duration_pb2 import Duration

from tailrunner.activities.pingregistry import SummarizerSettings, summarizer
from tailrunner.engines.options import EngineOptions
from tailrunner.engines.retry import RetryPolicy
from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.operations.pingregistry import workflows_service
from tailrunner.operations.service import operations_service
from tailrunner.proto.v1 import workflows_pb2 as pb
from tailrunner.proto.v1 import workflows_pb2_grpc
from tailrunner.runner import Runner
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.workflows.pingregistry.registry import PingRegistry


@asynccontextmanager
async def served() -> AsyncIterator[tuple[str, JournalClient]]:
    """A journal server with both services, and the registry daemon running on it."""
    daemon = dataclasses.replace(
        summarizer, settings=SummarizerSettings(name="registry-daemon", pings=1)
    )
    async with (
        JournalServer(
            MemoryJournalStore(),
            listen="127.0.0.1:0",
            close_store=True,
            services=[operations_service(), workflows_service()],
        ) as server,
        JournalClient.connect(server.address, timeout=10) as client,
        anyio.create_task_group() as tg,
    ):
        runner = Runner(
            journal=client,
            tails=MemoryTailStore(),
            activities=[daemon],
            options=EngineOptions(kind="lazy", retry=RetryPolicy(initial=0.02, max_delay=0.2)),
        )
        await tg.start(runner.run)
        yield server.address, client
        tg.cancel_scope.cancel()


def begin(address: str, deadline: float) -> operation.Operation:
    """Begin a workflow through the Workflows service, as a google-api-core future."""
    channel = grpc.insecure_channel(address)
    stub = workflows_pb2_grpc.WorkflowsStub(channel)
    seconds = Duration()
    seconds.FromMilliseconds(round(deadline * 1000))
    begun = stub.BeginPingRegistry(pb.BeginPingRegistryRequest(registry="main", deadline=seconds))
    return operation.from_gapic(
        begun,
        operations_v1.OperationsClient(channel),
        pb.ServerPingsGathered,
        metadata_type=pb.PingRegistryMetadata,
    )


async def test_result_is_the_summary_after_the_deadline() -> None:
    async with served() as (address, client):
        future = await anyio.to_thread.run_sync(begin, address, 1.0)
        assert not await anyio.to_thread.run_sync(future.done)

        summary = await anyio.to_thread.run_sync(lambda: future.result(timeout=30))

        assert isinstance(summary, pb.ServerPingsGathered)
        assert summary.code == 0
        assert [p.pinger for p in summary.pings] == ["registry-daemon"]
        metadata = future.metadata
        assert isinstance(metadata, pb.PingRegistryMetadata)
        assert (metadata.kind, metadata.state, metadata.registry) == (
            "ping-registry",
            "COMPLETE",
            "main",
        )
        assert metadata.pings_gathered == 1
        # Not before the deadline: the summary's event is after it.
        workflow = UUID(future.operation.name.removeprefix("operations/"))
        state = await PingRegistry(client).show(workflow)
        assert state.summary is not None and state.deadline is not None
        assert state.summary.event_id.datetime >= state.deadline.replace(microsecond=0)
        assert datetime.now(UTC) >= state.deadline


async def test_cancel_cancels_a_running_workflow() -> None:
    async with served() as (address, client):
        future = await anyio.to_thread.run_sync(begin, address, 300.0)

        assert await anyio.to_thread.run_sync(future.cancel)

        assert await anyio.to_thread.run_sync(future.cancelled)
        error = await anyio.to_thread.run_sync(lambda: future.exception(timeout=30))
        assert isinstance(error, exceptions.GoogleAPICallError)
        assert error.grpc_status_code == grpc.StatusCode.CANCELLED
        with pytest.raises(exceptions.GoogleAPICallError):
            await anyio.to_thread.run_sync(lambda: future.result(timeout=30))
        # The workflow itself is closed: no summary will come at the deadline.
        workflow = UUID(future.operation.name.removeprefix("operations/"))
        state = await PingRegistry(client).show(workflow)
        assert state.summary is not None and state.summary.code == 1


async def test_the_async_future_gives_the_summary_too() -> None:
    async with served() as (address, _client), grpc.aio.insecure_channel(address) as channel:
        stub = workflows_pb2_grpc.WorkflowsStub(channel)
        seconds = Duration()
        seconds.FromMilliseconds(500)
        begun = await stub.BeginPingRegistry(
            pb.BeginPingRegistryRequest(registry="main", deadline=seconds)
        )
        future = operation_async.from_gapic(
            begun,
            operations_v1.OperationsAsyncClient(channel),
            pb.ServerPingsGathered,
            metadata_type=pb.PingRegistryMetadata,
        )

        with anyio.fail_after(30):
            summary = await future.result()

        assert isinstance(summary, pb.ServerPingsGathered)
        assert [p.pinger for p in summary.pings] == ["registry-daemon"]
        assert await future.done()
        assert not await future.cancelled()
