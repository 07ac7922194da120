"""A toy behaviour for the framework's tests: a named counter with an idempotent init.

Its events are well-known protobuf types, so the tests need no proto of their
own: ``StringValue`` (started, with the name), ``Int64Value`` (added) and
``BoolValue`` (closed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from google.protobuf.wrappers_pb2 import BoolValue, Int64Value, StringValue
from ulid import ULID

from tailrunner.errors import Uninitialized, WrongState
from tailrunner.workflows.behaviour import ProtoCodec, check_idempotent

CounterEvent = StringValue | Int64Value | BoolValue


@dataclass(frozen=True, slots=True, kw_only=True)
class Counter:
    id: UUID
    name: str | None = None
    value: int = 0
    closed: bool = False
    #: The id of the last event: equal to the aggregate's version, always.
    last: ULID | None = None

    @property
    def state(self) -> str:
        if self.name is None:
            return "uninitialized"
        return "closed" if self.closed else "open"


@dataclass(frozen=True, slots=True)
class Init:
    name: str


@dataclass(frozen=True, slots=True)
class Add:
    amount: int


@dataclass(frozen=True, slots=True)
class Close:
    pass


Command = Init | Add | Close


class CounterBehaviour(ProtoCodec[CounterEvent]):
    def __init__(self) -> None:
        super().__init__(StringValue, Int64Value, BoolValue)

    def new_state(self, id: UUID) -> Counter:
        return Counter(id=id)

    def tell(self, state: Counter, command: Command) -> Sequence[CounterEvent]:
        match command:
            case Init(name=name):
                if state.name is None:
                    return [StringValue(value=name)]
                check_idempotent("name", state.name, name)
                return []
            case Add(amount=amount):
                if state.name is None:
                    raise Uninitialized("add")
                if state.closed:
                    raise WrongState(state.state, "add")
                return [Int64Value(value=amount)] if amount else []
            case Close():
                if state.name is None:
                    raise Uninitialized("close")
                return [] if state.closed else [BoolValue(value=True)]

    def advance(self, state: Counter, event: CounterEvent, event_id: ULID) -> Counter:
        if isinstance(event, StringValue):
            return dataclasses.replace(state, name=event.value, last=event_id)
        if isinstance(event, Int64Value):
            return dataclasses.replace(state, value=state.value + event.value, last=event_id)
        return dataclasses.replace(state, closed=True, last=event_id)


def valid(state: Counter) -> bool:
    """No sequence of commands reaches a counter that is closed or counted but never started."""
    return state.name is not None or (state.value == 0 and not state.closed)
