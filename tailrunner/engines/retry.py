"""Retry policy: exponential backoff with jitter, and an optional attempt limit."""

from __future__ import annotations

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
        if not self.initial > 0:  # also refuses NaN
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
        """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
        exponent = max(0, failures - 1)
        # Cap the exponent so that a long-failing task cannot overflow the float.
        base = min(self.max_delay, self.initial * self.multiplier ** min(exponent, 64))
        if self.jitter:
            spread = (rng or random).uniform(-self.jitter, self.jitter)
            base = base * (1 + spread)
        return max(0.0, min(self.max_delay, base))

    def exhausted(self, failures: int) -> bool:
        """Whether ``failures`` consecutive failures reach the attempt limit."""
        return self.max_attempts is not None and failures >= self.max_attempts


def _refuse(field: str, what: str, value: object, reason: str) -> None:
    raise InvalidArgument(field, reason, text=f"{what} {value}: {reason}")
