"""The lazy engine's own rules: signals, resync, reconnects and the backstop."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from tailrunner.engines.lazy import LazyEngine
from tailrunner.engines.options import EngineOptions
from tailrunner.model import Signal, SignalBatch
from tailrunner.states import TaskState
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.store import RunRecord, TailRecord
from tailrunner.testing import LoopbackJournal

from .conftest import CHANGES, FAST_RETRY, Script, append, new_aggregate, running


class ScriptedSignals:
    """The real journal for everything but signals, which the test sends itself."""

    def __init__(self, journal: LoopbackJournal) -> None:
        self._client = journal.client
        self.connections = 0
        self._send: MemoryObjectSendStream[SignalBatch | Exception] | None = None
        self.connected = anyio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)

    async def signals(
        self, aggregate_types: Sequence[str] = ()
    ) -> AsyncGenerator[SignalBatch, None]:
        send, receive = anyio.create_memory_object_stream[SignalBatch | Exception](100)
        self._send = send
        self.connections += 1
        connected, self.connected = self.connected, anyio.Event()
        connected.set()
        with send, receive:
            yield SignalBatch(signals=(), resync=True)  # as the journal does on every connect
            async for item in receive:
                if isinstance(item, Exception):
                    raise item
                yield item

    async def send(self, item: SignalBatch | Exception) -> None:
        assert self._send is not None
        await self._send.send(item)


def lazy_engine(journal: object, script: Script, *, backstop: float = 60.0) -> LazyEngine:
    engine = LazyEngine(
        EngineOptions(retry=FAST_RETRY, backstop=backstop),
        journal=journal,  # type: ignore[arg-type]
        tails=MemoryTailStore(),
        activities=[script.activity()],
    )
    engine.add_observer(lambda task, result: CHANGES.notify())
    return engine


async def test_signal_wakes_a_sleeping_task(journal: LoopbackJournal) -> None:
    agg = new_aggregate()
    signals = ScriptedSignals(journal)
    script = Script()
    engine = lazy_engine(signals, script)
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: task.state is TaskState.SLEEPING)
        ids = await append(journal, agg, "a")
        assert task.state is TaskState.SLEEPING, "no signal yet: the task must keep sleeping"
        await signals.send(
            SignalBatch(signals=(Signal(aggregate_type="thing", aggregate_id=agg.id, head=ids[0]),))
        )
        await script.wait_for(lambda: ids[0] in script.seen())


async def test_signal_for_a_head_already_handled_is_ignored(journal: LoopbackJournal) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a")
    signals = ScriptedSignals(journal)
    script = Script()
    engine = lazy_engine(signals, script)
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: task.state is TaskState.SLEEPING)
        assert task.tail == ids[0]
        stale = Signal(aggregate_type="thing", aggregate_id=agg.id, head=ids[0])
        await signals.send(SignalBatch(signals=(stale,)))
        # Then a resync, which must wake it: once that run is over, the stale
        # signal was either ignored or is visible as an extra run.
        await signals.send(SignalBatch(signals=(), resync=True))
        await script.wait_for(lambda: len(script.calls) >= 2)
        await script.wait_for(lambda: task.state is TaskState.SLEEPING)
    assert len(script.calls) == 2


async def test_resync_wakes_every_task(journal: LoopbackJournal) -> None:
    aggregates = [new_aggregate() for _ in range(5)]
    signals = ScriptedSignals(journal)
    script = Script()
    engine = lazy_engine(signals, script)
    for agg in aggregates:
        engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: len(script.calls) == 5)
        await script.wait_for(lambda: all(t.state is TaskState.SLEEPING for t in engine.tasks()))
        await signals.send(SignalBatch(signals=(), resync=True))
        await script.wait_for(lambda: len(script.calls) == 10)


async def test_broken_signal_stream_reconnects_and_signals_every_task(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    signals = ScriptedSignals(journal)
    script = Script()
    engine = lazy_engine(signals, script)
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: task.state is TaskState.SLEEPING)
        # An event appended while the stream is down: only the resync of the
        # next connection can bring it.
        ids = await append(journal, agg, "while-down")
        reconnected = signals.connected
        await signals.send(ConnectionResetError("journal went away"))
        with anyio.fail_after(5):
            await reconnected.wait()
        await script.wait_for(lambda: ids[0] in script.seen())
    assert signals.connections == 2


async def test_backstop_rechecks_a_sleeping_task_without_a_signal(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    signals = ScriptedSignals(journal)
    script = Script()
    engine = lazy_engine(signals, script, backstop=0.2)
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: task.state is TaskState.SLEEPING)
        ids = await append(journal, agg, "lost-signal")
        await script.wait_for(lambda: ids[0] in script.seen(), timeout=3)


async def test_real_journal_signals_drive_the_lazy_engine(journal: LoopbackJournal) -> None:
    agg = new_aggregate()
    script = Script()
    engine = lazy_engine(journal.client, script)
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        with anyio.fail_after(5):
            await engine.connected.wait()
        await script.wait_for(lambda: task.state is TaskState.SLEEPING)
        for n in range(3):
            ids = await append(journal, agg, f"e{n}")
            await script.wait_for(lambda ids=ids: ids[0] in script.seen())
    assert len(script.seen()) == 3


class GatedTails(MemoryTailStore):
    """Holds the first stored outcome until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.storing = anyio.Event()
        self.gate = anyio.Event()

    async def save_with_run(self, record: TailRecord, run: RunRecord) -> None:
        if not self.gate.is_set():
            self.storing.set()
            await self.gate.wait()
        await super().save_with_run(record, run)


async def test_signal_while_the_outcome_is_stored_is_not_lost(journal: LoopbackJournal) -> None:
    agg = new_aggregate()
    signals = ScriptedSignals(journal)
    script = Script()
    tails = GatedTails()
    engine = LazyEngine(
        # The backstop far away: only the signal can bring the event.
        EngineOptions(retry=FAST_RETRY, backstop=600.0),
        journal=signals,  # type: ignore[arg-type]
        tails=tails,
        activities=[script.activity()],
    )
    engine.add_observer(lambda task, result: CHANGES.notify())
    async with running(engine):
        with anyio.fail_after(5):
            await engine.connected.wait()  # its resync is past: only our signal counts
        task = engine.start_activity(agg, engine.activities["script"], None)
        try:
            with anyio.fail_after(5):
                await tails.storing.wait()
            # The run has returned EOF; its outcome is being stored: the task
            # is still RUNNING when this signal lands.
            ids = await append(journal, agg, "during-store")
            signal = Signal(aggregate_type="thing", aggregate_id=agg.id, head=ids[0])
            await signals.send(SignalBatch(signals=(signal,)))
            with anyio.fail_after(5):
                await anyio.wait_all_tasks_blocked()
            assert task.signalled, "the signal reached the running task"
        finally:
            tails.gate.set()  # the store is shielded: never leave it waiting
        await script.wait_for(lambda: ids[0] in script.seen())
