"""The parent operation in request metadata, through a real gRPC server on 127.0.0.1.

The service is a service author's: its ``Start`` method creates its
operation as a child of the caller's (``parent_from_context``) and calls
``Step`` for it (``with_parent``); ``Relay`` works for its caller's operation
and passes the parent on (``forward_parent``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tailrunner.errors import InvalidOperationName
from tailrunner.operations import (
    PARENT_METADATA_KEY,
    Operations,
    forward_parent,
    parent_from_context,
    with_parent,
)

SERVICE = "test.Worker"


class Worker:
    """A service whose methods answer with JSON: what each call saw of its parent."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.channel: grpc.aio.Channel | None = None

    async def start(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        operation = await self.ops.create(parent=parent_from_context(context))
        assert self.channel is not None
        step = self.channel.unary_unary(f"/{SERVICE}/Step")
        seen = await step(b"", metadata=with_parent(None, operation.name))
        return json.dumps({"operation": operation.name, "step": json.loads(seen)}).encode()

    async def step(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            parent = parent_from_context(context)
        except InvalidOperationName as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return json.dumps({"parent": parent}).encode()

    async def relay(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        assert self.channel is not None
        step = self.channel.unary_unary(f"/{SERVICE}/Step")
        return await step(b"", metadata=forward_parent(context))


@pytest.fixture
async def channel(ops: Operations) -> AsyncIterator[grpc.aio.Channel]:
    worker = Worker(ops)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handlers = {
        "Start": grpc.unary_unary_rpc_method_handler(worker.start),
        "Step": grpc.unary_unary_rpc_method_handler(worker.step),
        "Relay": grpc.unary_unary_rpc_method_handler(worker.relay),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            worker.channel = chan
            yield chan
    finally:
        await server.stop(None)


async def call(channel: grpc.aio.Channel, method: str, metadata: Any = None) -> Any:
    answer = await channel.unary_unary(f"/{SERVICE}/{method}")(b"", metadata=metadata)
    return json.loads(answer)


async def test_a_call_with_a_parent_creates_a_child_whose_calls_carry_it(
    ops: Operations, channel: grpc.aio.Channel
) -> None:
    parent = (await ops.create("batch")).name
    answer = await call(channel, "Start", with_parent([("x-other", "kept")], parent))
    child = answer["operation"]
    assert (await ops.get_state(child)).parent == parent
    assert [o.name for o in (await ops.list_children(parent))[0]] == [child]
    assert answer["step"] == {"parent": child}


async def test_a_call_without_a_parent_creates_a_top_level_operation(
    ops: Operations, channel: grpc.aio.Channel
) -> None:
    answer = await call(channel, "Start")
    assert (await ops.get_state(answer["operation"])).parent is None


async def test_forward_parent_passes_the_incoming_parent_on(channel: grpc.aio.Channel) -> None:
    assert await call(channel, "Relay", with_parent(None, "operations/up")) == {
        "parent": "operations/up"
    }
    assert await call(channel, "Relay") == {"parent": None}


async def test_a_malformed_parent_in_metadata_is_refused_naming_the_key(
    channel: grpc.aio.Channel,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(channel, "Step", [(PARENT_METADATA_KEY, "jobs/1")])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert PARENT_METADATA_KEY in (info.value.details() or "")


def test_with_parent_replaces_a_parent_and_keeps_the_rest() -> None:
    metadata = [("a", "1"), (PARENT_METADATA_KEY, "operations/old")]
    assert with_parent(metadata, "operations/new") == [
        ("a", "1"),
        (PARENT_METADATA_KEY, "operations/new"),
    ]
    assert metadata[1] == (PARENT_METADATA_KEY, "operations/old")
    with pytest.raises(InvalidOperationName):
        with_parent(None, "not-a-name")
