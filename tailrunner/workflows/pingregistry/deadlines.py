"""Deadlines between commands (aware datetimes) and events (protobuf Timestamps)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from tailrunner.errors import InvalidArgument


def to_timestamp(deadline: datetime) -> Timestamp:
    """The event form of a command's ``deadline``.

    :raises InvalidArgument: naming ``deadline`` when it has no timezone (its
        instant would depend on the machine's clock settings).
    """
    if deadline.tzinfo is None:
        raise InvalidArgument("deadline", f"{deadline} has no timezone")
    stamp = Timestamp()
    stamp.FromDatetime(deadline)
    return stamp


def from_timestamp(stamp: Timestamp) -> datetime:
    """The deadline an event carries, in UTC."""
    return stamp.ToDatetime(tzinfo=UTC)
