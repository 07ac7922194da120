"""Waiting for operations, pushed by the journal's watch: wait, batch_wait, cancel requests.

No test sleeps to let something happen: each waits for the event that says
it happened (a watch stream caught up), bounded by ``fail_after``.
"""

from __future__ import annotations

import anyio
import pytest
from google.protobuf import any_pb2, wrappers_pb2

from tailrunner.errors import (
    InvalidArgument,
    JournalUnavailable,
    OperationNotFound,
    WaitDeadlineExceeded,
)
from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.operations import Operation, Operations
from tailrunner.operations.messages import pack
from tests.operations.journals import WatchJournal

LIMIT = 10


def text(value: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=value)


async def test_wait_on_a_done_operation_returns_it_without_watching(
    ops: Operations, journal: WatchJournal
) -> None:
    name = (await ops.create()).name
    done = await ops.set_successful(name, text("r"))
    with anyio.fail_after(LIMIT):
        assert await ops.wait(name, None) == done
    assert journal.watches == 0


async def test_wait_returns_the_unfinished_operation_at_the_timeout(
    ops: Operations, journal: WatchJournal
) -> None:
    name = (await ops.create()).name
    await ops.update_metadata(name, text("10%"))
    with anyio.fail_after(LIMIT):
        operation = await ops.wait(name, 0.05)
    assert not operation.done and operation.metadata == pack(text("10%"))
    assert journal.watches == 1


async def test_wait_can_raise_seed_001s_typed_error_at_the_timeout(ops: Operations) -> None:
    name = (await ops.create()).name
    with anyio.fail_after(LIMIT), pytest.raises(WaitDeadlineExceeded) as caught:
        await ops.wait(name, 0.05, raise_on_timeout=True)
    assert (caught.value.operation, caught.value.timeout) == (name, 0.05)
    done = await ops.set_successful(name, text("r"))
    with anyio.fail_after(LIMIT):
        assert await ops.wait(name, 0.05, raise_on_timeout=True) == done


async def test_wait_with_timeout_zero_returns_at_once(ops: Operations) -> None:
    name = (await ops.create()).name
    with anyio.fail_after(LIMIT):
        assert not (await ops.wait(name, 0)).done


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
async def test_wait_refuses_a_bad_timeout(ops: Operations, timeout: float) -> None:
    name = (await ops.create()).name
    with pytest.raises(InvalidArgument, match="timeout"):
        await ops.wait(name, timeout)


async def test_wait_wakes_on_a_completion_from_another_task(
    ops: Operations, journal: WatchJournal
) -> None:
    name = (await ops.create()).name
    results: list[Operation] = []

    async def waiter() -> None:
        results.append(await ops.wait(name, None))

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await journal.until_caught_up(1)
            assert results == []
            done = await ops.set_successful(name, text("result"))
    assert results == [done]
    assert results[0].done and results[0].response == pack(text("result"))


async def test_a_completion_between_the_check_and_the_subscription_still_wakes_the_waiter(
    ops: Operations, journal: WatchJournal
) -> None:
    name = (await ops.create()).name
    other = Operations(journal.inner)

    async def complete() -> None:
        # The waiter has loaded the unfinished operation; before its watch
        # reaches the journal, another writer finishes it.
        await other.set_successful(name, text("raced"))

    journal.before_watch = complete
    with anyio.fail_after(LIMIT):
        operation = await ops.wait(name, None)
    assert journal.watches == 1 and journal.before_watch is None
    assert operation.done and operation.response == pack(text("raced"))


async def test_a_hundred_waiters_are_all_woken_by_one_completion(
    ops: Operations, journal: WatchJournal
) -> None:
    name = (await ops.create()).name
    results: list[Operation] = []

    async def waiter() -> None:
        results.append(await ops.wait(name, None))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for _ in range(100):
                group.start_soon(waiter)
            await journal.until_caught_up(100)
            assert results == []
            done = await ops.set_successful(name, text("for all"))
    assert len(results) == 100 and all(result == done for result in results)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_on_metadata_sees_each_update_in_order(
    ops: Operations, journal: WatchJournal, kind: str
) -> None:
    name = (await ops.create(metadata=text("0%"))).name
    seen: list[any_pb2.Any] = []
    result: list[Operation] = []

    def on_sync(metadata: any_pb2.Any) -> None:
        seen.append(metadata)

    async def on_async(metadata: any_pb2.Any) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(metadata)

    async def waiter() -> None:
        result.append(await ops.wait(name, None, on_sync if kind == "sync" else on_async))

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await journal.until_caught_up(1)
            for step in ("25%", "50%", "75%"):
                await ops.update_metadata(name, text(step))
            await ops.request_cancel(name)
            await ops.set_successful(name, text("r"), metadata=text("100%"))
    assert seen == [pack(text(step)) for step in ("25%", "50%", "75%", "100%")]
    assert result[0].done and result[0].metadata == pack(text("100%"))


