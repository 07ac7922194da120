"""A request that does not parse is INVALID_ARGUMENT on every method of every server.

Issue 15, defect 3: grpc.aio's own parsing gave ``UNKNOWN`` with the Python
exception in the message and an ERROR log with a frame dump per bad call.
The bytes sent (``ff ff ff ff``: a field key that is not a valid varint)
parse as no protobuf message at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.longrunning import operations_proto_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2
from structlog.testing import capture_logs

from tailrunner.admin.server import AdminServer
from tailrunner.proto.v1 import journal_pb2, runner_pb2, workflows_pb2
from tailrunner.runner import Runner
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.testing import LoopbackJournal, loopback_journal

from .admin.conftest import Behaviour, fast_options

GARBAGE = b"\xff\xff\xff\xff"


def methods(*services: ServiceDescriptor) -> list[MethodDescriptor]:
    return [m for service in services for m in service.methods]


JOURNAL_METHODS = methods(
    journal_pb2.DESCRIPTOR.services_by_name["Journal"],
    workflows_pb2.DESCRIPTOR.services_by_name["Workflows"],
    operations_proto_pb2.DESCRIPTOR.services_by_name["Operations"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
)
RUNNER_METHODS = methods(runner_pb2.DESCRIPTOR.services_by_name["Runner"])


@pytest.fixture
async def journal() -> AsyncIterator[LoopbackJournal]:
    async with loopback_journal() as j:
        yield j


async def call_raw(channel: grpc.aio.Channel, method: MethodDescriptor) -> grpc.aio.AioRpcError:
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            pytest.fail(f"{path}: no client-streaming method is expected")
        if method.server_streaming:
            async for _ in channel.unary_stream(path)(GARBAGE, timeout=10):
                pass
        else:
            await channel.unary_unary(path)(GARBAGE, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc
    pytest.fail(f"{path} took bytes that do not parse")


@pytest.mark.parametrize("method", JOURNAL_METHODS, ids=lambda m: m.full_name)
async def test_the_journal_servers_methods_refuse_an_unparsable_request(
    method: MethodDescriptor, journal: LoopbackJournal
) -> None:
    async with grpc.aio.insecure_channel(journal.server.address) as channel:
        with capture_logs() as logs:
            refused = await call_raw(channel, method)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.details()
        assert method.name in (refused.details() or "")
        assert "DecodeError" not in (refused.details() or "")
        assert not [entry for entry in logs if entry["log_level"] in ("error", "critical")]
        # Still serving.
        await journal.client.list_aggregates(None, page_size=1)


@pytest.mark.parametrize("method", RUNNER_METHODS, ids=lambda m: m.full_name)
async def test_the_runners_methods_refuse_an_unparsable_request(
    method: MethodDescriptor, journal: LoopbackJournal
) -> None:
    runner = Runner(
        journal=journal.client,
        tails=MemoryTailStore(),
        activities=[Behaviour().activity()],
        options=fast_options(),
    )
    async with (
        AdminServer(
            engine=runner.engine,
            tails=MemoryTailStore(),
            journal=journal.client,
            listen="127.0.0.1:0",
        ) as admin,
        grpc.aio.insecure_channel(admin.address) as channel,
    ):
        refused = await call_raw(channel, method)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.details()


async def test_the_guard_wraps_each_method_once_and_again_when_its_handler_changes() -> None:
    from tailrunner.parse_guard import ParseGuard

    async def behaviour(request: object, context: object) -> object:
        return request

    def handler() -> grpc.RpcMethodHandler[bytes, bytes]:
        return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=bytes)

    served = {"/s/A": handler(), "/s/B": handler()}

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    async def continuation(
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        return served.get(details.method)

    guard = ParseGuard()
    first = await guard.intercept_service(continuation, Details("/s/A"))
    assert first is not None and first is not served["/s/A"]
    assert await guard.intercept_service(continuation, Details("/s/A")) is first
    assert await guard.intercept_service(continuation, Details("/s/B")) is not first
    assert await guard.intercept_service(continuation, Details("/s/none")) is None
    served["/s/A"] = handler()  # a service registered anew: its new handler is guarded
    again = await guard.intercept_service(continuation, Details("/s/A"))
    assert again is not None and again is not first
