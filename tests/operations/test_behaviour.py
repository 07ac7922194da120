"""Given/when/then tests of an operation's behaviour, of its names, and of its messages."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from uuid import UUID

import grpc
import pytest
from google.protobuf import any_pb2, empty_pb2, wrappers_pb2
from google.rpc import code_pb2, status_pb2
from ulid import ULID

from tailrunner.errors import (
    InvalidArgument,
    InvalidOperationName,
    InvalidPageToken,
    OperationAlreadyExists,
    OperationFinished,
    OperationNotDone,
    OperationNotFound,
    TaskNotFound,
)
from tailrunner.operations.behaviour import (
    Command,
    Create,
    Delete,
    Event,
    OperationBehaviour,
    RequestCancel,
    SetCancelled,
    SetFailed,
    SetSuccessful,
    UpdateMetadata,
    advance,
    metadata_of,
    tell,
)
from tailrunner.operations.children import (
    AddChild,
    advance_children,
    decode_page_token,
    encode_page_token,
    new_children_state,
    tell_children,
)
from tailrunner.operations.messages import MAX_ERROR_MESSAGE, pack, pack_response, status_of
from tailrunner.operations.names import (
    OPERATION_NAMESPACE,
    check_id,
    children_index_id,
    parse_name,
)
from tailrunner.operations.state import (
    CANCELLED_MESSAGE,
    OperationState,
    StateCode,
    new_state,
    to_operation,
)
from tailrunner.proto.v1 import operations_pb2 as pb
from tailrunner.workflows.behaviour import Behaviour, encode

OPERATION = UUID("00000000-0000-4000-8000-000000000001")
NAME = f"operations/{OPERATION}"
PARENT = "operations/import-1"


def meta(value: str) -> any_pb2.Any:
    return pack(wrappers_pb2.StringValue(value=value))


CREATE = Create(name=NAME, parent=PARENT, metadata=meta("queued"), kind="import")
RESPONSE = pack(wrappers_pb2.Int64Value(value=42))
ERROR = status_pb2.Status(code=code_pb2.NOT_FOUND, message="no such bucket")


def replay(state: OperationState, events: Sequence[Event]) -> OperationState:
    for event in events:
        state = advance(state, event, ULID())
    return state


def given(*commands: Command) -> OperationState:
    """The state after telling ``commands`` in order to a new operation."""
    state = new_state(OPERATION)
    for command in commands:
        state = replay(state, tell(state, command))
    return state


# --------------------------------------------------------------------------- create


def test_a_new_operation_does_not_exist() -> None:
    state = new_state(OPERATION)
    assert state.code is StateCode.UNKNOWN
    assert not state.exists and not state.done


def test_create_makes_a_pending_operation_with_its_parent_kind_metadata_and_times() -> None:
    state = new_state(OPERATION)
    event_id = ULID()
    state = advance(state, tell(state, CREATE)[0], event_id)
    assert state.code is StateCode.PENDING
    assert (state.name, state.parent, state.kind) == (NAME, PARENT, "import")
    assert state.metadata == meta("queued")
    assert state.create_time == state.update_time == event_id.datetime
    assert state.exists and not state.done and not state.cancel_requested


def test_create_without_parent_or_metadata() -> None:
    state = given(Create(name=NAME))
    assert state.parent is None and state.metadata is None and state.kind == ""


def test_create_on_an_existing_operation_is_refused_with_already_exists() -> None:
    state = given(CREATE)
    with pytest.raises(OperationAlreadyExists, match=NAME):
        tell(state, CREATE)


def test_create_checks_its_name_and_parent() -> None:
    with pytest.raises(InvalidOperationName) as info:
        tell(new_state(OPERATION), Create(name="ops/x"))
    assert info.value.field == "name"
    with pytest.raises(InvalidOperationName) as info:
        tell(new_state(OPERATION), Create(name=NAME, parent="operations/Bad"))
    assert info.value.field == "parent"


@pytest.mark.parametrize(
    "command",
    [
        UpdateMetadata(metadata=meta("x")),
        SetSuccessful(response=RESPONSE),
        SetFailed(error=ERROR),
        RequestCancel(),
        SetCancelled(),
        Delete(),
    ],
)
def test_every_other_command_on_an_operation_never_created_is_not_found(command: Command) -> None:
    with pytest.raises(OperationNotFound):
        tell(new_state(OPERATION), command)


# --------------------------------------------------------------------------- progress


def test_a_metadata_update_makes_it_running_and_replaces_the_metadata() -> None:
    state = given(CREATE, UpdateMetadata(metadata=meta("10%")))
    assert state.code is StateCode.RUNNING
    assert state.metadata == meta("10%")
    state = replay(state, tell(state, UpdateMetadata(metadata=meta("20%"))))
    assert state.metadata == meta("20%")


def test_update_time_follows_the_latest_event() -> None:
    state = given(CREATE)
    later = ULID()
    state = advance(state, tell(state, UpdateMetadata(metadata=meta("x")))[0], later)
    assert state.update_time == later.datetime
    assert state.create_time is not None and state.create_time <= later.datetime


# --------------------------------------------------------------------------- finishing


def test_set_successful_completes_it_with_its_response_and_final_metadata() -> None:
    state = given(CREATE, SetSuccessful(response=RESPONSE, metadata=meta("done")))
    assert state.code is StateCode.COMPLETE and state.done
    assert state.response == RESPONSE and state.error is None
    assert state.metadata == meta("done")


def test_a_finish_without_metadata_keeps_the_metadata() -> None:
    state = given(CREATE, UpdateMetadata(metadata=meta("90%")), SetSuccessful(response=RESPONSE))
    assert state.metadata == meta("90%")


def test_set_failed_fails_it_with_its_error() -> None:
    state = given(CREATE, SetFailed(error=ERROR))
    assert state.code is StateCode.FAIL and state.done
    assert state.error == ERROR and state.response is None


def test_set_failed_with_code_cancelled_is_a_cancelled_operation() -> None:
    state = given(CREATE, SetFailed(error=status_pb2.Status(code=code_pb2.CANCELLED)))
    assert state.code is StateCode.STOPPED


def test_set_failed_refuses_code_ok() -> None:
    with pytest.raises(InvalidArgument) as info:
        tell(given(CREATE), SetFailed(error=status_pb2.Status(code=code_pb2.OK)))
    assert info.value.field == "error.code"


def test_set_cancelled_stops_it_with_error_cancelled() -> None:
    state = given(CREATE, SetCancelled(metadata=meta("stopped at 30%")))
    assert state.code is StateCode.STOPPED and state.done
    assert state.error == status_pb2.Status(code=code_pb2.CANCELLED, message=CANCELLED_MESSAGE)
    assert state.metadata == meta("stopped at 30%")


FINISHES: list[Command] = [
    SetSuccessful(response=RESPONSE),
    SetFailed(error=ERROR),
    SetCancelled(),
]


@pytest.mark.parametrize("first", FINISHES)
@pytest.mark.parametrize("second", FINISHES)
def test_finishing_a_finished_operation_otherwise_is_refused_naming_its_state(
    first: Command, second: Command
) -> None:
    state = given(CREATE, first)
    if type(first) is type(second):
        # The very same finish again: a retry, which changes nothing.
        assert tell(state, second) == []
        return
    with pytest.raises(OperationFinished) as info:
        tell(state, second)
    assert info.value.state == state.code.value
    assert NAME in str(info.value) and state.code.value in str(info.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (SetSuccessful(response=RESPONSE), SetSuccessful(response=pack_response(None))),
        (SetSuccessful(response=RESPONSE), SetSuccessful(response=RESPONSE, metadata=meta("b"))),
        (SetFailed(error=ERROR), SetFailed(error=status_pb2.Status(code=code_pb2.INTERNAL))),
        (SetCancelled(metadata=meta("a")), SetCancelled(metadata=meta("b"))),
    ],
)
def test_a_finish_that_differs_from_the_recorded_one_is_refused(
    first: Command, second: Command
) -> None:
    with pytest.raises(OperationFinished):
        tell(given(CREATE, first), second)


def test_a_repeated_finish_with_the_recorded_metadata_is_a_no_op() -> None:
    finish = SetSuccessful(response=RESPONSE, metadata=meta("done"))
    assert tell(given(CREATE, finish), finish) == []


def test_metadata_of_a_finished_operation_cannot_change() -> None:
    with pytest.raises(OperationFinished, match="update-metadata"):
        tell(given(CREATE, SetFailed(error=ERROR)), UpdateMetadata(metadata=meta("x")))


# --------------------------------------------------------------------------- cancel


def test_request_cancel_records_the_request_once() -> None:
    state = given(CREATE)
    events = tell(state, RequestCancel())
    assert events == [pb.OperationCancelRequested()]
    state = replay(state, events)
    assert state.cancel_requested and not state.done
    assert state.code is StateCode.PENDING
    assert tell(state, RequestCancel()) == []


@pytest.mark.parametrize("finish", FINISHES)
def test_request_cancel_on_a_finished_operation_is_a_no_op(finish: Command) -> None:
    assert tell(given(CREATE, finish), RequestCancel()) == []


def test_a_cancel_requested_operation_may_still_succeed() -> None:
    state = given(CREATE, RequestCancel(), SetSuccessful(response=RESPONSE))
    assert state.code is StateCode.COMPLETE and state.cancel_requested


# --------------------------------------------------------------------------- delete


def test_delete_is_refused_until_done_naming_the_state() -> None:
    for state in (given(CREATE), given(CREATE, UpdateMetadata(metadata=meta("x")))):
        with pytest.raises(OperationNotDone) as info:
            tell(state, Delete())
        assert info.value.state == state.code.value


@pytest.mark.parametrize("finish", FINISHES)
def test_a_deleted_operation_is_not_found(finish: Command) -> None:
    state = given(CREATE, finish, Delete())
    assert state.deleted and not state.exists
    for command in (Delete(), RequestCancel(), finish):
        with pytest.raises(OperationNotFound):
            tell(state, command)
    with pytest.raises(OperationAlreadyExists):
        tell(state, CREATE)


# --------------------------------------------------------------------------- the Operation


def test_to_operation_of_a_running_one_has_no_result() -> None:
    operation = to_operation(given(CREATE, UpdateMetadata(metadata=meta("5%"))))
    assert operation.name == NAME and not operation.done
    assert operation.metadata == meta("5%")
    assert operation.WhichOneof("result") is None


def test_to_operation_of_a_done_one_has_exactly_one_result() -> None:
    succeeded = to_operation(given(CREATE, SetSuccessful(response=RESPONSE)))
    assert succeeded.done and succeeded.WhichOneof("result") == "response"
    assert succeeded.response == RESPONSE
    failed = to_operation(given(CREATE, SetFailed(error=ERROR)))
    assert failed.done and failed.WhichOneof("result") == "error" and failed.error == ERROR
    cancelled = to_operation(given(CREATE, SetCancelled()))
    assert cancelled.WhichOneof("result") == "error" and cancelled.error.code == 1


def test_no_response_is_a_packed_empty() -> None:
    operation = to_operation(given(CREATE, SetSuccessful(response=pack_response(None))))
    assert operation.response.Is(empty_pb2.Empty.DESCRIPTOR)


def test_to_operation_copies_what_the_state_holds() -> None:
    state = given(CREATE)
    operation = to_operation(state)
    operation.metadata.value = b"changed"
    assert state.metadata == meta("queued")


def test_metadata_of_events() -> None:
    assert metadata_of(pb.OperationMetadataUpdated(metadata=meta("a"))) == meta("a")
    assert metadata_of(pb.OperationSucceeded(response=RESPONSE)) is None
    assert metadata_of(pb.OperationSucceeded(response=RESPONSE, metadata=meta("b"))) == meta("b")
    assert metadata_of(pb.OperationCancelRequested()) is None


def test_the_behaviour_encodes_and_decodes_every_event() -> None:
    behaviour: Behaviour[OperationState, Command, Event] = OperationBehaviour()
    events: list[Event] = [
        *tell(new_state(OPERATION), CREATE),
        pb.OperationMetadataUpdated(metadata=meta("x")),
        pb.OperationSucceeded(response=RESPONSE),
        pb.OperationFailed(error=ERROR),
        pb.OperationCancelRequested(),
        pb.OperationCancelled(),
        pb.OperationDeleted(),
    ]
    for event in events:
        assert behaviour.decode(behaviour.event_type(event), encode(event)) == event
    with pytest.raises(InvalidArgument):
        behaviour.decode("tailrunner.v1.Nope", b"")


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("id", ["a", "import-1", "0abc", "x" * 63, "a-b-c9"])
def test_an_aip_122_id_maps_to_its_uuid5(id: str) -> None:
    assert parse_name(f"operations/{id}") == check_id(id) == uuid.uuid5(OPERATION_NAMESPACE, id)


def test_a_canonical_uuid_id_is_the_aggregate_id() -> None:
    assert parse_name(NAME) == OPERATION == check_id(str(OPERATION))


@pytest.mark.parametrize(
    "name",
    [
        "",
        "operations/",
        "operation/abc",
        "operations/ABC",
        "operations/-abc",
        "operations/abc-",
        "operations/a_b",
        "operations/a/b",
        "operations/" + "x" * 64,
        "operations/A1B2C3D4-0000-4000-8000-00000000000F",
        "operations/{a1b2c3d4-0000-4000-8000-00000000000f}",
        " operations/abc",
    ],
)
def test_a_malformed_name_is_refused_naming_it(name: str) -> None:
    with pytest.raises(InvalidOperationName) as info:
        parse_name(name)
    assert isinstance(info.value, ValueError) and isinstance(info.value, InvalidArgument)
    assert info.value.operation == name and info.value.field == "name"
    assert repr(name) in str(info.value)


def test_children_index_ids_differ_from_operation_ids() -> None:
    assert children_index_id(OPERATION) not in {OPERATION, check_id(str(OPERATION))}
    assert children_index_id(OPERATION) == children_index_id(OPERATION)


# --------------------------------------------------------------------------- children index


def test_a_child_is_recorded_once_in_order() -> None:
    state = new_children_state(OPERATION)
    for child in ("operations/b", "operations/a", "operations/b"):
        for event in tell_children(state, AddChild(name=child)):
            state = advance_children(state, event, ULID())
    assert state.children == ("operations/b", "operations/a")


def test_page_tokens_round_trip_and_refuse_others() -> None:
    other = uuid.uuid4()
    token = encode_page_token(OPERATION, 3)
    assert decode_page_token(NAME, OPERATION, token, 5) == 3
    assert decode_page_token(NAME, OPERATION, "", 0) == 0
    for bad in ("!!", "abc", encode_page_token(other, 3), encode_page_token(OPERATION, 6)):
        with pytest.raises(InvalidPageToken) as info:
            decode_page_token(NAME, OPERATION, bad, 5)
        assert info.value.operation == NAME and info.value.field == "page_token"


# --------------------------------------------------------------------------- messages


def test_an_exception_fails_with_code_unknown_and_its_text() -> None:
    status = status_of(RuntimeError("disk full"))
    assert (status.code, status.message) == (code_pb2.UNKNOWN, "disk full")
    assert status_of(RuntimeError()).message == "RuntimeError"


def test_an_exception_with_a_grpc_code_keeps_it() -> None:
    class Rpc(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self) -> str:
            return "quota"

    class ApiCore(Exception):
        grpc_status_code = grpc.StatusCode.PERMISSION_DENIED

    assert (status_of(Rpc()).code, status_of(Rpc()).message) == (
        code_pb2.RESOURCE_EXHAUSTED,
        "quota",
    )
    assert status_of(ApiCore("no")).code == code_pb2.PERMISSION_DENIED
    assert status_of(TaskNotFound("task t")).code == code_pb2.NOT_FOUND


def test_an_exception_message_is_bounded() -> None:
    message = status_of(ValueError("x" * 10_000)).message
    assert len(message) == MAX_ERROR_MESSAGE and message.endswith("…")


def test_a_status_is_copied() -> None:
    status = status_of(ERROR)
    assert status == ERROR and status is not ERROR


def test_pack_copies_an_any_and_packs_a_message() -> None:
    packed = meta("x")
    assert pack(packed) == packed and pack(packed) is not packed
    assert pack(wrappers_pb2.StringValue(value="x")) == packed
