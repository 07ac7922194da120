"""GroupCommit: queued writes share a commit; each caller learns its own fate."""

from __future__ import annotations

import asyncio
from functools import partial

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailrunner.group_commit import GroupCommit, commit_each_alone_on
from tests.cancelling import HOW, Caller, queue_behind


def _open() -> None:
    pass


async def test_writes_queued_during_a_commit_share_the_next_in_order() -> None:
    lock = anyio.Lock()
    groups: list[list[int]] = []

    async def commit(group: list[int]) -> None:
        groups.append(group)
        await anyio.sleep(0.01)  # the others queue meanwhile

    commits = GroupCommit(lock, commit, _open)
    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(commits.submit, n)

    assert [n for group in groups for n in group] == list(range(10))
    assert len(groups) < 10  # shared commits, not one per write


async def test_a_commit_that_fails_fails_its_leader_and_the_rest_commit_next() -> None:
    lock = anyio.Lock()
    committed: list[int] = []
    failures = [RuntimeError("disk gone")]

    async def commit(group: list[int]) -> None:
        if failures:
            raise failures.pop()
        committed.extend(group)

    commits = GroupCommit(lock, commit, _open)
    outcomes: dict[int, str] = {}

    async def submit(n: int) -> None:
        try:
            await commits.submit(n)
            outcomes[n] = "committed"
        except RuntimeError:
            outcomes[n] = "failed"

    await lock.acquire()
    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(submit, n)
        await anyio.wait_all_tasks_blocked()
        lock.release()

    assert outcomes == {0: "failed", 1: "committed", 2: "committed"}
    assert committed == [1, 2]
    assert commits.pending == 0


async def test_a_closed_store_refuses_queued_writes() -> None:
    def closed() -> None:
        raise RuntimeError("closed")

    async def commit(group: list[int]) -> None:
        raise AssertionError("never committed")

    with pytest.raises(RuntimeError, match="closed"):
        await GroupCommit(anyio.Lock(), commit, closed).submit(1)


class _LockUser:
    """Another user of the lock (as a store's close is): holds it, once it has it, until let go."""

    def __init__(self, lock: anyio.Lock) -> None:
        self.lock = lock
        self.holding = anyio.Event()
        self.let_go = anyio.Event()

    async def run(self) -> None:
        async with self.lock:
            self.holding.set()
            with anyio.fail_after(10):
                await self.let_go.wait()


async def test_a_committed_group_returns_without_waiting_for_the_lock() -> None:
    # Only a leader takes the lock: the commit wakes its followers, all at once,
    # instead of each taking the lock in turn to find its write done.
    lock = anyio.Lock()
    groups: list[list[int]] = []

    async def commit(group: list[int]) -> None:
        groups.append(group)

    commits = GroupCommit(lock, commit, _open)
    leader, first, second = (Caller(partial(commits.submit, n)) for n in (1, 2, 3))
    other = _LockUser(lock)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await lock.acquire()
            tg.start_soon(leader.run)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(other.run)  # on the lock right behind the leader
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(first.run)
            tg.start_soon(second.run)
            await anyio.wait_all_tasks_blocked()
            lock.release()
            await other.holding.wait()
            await anyio.wait_all_tasks_blocked()
            assert (leader.ended, first.ended, second.ended) == ("returned",) * 3
            other.let_go.set()

    assert groups == [[1, 2, 3]]
    assert commits.pending == 0


@pytest.mark.parametrize("how", HOW)
async def test_a_caller_cancelled_when_its_turn_to_lead_came_hands_the_lead_on(how: str) -> None:
    lock = anyio.Lock()
    commit = _SlowCommit()
    commits = GroupCommit(lock, commit, _open)
    leader, next_leader, last = (Caller(partial(commits.submit, n)) for n in (1, 2, 3))
    other = _LockUser(lock)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader.run)
            await commit.started.wait()
            tg.start_soon(other.run)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(next_leader.run)  # queued during the commit: it leads next
            tg.start_soon(last.run)
            await anyio.wait_all_tasks_blocked()
            commit.gate.set()
            await other.holding.wait()
            # The leader is done; the next one waits for the lock, and gives up.
            await anyio.wait_all_tasks_blocked()
            assert leader.ended == "returned"
            next_leader.cancel(how)
            await anyio.wait_all_tasks_blocked()
            other.let_go.set()

    assert next_leader.ended is asyncio.CancelledError
    assert last.ended == "returned"
    assert commit.committed == [1, 3]
    assert commits.pending == 0


