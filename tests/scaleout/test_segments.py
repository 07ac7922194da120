"""segment_of and fair_share: pure functions, no database."""

from __future__ import annotations

import random
import subprocess
import sys
import uuid
from collections import Counter

import pytest

from tailrunner.errors import InvalidArgument
from tailrunner.scaleout import DEFAULT_SEGMENTS, fair_share, segment_of

ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_segment_of_is_pinned() -> None:
    # Fixed values: a change of the hash would move every task to another
    # segment, so a cluster of old and new runners would run tasks twice.
    assert DEFAULT_SEGMENTS == 64
    assert segment_of("ping", ID) == 44
    assert segment_of("ping", ID, 4096) == 3308
    assert segment_of("pong", uuid.UUID(int=0), 64) == 53


def test_segment_of_is_the_same_in_another_process() -> None:
    # Another process with another str hash seed gives the same answers.
    code = (
        "import uuid; from tailrunner.scaleout.segments import segment_of;"
        f" print(segment_of('ping', uuid.UUID('{ID}')), segment_of('ping', uuid.UUID('{ID}'), 7))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    ).stdout.split()
    assert out == [str(segment_of("ping", ID)), str(segment_of("ping", ID, 7))]


def test_segment_of_spreads_tasks_over_every_segment() -> None:
    rng = random.Random(14)
    ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(10_000)]
    counts = Counter(segment_of("act", aggregate) for aggregate in ids)
    assert set(counts) == set(range(64))
    # 156 expected per segment; a sound hash stays well within this.
    assert min(counts.values()) > 100
    assert max(counts.values()) < 220


def test_segment_of_depends_on_the_activity_and_the_id() -> None:
    rng = random.Random(15)
    ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(200)]
    a = [segment_of("a", aggregate) for aggregate in ids]
    b = [segment_of("b", aggregate) for aggregate in ids]
    assert a != b
    assert all(0 <= s < 64 for s in a + b)
    assert {segment_of("a", aggregate, 1) for aggregate in ids} == {0}


@pytest.mark.parametrize("segments", [0, -1, 4097, True, 2.0])
def test_segment_of_refuses_a_bad_segment_count(segments: object) -> None:
    with pytest.raises(InvalidArgument, match="segments") as caught:
        segment_of("a", ID, segments)  # type: ignore[arg-type]
    assert "4096" in str(caught.value)


def test_segment_of_refuses_an_empty_activity() -> None:
    with pytest.raises(InvalidArgument, match="activity"):
        segment_of("", ID)


@pytest.mark.parametrize(
    ("segments", "live", "slack", "share"),
    [
        (64, 2, 1, 33),
        (64, 3, 1, 23),
        (64, 3, 0, 22),
        (64, 64, 1, 2),
        (64, 100, 0, 1),
        (10, 4, 2, 5),
        # Never more than there are.
        (64, 1, 1, 64),
        (1, 5, 1, 1),
    ],
)
def test_fair_share(segments: int, live: int, slack: int, share: int) -> None:
    assert fair_share(segments, live, slack) == share


def test_fair_share_default_slack_is_one() -> None:
    assert fair_share(64, 4) == 17


@pytest.mark.parametrize(
    ("segments", "live", "slack", "field"),
    [(0, 1, 1, "segments"), (64, 0, 1, "live_runners"), (64, 1, -1, "slack")],
)
def test_fair_share_refuses_bad_input(segments: int, live: int, slack: int, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        fair_share(segments, live, slack)
    assert caught.value.field == field
