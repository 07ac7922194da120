"""The hub: watchers woken in the same loop turn as the commit, coalescing signals, resync."""

from __future__ import annotations

from uuid import uuid4

import anyio
import pytest
from ulid import ULID

from tailrunner.journal.hub import Hub, Subscriber
from tailrunner.journal.store import JournalStore
from tailrunner.model import AggregateRef, NewEvent, Signal, SignalBatch


@pytest.fixture
def hub(store: JournalStore) -> Hub:
    hub = Hub(max_pending=10)
    store.add_listener(hub.notify)
    return hub


async def _take_first_resync(subscriber: Subscriber) -> None:
    with anyio.fail_after(5):
        first = await subscriber.take()
    assert first == SignalBatch(signals=(), resync=True)


async def test_a_new_subscriber_first_gets_a_resync_covering_what_came_before(
    store: JournalStore, hub: Hub, ref: AggregateRef
) -> None:
    await store.append(ref, [NewEvent(type="before")], expected_tail=None)
    with hub.subscribe() as subscriber:
        # Appends before the first take are covered by the resync it owes.
        await store.append(ref, [NewEvent(type="meanwhile")], expected_tail=None)
        await _take_first_resync(subscriber)
        result = await store.append(ref, [NewEvent(type="after")], expected_tail=None)
        with anyio.fail_after(5):
            batch = await subscriber.take()
    assert batch == SignalBatch(
        signals=(Signal(aggregate_type=ref.type, aggregate_id=ref.id, head=result.tail),)
    )


async def test_watch_wakes_in_the_same_loop_turn_as_the_append(
    store: JournalStore, hub: Hub, ref: AggregateRef
) -> None:
    with hub.watch(ref.id) as watcher:
        assert not watcher.notified
        result = await store.append(ref, [NewEvent(type="a")], expected_tail=None)
        # No await between the append's return and here: the store's listener
        # set the watcher's event before append() returned, not a poller later.
        assert watcher.notified
        assert watcher.head == result.tail


async def test_a_waiting_watcher_wakes_on_the_append(
    store: JournalStore, hub: Hub, ref: AggregateRef
) -> None:
    woke = anyio.Event()
    waiting = anyio.Event()

    async def wait_for_append() -> None:
        with hub.watch(ref.id) as watcher:
            waiting.set()
            assert await watcher.wait()
            woke.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_append)
            await waiting.wait()
            assert not woke.is_set()
            await store.append(ref, [NewEvent(type="a")], expected_tail=None)
            await woke.wait()


async def test_an_append_between_watch_and_wait_is_not_lost(
    store: JournalStore, hub: Hub, ref: AggregateRef
) -> None:
    with hub.watch(ref.id) as watcher:
        await store.append(ref, [NewEvent(type="a")], expected_tail=None)
        with anyio.fail_after(5):
            assert await watcher.wait()
        assert not watcher.notified


async def test_watchers_of_other_aggregates_are_not_woken(
    store: JournalStore, hub: Hub, ref: AggregateRef
) -> None:
    with hub.watch(uuid4()) as other:
        await store.append(ref, [NewEvent(type="a")], expected_tail=None)
        assert not other.notified


async def test_signals_coalesce_to_the_newest_head_per_aggregate(
    store: JournalStore, hub: Hub
) -> None:
    a = AggregateRef(type="order", id=uuid4())
    b = AggregateRef(type="order", id=uuid4())
    with hub.subscribe() as subscriber:
        await _take_first_resync(subscriber)
        for _ in range(3):
            last_a = await store.append(a, [NewEvent(type="x")], expected_tail=None)
        last_b = await store.append(b, [NewEvent(type="x")], expected_tail=None)

        with anyio.fail_after(5):
            batch = await subscriber.take()

    assert batch is not None
    assert not batch.resync
    assert {(s.aggregate_id, s.head) for s in batch.signals} == {
        (a.id, last_a.tail),
        (b.id, last_b.tail),
    }


