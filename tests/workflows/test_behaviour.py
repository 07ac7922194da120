"""Given/when/then tests of the toy behaviour, and of the helpers behaviours use: no journal."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
from google.protobuf.wrappers_pb2 import BoolValue, Int64Value, StringValue
from ulid import ULID

from tailrunner.errors import (
    ArgumentNotIdempotent,
    CommandRefused,
    InvalidArgument,
    Uninitialized,
    WrongState,
)
from tailrunner.workflows.behaviour import encode
from tests.workflows.counter import (
    Add,
    Close,
    Command,
    Counter,
    CounterBehaviour,
    CounterEvent,
    Init,
)

B = CounterBehaviour()
ID = uuid.UUID(int=1)


def given(*events: CounterEvent) -> Counter:
    state = B.new_state(ID)
    for event in events:
        state = B.advance(state, event, ULID())
    return state


def when(state: Counter, command: Command) -> Sequence[CounterEvent]:
    return B.tell(state, command)


def test_init_starts_a_new_counter() -> None:
    assert when(given(), Init("a")) == [StringValue(value="a")]


def test_init_again_with_the_same_name_is_a_no_op() -> None:
    assert when(given(StringValue(value="a")), Init("a")) == []


def test_init_again_with_another_name_names_the_argument() -> None:
    with pytest.raises(ArgumentNotIdempotent) as caught:
        when(given(StringValue(value="a")), Init("b"))
    assert caught.value.argument == "name"
    assert (caught.value.recorded, caught.value.given) == ("a", "b")
    assert "name" in str(caught.value) and "'a'" in str(caught.value) and "'b'" in str(caught.value)


def test_a_command_before_init_is_uninitialized() -> None:
    with pytest.raises(Uninitialized, match="add"):
        when(given(), Add(1))


def test_a_command_in_the_wrong_state_names_the_state() -> None:
    with pytest.raises(WrongState) as caught:
        when(given(StringValue(value="a"), BoolValue(value=True)), Add(1))
    assert caught.value.state == "closed"
    assert "closed" in str(caught.value) and "add" in str(caught.value)
    assert isinstance(caught.value, CommandRefused)


def test_add_and_close() -> None:
    started = given(StringValue(value="a"))
    assert when(started, Add(2)) == [Int64Value(value=2)]
    assert when(started, Add(0)) == []
    assert when(started, Close()) == [BoolValue(value=True)]
    assert when(given(StringValue(value="a"), BoolValue(value=True)), Close()) == []


def test_advance_never_mutates_the_previous_state() -> None:
    before = given(StringValue(value="a"))
    after = B.advance(before, Int64Value(value=3), ULID())
    assert (before.value, after.value) == (0, 3)


def test_the_codec_carries_an_event_by_its_full_name() -> None:
    event = Int64Value(value=7)
    assert B.event_type(event) == "google.protobuf.Int64Value"
    assert B.decode(B.event_type(event), encode(event)) == event


def test_the_codec_refuses_an_unknown_type_by_name() -> None:
    with pytest.raises(InvalidArgument, match=r"google\.protobuf\.Struct") as caught:
        B.decode("google.protobuf.Struct", b"")
    assert caught.value.field == "type"
    assert "google.protobuf.Int64Value" in str(caught.value)
