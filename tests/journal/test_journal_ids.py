"""ULIDs stay strictly increasing however fast events come."""

from __future__ import annotations

import itertools

from ulid import ULID

from tailrunner.ids import next_ulid, next_ulids

NOW_MS = 1_750_000_000_000


def test_next_ulid_is_strictly_increasing_within_one_millisecond() -> None:
    ids = [next_ulid(None, now_ms=NOW_MS)]
    for _ in range(10_000):
        ids.append(next_ulid(ids[-1], now_ms=NOW_MS))
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert len(set(ids)) == len(ids)
    # A burst of ten thousand does not spill out of the millisecond it started in
    # (the random part has room for it).
    assert {ulid.milliseconds for ulid in ids} == {NOW_MS}


def test_next_ulid_stays_increasing_when_the_clock_steps_back() -> None:
    previous = next_ulid(None, now_ms=NOW_MS)
    assert next_ulid(previous, now_ms=NOW_MS - 60_000) > previous


def test_next_ulid_takes_a_fresh_ulid_in_a_later_millisecond() -> None:
    previous = next_ulid(None, now_ms=NOW_MS)
    assert next_ulid(previous, now_ms=NOW_MS + 1).milliseconds == NOW_MS + 1


def test_next_ulids_gives_a_strictly_increasing_batch_after_previous() -> None:
    previous = ULID.from_int(int(next_ulid(None, now_ms=NOW_MS)))
    batch = next_ulids(previous, 500, now_ms=NOW_MS)
    assert len(batch) == 500
    assert previous < batch[0]
    assert all(a < b for a, b in itertools.pairwise(batch))
    assert next_ulids(previous, 0) == []


def test_ids_of_two_aggregates_in_one_millisecond_do_not_collide() -> None:
    # A batch is first, first + 1, …; a fresh id in the same millisecond for
    # another aggregate must not be one of them (a tail from another aggregate
    # would then pass for one of this aggregate's events).
    batch = next_ulids(None, 100, now_ms=NOW_MS)
    others = [next_ulid(None, now_ms=NOW_MS) for _ in range(100)]
    assert not set(batch) & set(others)
