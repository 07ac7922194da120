"""WaitOperation through a real journal server: at once when done, pushed, race-free, capped."""

from __future__ import annotations

from typing import Any

import anyio
import grpc
import pytest
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import wrappers_pb2
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2

from tests.operations.test_service import Served, rpc_error, served_operations, violated_field

# Long enough that an op which a missed wake-up leaves waiting comes back not
# done (the assertions check done, never the time).
LONG = 30.0


def wait_request(name: str, timeout: float | None = None) -> lro.WaitOperationRequest:
    request = lro.WaitOperationRequest(name=name)
    if timeout is not None:
        duration = Duration()
        duration.FromNanoseconds(round(timeout * 1e9))
        request.timeout.CopyFrom(duration)
    return request


async def wait(served: Served, name: str, timeout: float | None = LONG) -> Any:
    return await served.stub.WaitOperation(wait_request(name, timeout))


async def test_a_done_operation_returns_at_once_without_a_watch() -> None:
    async with served_operations() as served:
        op = await served.ops.create()
        await served.ops.set_successful(op.name, wrappers_pb2.StringValue(value="ok"))
        shown = await wait(served, op.name)
        assert shown.done and shown.WhichOneof("result") == "response"
        assert served.watch.watches == 0


async def test_a_waiter_is_woken_by_the_completion() -> None:
    async with served_operations() as served:
        op = await served.ops.create()
        result: list[Any] = []

        async def waiter() -> None:
            result.append(await wait(served, op.name))

        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await served.watch.until_caught_up(1)
            await served.ops.update_metadata(op.name, wrappers_pb2.StringValue(value="half"))
            await served.ops.set_failed(op.name, RuntimeError("boom"))
        (shown,) = result
        assert shown.done and shown.error.code == code_pb2.UNKNOWN
        assert "boom" in shown.error.message


async def test_a_completion_between_the_check_and_the_subscription_returns_done() -> None:
    async with served_operations() as served:
        op = await served.ops.create()

        async def complete() -> None:
            # The service has viewed the operation (not done) and is about to
            # subscribe: the completion lands in that window.
            await served.ops.set_successful(op.name, wrappers_pb2.StringValue(value="raced"))

        served.watch.before_watch = complete
        shown = await wait(served, op.name)
        assert served.watch.watches == 1
        assert shown.done
        response = wrappers_pb2.StringValue()
        assert shown.response.Unpack(response) and response.value == "raced"


async def test_a_hundred_waiters_are_all_woken_by_one_completion() -> None:
    async with served_operations() as served:
        op = await served.ops.create()
        results: list[Any] = []

        async def waiter() -> None:
            results.append(await wait(served, op.name))

        async with anyio.create_task_group() as group:
            for _ in range(100):
                group.start_soon(waiter)
            await served.watch.until_caught_up(100)
            await served.ops.set_successful(op.name)
        assert len(results) == 100
        assert all(shown.done for shown in results)
        assert served.watch.watches == 100


async def test_a_cancel_wakes_the_waiter_once_the_worker_sets_it_cancelled() -> None:
    async with served_operations() as served:
        op = await served.ops.create()
        result: list[Any] = []

        async def waiter() -> None:
            result.append(await wait(served, op.name))

        async def worker() -> None:
            if await served.ops.until_cancel_requested(op.name):
                await served.ops.set_cancelled(op.name)

        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            group.start_soon(worker)
            await served.watch.until_caught_up(1)
            await served.stub.CancelOperation(lro.CancelOperationRequest(name=op.name))
        (shown,) = result
        assert shown.done and shown.error.code == code_pb2.CANCELLED


async def test_at_the_timeout_the_not_done_operation_comes_back_with_ok() -> None:
    async with served_operations() as served:
        op = await served.ops.create(metadata=wrappers_pb2.StringValue(value="first"))
        await served.ops.update_metadata(op.name, wrappers_pb2.StringValue(value="second"))
        shown = await wait(served, op.name, timeout=0.05)
        assert not shown.done
        metadata = wrappers_pb2.StringValue()
        assert shown.metadata.Unpack(metadata) and metadata.value == "second"


async def test_a_timeout_above_the_maximum_is_capped() -> None:
    async with served_operations(max_wait=0.2) as served:
        op = await served.ops.create()
        with anyio.fail_after(LONG / 2):  # a hang guard, not a timing assertion
            assert not (await wait(served, op.name, timeout=3600)).done
            assert not (await wait(served, op.name, timeout=None)).done
        assert served.watch.watches == 2


async def test_a_timeout_of_zero_returns_the_operation_as_it_is() -> None:
    async with served_operations() as served:
        op = await served.ops.create()
        assert not (await wait(served, op.name, timeout=0)).done
        assert served.watch.watches == 0


async def test_the_calls_deadline_shortens_the_wait() -> None:
    async with served_operations() as served:
        op = await served.ops.create()
        shown = await served.stub.WaitOperation(wait_request(op.name, LONG), timeout=0.5)
        assert not shown.done


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("nope", grpc.StatusCode.INVALID_ARGUMENT),
        ("operations/never-made", grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_wait_on_a_bad_name(name: str, code: grpc.StatusCode) -> None:
    async with served_operations() as served:
        error = await rpc_error(wait(served, name))
        assert error.code() == code


async def test_a_negative_timeout_is_invalid_argument() -> None:
    async with served_operations() as served:
        op = await served.ops.create()
        request = lro.WaitOperationRequest(name=op.name)
        request.timeout.seconds = -1
        error = await rpc_error(served.stub.WaitOperation(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_field(error) == "timeout"


async def test_a_wait_ends_unavailable_when_the_journal_server_stops() -> None:
    async with served_operations() as served:
        op = await served.ops.create()
        errors: list[grpc.aio.AioRpcError] = []

        async def waiter() -> None:
            errors.append(await rpc_error(wait(served, op.name)))

        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await served.watch.until_caught_up(1)
            await served.server.stop()
        (error,) = errors
        assert error.code() == grpc.StatusCode.UNAVAILABLE
