"""The arithmetic of throttle, rate limit and debounce: pure functions of integers.

No I/O and no clock: the stores load a limiter's state inside their publish transaction,
call these, and write the new state back, so both backends decide exactly alike (and the
property tests in tests/unit/test_limiters.py check them against a plain token bucket).

Throttle and rate limit are the generic cell rate algorithm (GCRA), as Inngest uses it: a
bucket of `capacity` tokens refilled with one token every `interval_us`. Its whole state is
one number per key, the theoretical arrival time (`tat`, epoch microseconds): the bucket is
full again at `tat`. Microseconds, so that `period / limit` rounds by at most 1 µs.

- throttle (`Throttle(limit, period, burst)`): `limit + burst` runs start at once, then one
  every `period / limit`; runs beyond wait for their turn (FIFO), none is dropped.
- rate limit (`RateLimit(limit, period)`): `limit` runs at once, then one every
  `period / limit`; an event beyond starts no run.
"""

from __future__ import annotations

from dataclasses import dataclass

US_PER_MS = 1000


@dataclass(frozen=True, slots=True)
class Rate:
    """`capacity` tokens at once, then one more every `interval_us` microseconds."""

    interval_us: int
    capacity: int

    @classmethod
    def of(cls, *, limit: int, period_ms: int, extra: int = 0) -> Rate:
        """`limit` per `period_ms` (+ `extra` tokens of burst); the interval rounds up, so
        the rate never exceeds the limit."""
        if limit < 1 or period_ms < 1 or extra < 0:
            raise ValueError(f"bad rate: limit={limit}, period_ms={period_ms}, extra={extra}")
        return cls(interval_us=-(-period_ms * US_PER_MS // limit), capacity=limit + extra)

    @property
    def tolerance_us(self) -> int:
        """How far ahead of now `tat` may be for a token to be left."""
        return (self.capacity - 1) * self.interval_us


def throttle(tat_us: int | None, now_ms: int, rate: Rate) -> tuple[int, int]:
    """When a run arriving at `now_ms` may start, and the new state: `(start_ms, tat_us)`.

    The run reserves the first token that is free at or after its arrival, so runs start
    in arrival order and later ones are pushed further out.
    """
    now = now_ms * US_PER_MS
    previous = now if tat_us is None else tat_us
    start = max(now, previous - rate.tolerance_us)
    return -(-start // US_PER_MS), max(previous, start) + rate.interval_us


def rate_limit(tat_us: int | None, now_ms: int, rate: Rate) -> tuple[bool, int | None]:
    """Whether an event at `now_ms` may start a run, and the new state: `(allowed, tat_us)`.

    A refused event leaves the state as it was (it took no token)."""
    now = now_ms * US_PER_MS
    current = now if tat_us is None else max(tat_us, now)
    if current - now > rate.tolerance_us:
        return False, tat_us
    return True, current + rate.interval_us


def full_at_ms(tat_us: int) -> int:
    """When the bucket is full again: from then on the state is as good as absent."""
    return -(-tat_us // US_PER_MS)


def debounce_due(first_ms: int, now_ms: int, period_ms: int, timeout_ms: int | None) -> int:
    """When a debounced run whose burst began at `first_ms` is due after an event at
    `now_ms`: `period_ms` after the last event, but never later than `first_ms + timeout_ms`."""
    due = now_ms + period_ms
    return due if timeout_ms is None else min(due, first_ms + timeout_ms)


def clamp_priority_ms(seconds: object, bound_s: int) -> int:
    """A priority expression's value (seconds of head start) as ms within ±`bound_s`;
    anything that is not a number counts as 0."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return 0
    if seconds != seconds:  # NaN
        return 0
    return int(max(-bound_s, min(bound_s, seconds)) * 1000)
