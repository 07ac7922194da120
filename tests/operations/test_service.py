"""google.longrunning.Operations served by a real journal server on 127.0.0.1 (memory and SQLite).

Get, Cancel, Delete, List (order, pages, tokens, filters, the collection name),
health and reflection. The service reads the journal through a WatchJournal
over the server's in-process journal, so the wait tests can see and race its
watches (test_service_wait.py).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import grpc
import pytest
from google.longrunning import operations_pb2_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import wrappers_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from tailrunner.journal.api import JournalApi
from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import HostedService, JournalServer
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.journal.store import JournalStore
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.operations import Operations
from tailrunner.operations.listing import page_size_of
from tailrunner.operations.names import parse_name
from tailrunner.operations.service import (
    DEFAULT_MAX_WAIT,
    SERVICE_NAME,
    HostedOperations,
    OperationsService,
    default_sources,
    operations_service,
)
from tailrunner.workflows.pingregistry.registry import PingRegistry
from tests.operations.journals import WatchJournal


@dataclass
class Served:
    """A journal server carrying Operations, and its clients."""

    server: JournalServer
    client: JournalClient
    ops: Operations  # the library user's, over gRPC like any service author's
    watch: WatchJournal  # the journal the service reads
    stub: Any

    async def get(self, name: str) -> lro.Operation:
        return await self.stub.GetOperation(lro.GetOperationRequest(name=name))

    async def list(self, filter: str = "", page_size: int = 0, page_token: str = "") -> Any:
        request = lro.ListOperationsRequest(
            name="operations", filter=filter, page_size=page_size, page_token=page_token
        )
        return await self.stub.ListOperations(request)

    async def list_all(self, filter: str = "", page_size: int = 0) -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            page = await self.list(filter, page_size, token)
            names.extend(op.name for op in page.operations)
            token = page.next_page_token
            if not token:
                return names


@asynccontextmanager
async def served_operations(
    store: JournalStore | None = None, *, max_wait: float = DEFAULT_MAX_WAIT
) -> AsyncIterator[Served]:
    """A journal server on 127.0.0.1 whose Operations service reads a WatchJournal."""
    watches: list[WatchJournal] = []

    def factory(journal: JournalApi) -> HostedService:
        watch = WatchJournal(journal)
        watches.append(watch)
        return HostedOperations(OperationsService(watch, default_sources(watch), max_wait=max_wait))

    async with (
        JournalServer(
            store or MemoryJournalStore(),
            listen="127.0.0.1:0",
            close_store=True,
            services=[factory],
        ) as server,
        JournalClient.connect(server.address, timeout=10) as client,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        yield Served(
            server=server,
            client=client,
            ops=Operations(client),
            watch=watches[0],
            stub=operations_pb2_grpc.OperationsStub(channel),
        )


@pytest.fixture(params=["memory", "sqlite"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    store: JournalStore
    if request.param == "memory":
        store = MemoryJournalStore()
    else:
        store = await SQLiteJournalStore.open(tmp_path / "journal.db")
    async with served_operations(store) as served:
        yield served


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violated_field(error: grpc.aio.AioRpcError) -> str:
    """The field of the BadRequest detail of an INVALID_ARGUMENT status."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    request = error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Unpack(request):
            return request.field_violations[0].field
    raise AssertionError(f"no BadRequest detail in {status}")


async def create_spaced(ops: Operations, count: int, **kwargs: Any) -> list[str]:
    """``count`` operations, each created in a later millisecond than the one before."""
    names = []
    for _ in range(count):
        names.append((await ops.create(**kwargs)).name)
        await anyio.sleep(0.002)  # create times have millisecond resolution
    return names


# -- GetOperation -------------------------------------------------------------


