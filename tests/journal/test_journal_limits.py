"""One client cannot stall the journal with one huge append (issue 15, defect 2).

The limits, each refused as INVALID_ARGUMENT naming the field, through the
real gRPC server: events per append, the length of an aggregate type and of
an event type, and an event's size counting its type. The request size is
gRPC's to refuse (RESOURCE_EXHAUSTED, naming the limit), set on its own.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from tailrunner.errors import InvalidArgument
from tailrunner.journal.append_checks import DEFAULT_MAX_EVENTS_PER_APPEND, MAX_TYPE_LENGTH
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer, default_max_request_size
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc


@pytest.fixture
async def stub() -> AsyncIterator[journal_pb2_grpc.JournalStub]:
    async with (
        JournalServer(
            MemoryJournalStore(), listen="127.0.0.1:0", max_event_size=1000, close_store=True
        ) as server,
        grpc.aio.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        ) as channel,
    ):
        yield journal_pb2_grpc.JournalStub(channel)


def append(events: list[journal_pb2.NewEvent], aggregate_type: str = "thing") -> object:
    return journal_pb2.AppendRequest(
        aggregate_type=aggregate_type, aggregate_id=uuid.uuid4().bytes, events=events
    )


async def refused(stub: journal_pb2_grpc.JournalStub, request: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Append(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return error.value.details() or ""


async def test_more_events_than_the_limit_per_append_are_refused(
    stub: journal_pb2_grpc.JournalStub,
) -> None:
    tiny = journal_pb2.NewEvent(type="t")
    at_limit = await stub.Append(append([tiny] * DEFAULT_MAX_EVENTS_PER_APPEND))
    assert len(at_limit.event_ids) == DEFAULT_MAX_EVENTS_PER_APPEND

    details = await refused(stub, append([tiny] * (DEFAULT_MAX_EVENTS_PER_APPEND + 1)))

    assert details.startswith("events:") and "over the limit of 10000 per append" in details


async def test_types_longer_than_the_limit_are_refused(stub: journal_pb2_grpc.JournalStub) -> None:
    long = "t" * (MAX_TYPE_LENGTH + 1)
    await stub.Append(append([journal_pb2.NewEvent(type="t" * MAX_TYPE_LENGTH)]))

    assert (await refused(stub, append([journal_pb2.NewEvent(type="t")], long))).startswith(
        "aggregate_type:"
    )
    huge = "t" * (3 * 1024 * 1024)
    assert (await refused(stub, append([journal_pb2.NewEvent(type=huge)]))).startswith(
        "events[0].type:"
    )


async def test_an_events_type_counts_toward_its_size(stub: journal_pb2_grpc.JournalStub) -> None:
    fits = journal_pb2.NewEvent(type="t" * 200, data=b"x" * 800)
    await stub.Append(append([fits]))

    over = journal_pb2.NewEvent(type="t" * 201, data=b"x" * 800)
    details = await refused(stub, append([over]))

    assert details.startswith("events[0].data:") and "1001 bytes" in details


async def test_the_request_size_limit_is_its_own() -> None:
    # More than the default of 1 MiB events (5 MiB): a limit of its own.
    limit = 6 * 1024 * 1024
    async with (
        JournalServer(
            MemoryJournalStore(),
            listen="127.0.0.1:0",
            max_event_size=1024 * 1024,
            max_request_size=limit,
            close_store=True,
        ) as server,
        grpc.aio.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        ) as channel,
    ):
        stub = journal_pb2_grpc.JournalStub(channel)
        event = journal_pb2.NewEvent(type="t", data=b"x" * (1024 * 1024 - 1))
        # Five maximal events: over the 5 MiB the event size alone gives, within the limit.
        accepted = await stub.Append(append([event] * 5))
        assert len(accepted.event_ids) == 5

        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Append(append([event] * 6))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(limit) in (error.value.details() or "")


async def test_the_default_request_size_follows_the_event_size() -> None:
    assert default_max_request_size(1024 * 1024) == 5 * 1024 * 1024
    assert default_max_request_size(1000) == 4 * 1024 * 1024


async def test_a_request_limit_below_the_event_limit_is_refused_naming_both() -> None:
    with pytest.raises(InvalidArgument) as caught:
        JournalServer(
            MemoryJournalStore(),
            listen="127.0.0.1:0",
            max_event_size=2000,
            max_request_size=1999,
        )
    assert caught.value.field == "max_request_size"
    assert "1999" in str(caught.value) and "max_event_size (2000 bytes)" in str(caught.value)


def test_serve_refuses_a_request_limit_below_the_event_limit(tailrunner_cli: list[str]) -> None:
    command = [*tailrunner_cli, "journal", "serve", "--store", "memory:"]
    done = subprocess.run(
        [*command, "--max-event-size", "2MiB", "--max-request-size", "1MiB"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--max-request-size (1048576 bytes) is below --max-event-size (2097152 bytes)" in (
        done.stderr
    )
