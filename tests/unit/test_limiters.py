"""The limiter arithmetic (stride._limiters) against plain reference models, with hypothesis.

Throttle and rate limit are GCRA: one stored number per key. The reference is the textbook
token bucket, written the obvious way with exact fractions: `capacity` tokens, refilled one
per `interval` microseconds, never above capacity. Debounce is checked against a direct
grouping of event times into bursts.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from stride._limiters import (
    Rate,
    clamp_priority_ms,
    debounce_due,
    full_at_ms,
    rate_limit,
    throttle,
)

limits = st.integers(min_value=1, max_value=20)
periods_ms = st.integers(min_value=1, max_value=120_000)
bursts = st.integers(min_value=0, max_value=10)
START_MS = 1_700_000_000_000


@st.composite
def arrivals(draw: st.DrawFn, size: int = 60) -> list[int]:
    """Non-decreasing event times (ms): bursts of equal times, small and large gaps."""
    gaps = draw(st.lists(st.one_of(st.just(0), st.integers(0, 50), st.integers(0, 200_000)),
                         min_size=1, max_size=size))
    times, now = [], START_MS
    for gap in gaps:
        now += gap
        times.append(now)
    return times


@st.composite
def rates(draw: st.DrawFn) -> Rate:
    return Rate.of(limit=draw(limits), period_ms=draw(periods_ms), extra=draw(bursts))


@dataclass
class TokenBucket:
    """The reference: tokens refill continuously at 1 per `interval` µs, up to `capacity`."""

    capacity: int
    interval: int
    tokens: Fraction
    at: Fraction  # µs

    @classmethod
    def full(cls, rate: Rate, now_us: int) -> TokenBucket:
        return cls(rate.capacity, rate.interval_us, Fraction(rate.capacity), Fraction(now_us))

    def refill(self, until: Fraction) -> None:
        if until > self.at:
            self.tokens = min(Fraction(self.capacity),
                              self.tokens + (until - self.at) / self.interval)
            self.at = until

    def take(self, now_us: int) -> bool:
        """Rate limit: take a token now if there is one."""
        self.refill(Fraction(now_us))
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def reserve(self, now_us: int) -> Fraction:
        """Throttle: the first instant at or after now (and after earlier reservations) at
        which a token is there; take it then."""
        start = max(Fraction(now_us), self.at)
        self.refill(start)
        if self.tokens < 1:
            start += (1 - self.tokens) * self.interval
            self.refill(start)
        self.tokens -= 1
        return start


# -- rate limit ------------------------------------------------------------------------------


@given(rate=rates(), times=arrivals())
def test_rate_limit_admits_exactly_what_a_token_bucket_admits(rate: Rate,
                                                               times: list[int]) -> None:
    bucket = TokenBucket.full(rate, times[0] * 1000)
    tat: int | None = None
    for now in times:
        allowed, tat = rate_limit(tat, now, rate)
        assert allowed == bucket.take(now * 1000), now


@given(rate=rates(), times=arrivals())
def test_rate_limit_never_admits_more_than_capacity_plus_the_refill(rate: Rate,
                                                                    times: list[int]) -> None:
    admitted: list[int] = []
    tat: int | None = None
    for now in times:
        allowed, tat = rate_limit(tat, now, rate)
        if allowed:
            admitted.append(now * 1000)
    for i, first in enumerate(admitted):
        for j in range(i + 1, len(admitted)):
            # j - i admissions after `first` need (j - i - capacity + 1) intervals of refill
            assert admitted[j] - first >= (j - i - rate.capacity + 1) * rate.interval_us


@given(limit=limits, period=periods_ms)
def test_a_full_bucket_admits_limit_events_at_once_and_refuses_the_next(limit: int,
                                                                         period: int) -> None:
    rate = Rate.of(limit=limit, period_ms=period)
    tat: int | None = None
    outcomes = []
    for _ in range(limit + 1):
        allowed, tat = rate_limit(tat, START_MS, rate)
        outcomes.append(allowed)
    assert outcomes == [True] * limit + [False]
    assert rate_limit(tat, START_MS + period, rate)[0], "after a whole period a token is back"


def test_a_refused_event_leaves_the_state_alone() -> None:
    rate = Rate.of(limit=1, period_ms=4000)
    allowed, tat = rate_limit(None, START_MS, rate)
    assert allowed
    assert rate_limit(tat, START_MS + 3999, rate) == (False, tat)
    assert rate_limit(tat, START_MS + 4000, rate)[0]


# -- throttle --------------------------------------------------------------------------------


@given(rate=rates(), times=arrivals())
def test_throttle_starts_runs_when_a_token_bucket_queue_would(rate: Rate,
                                                              times: list[int]) -> None:
    bucket = TokenBucket.full(rate, times[0] * 1000)
    tat: int | None = None
    for now in times:
        start, tat = throttle(tat, now, rate)
        expected = bucket.reserve(now * 1000)
        assert start == -(-expected.numerator // (expected.denominator * 1000)), now


@given(rate=rates(), times=arrivals())
def test_throttle_delays_never_drops_and_keeps_arrival_order(rate: Rate,
                                                             times: list[int]) -> None:
    tat: int | None = None
    starts = []
    for now in times:
        start, tat = throttle(tat, now, rate)
        assert start >= now
        starts.append(start)
    assert len(starts) == len(times)
    assert starts == sorted(starts), "FIFO: a later event never starts before an earlier one"
    for i, first in enumerate(starts):
        for j in range(i + 1, len(starts)):
            # ms rounding (ceil) may bring two starts up to 1 ms closer than in µs
            assert starts[j] - first >= ((j - i - rate.capacity + 1) * rate.interval_us) / 1000 - 1


def test_throttle_matches_inngest_s_example() -> None:
    """limit 2 per 6 s, burst 1: six events 0.5 s apart; three start at once, then one
    every 3 s (period / limit)."""
    rate = Rate.of(limit=2, period_ms=6000, extra=1)
    tat: int | None = None
    starts = []
    for offset in range(0, 3000, 500):
        start, tat = throttle(tat, START_MS + offset, rate)
        starts.append(start - START_MS)
    assert starts == [0, 500, 1000, 3000, 6000, 9000]


@given(rate=rates(), now=st.integers(START_MS, START_MS + 10**9))
def test_once_full_again_the_state_is_as_good_as_none(rate: Rate, now: int) -> None:
    _, tat = throttle(None, now, rate)
    later = full_at_ms(tat)
    assert throttle(tat, later, rate) == throttle(None, later, rate)
    assert rate_limit(tat, later, rate) == rate_limit(None, later, rate)


@given(limit=limits, period=periods_ms, extra=bursts)
def test_the_interval_rounds_up_by_less_than_a_microsecond_per_run(limit: int, period: int,
                                                                    extra: int) -> None:
    rate = Rate.of(limit=limit, period_ms=period, extra=extra)
    assert period * 1000 <= rate.interval_us * limit < period * 1000 + limit
    assert rate.capacity == limit + extra


# -- debounce ----------------------------------------------------------------------------------


def bursts_reference(times: list[int], period: int, timeout: int | None) -> list[list[int]]:
    """Group events into debounced runs the direct way: an event joins the current burst if
    it comes less than `period` after the previous one and, with a timeout, less than
    `timeout` after the burst's first event; otherwise it starts a new burst."""
    groups: list[list[int]] = []
    for now in times:
        current = groups[-1] if groups else None
        if (current is not None and now < current[-1] + period
                and (timeout is None or now < current[0] + timeout)):
            current.append(now)
        else:
            groups.append([now])
    return groups