async def test_an_on_metadata_error_ends_the_wait(ops: Operations, journal: WatchJournal) -> None:
    name = (await ops.create()).name

    def broken(metadata: any_pb2.Any) -> None:
        raise LookupError("callback failed")

    async def update() -> None:
        await journal.until_caught_up(1)
        await ops.update_metadata(name, text("x"))

    with anyio.fail_after(LIMIT), pytest.raises(ExceptionGroup) as info:
        async with anyio.create_task_group() as group:
            group.start_soon(update)
            await ops.wait(name, None, broken)
    assert info.group_contains(LookupError, match="callback failed")


async def test_batch_wait_returns_each_done_or_as_it_was_at_the_deadline(
    ops: Operations, journal: WatchJournal
) -> None:
    done = (await ops.create()).name
    await ops.set_failed(done, RuntimeError("already"))
    later = (await ops.create()).name
    never = (await ops.create()).name
    result: list[list[Operation]] = []

    async def waiter() -> None:
        result.append(await ops.batch_wait([done, later, never, later], 0.5))

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            # Only the unfinished ones are watched: later (twice) and never.
            await journal.until_caught_up(3)
            await ops.set_successful(later, text("in time"))
    operations = result[0]
    assert [o.name for o in operations] == [done, later, never, later]
    assert [o.done for o in operations] == [True, True, False, True]
    assert operations[1].response == pack(text("in time")) == operations[3].response


async def test_batch_wait_names_a_missing_operation(ops: Operations) -> None:
    name = (await ops.create()).name
    with pytest.raises(OperationNotFound, match="operations/missing"):
        await ops.batch_wait([name, "operations/missing"], 1)


async def test_until_cancel_requested_wakes_on_the_request(
    ops: Operations, journal: WatchJournal
) -> None:
    name = (await ops.create()).name
    requested: list[bool] = []

    async def worker() -> None:
        requested.append(await ops.until_cancel_requested(name))
        await ops.set_cancelled(name)

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            group.start_soon(worker)
            await journal.until_caught_up(1)
            await ops.update_metadata(name, text("working"))
            assert requested == []
            await ops.request_cancel(name)
            assert (await ops.wait(name, None)).error.code == 1
    assert requested == [True]


async def test_until_cancel_requested_returns_false_when_it_finished_without_one(
    ops: Operations, journal: WatchJournal
) -> None:
    name = (await ops.create()).name
    requested: list[bool] = []

    async def watcher() -> None:
        requested.append(await ops.until_cancel_requested(name))

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            group.start_soon(watcher)
            await journal.until_caught_up(1)
            await ops.set_successful(name)
        # Already requested, or already done: at once, without a watch.
        assert await ops.until_cancel_requested(name) is False
    assert requested == [False] and journal.watches == 1


async def test_until_cancel_requested_cancels_the_work_it_runs_beside(
    ops: Operations, journal: WatchJournal
) -> None:
    """The pattern for a library user's long-running method."""
    name = (await ops.create()).name
    stopped = anyio.Event()

    async def work() -> None:
        async with anyio.create_task_group() as group:

            async def on_cancel() -> None:
                if await ops.until_cancel_requested(name):
                    group.cancel_scope.cancel()

            group.start_soon(on_cancel)
            try:
                await anyio.sleep_forever()
            finally:
                stopped.set()
        await ops.set_cancelled(name)

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            group.start_soon(work)
            await journal.until_caught_up(1)
            await ops.request_cancel(name)
            await stopped.wait()
    assert (await ops.get(name)).error.code == 1


async def test_a_journal_that_stops_during_a_wait_is_an_error_not_a_timeout() -> None:
    """The watch ends with the journal: the waiter must not take it for the timeout."""
    server = JournalServer(MemoryJournalStore(), listen="127.0.0.1:0", close_store=True)
    await server.start()
    try:
        async with JournalClient.connect(server.address, timeout=10) as client:
            journal = WatchJournal(client)
            ops = Operations(journal)
            name = (await ops.create()).name

            async def stop() -> None:
                await journal.until_caught_up(1)
                await server.stop(grace=5)

            with anyio.fail_after(LIMIT), pytest.raises(ExceptionGroup) as info:
                async with anyio.create_task_group() as group:
                    group.start_soon(stop)
                    await ops.wait(name, None)
            assert info.group_contains(JournalUnavailable)
    finally:
        await server.stop(grace=0)
