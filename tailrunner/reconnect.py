"""Reconnecting to the journal: its own bounded backoff, and logs that change only with the state.

A reconnect loop (the lazy engine's signal stream, the runner's discovery)
is not an activity: it must come back soon after the journal does, so its
waits are short and bounded (:class:`ReconnectPolicy`, 100 ms doubling to
5 s), whatever the activities' retry policy says. And an outage is one
event, not one per attempt: :class:`ConnectionWatch` logs the first failure
as a warning, further failures at debug level (with an info reminder now
and then), and the recovery once::

    watch = ConnectionWatch(call="AggregateSignals", policy=policy)
    while True:
        try:
            async for batch in journal.signals():
                watch.reachable()
                ...
            delay = watch.ended()
        except Exception as exc:
            delay = watch.unreachable(exc)
        await anyio.sleep(delay)
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

__all__ = ["DEFAULT_RECONNECT", "REMIND_EVERY", "ConnectionWatch", "ReconnectPolicy"]

#: Seconds between the info reminders that an outage goes on.
REMIND_EVERY = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconnectPolicy:
    """How long to wait before the next attempt to reach the journal.

    The n-th consecutive failed attempt waits
    ``min(max_delay, initial * multiplier ** (n - 1))``, spread by ``jitter``
    (0.2: from 80 % to 120 % of that) and never longer than ``max_delay``, so
    that the runners of a fleet do not all reconnect in the same instant.
    Unlike :class:`~tailrunner.engines.retry.RetryPolicy` every wait is
    positive (a loop with no wait spins) and bounded (a long outage must not
    leave the journal's return unnoticed for long).

    :ivar initial: seconds after the first failure; more than 0.
    :ivar max_delay: the longest wait, in seconds; at least ``initial``.
    :ivar multiplier: growth per further failure; at least 1.
    :ivar jitter: a fraction from 0 to below 1.
    """

    initial: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial) and self.initial > 0):
            raise ValueError(
                f"reconnect initial delay {self.initial}: must be more than 0"
                " (reconnecting without a wait spins)"
            )
        if not math.isfinite(self.max_delay) or self.max_delay < self.initial:
            raise ValueError(
                f"reconnect max_delay {self.max_delay}: must be at least the initial"
                f" delay {self.initial} (and finite)"
            )
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError(f"reconnect multiplier {self.multiplier}: must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError(
                f"reconnect jitter {self.jitter}: expected a fraction from 0 to below 1"
            )

    def delay(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure (1-based).

        :returns: a value from ``(1 - jitter) * initial`` to ``max_delay``.
        """
        exponent = min(max(0, attempt - 1), 64)  # capped: no float overflow after a long outage
        try:
            grown = self.initial * self.multiplier**exponent
        except OverflowError:  # a huge multiplier: past any max_delay anyway
            grown = self.max_delay
        base = min(self.max_delay, grown)
        if self.jitter:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return min(self.max_delay, base)

    def describe(self) -> str:
        """How it retries, for a log line: ``"every <= 5s"``."""
        return f"every <= {self.max_delay:g}s"


#: The policy of a loop that was given none.
DEFAULT_RECONNECT = ReconnectPolicy()


class ConnectionWatch:
    """The state of one connection to the journal, for a reconnect loop to log once.

    - the first failure logs one WARNING ``journal unreachable`` with what
      failed (``call``), the error and how it retries;
    - while the journal stays unreachable, each further failure logs at
      DEBUG only, and an INFO ``journal still unreachable`` at most every
      ``remind_every`` seconds;
    - the first success after failures logs one INFO ``journal reachable
      again`` with how long it was down and how many attempts failed.

    It also counts the attempts for the backoff: :meth:`unreachable` and
    :meth:`ended` return the wait before the next attempt. A connection that
    was up for less than ``policy.max_delay`` does not reset the backoff, so
    a journal that accepts and then drops every connection is retried at
    most every ``max_delay``, not every ``initial`` (each flap is then one
    warning and one info line per ``max_delay``).

    :param call: what was attempted (``"AggregateSignals"``, ``"ListAggregates"``);
        logged as ``call``.
    :param clock: seconds, monotonic; injectable for tests.
    :param events: the three event names (down, still down, up); the
        defaults speak of the journal.
    """

    def __init__(
        self,
        *,
        call: str,
        policy: ReconnectPolicy = DEFAULT_RECONNECT,
        clock: Callable[[], float] = time.monotonic,
        remind_every: float = REMIND_EVERY,
        rng: random.Random | None = None,
        events: tuple[str, str, str] = (
            "journal unreachable",
            "journal still unreachable",
            "journal reachable again",
        ),
        **fields: object,
    ) -> None:
        if remind_every <= 0:
            raise ValueError(f"remind_every {remind_every}: must be positive")
        self.call = call
        self.policy = policy
        self._clock = clock
        self._remind_every = remind_every
        self._rng = rng
        self._down_event, self._still_event, self._up_event = events
        self._fields = fields
        #: Consecutive failed attempts; what the next delay is computed from.
        self.failures = 0
        #: Failed attempts in the current outage (``0``: not in one).
        self.attempts = 0
        self._down_since: float | None = None
        self._reminded_at = 0.0
        self._up_since: float | None = None

    @property
    def down(self) -> bool:
        """Whether the last attempt failed (an outage is going on)."""
        return self._down_since is not None

    def reachable(self) -> None:
        """The journal answered. Cheap to call for every message of a stream."""
        if self._up_since is not None:
            return
        now = self._clock()
        self._up_since = now
        if self._down_since is not None:
            log.info(
                self._up_event,
                call=self.call,
                down_for=round(now - self._down_since, 3),
                attempts=self.attempts,
                **self._fields,
            )
            self._down_since = None
            self.attempts = 0

    def unreachable(self, error: BaseException) -> float:
        """An attempt failed with ``error``: log what the state calls for.

        :returns: seconds to wait before the next attempt.
        """
        now = self._clock()
        delay = self._next_delay(now)
        self.attempts += 1
        if self._down_since is None:
            self._down_since = self._reminded_at = now
            log.warning(
                self._down_event,
                call=self.call,
                error=_describe(error),
                retrying=self.policy.describe(),
                **self._fields,
            )
        elif now - self._reminded_at >= self._remind_every:
            self._reminded_at = now
            log.info(
                self._still_event,
                call=self.call,
                down_for=round(now - self._down_since, 3),
                attempts=self.attempts,
                error=_describe(error),
                retrying=self.policy.describe(),
                **self._fields,
            )
        else:
            log.debug(
                "reconnect failed",
                call=self.call,
                attempt=self.attempts,
                error=_describe(error),
                delay=round(delay, 3),
                **self._fields,
            )
        return delay

    def ended(self) -> float:
        """The connection ended without an error (a stream the journal closed).

        Not an outage, so nothing is logged here; the next attempt says
        whether the journal is still there.

        :returns: seconds to wait before the next attempt.
        """
        return self._next_delay(self._clock())

    def _next_delay(self, now: float) -> float:
        if self._up_since is not None:
            if now - self._up_since >= self.policy.max_delay:
                self.failures = 0  # a connection that held: start the backoff over
            self._up_since = None
        self.failures += 1
        return self.policy.delay(self.failures, rng=self._rng)


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__
