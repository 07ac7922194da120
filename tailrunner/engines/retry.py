"""Retry policy: exponential backoff with jitter, and an optional attempt limit."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from tailrunner.errors import InvalidArgument


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How long to wait before the next try of a failing task.

    The n-th consecutive failure at the same tail waits
    ``min(max_delay, initial * multiplier ** (n - 1))``, spread by ``jitter``
    (0.2: anywhere from 80 % to 120 % of that, capped at ``max_delay``) so
    that many tasks failing together do not retry in lockstep.

    Every number must be finite; any multiplier is safe: the delay
    saturates at ``max_delay``, however many failures there were.

    :ivar initial: seconds after the first failure; more than 0.
    :ivar max_attempts: after this many failures at the same tail the task is
        suspended for an operator; ``None`` retries forever (as nog does).
    """

    initial: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.2
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        """:raises InvalidArgument: naming the field (``initial``, ``max_delay`` …)."""
        for name, what in _NUMBERS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                _refuse(name, what, value, "expected a number")
            if not math.isfinite(value):  # NaN compares false with everything: refuse it here
                _refuse(name, what, value, "expected a finite number")
        if not self.initial > 0:
            _refuse(
                "initial",
                "retry initial delay",
                self.initial,
                "must be more than 0 (a failing activity retried without a wait spins)",
            )
        if self.multiplier < 1:
            _refuse("multiplier", "retry multiplier", self.multiplier, "must be at least 1")
        if self.max_delay < self.initial:
            _refuse(
                "max_delay",
                "retry max delay",
                self.max_delay,
                f"must be at least the initial {self.initial}",
            )
        if not 0 <= self.jitter <= 1:
            _refuse("jitter", "retry jitter", self.jitter, "expected a fraction from 0 to 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            _refuse("max_attempts", "retry max_attempts", self.max_attempts, "must be at least 1")

    def delay(self, failures: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based).

        Any multiplier and any number of failures give at most ``max_delay``:
        the growth is compared in logarithms, so it saturates, never overflows.
        """
        base = self._backoff(max(0, failures - 1))
        if self.jitter:
            spread = (rng or random).uniform(-self.jitter, self.jitter)
            base = base * (1 + spread)
        return max(0.0, min(self.max_delay, base))

    def _backoff(self, exponent: int) -> float:
        """``min(max_delay, initial * multiplier ** exponent)``, without overflow."""
        if exponent == 0 or self.multiplier == 1:
            return self.initial
        # exponent * log(multiplier) stays finite: at most ~1e300 * ~710; the exponent
        # is bounded first because an int beyond ~1e308 is no float at all.
        growth = min(exponent, _HUGE_EXPONENT) * math.log(self.multiplier)
        # The difference of the logarithms, not the log of the ratio: that may overflow.
        if growth >= math.log(self.max_delay) - math.log(self.initial):
            return self.max_delay
        try:
            return min(self.max_delay, self.initial * self.multiplier**exponent)
        except OverflowError:  # multiplier ** exponent alone may overflow for a tiny initial
            return min(self.max_delay, math.exp(math.log(self.initial) + growth))

    def exhausted(self, failures: int) -> bool:
        """Whether ``failures`` consecutive failures reach the attempt limit."""
        return self.max_attempts is not None and failures >= self.max_attempts


#: The fields that are numbers, and how a message names each.
_NUMBERS = {
    "initial": "retry initial delay",
    "multiplier": "retry multiplier",
    "max_delay": "retry max delay",
    "jitter": "retry jitter",
}
#: Beyond this many failures the exponent no longer matters (every multiplier above 1
#: has saturated long before), and it still converts to a float.
_HUGE_EXPONENT = 10**300


def _refuse(field: str, what: str, value: object, reason: str) -> None:
    raise InvalidArgument(field, reason, text=f"{what} {value}: {reason}")