async def test_get_shows_a_running_a_succeeded_and_a_failed_operation(served: Served) -> None:
    running = await served.ops.create(metadata=wrappers_pb2.StringValue(value="half"))
    succeeded = await served.ops.create()
    await served.ops.set_successful(succeeded.name, wrappers_pb2.StringValue(value="ok"))
    failed = await served.ops.create()
    await served.ops.set_failed(
        failed.name, status_pb2.Status(code=code_pb2.NOT_FOUND, message="gone")
    )

    shown = await served.get(running.name)
    assert (shown.name, shown.done) == (running.name, False)
    metadata = wrappers_pb2.StringValue()
    assert shown.metadata.Unpack(metadata) and metadata.value == "half"

    shown = await served.get(succeeded.name)
    response = wrappers_pb2.StringValue()
    assert shown.done and shown.WhichOneof("result") == "response"
    assert shown.response.Unpack(response) and response.value == "ok"

    shown = await served.get(failed.name)
    assert shown.done and shown.WhichOneof("result") == "error"
    assert (shown.error.code, shown.error.message) == (code_pb2.NOT_FOUND, "gone")


async def test_get_by_a_callers_own_id(served: Served) -> None:
    await served.ops.create("build-42")
    assert (await served.get("operations/build-42")).name == "operations/build-42"


@pytest.mark.parametrize(
    "name", ["", "build-42", "operations/", "operations/UPPER", "operations/a b", "ops/x"]
)
async def test_get_of_a_malformed_name_is_invalid_argument_naming_name(
    served: Served, name: str
) -> None:
    error = await rpc_error(served.get(name))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_field(error) == "name"


async def test_a_huge_name_is_refused_without_being_sent_back(served: Served) -> None:
    name = "operations/" + "x" * (3 * 1024 * 1024)
    error = await rpc_error(served.get(name))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_field(error) == "name"
    assert len(error.details() or "") < 400
    assert str(len(name)) in (error.details() or "")


