"""``Operations`` against a real journal over loopback gRPC: create, get, finish, cancel, delete."""

from __future__ import annotations

import uuid
from collections import Counter
from contextlib import aclosing
from uuid import UUID

import anyio
import pytest
from google.protobuf import empty_pb2, wrappers_pb2
from google.rpc import code_pb2, status_pb2

from tailrunner.errors import (
    InvalidArgument,
    InvalidOperationName,
    OperationAlreadyExists,
    OperationFinished,
    OperationNotDone,
    OperationNotFound,
)
from tailrunner.journal.client import JournalClient
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.operations import OPERATION_TYPE, Operations, StateCode
from tailrunner.operations.messages import pack
from tailrunner.operations.names import check_id, parse_name
from tests.operations.journals import WatchJournal


def text(value: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=value)


async def stored(client: JournalClient, aggregate: UUID) -> Counter[str]:
    """How many events of each type ``aggregate`` has (short type names)."""
    counts: Counter[str] = Counter()
    async with aclosing(client.events(aggregate)) as batches:
        async for batch in batches:
            for event in batch.events:
                counts[event.type.removeprefix("tailrunner.v1.")] += 1
    return counts


# --------------------------------------------------------------------------- create and get


async def test_create_names_a_new_operation_by_a_random_uuid(ops: Operations) -> None:
    operation = await ops.create()
    id = operation.name.removeprefix("operations/")
    assert operation.name.startswith("operations/") and UUID(id).version == 4
    assert not operation.done and operation.WhichOneof("result") is None
    assert await ops.get(operation.name) == operation
    assert (await ops.create()).name != operation.name


async def test_create_with_an_id_metadata_and_kind(ops: Operations, client: JournalClient) -> None:
    operation = await ops.create("import-7", metadata=text("queued"), kind="import")
    assert operation.name == "operations/import-7"
    assert operation.metadata == pack(text("queued"))
    state = await ops.get_state("operations/import-7")
    assert (state.code, state.kind, state.parent) == (StateCode.PENDING, "import", None)
    assert state.create_time is not None and state.create_time == state.update_time
    # The aggregate is the id's uuid5, of type "operation".
    assert await stored(client, check_id("import-7")) == Counter({"OperationCreated": 1})
    info, _ = await client.list_aggregates(OPERATION_TYPE)
    assert [a.id for a in info] == [check_id("import-7")]


async def test_a_uuid_id_is_the_aggregate_id(ops: Operations, client: JournalClient) -> None:
    id = uuid.uuid4()
    await ops.create(str(id), metadata=pack(text("as any")))
    assert (await ops.get(f"operations/{id}")).metadata == pack(text("as any"))
    assert await stored(client, id) == Counter({"OperationCreated": 1})


@pytest.mark.parametrize("id", ["", "Upper", "-x", "a_b", "x" * 64, "a/b"])
async def test_create_refuses_a_malformed_id(ops: Operations, id: str) -> None:
    with pytest.raises(InvalidOperationName) as info:
        await ops.create(id)
    assert info.value.field == "id" and info.value.operation == id


async def test_every_method_refuses_a_malformed_name(ops: Operations) -> None:
    calls = [
        ops.get("op/x"),
        ops.update_metadata("op/x", text("m")),
        ops.set_successful("op/x"),
        ops.set_failed("op/x", RuntimeError("e")),
        ops.request_cancel("op/x"),
        ops.set_cancelled("op/x"),
        ops.delete("op/x"),
        ops.wait("op/x", 1),
        ops.batch_wait(["op/x"], 1),
        ops.until_cancel_requested("op/x"),
        ops.list_children("op/x"),
        ops.traverse("op/x"),
    ]
    for call in calls:
        with pytest.raises(InvalidOperationName, match="'op/x'"):
            await call


async def test_an_unknown_operation_is_not_found(ops: Operations) -> None:
    for call in (
        ops.get("operations/nope"),
        ops.set_successful("operations/nope"),
        ops.request_cancel("operations/nope"),
        ops.wait("operations/nope", 1),
        ops.list_children("operations/nope"),
    ):
        with pytest.raises(OperationNotFound, match="operations/nope"):
            await call


async def test_a_user_id_is_unique(ops: Operations) -> None:
    await ops.create("once", metadata=text("first"))
    with pytest.raises(OperationAlreadyExists, match="operations/once"):
        await ops.create("once", metadata=text("second"))
    assert (await ops.get("operations/once")).metadata == pack(text("first"))


async def test_of_two_concurrent_creates_of_one_id_exactly_one_wins(
    ops: Operations, journal: WatchJournal, client: JournalClient
) -> None:
    # Both load the empty aggregate before either appends.
    journal.hold_appends = 2
    outcomes: list[str] = []

    async def create(label: str) -> None:
        try:
            await ops.create("contested", metadata=text(label))
        except OperationAlreadyExists:
            outcomes.append("refused")
        else:
            outcomes.append(label)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(create, "a")
            group.start_soon(create, "b")
    assert sorted(outcomes)[1] == "refused" and sorted(outcomes)[0] in ("a", "b")
    winner = next(o for o in outcomes if o != "refused")
    assert (await ops.get("operations/contested")).metadata == pack(text(winner))
    assert await stored(client, check_id("contested")) == Counter({"OperationCreated": 1})


async def test_an_id_of_another_aggregate_type_is_taken_and_not_an_operation(
    ops: Operations, client: JournalClient
) -> None:
    other = uuid.uuid4()
    await client.append(AggregateRef(type="ping-registry", id=other), [NewEvent(type="x")])
    with pytest.raises(OperationAlreadyExists):
        await ops.create(str(other))
    with pytest.raises(OperationNotFound):
        await ops.get(f"operations/{other}")


