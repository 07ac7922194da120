"""What an activity reports when it stops running.

An activity returns ``Done(tail)`` or ``EOF(tail)``, or returns or raises
``SilentRetry`` / ``SilentRetryAfter`` / ``Failed``; any other exception is
a temporary error. Cancellation is not an outcome an activity returns: it is
the event loop's cancellation (or a gRPC ``CANCELLED`` status) propagating.

The tail travels with every outcome, errors included. ``None`` means "replay
from the first event". An exception that carries no tail keeps the last tail
the activity checkpointed (see :meth:`ActivityContext.checkpoint`), or the
tail the run started from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ulid import ULID


@dataclass(frozen=True, slots=True)
class Done:
    """The activity finished for good: it is never started again, not after a restart either."""

    tail: ULID | None


@dataclass(frozen=True, slots=True)
class EOF:
    """Caught up, not finished: run again when there are new events."""

    tail: ULID | None


class SilentRetry(Exception):
    """A temporary, expected condition: retry with backoff, log nothing above debug."""

    def __init__(self, *, tail: ULID | None, reason: str = "") -> None:
        super().__init__(reason or "silent retry")
        self.tail = tail
        self.reason = reason


class SilentRetryAfter(Exception):
    """Wait for a time (a deadline, a lease), then run again at ``when`` exactly.

    ``when`` must name an instant: a timezone-aware datetime whose zone gives
    an offset. A naive datetime (or a tzinfo without an offset) is refused
    because it would be read in an unknown zone.
    """

    def __init__(self, when: datetime, *, tail: ULID | None, reason: str = "") -> None:
        check_when(when)
        super().__init__(reason or f"silent retry after {when.isoformat()}")
        self.when = when
        self.tail = tail
        self.reason = reason


class Failed(Exception):
    """A temporary error that says which tail to resume from.

    ``raise Failed(tail=last_handled) from exc`` logs and retries like any
    other exception, but resumes from ``tail`` (``None``: replay from the
    first event) instead of the last checkpoint.
    """

    def __init__(self, message: str = "", *, tail: ULID | None) -> None:
        super().__init__(message or "activity failed")
        self.tail = tail


def check_when(when: object) -> datetime:
    """``when`` if it is a datetime that names an instant.

    :raises ValueError: naming the value, for anything else.
    """
    if not isinstance(when, datetime):
        raise ValueError(f"SilentRetryAfter(when={when!r}): expected a datetime")
    try:
        offset = when.utcoffset()
    except Exception as exc:  # a broken tzinfo: its utcoffset() itself fails
        raise ValueError(f"SilentRetryAfter(when={when!r}): its tzinfo gives no offset") from exc
    if offset is None:
        raise ValueError(
            f"SilentRetryAfter(when={when!r}): when must be timezone-aware (e.g."
            " datetime.now(UTC) + timedelta(...)); its tzinfo gives no offset"
        )
    return when


#: What an activity may return.
Outcome = Done | EOF | SilentRetry | SilentRetryAfter
