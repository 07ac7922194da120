"""A journal on PostgreSQL whose database goes silent (a black-holed network).

Calls fail after the store's call timeout instead of hanging (a run reading
its events would otherwise stay RUNNING forever), health reports
``NOT_SERVING`` while the database does not answer, and both recover once
the network does. The silence comes from :class:`~tests.faults.tcp_proxy.TcpProxy`,
between the journal server and the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import anyio
import anyio.to_thread
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tailrunner.journal.postgres import PostgresJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc
from tests.faults.tcp_proxy import TcpProxy, proxy_for_url, through

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: Short, so that the test waits little; the default is 30 s.
CALL_TIMEOUT = 2.0


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    with proxy_for_url(postgres_url) as p:
        yield p


async def wait_for(channel: grpc.aio.Channel, status: int) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    with anyio.fail_after(60):  # bounds a hang only
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        async for response in watch:
            if response.status == status:
                break
        watch.cancel()


async def test_a_silent_database_fails_calls_in_time_and_health_follows(
    proxy: TcpProxy, postgres_url: str, pg_schema: str
) -> None:
    store = await PostgresJournalStore.open(
        through(proxy, postgres_url), schema=pg_schema, connect_timeout=2, call_timeout=CALL_TIMEOUT
    )
    aggregate = uuid.uuid4().bytes
    append = journal_pb2.AppendRequest(
        aggregate_type="t", aggregate_id=aggregate, events=[journal_pb2.NewEvent(type="e")]
    )
    async with (
        JournalServer(store, listen="127.0.0.1:0", close_store=True) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = journal_pb2_grpc.JournalStub(channel)
        await stub.Append(append, timeout=10)
        await anyio.to_thread.run_sync(proxy.blackhole)

        with pytest.raises(grpc.aio.AioRpcError) as silent:
            # No deadline of the client's: the server's store must end the call.
            request = journal_pb2.EventsRequest(aggregate_id=aggregate)
            with anyio.fail_after(60):  # bounds a hang only
                [b async for b in stub.Events(request)]
        assert silent.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no answer from the database" in (silent.value.details() or "")
        await wait_for(channel, NOT_SERVING)

        await anyio.to_thread.run_sync(proxy.heal)
        await wait_for(channel, SERVING)
        await stub.Append(append, timeout=10)
        events = [
            e
            async for b in stub.Events(journal_pb2.EventsRequest(aggregate_id=aggregate))
            for e in b.events
        ]
        assert len(events) == 2
