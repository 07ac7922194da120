"""Runners that share the work: segments, their leases on PostgreSQL, fencing, balance.

The foundation of issue 14's scale-out (the engines use it later):

- :func:`segment_of` hashes a task into one of a fixed number of segments;
- :class:`SegmentLeases` claims, renews and releases one runner's leases
  (owner = incarnation id, a monotonic epoch, expiry on the database's clock);
- :func:`fenced` makes a write land only while its lease is still held;
- :func:`fair_share` says how many segments one runner may hold.
"""

from __future__ import annotations

from tailrunner.scaleout.balance import DEFAULT_SLACK, fair_share
from tailrunner.scaleout.leases import (
    DEFAULT_LEASE,
    Lease,
    LeaseStats,
    SegmentLeases,
    SegmentRow,
    new_incarnation,
)
from tailrunner.scaleout.segments import DEFAULT_SEGMENTS, MAX_SEGMENTS, check_segments, segment_of
from tailrunner.sql.fencing import Fence, FencedWrites, fenced

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_SEGMENTS",
    "DEFAULT_SLACK",
    "MAX_SEGMENTS",
    "Fence",
    "FencedWrites",
    "Lease",
    "LeaseStats",
    "SegmentLeases",
    "SegmentRow",
    "check_segments",
    "fair_share",
    "fenced",
    "new_incarnation",
    "segment_of",
]
