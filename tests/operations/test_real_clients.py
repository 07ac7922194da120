"""Clients nobody here wrote drive the journal server's google.longrunning.Operations.

- google-api-core's ``OperationsClient`` on a plain (sync) ``grpc.insecure_channel``:
  get, list (it sends no page_size and iterates the pages itself) with each
  filter, cancel, delete, and its exceptions.
- google-api-core's ``Operation`` future (``operation.from_gapic``) on a
  library operation: ``result()`` once another task finishes it,
  ``exception()``, ``cancel()`` then ``cancelled()``. It polls
  ``GetOperation`` (1 s, growing), never ``WaitOperation``.
- ``grpcurl`` through reflection, against ``tailrunner journal serve`` (which
  also checks ``--no-operations``).

The sync clients block: they run in worker threads while the server and the
library user run on the test's event loop.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import grpc
import pytest
from google.api_core import exceptions, operation, operations_v1
from google.protobuf import empty_pb2, wrappers_pb2
from google.rpc import code_pb2, status_pb2

from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.operations import Operations
from tailrunner.operations.service import operations_service
from tailrunner.workflows.pingregistry.registry import PingRegistry

BIN = Path(sys.executable).parent
GRPCURL = shutil.which("grpcurl", path=str(BIN)) or str(BIN / "grpcurl")
TAILRUNNER = shutil.which("tailrunner", path=str(BIN)) or str(BIN / "tailrunner")
T = TypeVar("T")


class Google:
    """google-api-core's OperationsClient on a sync channel, called from worker threads."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.client = operations_v1.OperationsClient(self.channel)

    async def run(self, call: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(call)

    async def names(self, filter: str = "") -> list[str]:
        return await self.run(
            lambda: [op.name for op in self.client.list_operations("operations", filter)]
        )


@asynccontextmanager
async def journal_with_operations() -> AsyncIterator[tuple[Operations, Google, JournalClient]]:
    async with (
        JournalServer(
            MemoryJournalStore(),
            listen="127.0.0.1:0",
            close_store=True,
            services=[operations_service()],
        ) as server,
        JournalClient.connect(server.address, timeout=10) as client,
    ):
        google = Google(server.address)
        try:
            yield Operations(client), google, client
        finally:
            google.channel.close()


# -- OperationsClient ---------------------------------------------------------


async def test_operations_client_gets_cancels_and_deletes() -> None:
    async with journal_with_operations() as (ops, google, _):
        op = await ops.create(metadata=wrappers_pb2.StringValue(value="half"))
        got = await google.run(lambda: google.client.get_operation(op.name))
        assert (got.name, got.done) == (op.name, False)

        await google.run(lambda: google.client.cancel_operation(op.name))
        assert await ops.cancel_requested(op.name)
        with pytest.raises(exceptions.FailedPrecondition):
            await google.run(lambda: google.client.delete_operation(op.name))

        await ops.set_cancelled(op.name)
        got = await google.run(lambda: google.client.get_operation(op.name))
        assert got.done and got.error.code == code_pb2.CANCELLED
        # A done operation: the cancel succeeds and changes nothing.
        await google.run(lambda: google.client.cancel_operation(op.name))
        assert await google.run(lambda: google.client.get_operation(op.name)) == got

        await google.run(lambda: google.client.delete_operation(op.name))
        with pytest.raises(exceptions.NotFound):
            await google.run(lambda: google.client.get_operation(op.name))
        with pytest.raises(exceptions.NotFound):
            await google.run(lambda: google.client.delete_operation(op.name))


async def test_operations_client_errors_are_api_core_exceptions() -> None:
    async with journal_with_operations() as (_, google, _):
        with pytest.raises(exceptions.InvalidArgument) as caught:
            await google.run(lambda: google.client.get_operation("not-an-operation"))
        assert "name" in caught.value.message
        with pytest.raises(exceptions.NotFound):
            await google.run(lambda: google.client.get_operation("operations/never-made"))
        with pytest.raises(exceptions.InvalidArgument) as caught:
            await google.names("colour=blue")
        assert "unknown field 'colour'" in caught.value.message
        with pytest.raises(exceptions.InvalidArgument):
            await google.run(lambda: list(google.client.list_operations("projects/p", "")))


async def test_operations_client_iterates_the_pages_newest_first() -> None:
    async with journal_with_operations() as (ops, google, _):
        names = []
        for _ in range(57):
            names.append((await ops.create()).name)
            await anyio.sleep(0.002)  # one create time per millisecond
        pages = await google.run(
            lambda: [
                [op.name for op in page]
                for page in google.client.list_operations("operations", "").pages
            ]
        )
        # It sends no page_size: the server's default (50) makes the pages.
        assert [len(page) for page in pages] == [50, 7]
        assert [name for page in pages for name in page] == names[::-1]


async def test_operations_client_lists_with_each_filter() -> None:
    async with journal_with_operations() as (ops, google, client):
        running = (await ops.create(kind="build")).name
        succeeded = (await ops.create(kind="build")).name
        await ops.set_successful(succeeded)
        failed = (await ops.create()).name
        await ops.set_failed(failed, status_pb2.Status(code=code_pb2.INTERNAL, message="x"))
        cancelled = (await ops.create()).name
        await ops.set_cancelled(cancelled)
        child = (await ops.create(parent=running)).name
        workflow = await PingRegistry(client).begin(
            "registry-1", datetime.now(UTC) + timedelta(hours=1)
        )
        expected = {
            "state=RUNNING": {running, child, f"operations/{workflow}"},
            "state=SUCCEEDED": {succeeded},
            "state=FAILED": {failed},
            "state=CANCELLED": {cancelled},
            "kind=build": {running, succeeded},
            "kind=ping-registry": {f"operations/{workflow}"},
            f"parent={running}": {child},
            "done=true": {succeeded, failed, cancelled},
            "done=false AND kind=build": {running},
        }
        for filter, names in expected.items():
            assert set(await google.names(filter)) == names, filter


# -- the Operation future -----------------------------------------------------


async def test_the_future_returns_the_response_once_another_task_finishes_it() -> None:
    async with journal_with_operations() as (ops, google, _):
        op = await ops.create(metadata=wrappers_pb2.StringValue(value="starting"))
        future = operation.from_gapic(
            op, google.client, wrappers_pb2.StringValue, metadata_type=wrappers_pb2.StringValue
        )
        # done() polls GetOperation: a blocking call, from a thread like every other.
        assert not await google.run(future.done)
        assert future.metadata.value == "starting"
        results: list[Any] = []

        async def wait_for_result() -> None:
            results.append(await google.run(lambda: future.result(timeout=60)))

        async with anyio.create_task_group() as group:
            group.start_soon(wait_for_result)
            await ops.update_metadata(op.name, wrappers_pb2.StringValue(value="working"))
            await ops.set_successful(op.name, wrappers_pb2.StringValue(value="the answer"))
        assert results == [wrappers_pb2.StringValue(value="the answer")]
        assert await google.run(future.done)
        assert not await google.run(future.cancelled)


async def test_the_future_of_an_operation_without_a_result_gets_empty() -> None:
    async with journal_with_operations() as (ops, google, _):
        op = await ops.create()
        await ops.set_successful(op.name)
        future = operation.from_gapic(op, google.client, empty_pb2.Empty)
        assert await google.run(lambda: future.result(timeout=60)) == empty_pb2.Empty()


async def test_the_future_of_a_failed_operation_reports_its_exception() -> None:
    async with journal_with_operations() as (ops, google, _):
        op = await ops.create()
        await ops.set_failed(
            op.name, status_pb2.Status(code=code_pb2.NOT_FOUND, message="the file is gone")
        )
        future = operation.from_gapic(op, google.client, wrappers_pb2.StringValue)
        error = await google.run(lambda: future.exception(timeout=60))
        assert isinstance(error, exceptions.NotFound)
        assert "the file is gone" in error.message
        with pytest.raises(exceptions.NotFound):
            await google.run(lambda: future.result(timeout=60))


async def test_the_future_cancels_and_the_worker_sets_it_cancelled() -> None:
    async with journal_with_operations() as (ops, google, _):
        op = await ops.create()
        future = operation.from_gapic(op, google.client, wrappers_pb2.StringValue)

        async def worker() -> None:
            if await ops.until_cancel_requested(op.name):
                await ops.set_cancelled(op.name)

        async with anyio.create_task_group() as group:
            group.start_soon(worker)
            assert await google.run(future.cancel)
        assert await google.run(future.cancelled)
        error = await google.run(lambda: future.exception(timeout=60))
        assert isinstance(error, exceptions.Cancelled)


# -- grpcurl against `tailrunner journal serve` -------------------------------


@asynccontextmanager
async def journal_serve(*flags: str) -> AsyncIterator[str]:
    """``tailrunner journal serve`` on a free port; yields its address."""
    command = [TAILRUNNER, "journal", "serve", "--listen", "127.0.0.1:0", "--store", "memory:"]
    process = await anyio.open_process([*command, *flags], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        address = await _listening(process.stdout)
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await process.wait()


async def _listening(stdout: anyio.abc.ByteReceiveStream) -> str:
    buffer = b""
    with anyio.fail_after(30):
        async for chunk in stdout:
            buffer += chunk
            for line in buffer.decode().splitlines():
                if line.startswith("listening on "):
                    return line.removeprefix("listening on ").strip()
    raise AssertionError(f"journal serve printed no address: {buffer!r}")


async def grpcurl(*args: str) -> str:
    result = await anyio.run_process([GRPCURL, "-plaintext", *args], check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.mark.slow
async def test_grpcurl_lists_gets_and_lists_with_a_filter() -> None:
    async with journal_serve() as address, JournalClient.connect(address) as client:
        ops = Operations(client)
        running = await ops.create("grpcurl-running", kind="build")
        done = await ops.create("grpcurl-done")
        await ops.set_successful(done.name, wrappers_pb2.StringValue(value="ok"))

        services = (await grpcurl(address, "list")).split()
        assert "google.longrunning.Operations" in services
        assert "tailrunner.v1.Journal" in services

        got = json.loads(
            await grpcurl(
                "-d",
                json.dumps({"name": done.name}),
                address,
                "google.longrunning.Operations/GetOperation",
            )
        )
        assert got["name"] == done.name and got["done"] is True
        assert got["response"] == {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": "ok",
        }

        listed = json.loads(
            await grpcurl(
                "-d",
                json.dumps({"name": "operations", "filter": "state=RUNNING AND kind=build"}),
                address,
                "google.longrunning.Operations/ListOperations",
            )
        )
        assert [op["name"] for op in listed["operations"]] == [running.name]


@pytest.mark.slow
async def test_journal_serve_without_operations() -> None:
    async with journal_serve("--no-operations") as address:
        services = (await grpcurl(address, "list")).split()
        assert "tailrunner.v1.Journal" in services
        assert "google.longrunning.Operations" not in services
