"""Reconnecting to the journal: its own bounded backoff, and an outage logged once."""

from __future__ import annotations

import logging
import math
import random
import re
import socket
from collections.abc import Iterator, MutableMapping
from typing import Any

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

import tailrunner.engines.lazy as lazy_module
import tailrunner.runner as runner_module
from tailrunner.engines.factory import EngineOptions, build_engine
from tailrunner.engines.lazy import LazyEngine
from tailrunner.engines.retry import RetryPolicy
from tailrunner.errors import JournalUnavailable, StoreError
from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.model import AggregateRef
from tailrunner.reconnect import ConnectionWatch, ReconnectPolicy
from tailrunner.runner import Runner
from tailrunner.states import TaskState
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.testing import LoopbackJournal

from .conftest import CHANGES, Script, append, new_aggregate, running, wait_until

Logs = list[MutableMapping[str, Any]]

#: Tiny real waits, so the loops below take many steps in little time.
TINY = ReconnectPolicy(initial=0.001, multiplier=2.0, max_delay=0.004, jitter=0.0)
#: An activity retry policy that would make any test using it for reconnects hang.
SLOW_RETRY = RetryPolicy(initial=60.0, max_delay=600.0, jitter=0.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def logs() -> Iterator[Logs]:
    """Every event logged, debug included (whatever an earlier test configured)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**saved)


def events(logs: Logs, event: str) -> Logs:
    return [entry for entry in logs if entry["event"] == event]


def unreachable() -> JournalUnavailable:
    return JournalUnavailable("UNAVAILABLE: failed to connect to all addresses")


# --------------------------------------------------------------------------- the policy


def test_reconnect_delays_double_from_100ms_up_to_5s_by_default() -> None:
    policy = ReconnectPolicy(jitter=0.0)

    delays = [policy.delay(n) for n in range(1, 10)]

    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert ReconnectPolicy() == ReconnectPolicy(
        initial=0.1, max_delay=5.0, multiplier=2.0, jitter=0.2
    )


def test_reconnect_delay_stays_capped_after_a_very_long_outage() -> None:
    assert ReconnectPolicy().delay(10**9) <= 5.0
    assert ReconnectPolicy(jitter=0.0).delay(10**9) == 5.0


def test_reconnect_jitter_spreads_within_its_bounds_and_never_past_max_delay() -> None:
    policy = ReconnectPolicy(initial=1.0, max_delay=4.0, jitter=0.2)
    rng = random.Random(7)

    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0), (9, 4.0)):
        delays = [policy.delay(attempt, rng=rng) for _ in range(500)]
        assert min(delays) >= 0.8 * base
        assert max(delays) <= min(4.0, 1.2 * base)
        assert len(set(delays)) > 100, "spread, not one value"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"initial": 0.0}, "reconnect initial delay 0.0: must be more than 0"),
        ({"initial": -1.0}, "reconnect initial delay -1.0: must be more than 0"),
        ({"initial": math.nan}, "reconnect initial delay nan: must be more than 0"),
        ({"initial": 2.0, "max_delay": 1.0}, "reconnect max_delay 1.0: must be at least"),
        ({"max_delay": math.inf}, "reconnect max_delay inf: must be at least"),
        ({"multiplier": 0.5}, "reconnect multiplier 0.5: must be at least 1"),
        ({"jitter": 1.0}, "reconnect jitter 1.0: expected a fraction from 0 to below 1"),
        ({"jitter": -0.1}, "reconnect jitter -0.1: expected a fraction"),
    ],
)
def test_bad_reconnect_policy_is_refused_naming_the_value(
    values: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        ReconnectPolicy(**values)


def test_retry_policy_refuses_a_zero_initial_delay_because_it_would_spin() -> None:
    with pytest.raises(ValueError, match=r"retry initial delay 0: must be more than 0 \(.*spins\)"):
        RetryPolicy(initial=0)
    with pytest.raises(ValueError, match="retry initial delay nan"):
        RetryPolicy(initial=math.nan)
    assert RetryPolicy(initial=0.001, max_delay=0.001).delay(1) > 0


# --------------------------------------------------------------------------- the watch


def test_an_outage_of_many_failures_logs_one_warning_and_one_recovery(logs: Logs) -> None:
    clock = FakeClock()
    watch = ConnectionWatch(
        call="AggregateSignals", policy=ReconnectPolicy(jitter=0.0), clock=clock
    )
    watch.reachable()  # connected at start: nothing to say
    assert logs == []

    delays = []
    for _ in range(50):
        delays.append(watch.unreachable(unreachable()))
        clock.advance(delays[-1])
    watch.reachable()
    watch.reachable()

    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warnings == [
        {
            "event": "journal unreachable",
            "log_level": "warning",
            "call": "AggregateSignals",
            "error": "UNAVAILABLE: failed to connect to all addresses",
            "retrying": "every <= 5s",
        }
    ]
    assert len(events(logs, "reconnect failed")) == 49
    assert {entry["log_level"] for entry in events(logs, "reconnect failed")} == {"debug"}
    (recovered,) = events(logs, "journal reachable again")
    assert recovered["log_level"] == "info"
    assert recovered["attempts"] == 50
    assert recovered["down_for"] == pytest.approx(sum(delays))
    assert delays[:8] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    assert not watch.down


def test_a_long_outage_reminds_at_info_at_most_every_remind_every(logs: Logs) -> None:
    clock = FakeClock()
    watch = ConnectionWatch(
        call="ListAggregates", policy=ReconnectPolicy(jitter=0.0), clock=clock, remind_every=60.0
    )

    for _ in range(200):  # 5 s apart: 1000 s of outage
        watch.unreachable(unreachable())
        clock.advance(5.0)

    reminders = events(logs, "journal still unreachable")
    assert len(reminders) == 1000 // 60
    assert {entry["log_level"] for entry in reminders} == {"info"}
    assert reminders[0]["down_for"] == pytest.approx(60.0)
    assert len(events(logs, "journal unreachable")) == 1


def test_a_second_outage_is_reported_again_with_the_backoff_started_over(logs: Logs) -> None:
    clock = FakeClock()
    policy = ReconnectPolicy(jitter=0.0)
    watch = ConnectionWatch(call="AggregateSignals", policy=policy, clock=clock)
    for _ in range(10):
        watch.unreachable(unreachable())
    watch.reachable()
    clock.advance(60.0)  # the connection held

    assert watch.unreachable(unreachable()) == pytest.approx(0.1)
    assert len(events(logs, "journal unreachable")) == 2
    assert len(events(logs, "journal reachable again")) == 1


def test_a_connection_that_drops_at_once_keeps_the_backoff_growing() -> None:
    clock = FakeClock()
    watch = ConnectionWatch(
        call="AggregateSignals", policy=ReconnectPolicy(jitter=0.0), clock=clock
    )

    delays = []
    for _ in range(8):
        delays.append(watch.unreachable(unreachable()))
        watch.reachable()  # accepted, then dropped right away
        clock.advance(0.01)

    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_a_stream_that_ended_cleanly_is_reconnected_without_a_warning(logs: Logs) -> None:
    clock = FakeClock()
    watch = ConnectionWatch(call="AggregateSignals", clock=clock, policy=ReconnectPolicy(jitter=0))
    watch.reachable()
    clock.advance(3600.0)

    assert watch.ended() == pytest.approx(0.1)
    assert logs == []
    assert not watch.down


def test_watch_events_can_speak_of_something_other_than_the_journal(logs: Logs) -> None:
    watch = ConnectionWatch(
        call="discover",
        clock=FakeClock(),
        events=("discovery failed", "discovery still failing", "discovery works again"),
    )
    watch.unreachable(StoreError("tail store t.db: load failed"))
    watch.unreachable(StoreError("tail store t.db: load failed"))
    watch.reachable()

    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("discovery failed", "warning"),
        ("reconnect failed", "debug"),
        ("discovery works again", "info"),
    ]


# --------------------------------------------------------------------------- loops


class Recorder:
    """Wraps every ConnectionWatch a loop makes, recording the waits it asks for."""

    def __init__(self, *, calls: str, enough: int) -> None:
        self.calls = calls
        self.enough = enough
        self.delays: list[float] = []
        self.failed_enough = anyio.Event()
        self.up = anyio.Event()

    def factory(self, **kwargs: Any) -> ConnectionWatch:
        recorder = self

        class Recording(ConnectionWatch):
            def unreachable(self, error: BaseException) -> float:
                delay = super().unreachable(error)
                if self.call == recorder.calls:
                    recorder.delays.append(delay)
                    if len(recorder.delays) >= recorder.enough:
                        recorder.failed_enough.set()
                return delay

            def reachable(self) -> None:
                super().reachable()
                if self.call == recorder.calls:
                    recorder.up.set()

        return Recording(**kwargs)


def free_address() -> str:
    """A loopback address where nothing listens (yet)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def expected_delays(policy: ReconnectPolicy, count: int) -> list[float]:
    return [policy.delay(n) for n in range(1, count + 1)]


def fast_client(address: str) -> JournalClient:
    # gRPC's own reconnect backoff, bounded too: the journal's start is seen soon.
    return JournalClient.connect(address, reconnect=ReconnectPolicy(initial=0.05, max_delay=0.2))


async def test_lazy_signal_stream_reconnects_on_its_own_policy_and_logs_the_outage_once(
    monkeypatch: pytest.MonkeyPatch, logs: Logs
) -> None:
    recorder = Recorder(calls="AggregateSignals", enough=12)
    monkeypatch.setattr(lazy_module, "ConnectionWatch", recorder.factory)
    address = free_address()
    async with fast_client(address) as client:
        engine = build_engine(
            # The activities' retry policy must not matter.
            EngineOptions(kind="lazy", retry=SLOW_RETRY, reconnect=TINY),
            journal=client,
            tails=MemoryTailStore(),
            activities=[Script().activity()],
        )
        assert isinstance(engine, LazyEngine)
        async with running(engine):
            with anyio.fail_after(30):
                await recorder.failed_enough.wait()
            assert recorder.delays[:12] == expected_delays(TINY, 12)
            assert engine.reconnects >= 12
            assert not engine.connected.is_set()
            assert len(events(logs, "journal unreachable")) == 1

            async with JournalServer(MemoryJournalStore(), listen=address, close_store=True):
                with anyio.fail_after(30):
                    await recorder.up.wait()
                    await engine.connected.wait()

    (warning,) = events(logs, "journal unreachable")
    assert (warning["log_level"], warning["call"]) == ("warning", "AggregateSignals")
    assert address in warning["error"], "the error names where it tried"
    assert warning["retrying"] == "every <= 0.004s"
    (recovered,) = events(logs, "journal reachable again")
    assert recovered["attempts"] >= 12
    assert {e["log_level"] for e in events(logs, "reconnect failed")} == {"debug"}


async def test_runner_discovery_retries_on_the_reconnect_policy_and_logs_the_outage_once(
    monkeypatch: pytest.MonkeyPatch, logs: Logs
) -> None:
    recorder = Recorder(calls="ListAggregates", enough=12)
    monkeypatch.setattr(runner_module, "ConnectionWatch", recorder.factory)
    address = free_address()
    async with fast_client(address) as client:
        runner = Runner(
            journal=client,
            tails=MemoryTailStore(),
            activities=[Script().activity()],
            # Cron: no signal stream, so only discovery talks to the journal.
            options=EngineOptions(
                kind="cron",
                interval=3600.0,
                retry=SLOW_RETRY,
                reconnect=TINY,
                discovery_interval=3600.0,
            ),
        )
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            with anyio.fail_after(30):
                await recorder.failed_enough.wait()
            assert recorder.delays[:12] == expected_delays(TINY, 12)
            assert not runner.discovered.is_set()

            async with JournalServer(MemoryJournalStore(), listen=address, close_store=True):
                with anyio.fail_after(30):
                    await runner.discovered.wait()
            tg.cancel_scope.cancel()

    (warning,) = events(logs, "journal unreachable")
    assert (warning["log_level"], warning["call"]) == ("warning", "ListAggregates")
    assert len(events(logs, "journal reachable again")) == 1
    assert events(logs, "discovery failed") == [], "a journal outage is not a discovery bug"


async def test_a_failure_handling_a_signal_is_not_reported_as_the_journal_unreachable(
    journal: LoopbackJournal, logs: Logs
) -> None:
    async def on_unknown(aggregate: AggregateRef) -> None:
        raise StoreError("tail store t.db: get failed")

    resyncs = 0
    reconnected = anyio.Event()

    def on_resync() -> None:
        nonlocal resyncs
        resyncs += 1
        if resyncs == 2:
            reconnected.set()

    engine = LazyEngine(
        EngineOptions(reconnect=TINY),
        journal=journal.client,
        tails=MemoryTailStore(),
        activities=[Script().activity()],
        on_unknown=on_unknown,
        on_resync=on_resync,
    )
    async with running(engine):
        with anyio.fail_after(10):
            await engine.connected.wait()
        await append(journal, new_aggregate(), "created")  # no task for it: on_unknown
        with anyio.fail_after(10):
            await reconnected.wait()

    assert engine.reconnects == 1
    assert events(logs, "journal unreachable") == []
    (handling,) = events(logs, "signal handling failed")
    assert (handling["log_level"], handling["error"]) == ("warning", "tail store t.db: get failed")


class _UnreachableEvents:
    """A journal whose Events calls fail as if the journal were down."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def events(self, *args: Any, **kwargs: Any) -> Any:
        raise JournalUnavailable("journal at 127.0.0.1:1 is unreachable")
        yield  # an async generator, as the real one


async def test_a_run_that_cannot_reach_the_journal_waits_the_reconnect_backoff_not_the_retry(
    journal: LoopbackJournal,
) -> None:
    # Defect 7 of issue 10: idle eager watches re-opened on the activities'
    # retry policy. A journal outage is not the activity's error: the
    # reconnect backoff, and no attempt counted towards max_attempts.
    agg = new_aggregate()
    await append(journal, agg, "a")
    script = Script()
    slow_retry = RetryPolicy(initial=60.0, max_delay=60.0, jitter=0.0, max_attempts=2)
    engine = build_engine(
        EngineOptions(kind="eager", retry=slow_retry, reconnect=TINY),
        journal=_UnreachableEvents(journal.client),  # type: ignore[arg-type]
        tails=MemoryTailStore(),
        activities=[script.activity()],
    )
    delays: list[float] = []
    engine.add_observer(lambda task, result: delays.append((task.due or 0) - anyio.current_time()))
    engine.add_observer(lambda task, result: CHANGES.notify())
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await wait_until(lambda: len(delays) >= 5)
    assert all(d <= TINY.max_delay + 1e-6 for d in delays), delays
    assert task.errors == 0, "an outage is not the activity's failure"
    assert task.state is not TaskState.SUSPENDED


def test_a_huge_reconnect_multiplier_saturates_at_the_longest_wait() -> None:
    policy = ReconnectPolicy(initial=0.1, multiplier=1e200, max_delay=5.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 64, 10_000)] == [0.1, 5.0, 5.0, 5.0]