# --------------------------------------------------------------------------- progress and finish


async def test_update_metadata_makes_it_running(ops: Operations) -> None:
    name = (await ops.create(metadata=text("0%"))).name
    operation = await ops.update_metadata(name, text("50%"))
    assert operation.metadata == pack(text("50%")) and not operation.done
    state = await ops.get_state(name)
    assert state.code is StateCode.RUNNING
    assert state.update_time is not None and state.create_time is not None
    assert state.update_time >= state.create_time


async def test_set_successful_finishes_it_with_the_response(ops: Operations) -> None:
    name = (await ops.create()).name
    operation = await ops.set_successful(name, wrappers_pb2.Int64Value(value=7), text("done"))
    assert operation.done and operation.WhichOneof("result") == "response"
    assert operation.response == pack(wrappers_pb2.Int64Value(value=7))
    assert operation.metadata == pack(text("done"))
    assert await ops.get(name) == operation


async def test_set_successful_without_a_response_packs_empty(ops: Operations) -> None:
    name = (await ops.create()).name
    operation = await ops.set_successful(name)
    assert operation.response.Is(empty_pb2.Empty.DESCRIPTOR)


async def test_set_failed_with_a_status_or_an_exception(ops: Operations) -> None:
    first = (await ops.create()).name
    status = status_pb2.Status(code=code_pb2.DATA_LOSS, message="torn page")
    operation = await ops.set_failed(first, status)
    assert operation.done and operation.WhichOneof("result") == "error"
    assert operation.error == status
    assert (await ops.get_state(first)).code is StateCode.FAIL

    second = (await ops.create()).name
    operation = await ops.set_failed(second, KeyError("bucket"))
    assert (operation.error.code, operation.error.message) == (code_pb2.UNKNOWN, "'bucket'")

    third = (await ops.create()).name
    with pytest.raises(InvalidArgument, match=r"error\.code"):
        await ops.set_failed(third, status_pb2.Status(code=code_pb2.OK))
    assert not (await ops.get(third)).done


async def test_finishing_twice_is_refused_and_stores_nothing(
    ops: Operations, client: JournalClient
) -> None:
    name = (await ops.create()).name
    await ops.set_successful(name, text("result"))
    for finish in (
        ops.set_failed(name, RuntimeError("late")),
        ops.set_cancelled(name),
        ops.set_successful(name, text("another result")),
        ops.update_metadata(name, text("late progress")),
    ):
        with pytest.raises(OperationFinished) as info:
            await finish
        assert info.value.operation == name and info.value.state == "COMPLETE"
    assert (await ops.get(name)).response == pack(text("result"))
    assert await stored(client, parse_name(name)) == Counter(
        {"OperationCreated": 1, "OperationSucceeded": 1}
    )


async def test_a_repeated_identical_finish_is_a_no_op(
    ops: Operations, client: JournalClient
) -> None:
    name = (await ops.create()).name
    first = await ops.set_successful(name, text("result"), text("final"))
    assert await ops.set_successful(name, text("result"), text("final")) == first
    assert await stored(client, parse_name(name)) == Counter(
        {"OperationCreated": 1, "OperationSucceeded": 1}
    )


# --------------------------------------------------------------------------- cancel


async def test_request_cancel_records_the_request_then_set_cancelled_finishes(
    ops: Operations, client: JournalClient
) -> None:
    name = (await ops.create()).name
    assert not await ops.cancel_requested(name)
    operation = await ops.request_cancel(name)
    assert not operation.done and await ops.cancel_requested(name)
    await ops.request_cancel(name)
    operation = await ops.set_cancelled(name, text("stopped at 3"))
    assert operation.done and operation.error.code == code_pb2.CANCELLED
    assert operation.metadata == pack(text("stopped at 3"))
    assert (await ops.get_state(name)).code is StateCode.STOPPED
    assert await stored(client, parse_name(name)) == Counter(
        {"OperationCreated": 1, "OperationCancelRequested": 1, "OperationCancelled": 1}
    )


async def test_request_cancel_on_a_finished_operation_changes_nothing(
    ops: Operations, client: JournalClient
) -> None:
    name = (await ops.create()).name
    done = await ops.set_failed(name, RuntimeError("boom"))
    assert await ops.request_cancel(name) == done
    assert not await ops.cancel_requested(name)
    assert await stored(client, parse_name(name)) == Counter(
        {"OperationCreated": 1, "OperationFailed": 1}
    )


# --------------------------------------------------------------------------- delete


async def test_delete_only_a_done_operation_which_is_then_not_found(ops: Operations) -> None:
    name = (await ops.create("to-delete")).name
    with pytest.raises(OperationNotDone, match="PENDING"):
        await ops.delete(name)
    await ops.set_successful(name)
    await ops.delete(name)
    for call in (ops.get(name), ops.delete(name), ops.request_cancel(name), ops.wait(name, 0)):
        with pytest.raises(OperationNotFound, match=name):
            await call
    # Ids are never reused.
    with pytest.raises(OperationAlreadyExists):
        await ops.create("to-delete")


async def test_a_second_operations_instance_sees_the_same_operations(
    ops: Operations, journal: WatchJournal
) -> None:
    name = (await ops.create()).name
    other = Operations(journal)
    await other.update_metadata(name, text("from the other"))
    assert (await ops.get(name)).metadata == pack(text("from the other"))
    await ops.set_successful(name)
    assert (await other.get(name)).done
