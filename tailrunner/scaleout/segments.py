"""``segment_of``: which segment a task (activity, aggregate) belongs to.

Runners share the work by segments, not by tasks: a task hashes into one of
a fixed number of segments, and whoever holds a segment's lease runs its
tasks (:mod:`tailrunner.scaleout.leases`). The hash must give every runner,
in every process and on every machine, the same answer, so it is BLAKE2b
of the activity's name and the aggregate id's bytes, never Python's
``hash()`` (salted per process for ``str``).
"""

from __future__ import annotations

from hashlib import blake2b
from uuid import UUID

from tailrunner.errors import InvalidArgument

#: How many segments the tasks hash into, unless configured otherwise.
DEFAULT_SEGMENTS = 64
#: The most segments a cluster may have: one row (and one lease) each.
MAX_SEGMENTS = 4096

# The personalisation keeps these digests apart from any other BLAKE2b use.
_PERSON = b"tailrunner-seg"


def check_segments(segments: int) -> int:
    """``segments`` if it is a usable segment count (1 … 4096).

    :raises InvalidArgument: naming the count and the range allowed.
    """
    # bool is an int; True segments is a mistake, not one segment.
    if isinstance(segments, bool) or not isinstance(segments, int):
        raise InvalidArgument("segments", f"{segments!r}: expected an integer 1 … {MAX_SEGMENTS}")
    if not 1 <= segments <= MAX_SEGMENTS:
        raise InvalidArgument("segments", f"{segments}: expected 1 … {MAX_SEGMENTS}")
    return segments


def segment_of(activity: str, aggregate_id: UUID, segments: int = DEFAULT_SEGMENTS) -> int:
    """The segment (``0 … segments - 1``) of the task ``(activity, aggregate_id)``.

    Stable across processes, machines and Python versions: the activity's
    UTF-8 bytes, a NUL (no activity name holds one, so two tasks never feed
    the same bytes), the id's 16 bytes, hashed with BLAKE2b to 64 bits,
    modulo ``segments``.

    :raises InvalidArgument: an empty activity, or a segment count outside 1 … 4096.
    """
    check_segments(segments)
    if not activity:
        raise InvalidArgument("activity", "the activity name must not be empty")
    digest = blake2b(
        activity.encode() + b"\x00" + aggregate_id.bytes, digest_size=8, person=_PERSON
    ).digest()
    return int.from_bytes(digest, "big") % segments
