"""Given/when/then tests of the ping-registry index's behaviour (no journal)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from ulid import ULID

from tailrunner.errors import InvalidArgument
from tailrunner.workflows.behaviour import Behaviour, encode
from tailrunner.workflows.pingregistry.errors import (
    ArgumentNotIdempotent,
    UnknownWorkflow,
    WrongState,
)
from tailrunner.workflows.pingregistry.index import (
    EntryCode,
    IndexBehaviour,
    IndexCommand,
    IndexEvent,
    IndexState,
    RecordCompleted,
    RecordDeleted,
    RecordStarted,
    advance_index,
    new_index_state,
    tell_index,
)

INDEX = UUID("00000000-0000-4000-8000-0000000000aa")
FIRST = UUID("00000000-0000-4000-8000-000000000001")
SECOND = UUID("00000000-0000-4000-8000-000000000002")
DEADLINE = datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC)


def given(*commands: IndexCommand) -> IndexState:
    """The index after telling ``commands`` in order to a new one."""
    state = new_index_state(INDEX)
    for command in commands:
        for event in tell_index(state, command):
            state = advance_index(state, event)
    return state


def test_started_workflows_are_listed_in_order() -> None:
    state = given(
        RecordStarted(workflow=FIRST, deadline=DEADLINE),
        RecordStarted(workflow=SECOND, deadline=DEADLINE + timedelta(seconds=5)),
    )
    assert [(e.workflow, e.deadline, e.code) for e in state.listed()] == [
        (FIRST, DEADLINE, EntryCode.STARTED),
        (SECOND, DEADLINE + timedelta(seconds=5), EntryCode.STARTED),
    ]


def test_started_again_is_a_no_op_and_another_deadline_names_it() -> None:
    state = given(RecordStarted(workflow=FIRST, deadline=DEADLINE))
    assert tell_index(state, RecordStarted(workflow=FIRST, deadline=DEADLINE)) == []
    with pytest.raises(ArgumentNotIdempotent, match="deadline"):
        tell_index(state, RecordStarted(workflow=FIRST, deadline=DEADLINE + timedelta(1)))


def test_a_deadline_without_timezone_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        tell_index(given(), RecordStarted(workflow=FIRST, deadline=DEADLINE.replace(tzinfo=None)))
    assert caught.value.field == "deadline"


def test_completed_then_deleted_leaves_the_list() -> None:
    started = RecordStarted(workflow=FIRST, deadline=DEADLINE)
    state = given(started, RecordCompleted(workflow=FIRST))
    entry = state.get(FIRST)
    assert entry is not None and entry.code is EntryCode.COMPLETED
    state = given(started, RecordCompleted(workflow=FIRST), RecordDeleted(workflow=FIRST))
    assert state.listed() == ()
    # Every step again changes nothing: a deleted workflow does not come back.
    for command in (started, RecordCompleted(workflow=FIRST), RecordDeleted(workflow=FIRST)):
        assert tell_index(state, command) == []


def test_deleting_a_workflow_not_completed_names_its_state() -> None:
    state = given(RecordStarted(workflow=FIRST, deadline=DEADLINE))
    with pytest.raises(WrongState, match="delete is not allowed in state started"):
        tell_index(state, RecordDeleted(workflow=FIRST))


@pytest.mark.parametrize(
    "command", [RecordCompleted(workflow=SECOND), RecordDeleted(workflow=SECOND)]
)
def test_a_workflow_the_index_never_saw_is_unknown(command: IndexCommand) -> None:
    state = given(RecordStarted(workflow=FIRST, deadline=DEADLINE))
    with pytest.raises(UnknownWorkflow, match=str(SECOND)) as caught:
        tell_index(state, command)
    assert caught.value.workflow == SECOND


def test_advance_never_changes_the_index_it_is_given() -> None:
    before = given()
    (event,) = tell_index(before, RecordStarted(workflow=FIRST, deadline=DEADLINE))
    after = advance_index(before, event)
    assert before.entries == () and len(after.entries) == 1


def test_the_index_behaviour_carries_its_events_as_protobuf_by_full_name() -> None:
    behaviour: Behaviour[IndexState, IndexCommand, IndexEvent] = IndexBehaviour()
    state = behaviour.new_state(INDEX)
    (event,) = behaviour.tell(state, RecordStarted(workflow=FIRST, deadline=DEADLINE))
    assert behaviour.event_type(event) == "tailrunner.v1.IndexWorkflowStarted"
    decoded = behaviour.decode(behaviour.event_type(event), encode(event))
    assert decoded == event
    assert behaviour.advance(state, decoded, ULID()) == advance_index(state, event)
