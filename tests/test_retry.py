"""RetryPolicy: any policy it accepts gives a delay from 0 to max_delay, at any failure count."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailrunner.engines.retry import RetryPolicy
from tailrunner.errors import InvalidArgument


@pytest.mark.parametrize("failures", [2, 63, 64, 65, 10_000, 10**400])
@pytest.mark.parametrize("multiplier", [6.5e4, 1e200, 1.7e308])
def test_a_huge_multiplier_saturates_at_max_delay(multiplier: float, failures: int) -> None:
    policy = RetryPolicy(initial=1.0, multiplier=multiplier, max_delay=300.0, jitter=0.0)

    assert policy.delay(failures) == 300.0


def test_the_backoff_is_exponential_below_max_delay() -> None:
    policy = RetryPolicy(initial=0.5, multiplier=3.0, max_delay=100.0, jitter=0.0)

    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.5, 4.5, 13.5, 40.5, 100.0]


def test_a_tiny_initial_delay_grows_without_overflow() -> None:
    policy = RetryPolicy(initial=5e-324, multiplier=1.5, max_delay=3e9, jitter=0.0)

    delays = [policy.delay(n) for n in (1, 2, 1000, 1500, 2000, 10**6)]

    assert delays == sorted(delays)
    assert delays[0] == 5e-324 and delays[-1] == 3e9
    assert math.isclose(delays[2], 5e-324 * 1.5**999, rel_tol=1e-9)


@pytest.mark.parametrize("field", ["initial", "multiplier", "max_delay", "jitter"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_policy_refuses_a_number_that_is_not_finite(field: str, value: float) -> None:
    with pytest.raises(InvalidArgument) as caught:
        RetryPolicy(**{field: value})

    assert caught.value.field == field
    assert "finite" in caught.value.reason


@given(
    initial=st.floats(min_value=5e-324, max_value=1e6),
    multiplier=st.floats(min_value=1.0, max_value=1.7e308),
    spread=st.floats(min_value=1.0, max_value=1e12),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    failures=st.integers(min_value=-5, max_value=10**30),
    seed=st.integers(),
)
def test_any_accepted_policy_gives_a_delay_within_bounds(
    initial: float, multiplier: float, spread: float, jitter: float, failures: int, seed: int
) -> None:
    policy = RetryPolicy(
        initial=initial, multiplier=multiplier, max_delay=initial * spread, jitter=jitter
    )

    delay = policy.delay(failures, rng=random.Random(seed))

    assert 0 <= delay <= policy.max_delay
    if jitter == 0:
        assert policy.delay(failures + 1) >= delay, "never shrinks as failures go on"
