"""Bearer-token auth on the admin server; health and reflection stay open."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tailrunner.admin.server import AdminServer
from tailrunner.errors import InvalidArgument
from tailrunner.proto.v1 import runner_pb2
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.testing import LoopbackJournal

from .conftest import TOKEN, Behaviour, serve_runner


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer not-the-token"),),
        (("authorization", f"Basic {TOKEN}"),),
        (("authorization", "Bearer "),),
    ],
    ids=["none", "wrong", "not-bearer", "empty"],
)
async def test_calls_without_the_right_token_are_unauthenticated(
    journal: LoopbackJournal, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with serve_runner(journal, [Behaviour().activity()], token=TOKEN) as served:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.ListTasks(runner_pb2.ListTasksRequest(), metadata=metadata)

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in refused.value.details()
    assert TOKEN not in refused.value.details()


async def test_the_right_token_is_let_in(journal: LoopbackJournal) -> None:
    async with serve_runner(journal, [Behaviour().activity()], token=TOKEN) as served:
        response = await served.stub.ListTasks(
            runner_pb2.ListTasksRequest(), metadata=(("authorization", f"bearer {TOKEN}"),)
        )
    assert response.tasks == []


async def test_health_needs_no_token_and_reflection_takes_the_token(
    journal: LoopbackJournal,
) -> None:
    async with (
        serve_runner(journal, [Behaviour().activity()], token=TOKEN) as served,
        grpc.aio.insecure_channel(served.admin.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
        runner = await health.Check(health_pb2.HealthCheckRequest(service="tailrunner.v1.Runner"))
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        without = reflection.ServerReflectionInfo(iter([request]))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            [r async for r in without]
        call = reflection.ServerReflectionInfo(
            iter([request]), metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
        services = [s.name async for r in call for s in r.list_services_response.service]

    assert overall.status == runner.status == health_pb2.HealthCheckResponse.SERVING
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "tailrunner.v1.Runner" in services


async def test_an_empty_token_is_refused_rather_than_turning_auth_off(
    journal: LoopbackJournal,
) -> None:
    async with serve_runner(journal, [Behaviour().activity()]) as served:
        with pytest.raises(InvalidArgument) as empty:
            AdminServer(
                engine=served.runner.engine,
                tails=MemoryTailStore(),
                journal=journal.client,
                listen="127.0.0.1:0",
                token="",
            )
    assert empty.value.field == "token"
