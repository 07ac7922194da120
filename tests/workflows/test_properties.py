"""Hypothesis: random commands, conflicts and retries; stored events replay to what tell saw."""

from __future__ import annotations

import contextlib
import uuid

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from ulid import ULID

from tailrunner.errors import CommandRefused, VersionConflict
from tailrunner.model import AggregateRef
from tailrunner.testing import LoopbackJournal
from tailrunner.workflows.aggregates import NO_VC, RETRY_NO_VC, Aggregates, VersionMode
from tests.workflows.counter import (
    Add,
    Close,
    Command,
    Counter,
    CounterBehaviour,
    CounterEvent,
    Init,
    valid,
)
from tests.workflows.journals import SpyJournal

TYPE = "counter"
EXACT = "exact"

commands = st.one_of(
    st.builds(Init, st.sampled_from(["a", "b"])),
    st.builds(Add, st.integers(-3, 3)),
    st.just(Close()),
)
steps = st.lists(
    st.tuples(commands, st.sampled_from([EXACT, NO_VC, RETRY_NO_VC]), st.booleans()),
    max_size=12,
)


async def replayed(journal: LoopbackJournal, id: uuid.UUID) -> tuple[Counter, ULID | None]:
    """The state from the stored events alone, by a reader with an empty cache."""
    fresh: Aggregates[Counter, Command, CounterEvent] = Aggregates(
        SpyJournal(journal.client), CounterBehaviour(), TYPE
    )
    return await fresh.load(id)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=steps)
async def test_stored_events_replay_to_the_state_tell_saw(
    journal: LoopbackJournal, steps: list[tuple[Command, VersionMode | str, bool]]
) -> None:
    id = uuid.uuid4()
    spy = SpyJournal(journal.client)
    counters: Aggregates[Counter, Command, CounterEvent] = Aggregates(
        spy, CounterBehaviour(), TYPE, retries=2, pause=0.0
    )
    # The other writer goes through the behaviour too, so the journal only
    # ever holds what valid commands produce.
    other: Aggregates[Counter, Command, CounterEvent] = Aggregates(
        SpyJournal(journal.client), CounterBehaviour(), TYPE
    )

    async def race(aggregate: AggregateRef) -> None:
        with contextlib.suppress(CommandRefused):
            await other.tell(aggregate.id, Add(1))

    spy.race = race
    seen: ULID | None = None
    for command, mode, racing in steps:
        spy.races = 1 if racing else 0
        version = seen if mode == EXACT else mode
        assert not isinstance(version, str)
        try:
            seen = await counters.tell(id, command, version)
        except CommandRefused:
            event("refused")
            seen = (await counters.load(id))[1]
            continue
        except VersionConflict:
            assert mode is not RETRY_NO_VC
            event("conflict")
            seen = (await counters.load(id))[1]
            continue
        event("retried" if racing and mode is RETRY_NO_VC and spy.races == 0 else "told")
        # The other writer only races before an append: nothing lands after ours.
        state, head = await counters.load(id)
        assert head == seen == state.last
        assert await replayed(journal, id) == (state, head)
        assert valid(state)
    state, head = await counters.load(id)
    assert await replayed(journal, id) == (state, head)
    assert valid(state)