@given(times=arrivals(), period=st.integers(1, 100_000),
       timeout=st.one_of(st.none(), st.integers(1, 300_000)))
@settings(max_examples=300)
def test_debounce_runs_once_per_burst_with_the_last_event(times: list[int], period: int,
                                                          timeout: int | None) -> None:
    """Simulate the store: a pending run absorbs events until it is due (a worker takes it
    exactly then); each run carries the last event of its burst."""
    runs: list[tuple[int, int, int]] = []  # (first event, last event, due)
    for now in times:
        if runs and now < runs[-1][2]:
            first, _, _ = runs[-1]
            runs[-1] = (first, now, max(now, debounce_due(first, now, period, timeout)))
        else:
            runs.append((now, now, debounce_due(now, now, period, timeout)))
    expected = bursts_reference(times, period, timeout)
    assert [(first, last) for first, last, _ in runs] == [(g[0], g[-1]) for g in expected]
    for first, last, due in runs:
        assert due - last <= period, "never later than period after the last event"
        if timeout is not None:
            assert due <= max(first + timeout, last), "never pushed back past the timeout"


def test_debounce_due_is_period_after_the_last_event_capped_by_the_timeout() -> None:
    assert debounce_due(0, 100, 1000, None) == 1100
    assert debounce_due(0, 100, 1000, 500) == 500
    assert debounce_due(0, 900, 1000, 5000) == 1900


# -- priority ----------------------------------------------------------------------------------


@given(value=st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                       st.none(), st.text(max_size=3), st.booleans()))
def test_priority_is_bounded_seconds_and_junk_counts_as_zero(value: object) -> None:
    ms = clamp_priority_ms(value, 600)
    assert -600_000 <= ms <= 600_000
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        assert ms == 0
    elif -600 <= value <= 600:
        assert ms == int(value * 1000)
