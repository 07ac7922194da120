"""``fair_share``: how many segments one runner may hold while others are alive.

Each runner holds at most its share plus a small slack, so that a runner
joining the cluster finds segments to take: the others give back what they
hold beyond their share, between runs (``SegmentLeases.release``), and the
newcomer claims them. The live runners are counted from the unexpired
leases (``SegmentLeases.live_runners``).
"""

from __future__ import annotations

from tailrunner.errors import InvalidArgument
from tailrunner.scaleout.segments import check_segments

#: How many segments a runner may hold beyond its even share.
DEFAULT_SLACK = 1


def fair_share(segments: int, live_runners: int, slack: int = DEFAULT_SLACK) -> int:
    """``ceil(segments / live_runners) + slack``, but never more than ``segments``.

    The slack keeps the cluster from handing one segment back and forth
    when the segments do not divide evenly; the cap is there because no
    runner can hold more segments than there are.

    :raises InvalidArgument: a segment count outside 1 … 4096, fewer than
        one live runner (the caller counts itself), or a negative slack.
    """
    check_segments(segments)
    if isinstance(live_runners, bool) or not isinstance(live_runners, int) or live_runners < 1:
        raise InvalidArgument(
            "live_runners", f"{live_runners!r}: at least 1 (the runner asking counts itself)"
        )
    if isinstance(slack, bool) or not isinstance(slack, int) or slack < 0:
        raise InvalidArgument("slack", f"{slack!r}: expected an integer 0 or more")
    # Integer ceiling: no float rounding for any count.
    share = -(-segments // live_runners)
    return min(segments, share + slack)