# -- Cancellation: a cancelled write is dropped or completes, never half-known -----


class _SlowCommit:
    """A commit that waits at a gate before it records its group (or fails)."""

    def __init__(self, *, fail: BaseException | None = None) -> None:
        self.gate = anyio.Event()
        self.started = anyio.Event()
        self.committed: list[int] = []
        self.fail = fail

    async def __call__(self, group: list[int]) -> None:
        self.started.set()
        # Bounded: the commit runs shielded, so a test that never opens the
        # gate would otherwise hang instead of failing.
        with anyio.fail_after(10):
            await self.gate.wait()
        if self.fail is not None:
            failure, self.fail = self.fail, None
            raise failure
        self.committed.extend(group)


@pytest.mark.parametrize("how", HOW)
async def test_a_write_cancelled_while_queued_is_dropped_and_raises_the_cancellation(
    how: str,
) -> None:
    lock = anyio.Lock()
    commit = _SlowCommit()
    commit.gate.set()
    commits = GroupCommit(lock, commit, _open)
    queued = Caller(partial(commits.submit, 1))

    await lock.acquire()
    with anyio.fail_after(10):  # a hang fails, not blocks, the suite
        async with anyio.create_task_group() as tg:
            tg.start_soon(queued.run)
            await anyio.wait_all_tasks_blocked()
            queued.cancel(how)
            await anyio.wait_all_tasks_blocked()
            lock.release()
    await commits.submit(2)

    assert queued.ended is asyncio.CancelledError
    assert commit.committed == [2]  # never committed, not even with a later group
    assert commits.pending == 0


@pytest.mark.parametrize("how", HOW)
async def test_a_write_cancelled_while_a_leader_commits_it_completes_then_raises_the_cancellation(
    how: str,
) -> None:
    lock = anyio.Lock()
    commit = _SlowCommit()
    commits = GroupCommit(lock, commit, _open)
    leader, taken = Caller(partial(commits.submit, 1)), Caller(partial(commits.submit, 2))

    with anyio.fail_after(10):  # a hang fails, not blocks, the suite
        async with anyio.create_task_group() as tg:
            await queue_behind(lock, tg, [leader, taken])
            await commit.started.wait()  # the leader took both writes
            taken.cancel(how)
            await anyio.wait_all_tasks_blocked()
            # The cancellation waits for the commit that holds the write: until it
            # ends, nobody could say whether the write is in.
            assert taken.ended is None
            commit.gate.set()

    assert taken.ended is asyncio.CancelledError
    assert leader.ended == "returned"
    assert commit.committed == [1, 2]  # a taken write completes with its group
    assert commits.pending == 0


@pytest.mark.parametrize("how", HOW)
async def test_a_taken_write_whose_group_fails_after_its_caller_cancelled_is_dropped(
    how: str,
) -> None:
    lock = anyio.Lock()
    commit = _SlowCommit(fail=RuntimeError("disk gone"))
    commits = GroupCommit(lock, commit, _open)
    leader, taken, other = (
        Caller(partial(commits.submit, 1)),
        Caller(partial(commits.submit, 2)),
        Caller(partial(commits.submit, 3)),
    )

    with anyio.fail_after(10):  # a hang fails, not blocks, the suite
        async with anyio.create_task_group() as tg:
            await queue_behind(lock, tg, [leader, taken, other])
            await commit.started.wait()
            taken.cancel(how)
            await anyio.wait_all_tasks_blocked()
            commit.gate.set()

    assert leader.ended is RuntimeError
    assert taken.ended is asyncio.CancelledError
    assert other.ended == "returned"
    # The failed group's other write commits with the next group; the
    # cancelled one is not carried along, since its caller already gave up.
    assert commit.committed == [3]
    assert commits.pending == 0


@pytest.mark.parametrize("how", HOW)
async def test_a_leader_cancelled_mid_commit_finishes_the_commit_for_everyone(how: str) -> None:
    lock = anyio.Lock()
    commit = _SlowCommit()
    commits = GroupCommit(lock, commit, _open)
    leader, other = Caller(partial(commits.submit, 1)), Caller(partial(commits.submit, 2))

    with anyio.fail_after(10):  # a hang fails, not blocks, the suite
        async with anyio.create_task_group() as tg:
            await queue_behind(lock, tg, [leader, other])
            await commit.started.wait()
            leader.cancel(how)
            await anyio.wait_all_tasks_blocked()
            assert leader.ended is None  # still waiting for the commit it started
            commit.gate.set()

    assert leader.ended is asyncio.CancelledError
    assert other.ended == "returned"
    # Committed once, whole: not interrupted halfway, not re-queued and
    # committed again by the next leader.
    assert commit.committed == [1, 2]
    assert commits.pending == 0