async def test_get_of_an_unknown_operation_is_not_found(served: Served) -> None:
    for name in (f"operations/{uuid4()}", "operations/never-made"):
        error = await rpc_error(served.get(name))
        assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_an_aggregate_of_another_type_is_not_an_operation(served: Served) -> None:
    order = uuid4()
    await served.client.append(AggregateRef(type="order", id=order), [NewEvent(type="placed")])
    error = await rpc_error(served.get(f"operations/{order}"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


# -- CancelOperation ----------------------------------------------------------


async def test_cancel_records_the_request_and_the_worker_finishes_it(served: Served) -> None:
    op = await served.ops.create()
    await served.stub.CancelOperation(lro.CancelOperationRequest(name=op.name))
    assert await served.ops.cancel_requested(op.name)
    # Best effort: the service records the request; the worker decides.
    assert not (await served.get(op.name)).done
    await served.ops.set_cancelled(op.name)
    shown = await served.get(op.name)
    assert shown.done and shown.error.code == code_pb2.CANCELLED


async def test_cancel_of_a_done_operation_succeeds_and_changes_nothing(served: Served) -> None:
    op = await served.ops.create()
    await served.ops.set_successful(op.name, wrappers_pb2.StringValue(value="ok"))
    before = await served.get(op.name)
    await served.stub.CancelOperation(lro.CancelOperationRequest(name=op.name))
    assert await served.get(op.name) == before
    assert not await served.ops.cancel_requested(op.name)


async def test_cancel_of_an_unknown_or_malformed_name(served: Served) -> None:
    error = await rpc_error(
        served.stub.CancelOperation(lro.CancelOperationRequest(name=f"operations/{uuid4()}"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(served.stub.CancelOperation(lro.CancelOperationRequest(name="x")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- DeleteOperation ----------------------------------------------------------


async def test_delete_of_a_running_operation_is_failed_precondition(served: Served) -> None:
    op = await served.ops.create()
    error = await rpc_error(served.stub.DeleteOperation(lro.DeleteOperationRequest(name=op.name)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not done" in (error.details() or "")
    assert not (await served.get(op.name)).done


async def test_a_deleted_operation_is_not_found_afterwards(served: Served) -> None:
    op = await served.ops.create()
    await served.ops.set_successful(op.name)
    await served.stub.DeleteOperation(lro.DeleteOperationRequest(name=op.name))
    for call in (
        served.get(op.name),
        served.stub.DeleteOperation(lro.DeleteOperationRequest(name=op.name)),
        served.stub.CancelOperation(lro.CancelOperationRequest(name=op.name)),
        served.stub.WaitOperation(lro.WaitOperationRequest(name=op.name)),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert op.name not in await served.list_all()


# -- ListOperations: order and pages ----------------------------------------


async def test_list_is_newest_first(served: Served) -> None:
    names = await create_spaced(served.ops, 5)
    assert await served.list_all() == names[::-1]


async def test_operations_of_one_millisecond_are_ordered_by_id(served: Served) -> None:
    names = [(await served.ops.create()).name for _ in range(12)]
    states = {name: await served.ops.get_state(name) for name in names}

    def key(name: str) -> tuple[datetime, bytes]:
        create_time = states[name].create_time
        assert create_time is not None
        return create_time, parse_name(name).bytes

    assert await served.list_all(page_size=5) == sorted(names, key=key, reverse=True)


async def test_pages_concatenate_to_the_whole_list(served: Served) -> None:
    names = await create_spaced(served.ops, 7)
    pages = []
    token = ""
    while True:
        page = await served.list(page_size=3, page_token=token)
        pages.append([op.name for op in page.operations])
        token = page.next_page_token
        if not token:
            break
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [name for page in pages for name in page] == names[::-1]


async def test_page_size_default_is_50_and_a_last_full_page_has_no_token(served: Served) -> None:
    for _ in range(55):
        await served.ops.create()
    page = await served.list()
    assert len(page.operations) == 50 and page.next_page_token
    rest = await served.list(page_token=page.next_page_token)
    assert len(rest.operations) == 5 and rest.next_page_token == ""
    exact = await served.list(page_size=55)
    assert len(exact.operations) == 55 and exact.next_page_token == ""
    assert len((await served.list(page_size=5000)).operations) == 55


def test_a_page_size_above_the_maximum_is_coerced_down() -> None:
    assert page_size_of(0) == 50
    assert page_size_of(1000) == 1000
    assert page_size_of(5000) == 1000


async def test_a_negative_page_size_is_invalid_argument(served: Served) -> None:
    error = await rpc_error(served.list(page_size=-1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_field(error) == "page_size"


async def test_operations_added_between_pages_are_neither_skipped_nor_repeated(
    served: Served,
) -> None:
    old = await create_spaced(served.ops, 4)
    first = await served.list(page_size=2)
    assert [op.name for op in first.operations] == [old[3], old[2]]
    new = await create_spaced(served.ops, 3)
    second = await served.list(page_size=2, page_token=first.next_page_token)
    assert [op.name for op in second.operations] == [old[1], old[0]]
    assert second.next_page_token == ""
    # The new ones are on the next listing's first page.
    assert (await served.list_all())[:3] == new[::-1]


async def test_an_operation_deleted_between_pages_is_not_listed(served: Served) -> None:
    names = await create_spaced(served.ops, 4)
    first = await served.list(page_size=2)
    await served.ops.set_successful(names[1])
    await served.ops.delete(names[1])
    second = await served.list(page_size=2, page_token=first.next_page_token)
    assert [op.name for op in second.operations] == [names[0]]


async def test_a_token_survives_a_reordered_spelling_of_its_filter(served: Served) -> None:
    await create_spaced(served.ops, 3, kind="build")
    first = await served.list("kind=build AND done=false", page_size=2)
    second = await served.list(" done = false  AND kind=build", 2, first.next_page_token)
    assert len(second.operations) == 1


def _bad_tokens(valid: str) -> list[str]:
    raw = bytearray(base64.urlsafe_b64decode(valid + "=" * (-len(valid) % 4)))
    raw[10] ^= 0x01  # the create time: a position nobody gave out
    crafted = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    return [
        "garbage!!",
        "AAAA",
        valid[:-4],
        crafted,
        valid + "AAAA",
        "x" * 10_000,
        base64.urlsafe_b64encode(b"\x01" + bytes(16)).decode(),  # a ListAggregates-like token
    ]


async def test_a_damaged_made_up_or_foreign_token_is_invalid_argument(served: Served) -> None:
    await create_spaced(served.ops, 3)
    valid = (await served.list(page_size=1)).next_page_token
    assert valid
    for token in _bad_tokens(valid):
        error = await rpc_error(served.list(page_size=1, page_token=token))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, token
        assert violated_field(error) == "page_token"
        assert len(error.details() or "") < 400


async def test_a_token_with_another_filter_is_invalid_argument(served: Served) -> None:
    await create_spaced(served.ops, 3)
    token = (await served.list("done=false", page_size=1)).next_page_token
    for other in ("", "done=true", "state=RUNNING"):
        error = await rpc_error(served.list(other, page_size=1, page_token=token))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_field(error) == "page_token"
        assert "another filter" in (error.details() or "")


@pytest.mark.parametrize("collection", ["", "operations", "operations/"])
async def test_the_collection_name_may_be_any_spelling_of_operations(
    served: Served, collection: str
) -> None:
    op = await served.ops.create()
    page = await served.stub.ListOperations(lro.ListOperationsRequest(name=collection))
    assert [o.name for o in page.operations] == [op.name]


@pytest.mark.parametrize("collection", ["projects/p/operations", "operations/x", "Operations"])
async def test_another_collection_is_invalid_argument_naming_name(
    served: Served, collection: str
) -> None:
    error = await rpc_error(served.stub.ListOperations(lro.ListOperationsRequest(name=collection)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_field(error) == "name"


# -- ListOperations: filters --------------------------------------------------


@dataclass
class Zoo:
    pending: str
    running: str
    succeeded: str
    failed: str
    cancelled: str
    parent: str
    child: str


async def _zoo(ops: Operations) -> Zoo:
    pending = (await ops.create(kind="build")).name
    running = (await ops.create(kind="build")).name
    await ops.update_metadata(running, wrappers_pb2.StringValue(value="half"))
    succeeded = (await ops.create(kind="deploy")).name
    await ops.set_successful(succeeded)
    failed = (await ops.create()).name
    await ops.set_failed(failed, RuntimeError("boom"))
    cancelled = (await ops.create()).name
    await ops.request_cancel(cancelled)
    await ops.set_cancelled(cancelled)
    parent = (await ops.create("the-parent")).name
    child = (await ops.create(parent=parent, kind="deploy")).name
    return Zoo(pending, running, succeeded, failed, cancelled, parent, child)


async def test_each_filter_selects_its_operations(served: Served) -> None:
    zoo = await _zoo(served.ops)
    expected = {
        "state=RUNNING": {zoo.pending, zoo.running, zoo.parent, zoo.child},
        "state=SUCCEEDED": {zoo.succeeded},
        "state=FAILED": {zoo.failed},
        "state=CANCELLED": {zoo.cancelled},
        "kind=build": {zoo.pending, zoo.running},
        "kind=deploy": {zoo.succeeded, zoo.child},
        'kind=""': {zoo.failed, zoo.cancelled, zoo.parent},
        "parent=operations/the-parent": {zoo.child},
        "done=true": {zoo.succeeded, zoo.failed, zoo.cancelled},
        "done=false": {zoo.pending, zoo.running, zoo.parent, zoo.child},
        "kind=deploy AND done=false": {zoo.child},
        "  state = RUNNING\tAND kind = build  ": {zoo.pending, zoo.running},
        'kind="build" AND state=RUNNING AND done=false': {zoo.pending, zoo.running},
        "state=RUNNING AND state=FAILED": set(),
        "": {
            zoo.pending,
            zoo.running,
            zoo.succeeded,
            zoo.failed,
            zoo.cancelled,
            zoo.parent,
            zoo.child,
        },
    }
    for filter, names in expected.items():
        listed = await served.list_all(filter, page_size=2)
        assert sorted(listed) == sorted(names), filter
        assert len(listed) == len(set(listed)), filter


@pytest.mark.parametrize(
    ("filter", "says"),
    [
        ("foo=1", "unknown field 'foo'"),
        ("State=RUNNING", "unknown field 'State'"),
        ("state=BOGUS", "expected one of RUNNING, SUCCEEDED, FAILED, CANCELLED"),
        ("state=running", "expected one of"),
        ("state", "expected '=' after state"),
        ("state=", "needs a value"),
        ("state==RUNNING", "needs a value"),
        ("state!=RUNNING", "unknown field 'state!'"),
        ("state:RUNNING", "unknown field 'state:RUNNING'"),
        ("state=RUNNING and kind=x", "join clauses with AND (upper case)"),
        ("state=RUNNING OR kind=x", "OR is not supported"),
        ("NOT state=RUNNING", "expected a field"),
        ("state=RUNNING AND", "expected a clause after AND"),
        ("AND state=RUNNING", "expected a field"),
        ("state=RUNNING kind=x", "expected AND"),
        ("done=yes", "expected true or false"),
        ("parent=nope", "is not an operation name"),
        ("parent=operations/UPPER", "is not an operation name"),
        ('kind="open', "is not closed"),
        ("=RUNNING", "expected a field"),
    ],
)
async def test_a_bad_filter_is_invalid_argument_naming_the_problem(
    served: Served, filter: str, says: str
) -> None:
    error = await rpc_error(served.list(filter))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_field(error) == "filter"
    assert says in (error.details() or "")


async def test_a_huge_filter_is_refused_without_being_sent_back(served: Served) -> None:
    error = await rpc_error(served.list("kind=" + "k" * 2_000_000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_field(error) == "filter"
    assert len(error.details() or "") < 400


async def test_ping_registry_workflows_are_operations_too(served: Served) -> None:
    registry = PingRegistry(served.client)
    workflow = await registry.begin("registry-1", datetime.now(UTC) + timedelta(hours=1))
    library = await served.ops.create()
    name = f"operations/{workflow}"
    shown = await served.get(name)
    assert (shown.name, shown.done) == (name, False)
    assert await served.list_all("kind=ping-registry") == [name]
    assert set(await served.list_all()) == {name, library.name}
    assert await served.list_all("kind=ping-registry AND done=true") == []


# -- health and reflection ----------------------------------------------------


async def _reflected_services(address: str) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def requests() -> AsyncIterator[Any]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for response in stub.ServerReflectionInfo(requests()):
            return [service.name for service in response.list_services_response.service]
    raise AssertionError("no reflection response")


async def _health(address: str, service: str) -> Any:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return response.status


async def test_health_and_reflection_list_the_operations_service() -> None:
    async with JournalServer(
        MemoryJournalStore(), listen="127.0.0.1:0", services=[operations_service()]
    ) as server:
        assert SERVICE_NAME == "google.longrunning.Operations"
        assert SERVICE_NAME in await _reflected_services(server.address)
        assert "tailrunner.v1.Journal" in await _reflected_services(server.address)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert await _health(server.address, SERVICE_NAME) == serving
        assert await _health(server.address, "tailrunner.v1.Journal") == serving


async def test_a_journal_server_without_services_serves_no_operations() -> None:
    async with (
        JournalServer(MemoryJournalStore(), listen="127.0.0.1:0") as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        assert SERVICE_NAME not in await _reflected_services(server.address)
        assert await _health(server.address, SERVICE_NAME) == grpc.StatusCode.NOT_FOUND
        stub = operations_pb2_grpc.OperationsStub(channel)
        error = await rpc_error(stub.GetOperation(lro.GetOperationRequest(name="operations/x")))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