async def test_signals_only_for_the_subscribed_types(store: JournalStore, hub: Hub) -> None:
    order = AggregateRef(type="order", id=uuid4())
    user = AggregateRef(type="user", id=uuid4())
    with hub.subscribe(["user"]) as subscriber:
        await _take_first_resync(subscriber)
        await store.append(order, [NewEvent(type="x")], expected_tail=None)
        await store.append(user, [NewEvent(type="x")], expected_tail=None)
        with anyio.fail_after(5):
            batch = await subscriber.take()
    assert batch is not None
    assert [s.aggregate for s in batch.signals] == [user]


async def test_a_reader_that_never_reads_gets_resync_instead_of_blocking_appends(
    store: JournalStore, hub: Hub
) -> None:
    with hub.subscribe() as subscriber:
        await _take_first_resync(subscriber)
        # More aggregates than the bound (10) while the subscriber takes nothing:
        # every append completes.
        with anyio.fail_after(10):
            for _ in range(25):
                await store.append(
                    AggregateRef(type="order", id=uuid4()), [NewEvent(type="x")], expected_tail=None
                )
        assert subscriber.pending <= 10

        with anyio.fail_after(5):
            batch = await subscriber.take()
        assert batch is not None
        assert batch.resync

        # After the resync, signals flow again.
        ref = AggregateRef(type="order", id=uuid4())
        result = await store.append(ref, [NewEvent(type="x")], expected_tail=None)
        with anyio.fail_after(5):
            batch = await subscriber.take()
        assert batch is not None
        assert not batch.resync
        assert [(s.aggregate_id, s.head) for s in batch.signals] == [(ref.id, result.tail)]


async def test_closing_the_hub_ends_watchers_and_subscribers(hub: Hub) -> None:
    with hub.watch(uuid4()) as watcher, hub.subscribe() as subscriber:
        hub.close()
        with anyio.fail_after(5):
            assert await watcher.wait() is False
            assert await subscriber.take() is None
    with hub.watch(uuid4()) as late:
        assert late.closed


async def test_level_subscribers_share_one_batch(store: JournalStore, hub: Hub) -> None:
    ref = AggregateRef(type="order", id=uuid4())
    with hub.subscribe() as one, hub.subscribe() as other, hub.subscribe(["user"]) as users:
        for subscriber in (one, other, users):
            await _take_first_resync(subscriber)
        await store.append(ref, [NewEvent(type="x")], expected_tail=None)
        with anyio.fail_after(5):
            first, second = await one.take(), await other.take()
        # One batch (and so one encoding in the service) for both readers.
        assert first is second
        assert users.pending == 0


async def test_a_reader_that_keeps_up_never_resyncs_however_many_aggregates_pass(
    store: JournalStore, hub: Hub
) -> None:
    with hub.subscribe() as subscriber:
        await _take_first_resync(subscriber)
        seen = 0
        for _ in range(3 * 10):  # three times the hub's memory (max_pending=10)
            await store.append(
                AggregateRef(type="order", id=uuid4()), [NewEvent(type="x")], expected_tail=None
            )
            with anyio.fail_after(5):
                batch = await subscriber.take()
            assert batch is not None and not batch.resync
            seen += len(batch.signals)
    assert seen == 30


async def test_a_filtered_reader_resyncs_only_when_a_signal_of_its_types_was_dropped() -> None:
    hub = Hub(max_pending=3)
    user = AggregateRef(type="user", id=uuid4())
    with hub.subscribe(["user"]) as subscriber:
        await _take_first_resync(subscriber)
        # Other types overflow the hub's memory; the user signal is the newest: kept.
        for _ in range(5):
            hub.notify(AggregateRef(type="order", id=uuid4()), ULID())
        head = ULID()
        hub.notify(user, head)
        with anyio.fail_after(5):
            batch = await subscriber.take()
        assert batch == SignalBatch(
            signals=(Signal(aggregate_type="user", aggregate_id=user.id, head=head),)
        )
        # Now the user signal is pushed out before the reader took it.
        hub.notify(user, ULID())
        for _ in range(3):
            hub.notify(AggregateRef(type="order", id=uuid4()), ULID())
        with anyio.fail_after(5):
            batch = await subscriber.take()
        assert batch == SignalBatch(signals=(), resync=True)