async def test_a_write_refused_by_a_closed_store_leaves_nothing_queued() -> None:
    closed = False

    def check_open() -> None:
        if closed:
            raise RuntimeError("closed")

    committed: list[int] = []

    async def commit(group: list[int]) -> None:
        committed.extend(group)

    commits = GroupCommit(anyio.Lock(), commit, check_open)
    closed = True
    with pytest.raises(RuntimeError, match="closed"):
        await commits.submit(1)
    assert commits.pending == 0
    closed = False
    await commits.submit(2)
    assert committed == [2]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cancels=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 30), st.sampled_from(HOW)), max_size=6
    ),
    failures=st.lists(st.booleans(), max_size=4),
    steps=st.integers(1, 4),
)
async def test_cancelled_callers_at_any_point_get_their_cancellation_and_nothing_commits_twice(
    cancels: list[tuple[int, int, str]], failures: list[bool], steps: int
) -> None:
    lock = anyio.Lock()
    committed: list[int] = []
    fail = list(failures)

    async def commit(group: list[int]) -> None:
        for _ in range(steps):  # a commit that takes a few loop steps
            await anyio.lowlevel.checkpoint()
        if fail and fail.pop(0):
            raise RuntimeError("disk gone")
        committed.extend(group)

    commits = GroupCommit(lock, commit, _open)
    callers = [Caller(partial(commits.submit, n)) for n in range(6)]

    async def cancel_later(who: int, after: int, how: str) -> None:
        for _ in range(after):
            await anyio.lowlevel.checkpoint()
        if callers[who].ended is None:
            callers[who].cancel(how)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for caller in callers:
                tg.start_soon(caller.run)
            for who, after, how in cancels:
                tg.start_soon(cancel_later, who, after, how)

    assert len(committed) == len(set(committed)), "a write committed twice"
    for n, caller in enumerate(callers):
        assert caller.ended in ("returned", asyncio.CancelledError, RuntimeError), caller.ended
        if caller.ended == "returned":
            assert n in committed
        if caller.ended is RuntimeError:  # a leader whose group failed
            assert n not in committed
    assert commits.pending == 0


async def test_commit_each_alone_on_a_failed_group_fails_only_the_bad_writes() -> None:
    tried: list[list[int]] = []
    failed: dict[int, str] = {}

    async def commit(group: list[int]) -> None:
        tried.append(group)
        if 2 in group:
            raise LookupError(f"cannot write {group}")

    await commit_each_alone_on(
        LookupError, commit, [1, 2, 3], lambda n, e: failed.update({n: str(e)})
    )

    assert tried == [[1, 2, 3], [1], [2], [3]]
    assert failed == {2: "cannot write [2]"}


async def test_commit_each_alone_on_tries_a_group_of_one_once_and_passes_other_errors() -> None:
    tried: list[list[int]] = []
    failed: list[int] = []

    async def commit(group: list[int]) -> None:
        tried.append(group)
        raise LookupError("gone")

    await commit_each_alone_on(LookupError, commit, [7], lambda n, e: failed.append(n))
    assert (tried, failed) == ([[7]], [7])
    with pytest.raises(LookupError):
        await commit_each_alone_on(KeyError, commit, [1, 2], lambda n, e: failed.append(n))


async def test_writes_started_in_the_same_loop_turn_share_one_commit() -> None:
    # A batch of appends (AppendBatch) starts its writes together: the first
    # one's leader lets the others join before it commits, not after. (The
    # stores' lock does not yield when it is free, so neither does this one.)
    lock = anyio.Lock(fast_acquire=True)
    groups: list[list[int]] = []

    async def commit(group: list[int]) -> None:
        groups.append(group)
        await anyio.lowlevel.checkpoint()

    commits = GroupCommit(lock, commit, _open)
    await asyncio.gather(*(commits.submit(n) for n in range(8)))
    assert groups == [list(range(8))]
    # A lone writer still commits at once, alone.
    await commits.submit(8)
    assert groups[-1] == [8]
