"""Instants as whole microseconds since the Unix epoch (SQLite's time columns, page tokens)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(value: datetime) -> int:
    """An aware ``value`` as whole microseconds since the epoch."""
    return (value - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    """The UTC time ``value`` microseconds after the epoch."""
    return _EPOCH + timedelta(microseconds=value)
