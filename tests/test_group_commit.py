"""GroupCommit: queued writes share a commit; each caller learns its own fate."""

from __future__ import annotations

import anyio
import pytest

from tailrunner.group_commit import GroupCommit


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
