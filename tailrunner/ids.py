"""Identifiers: aggregate ids are UUIDs, event ids (tails, heads) are ULIDs.

On the wire both are 16 raw bytes; an empty field means "none" where the
contract allows it. These helpers convert and validate at that boundary so
that the rest of tailrunner handles only :class:`uuid.UUID` and
:class:`ulid.ULID`.
"""

from __future__ import annotations

import os
import time
from uuid import UUID

from ulid import ULID

from tailrunner.errors import InvalidArgument

_ULID_MAX = (1 << 128) - 1


def uuid_from_bytes(raw: bytes, *, field: str) -> UUID:
    """Parse a required 16-byte UUID.

    :raises InvalidArgument: naming ``field`` when ``raw`` is not 16 bytes.
    """
    if len(raw) != 16:
        raise InvalidArgument(field, f"expected a 16-byte UUID, got {len(raw)} bytes")
    return UUID(bytes=raw)


def ulid_from_bytes(raw: bytes, *, field: str) -> ULID | None:
    """Parse an optional 16-byte ULID: empty bytes give ``None``.

    :raises InvalidArgument: naming ``field`` when ``raw`` is neither empty nor 16 bytes.
    """
    if not raw:
        return None
    if len(raw) != 16:
        raise InvalidArgument(field, f"expected a 16-byte ULID or nothing, got {len(raw)} bytes")
    return ULID.from_bytes(raw)


def ulid_to_bytes(value: ULID | None) -> bytes:
    """The wire form of an optional ULID (empty for ``None``)."""
    return b"" if value is None else value.bytes


def parse_uuid(text: str, *, field: str) -> UUID:
    """Parse a UUID given as text (CLI, config).

    :raises InvalidArgument: naming ``field``.
    """
    try:
        return UUID(text)
    except ValueError:
        raise InvalidArgument(field, f"{text!r} is not a UUID") from None


def parse_ulid(text: str, *, field: str) -> ULID:
    """Parse a ULID given as text (26 characters of Crockford base32).

    :raises InvalidArgument: naming ``field``.
    """
    try:
        return ULID.from_str(text)
    except ValueError:
        raise InvalidArgument(field, f"{text!r} is not a ULID") from None


def next_ulid(previous: ULID | None, *, now_ms: int | None = None) -> ULID:
    """A new ULID strictly greater than ``previous``.

    A fresh ULID takes the current millisecond and random bits; when that is
    not greater than ``previous`` (same millisecond, or a clock that stepped
    back), the result is ``previous + 1``, so ids stay strictly increasing
    within an aggregate however fast events are appended.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    # Fresh random bits, not python-ulid's generator: within one millisecond
    # it hands out its previous value plus one, which the id after a batch of
    # another aggregate's events (base + i) may already be.
    fresh = ULID.from_bytes(ms.to_bytes(6, "big") + os.urandom(10))
    if previous is None or int(fresh) > int(previous):
        return fresh
    bumped = int(previous) + 1
    if bumped > _ULID_MAX:
        raise OverflowError("ULID space exhausted")
    return ULID.from_int(bumped)


def next_ulids(previous: ULID | None, count: int, *, now_ms: int | None = None) -> list[ULID]:
    """``count`` new ULIDs, strictly increasing and all greater than ``previous``.

    The first is :func:`next_ulid`; each of the others is the one before plus
    one, as a ULID generator does within one millisecond, so a batch of any
    size costs one clock read and one random draw.

    :raises OverflowError: the ULID space is exhausted.
    """
    if count <= 0:
        return []
    first = next_ulid(previous, now_ms=now_ms)
    if count == 1:
        return [first]
    base = int(first)
    if base + count - 1 > _ULID_MAX:
        raise OverflowError("ULID space exhausted")
    return [first, *(ULID((base + i).to_bytes(16, "big")) for i in range(1, count))]
