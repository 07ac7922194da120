"""Given/when/then tests of the ping-registry workflow's behaviour (no journal)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest
from ulid import ULID

from tailrunner.errors import InvalidArgument
from tailrunner.workflows.behaviour import Behaviour, encode
from tailrunner.workflows.pingregistry.behaviour import (
    CANCELLED_CODE,
    CANCELLED_MESSAGE,
    EXPIRED_CODE,
    AbortExpired,
    AppendPing,
    Cancel,
    Command,
    Commit,
    Delete,
    End,
    Event,
    Init,
    PingRegistryBehaviour,
    PostSummary,
    advance,
    tell,
)
from tailrunner.workflows.pingregistry.errors import (
    ArgumentNotIdempotent,
    Uninitialized,
    WrongState,
)
from tailrunner.workflows.pingregistry.state import State, StateCode, new_state

WORKFLOW = UUID("00000000-0000-4000-8000-000000000001")
DEADLINE = datetime(2026, 12, 1, 12, 0, 30, 123456, tzinfo=UTC)
INIT = Init(registry="exreg", deadline=DEADLINE)
PING = AppendPing(code=0, message="ok", pinger="server-a")
SUMMARY = PostSummary(code=0, message="2 pings")


def replay(state: State, events: Sequence[Event]) -> State:
    """Advance ``state`` over ``events``, giving each a fresh event id."""
    for event in events:
        state = advance(state, event, ULID())
    return state


def given(*commands: Command) -> State:
    """The state after telling ``commands`` in order to a new workflow."""
    state = new_state(WORKFLOW)
    for command in commands:
        state = replay(state, tell(state, command))
    return state


def test_a_new_workflow_is_uninitialized() -> None:
    state = new_state(WORKFLOW)
    assert state.id == WORKFLOW
    assert state.code is StateCode.UNINITIALIZED
    assert state.registry == "" and state.deadline is None and state.pings == ()


def test_init_starts_the_workflow_with_its_registry_and_deadline() -> None:
    state = given(INIT)
    assert state.code is StateCode.INITIALIZED
    assert state.registry == "exreg"
    assert state.deadline == DEADLINE


def test_init_repeated_with_the_same_arguments_is_a_no_op() -> None:
    state = given(INIT, PING)
    # The same instant in another timezone is the same deadline.
    same = Init(registry="exreg", deadline=DEADLINE.astimezone(timezone(timedelta(hours=2))))
    assert tell(state, INIT) == []
    assert tell(state, same) == []


@pytest.mark.parametrize(
    ("command", "argument"),
    [
        (Init(registry="other", deadline=DEADLINE), "registry"),
        (Init(registry="exreg", deadline=DEADLINE + timedelta(seconds=1)), "deadline"),
    ],
)
def test_init_repeated_with_other_arguments_names_the_argument(
    command: Init, argument: str
) -> None:
    with pytest.raises(ArgumentNotIdempotent, match=argument) as caught:
        tell(given(INIT), command)
    assert caught.value.argument == argument


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (Init(registry="", deadline=DEADLINE), "registry"),
        (Init(registry="exreg", deadline=DEADLINE.replace(tzinfo=None)), "deadline"),
    ],
)
def test_init_refuses_bad_arguments(command: Init, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        tell(new_state(WORKFLOW), command)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (PING, "append-ping"),
        (SUMMARY, "post-summary"),
        (AbortExpired(), "abort-expired"),
        (Cancel(), "cancel"),
        (Commit(), "commit"),
        (End(), "end"),
        (Delete(), "delete"),
    ],
)
def test_every_command_but_init_on_an_uninitialized_workflow_is_refused(
    command: Command, what: str
) -> None:
    with pytest.raises(Uninitialized, match=what):
        tell(new_state(WORKFLOW), command)


def test_pings_are_appended_in_order_with_pinger_and_event_id() -> None:
    state = given(INIT)
    first_id, second_id = ULID(), ULID()
    (first,) = tell(state, PING)
    state = advance(state, first, first_id)
    assert state.code is StateCode.APPENDING
    (second,) = tell(state, AppendPing(code=3, message="disk full", pinger="server-b"))
    state = advance(state, second, second_id)
    assert [(p.code, p.message, p.pinger, p.event_id) for p in state.pings] == [
        (0, "ok", "server-a", first_id),
        (3, "disk full", "server-b", second_id),
    ]
    assert state.pings_by("server-a") == 1
    assert state.pings_by("nobody") == 0


def test_the_summary_gathers_exactly_the_pings_posted() -> None:
    state = given(INIT, PING, AppendPing(code=1, message="late", pinger="regd"))
    state = replay(state, tell(state, SUMMARY))
    assert state.code is StateCode.SUMMARIZED
    assert state.summary is not None
    assert (state.summary.code, state.summary.message) == (0, "2 pings")
    assert state.summary.pings == state.pings


def test_a_summary_without_pings_is_allowed() -> None:
    state = given(INIT, SUMMARY)
    assert state.code is StateCode.SUMMARIZED
    assert state.summary is not None and state.summary.pings == ()


@pytest.mark.parametrize("after", [(SUMMARY,), (SUMMARY, Commit()), (SUMMARY, Commit(), End())])
def test_a_ping_after_the_summary_names_the_state(after: tuple[Command, ...]) -> None:
    state = given(INIT, PING, *after)
    with pytest.raises(WrongState, match=state.code.value) as caught:
        tell(state, PING)
    assert caught.value.state == state.code.value
    assert caught.value.what == "append-ping"


def test_the_summary_repeated_is_a_no_op_and_another_names_the_argument() -> None:
    state = given(INIT, PING, SUMMARY)
    assert tell(state, SUMMARY) == []
    with pytest.raises(ArgumentNotIdempotent, match="code"):
        tell(state, PostSummary(code=2, message="2 pings"))
    with pytest.raises(ArgumentNotIdempotent, match="message"):
        tell(state, PostSummary(code=0, message="other"))


def test_abort_expired_summarizes_with_an_error_code() -> None:
    state = given(INIT, PING, AbortExpired())
    assert state.code is StateCode.SUMMARIZED
    assert state.summary is not None
    assert state.summary.code == EXPIRED_CODE
    assert state.summary.pings == state.pings


def test_cancel_closes_an_open_workflow_with_a_cancelled_summary() -> None:
    state = given(INIT, PING, Cancel())
    assert state.code is StateCode.SUMMARIZED
    assert state.summary is not None
    assert (state.summary.code, state.summary.message) == (CANCELLED_CODE, CANCELLED_MESSAGE)
    assert state.summary.pings == state.pings
    with pytest.raises(WrongState, match="summarized"):
        tell(state, PING)


def test_cancel_after_the_summary_leaves_it_as_it_is() -> None:
    assert tell(given(INIT, SUMMARY), Cancel()) == []
    assert tell(given(INIT, SUMMARY, Commit()), Cancel()) == []
    assert tell(given(INIT, SUMMARY, Commit(), End()), Cancel()) == []


def test_abort_expired_after_the_summary_is_a_no_op() -> None:
    assert tell(given(INIT, SUMMARY), AbortExpired()) == []
    assert tell(given(INIT, SUMMARY, Commit(), End()), AbortExpired()) == []


@pytest.mark.parametrize("before", [(), (PING,)])
def test_commit_before_the_summary_names_the_state(before: tuple[Command, ...]) -> None:
    state = given(INIT, *before)
    with pytest.raises(WrongState, match=f"commit is not allowed in state {state.code.value}"):
        tell(state, Commit())


def test_commit_completes_and_end_terminates() -> None:
    state = given(INIT, PING, SUMMARY, Commit())
    assert state.code is StateCode.COMPLETED
    state = replay(state, tell(state, End()))
    assert state.code is StateCode.TERMINATED


def test_an_interrupted_commit_is_finished_by_running_the_steps_again() -> None:
    # Completed is recorded; the index step and the final committed were not.
    state = given(INIT, SUMMARY, Commit())
    assert tell(state, Commit()) == []
    state = replay(state, tell(state, End()))
    assert tell(state, Commit()) == []
    assert tell(state, End()) == []


@pytest.mark.parametrize("before", [(), (PING,), (SUMMARY,)])
def test_end_before_completed_names_the_state(before: tuple[Command, ...]) -> None:
    state = given(INIT, *before)
    with pytest.raises(WrongState, match=state.code.value):
        tell(state, End())


def test_delete_works_with_or_without_the_final_committed_event() -> None:
    assert tell(given(INIT, SUMMARY, Commit()), Delete()) == []
    assert tell(given(INIT, SUMMARY, Commit(), End()), Delete()) == []
    with pytest.raises(WrongState, match="summarized"):
        tell(given(INIT, SUMMARY), Delete())


def test_advance_never_changes_the_state_it_is_given() -> None:
    before = given(INIT)
    (event,) = tell(before, PING)
    after = advance(before, event, ULID())
    assert before.pings == () and before.code is StateCode.INITIALIZED
    assert after is not before


def test_the_behaviour_carries_its_events_as_protobuf_by_full_name() -> None:
    behaviour: Behaviour[State, Command, Event] = PingRegistryBehaviour()
    state = behaviour.new_state(WORKFLOW)
    (started,) = behaviour.tell(state, INIT)
    assert behaviour.event_type(started) == "tailrunner.v1.PingRegistryStarted"
    state = behaviour.advance(
        state, behaviour.decode(behaviour.event_type(started), encode(started)), ULID()
    )
    ping_id = ULID()
    (pinged,) = behaviour.tell(state, PING)
    decoded = behaviour.decode(behaviour.event_type(pinged), encode(pinged))
    state = behaviour.advance(state, decoded, ping_id)
    assert state.deadline == DEADLINE
    assert [p.event_id for p in state.pings] == [ping_id]
