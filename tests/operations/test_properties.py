"""Properties of an operation's behaviour under random command sequences.

Hypothesis tells random commands, valid or not, to one operation. After every
step the stored history (events as journal bytes, with their ids) replays
into exactly the state that ``tell`` saw, and:

- the operation is created at most once, finished at most once, deleted at
  most once and only after it finished; nothing is stored after the delete;
- once done it stays done with the same result, and its ``Operation``
  carries exactly one of ``response`` or ``error`` (``error.code`` 1 exactly
  when ``STOPPED``);
- a cancel request is recorded at most once, and only before the finish;
- a refused command, or one that yields no events, leaves the state as it was.

Any text is a valid operation name or an ``InvalidOperationName``, any text a
page token's offset or an ``InvalidPageToken``: never another error.
"""

from __future__ import annotations

from collections import Counter
from uuid import UUID

from google.protobuf import wrappers_pb2
from google.rpc import code_pb2, status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from ulid import ULID

from tailrunner.errors import (
    InvalidArgument,
    InvalidOperationName,
    InvalidPageToken,
    OperationError,
)
from tailrunner.operations.behaviour import (
    EVENT_TYPES,
    Command,
    Create,
    Delete,
    Event,
    RequestCancel,
    SetCancelled,
    SetFailed,
    SetSuccessful,
    UpdateMetadata,
    advance,
    tell,
)
from tailrunner.operations.children import decode_page_token, encode_page_token
from tailrunner.operations.messages import pack
from tailrunner.operations.names import check_id, operation_name, parse_name
from tailrunner.operations.state import OperationState, StateCode, new_state, to_operation

OPERATION = UUID("00000000-0000-4000-8000-000000000001")
_CLASSES = {cls.DESCRIPTOR.full_name: cls for cls in EVENT_TYPES}
FINISHED = {"OperationSucceeded", "OperationFailed", "OperationCancelled"}

# Few distinct values, so that repeats (the idempotent cases) are frequent.
metadatas = st.sampled_from([None, "a", "b"]).map(
    lambda v: None if v is None else pack(wrappers_pb2.StringValue(value=v))
)
responses = st.sampled_from([1, 2]).map(lambda v: pack(wrappers_pb2.Int64Value(value=v)))
errors = st.sampled_from([code_pb2.OK, code_pb2.CANCELLED, code_pb2.INTERNAL]).map(
    lambda code: status_pb2.Status(code=code, message="e")
)
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(
        Create,
        name=st.sampled_from([f"operations/{OPERATION}", "operations/Bad"]),
        parent=st.sampled_from([None, "operations/p"]),
        metadata=metadatas,
        kind=st.sampled_from(["", "import"]),
    ),
    st.builds(UpdateMetadata, metadata=metadatas.filter(lambda m: m is not None)),
    st.builds(SetSuccessful, response=responses, metadata=metadatas),
    st.builds(SetFailed, error=errors, metadata=metadatas),
    st.just(RequestCancel()),
    st.builds(SetCancelled, metadata=metadatas),
    st.just(Delete()),
)


def decode(type_name: str, data: bytes) -> Event:
    return _CLASSES[type_name].FromString(data)


class OperationMachine(RuleBasedStateMachine):
    """One operation and its stored history."""

    def __init__(self) -> None:
        super().__init__()
        self.state: OperationState = new_state(OPERATION)
        self.history: list[tuple[ULID, str, bytes]] = []
        self.finished: OperationState | None = None

    @rule(command=commands)
    def tell_a_command(self, command: Command) -> None:
        before = self.state
        try:
            events = tell(before, command)
        except (OperationError, InvalidArgument):
            assert self.state == before
            return
        state = before
        for event in events:
            event_id = ULID()
            self.history.append((event_id, event.DESCRIPTOR.full_name, event.SerializeToString()))
            state = advance(state, event, event_id)
        if not events:
            assert state == before
        if before.done:
            assert state.done and state.code is before.code
            assert (state.response, state.error) == (before.response, before.error)
        self.state = state

    @invariant()
    def the_stored_history_replays_into_the_state_tell_saw(self) -> None:
        replayed = new_state(OPERATION)
        for event_id, type_name, data in self.history:
            replayed = advance(replayed, decode(type_name, data), event_id)
        assert replayed == self.state

    @invariant()
    def each_step_of_the_life_is_stored_at_most_once_in_order(self) -> None:
        types = [type_name.removeprefix("tailrunner.v1.") for _, type_name, _ in self.history]
        counts = Counter(types)
        assert counts["OperationCreated"] <= 1
        assert sum(counts[t] for t in FINISHED) <= 1
        assert counts["OperationDeleted"] <= 1 and counts["OperationCancelRequested"] <= 1
        if types:
            assert types[0] == "OperationCreated"
        finish = next((i for i, t in enumerate(types) if t in FINISHED), None)
        if "OperationDeleted" in types:
            assert finish is not None and types[-1] == "OperationDeleted"
            assert types.index("OperationDeleted") > finish
        if "OperationCancelRequested" in types:
            assert finish is None or types.index("OperationCancelRequested") < finish
        if "OperationMetadataUpdated" in types and finish is not None:
            assert len(types) - 1 - types[::-1].index("OperationMetadataUpdated") < finish

    @invariant()
    def a_done_operation_carries_exactly_one_result(self) -> None:
        if self.state.code is StateCode.UNKNOWN:
            return
        operation = to_operation(self.state)
        assert operation.done == self.state.done
        if not operation.done:
            assert operation.WhichOneof("result") is None
            return
        result = operation.WhichOneof("result")
        assert result == ("response" if self.state.code is StateCode.COMPLETE else "error")
        if result == "error":
            assert operation.error.code != code_pb2.OK
            assert (operation.error.code == code_pb2.CANCELLED) == (
                self.state.code is StateCode.STOPPED
            )


def test_operation_properties() -> None:
    run_state_machine_as_test(
        OperationMachine, settings=settings(max_examples=200, stateful_step_count=20)
    )


# --------------------------------------------------------------------------- hostile input

PARENT = UUID("00000000-0000-4000-8000-0000000000aa")
valid_ids = st.one_of(
    st.uuids().map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True),
)


@given(st.text(max_size=80))
def test_any_name_is_an_aggregate_id_or_an_invalid_name(name: str) -> None:
    try:
        aggregate = parse_name(name)
    except InvalidOperationName as exc:
        assert exc.operation == name
        return
    assert name.startswith("operations/")
    assert check_id(name.removeprefix("operations/")) == aggregate


@given(valid_ids)
def test_every_valid_id_names_one_aggregate(id: str) -> None:
    assert parse_name(operation_name(id)) == check_id(id)


@given(st.text(max_size=40), st.integers(min_value=0, max_value=50))
def test_any_page_token_is_an_offset_or_invalid(token: str, entries: int) -> None:
    try:
        offset = decode_page_token("operations/p", PARENT, token, entries)
    except InvalidPageToken:
        return
    assert 0 <= offset <= entries


@given(st.integers(min_value=0, max_value=2**63))
def test_page_tokens_round_trip(offset: int) -> None:
    token = encode_page_token(PARENT, offset)
    assert decode_page_token("operations/p", PARENT, token, offset) == offset
