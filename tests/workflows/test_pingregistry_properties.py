"""Properties of the ping-registry behaviours under random command sequences.

Hypothesis tells random commands, valid or not, to one workflow (and to one
index). After every step the stored history (events as journal bytes, with
their ids) replays into exactly the state that ``tell`` saw, and the state
keeps its invariants:

- the state code never goes back, and each of started, pings-gathered,
  completed and committed is stored at most once, in that order;
- registry and deadline are set exactly when the workflow is initialized;
- pings are accepted only before the summary, and the summary holds exactly
  the pings gathered, with the ids of the events that posted them;
- completed only after the summary, committed only after completed;
- a refused command, or one that yields no events, leaves the state as it was.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from ulid import ULID

from tailrunner.errors import InvalidArgument
from tailrunner.workflows.pingregistry.behaviour import (
    EVENT_TYPES,
    AbortExpired,
    AppendPing,
    Cancel,
    Command,
    Commit,
    Delete,
    End,
    Event,
    Init,
    PostSummary,
    advance,
    tell,
)
from tailrunner.workflows.pingregistry.errors import CommandRefused
from tailrunner.workflows.pingregistry.index import (
    INDEX_EVENT_TYPES,
    EntryCode,
    IndexCommand,
    IndexEvent,
    RecordCompleted,
    RecordDeleted,
    RecordStarted,
    advance_index,
    new_index_state,
    tell_index,
)
from tailrunner.workflows.pingregistry.state import State, StateCode, new_state

WORKFLOW = UUID("00000000-0000-4000-8000-000000000001")
ORDER = list(StateCode)
_CLASSES = {cls.DESCRIPTOR.full_name: cls for cls in EVENT_TYPES}
_INDEX_CLASSES = {cls.DESCRIPTOR.full_name: cls for cls in INDEX_EVENT_TYPES}

# Few distinct values, so that repeats (the idempotent cases) are frequent.
registries = st.sampled_from(["exreg", "other"])
deadlines = st.sampled_from(
    [datetime(2026, 12, 1, 12, 0, 30, 250, tzinfo=UTC), datetime(2026, 12, 1, 13, tzinfo=UTC)]
)
codes = st.sampled_from([0, 1, 4])
messages = st.sampled_from(["ok", "disk full"])
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Init, registry=registries, deadline=deadlines),
    st.builds(AppendPing, code=codes, message=messages, pinger=st.sampled_from(["a", "b"])),
    st.builds(PostSummary, code=codes, message=messages),
    st.just(AbortExpired()),
    st.just(Cancel()),
    st.just(Commit()),
    st.just(End()),
    st.just(Delete()),
)


def decode(type_name: str, data: bytes) -> Event:
    """An event back from its journal form (type name and bytes)."""
    return _CLASSES[type_name].FromString(data)


class WorkflowMachine(RuleBasedStateMachine):
    """One workflow, its stored history, and a count of the pings accepted."""

    def __init__(self) -> None:
        super().__init__()
        self.state: State = new_state(WORKFLOW)
        self.history: list[tuple[ULID, str, bytes]] = []
        self.accepted_pings = 0

    @rule(command=commands)
    def tell_a_command(self, command: Command) -> None:
        before = self.state
        try:
            events = tell(before, command)
        except (CommandRefused, InvalidArgument):
            assert self.state == before
            return
        if isinstance(command, AppendPing):
            assert before.code in (StateCode.INITIALIZED, StateCode.APPENDING)
            self.accepted_pings += 1
        state = before
        for event in events:
            event_id = ULID()
            self.history.append((event_id, event.DESCRIPTOR.full_name, event.SerializeToString()))
            state = advance(state, event, event_id)
        if not events:
            assert state == before
        assert ORDER.index(state.code) >= ORDER.index(before.code)
        self.state = state

    @invariant()
    def the_stored_history_replays_into_the_state_tell_saw(self) -> None:
        replayed = new_state(WORKFLOW)
        for event_id, type_name, data in self.history:
            replayed = advance(replayed, decode(type_name, data), event_id)
        assert replayed == self.state

    @invariant()
    def the_state_is_valid(self) -> None:
        state = self.state
        types = [type_name.rsplit(".", 1)[1] for _, type_name, _ in self.history]
        milestones = [t for t in types if t != "ServerPinged"]
        expected = ["PingRegistryStarted", "ServerPingsGathered"]
        expected += ["PingRegistryCompleted", "PingRegistryCommitted"]
        assert milestones == expected[: len(milestones)]
        assert (state.code is StateCode.UNINITIALIZED) == (state.deadline is None)
        assert (state.code is StateCode.UNINITIALIZED) == (state.registry == "")
        assert len(state.pings) == self.accepted_pings == types.count("ServerPinged")
        assert [p.event_id for p in state.pings] == [
            event_id for event_id, type_name, _ in self.history if type_name.endswith("Pinged")
        ]
        summarized = ORDER.index(state.code) >= ORDER.index(StateCode.SUMMARIZED)
        assert (state.summary is not None) == summarized
        if state.summary is not None:
            assert state.summary.pings == state.pings
            if "ServerPinged" in types:
                # No ping was stored after the summary.
                last_ping = len(types) - 1 - types[::-1].index("ServerPinged")
                assert last_ping < types.index("ServerPingsGathered")
        if state.code is StateCode.APPENDING:
            assert state.pings
        if state.code is StateCode.INITIALIZED:
            assert not state.pings


# Plain test functions rather than ``Machine.TestCase``: the hypothesis pytest
# plugin trips on a TestCase when the suite has parametrized fixtures.


def test_random_workflow_commands_keep_the_invariants() -> None:
    run_state_machine_as_test(
        WorkflowMachine, settings=settings(max_examples=200, stateful_step_count=30, deadline=None)
    )


workflows = st.sampled_from([UUID(int=1), UUID(int=2)])
index_commands: st.SearchStrategy[IndexCommand] = st.one_of(
    st.builds(RecordStarted, workflow=workflows, deadline=deadlines),
    st.builds(RecordCompleted, workflow=workflows),
    st.builds(RecordDeleted, workflow=workflows),
)
_STEPS = ["IndexWorkflowStarted", "IndexWorkflowCompleted", "IndexWorkflowDeleted"]


class IndexMachine(RuleBasedStateMachine):
    """One index and its stored history."""

    def __init__(self) -> None:
        super().__init__()
        self.state = new_index_state(UUID(int=0xAA))
        self.history: list[tuple[str, bytes]] = []

    @rule(command=index_commands)
    def tell_a_command(self, command: IndexCommand) -> None:
        before = self.state
        try:
            events = tell_index(before, command)
        except (CommandRefused, InvalidArgument):
            return
        state = before
        for event in events:
            self.history.append((event.DESCRIPTOR.full_name, event.SerializeToString()))
            state = advance_index(state, event)
        if not events:
            assert state == before
        self.state = state

    def _events(self) -> list[IndexEvent]:
        return [_INDEX_CLASSES[t].FromString(data) for t, data in self.history]

    @invariant()
    def the_stored_history_replays_into_the_state_tell_saw(self) -> None:
        replayed = new_index_state(UUID(int=0xAA))
        for event in self._events():
            replayed = advance_index(replayed, event)
        assert replayed == self.state

    @invariant()
    def each_workflow_is_started_then_completed_then_deleted_once(self) -> None:
        steps: dict[UUID, list[str]] = {}
        for event in self._events():
            steps.setdefault(UUID(bytes=event.workflow_id), []).append(event.DESCRIPTOR.name)
        assert [e.workflow for e in self.state.entries] == list(steps)
        for entry in self.state.entries:
            done = steps[entry.workflow]
            assert done == _STEPS[: len(done)]
            assert (
                entry.code
                is [EntryCode.STARTED, EntryCode.COMPLETED, EntryCode.DELETED][len(done) - 1]
            )
        assert all(e.code is not EntryCode.DELETED for e in self.state.listed())


def test_random_index_commands_keep_the_invariants() -> None:
    run_state_machine_as_test(
        IndexMachine, settings=settings(max_examples=200, stateful_step_count=20, deadline=None)
    )