async def test_wake_ups_wait_out_the_publish_interval_and_take_every_signal_along() -> None:
    # An interval no test run reaches: only the first signal is published at once.
    hub = Hub(publish_interval_per_subscriber=3600, max_publish_interval=3600)
    a, b = AggregateRef(type="order", id=uuid4()), AggregateRef(type="order", id=uuid4())
    with hub.subscribe() as subscriber:
        await _take_first_resync(subscriber)
        first = ULID()
        hub.notify(a, first)
        with anyio.fail_after(5):
            batch = await subscriber.take()
        assert batch is not None and [s.head for s in batch.signals] == [first]
        hub.notify(a, ULID())
        newest_a, newest_b = ULID(), ULID()
        hub.notify(a, newest_a)
        hub.notify(b, newest_b)
        with anyio.move_on_after(0.2) as waited:
            await subscriber.take()
        assert waited.cancelled_caught  # not yet published
        assert subscriber.pending == 2
        hub.resync()  # a resync is published at once, and covers the pending signals
        with anyio.fail_after(5):
            assert await subscriber.take() == SignalBatch(signals=(), resync=True)
        hub.close()
        with anyio.fail_after(5):
            assert await subscriber.take() is None


async def test_a_reader_far_behind_is_told_to_resync_once_not_handed_stale_signals(
    hub: Hub,
) -> None:
    with hub.subscribe() as slow, hub.subscribe() as fast:
        await _take_first_resync(slow)
        await _take_first_resync(fast)
        refs = [AggregateRef(type="order", id=uuid4()) for _ in range(11)]
        for ref in refs:
            hub.notify(ref, ULID())
            with anyio.fail_after(5):
                batch = await fast.take()
            assert batch is not None and [s.aggregate for s in batch.signals] == [ref]
        assert slow.pending == 0
        with anyio.fail_after(5):
            assert await slow.take() == SignalBatch(signals=(), resync=True)
        last = ULID()
        hub.notify(refs[0], last)
        with anyio.fail_after(5):
            assert await slow.take() == SignalBatch(
                signals=(Signal(aggregate_type="order", aggregate_id=refs[0].id, head=last),)
            )


async def test_events_heard_out_of_commit_order_do_not_ride_on_a_later_signal() -> None:
    # Review finding: a PostgreSQL store notifies after the pool's release, so
    # the hub may hear e2's append before e1's. A signal carrying [e1] after
    # readers were told e2 would let a task at e0 end its run at e1, short of e2.
    import uuid

    from ulid import ULID

    from tailrunner.ids import next_ulid
    from tailrunner.journal.store import FreshEvents

    hub = Hub(publish_interval_per_subscriber=0)
    aggregate = AggregateRef(type="t", id=uuid.uuid4())
    e0 = ULID()
    e1 = next_ulid(e0)
    e2 = next_ulid(e1)
    with hub.subscribe(["t"]) as subscriber:
        assert (await subscriber.take()) is not None  # the first resync
        hub.notify(aggregate, e2, FreshEvents(e1.bytes, [b"row-e2"]))
        taken = await subscriber.take_with_events()
        assert taken is not None and taken.fresh[0] is not None
        hub.notify(aggregate, e1, FreshEvents(e0.bytes, [b"row-e1"]))
        taken = await subscriber.take_with_events()
        assert taken is not None
        # The newest head again, and no events: the reader reads, and finds e2.
        assert [s.head for s in taken.batch.signals] == [e2]
        assert taken.fresh == (None,)
        # In order again: the next append goes on from e2, and its events ride along.
        e3 = next_ulid(e2)
        hub.notify(aggregate, e3, FreshEvents(e2.bytes, [b"row-e3"]))
        taken = await subscriber.take_with_events()
        assert taken is not None and taken.fresh[0] is not None
        assert taken.fresh[0].rows == [b"row-e3"]
