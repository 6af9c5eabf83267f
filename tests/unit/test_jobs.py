"""Durations and retry backoff: the values job options are made of."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stride import Backoff, ConfigurationError
from stride.jobs import build_job, parse_duration

# --- parse_duration ------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    (30, 30.0),
    (0.25, 0.25),
    (0, 0.0),
    (timedelta(minutes=2, seconds=3), 123.0),
    ("500ms", 0.5),
    ("45s", 45.0),
    ("1.5s", 1.5),
    ("10m", 600.0),
    ("2h", 7200.0),
    ("2h30m", 9000.0),
    ("1h1m1s", 3661.0),
    ("1d", 86400.0),
    ("1w", 604800.0),
    ("1m500ms", 60.5),
    (" 2H30M ", 9000.0),
])
def test_a_duration_is_seconds_a_timedelta_or_units(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", "   ", "soon", "10", "2 h", "2h 30m", "2hours", "h",
                                   "1y", "-5s", "5s!", True, None, [1]])
def test_anything_else_is_not_a_duration(value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"lease .* is not a duration"):
        parse_duration(value, what="lease")  # type: ignore[arg-type]


def test_the_error_names_the_option_and_shows_the_forms_it_takes() -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_duration("2 hours", what="dedupe_window")

    assert str(raised.value) == (
        "dedupe_window '2 hours' is not a duration; use seconds, a timedelta or e.g. '2h30m', "
        "'500ms', '1d' (units ms s m h d w)")


@pytest.mark.parametrize("value", [-1, -0.5, timedelta(seconds=-3)])
def test_a_negative_duration_is_refused(value: object) -> None:
    with pytest.raises(ConfigurationError, match="grace must not be negative"):
        parse_duration(value, what="grace")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_duration_must_be_finite(value: float) -> None:
    with pytest.raises(ConfigurationError):
        parse_duration(value, what="lease")


# --- Backoff -------------------------------------------------------------------------------


def test_without_jitter_the_delay_doubles_from_initial() -> None:
    backoff = Backoff(initial=1, factor=2, maximum=3600, jitter=0)

    assert [backoff.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 16, 32]


def test_the_delay_stops_growing_at_maximum() -> None:
    backoff = Backoff(initial=1, factor=2, maximum=10, jitter=0)

    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]
    assert backoff.delay(10_000) == 10, "a huge attempt count does not overflow"


def test_the_default_is_one_second_doubling_to_an_hour_with_twenty_percent_jitter() -> None:
    assert Backoff() == Backoff(initial=1.0, factor=2.0, maximum=3600.0, jitter=0.2)


def test_jitter_spreads_the_delays_of_many_runs() -> None:
    rng = random.Random(7)
    delays = {Backoff().delay(3, rng) for _ in range(50)}

    assert len(delays) > 40
    assert min(delays) < 3.8 and max(delays) > 4.2


@given(attempt=st.integers(min_value=1, max_value=60),
       initial=st.floats(min_value=0.001, max_value=100),
       factor=st.floats(min_value=1, max_value=5),
       maximum=st.floats(min_value=0.001, max_value=7200),
       seed=st.integers())
def test_the_delay_is_within_twenty_percent_of_the_base_and_never_above_maximum(
        attempt: int, initial: float, factor: float, maximum: float, seed: int) -> None:
    backoff = Backoff(initial=initial, factor=factor, maximum=maximum)  # jitter 0.2
    base = min(maximum, initial * factor ** (attempt - 1))

    delay = backoff.delay(attempt, random.Random(seed))

    assert base * 0.8 - 1e-9 <= delay <= min(maximum, base * 1.2) + 1e-9


def test_runs_at_the_cap_spread_below_maximum_not_above() -> None:
    backoff = Backoff(initial=1, factor=2, maximum=60)
    rng = random.Random(3)

    delays = [backoff.delay(30, rng) for _ in range(200)]

    assert max(delays) <= 60
    assert min(delays) < 50 and len(set(delays)) > 100


@given(jitter=st.floats(min_value=0, max_value=0.99), seed=st.integers())
def test_the_delay_is_never_negative_and_jitter_is_bounded(jitter: float, seed: int) -> None:
    delay = Backoff(initial=5, jitter=jitter).delay(1, random.Random(seed))

    assert 5 * (1 - jitter) - 1e-9 <= delay <= 5 * (1 + jitter) + 1e-9
    assert delay >= 0


@pytest.mark.parametrize(("options", "message"), [
    ({"initial": -1}, "initial and maximum must be >= 0"),
    ({"maximum": -1}, "initial and maximum must be >= 0"),
    ({"factor": 0.5}, "factor must be >= 1, got 0.5"),
    ({"jitter": 1.0}, r"jitter must be in \[0, 1\), got 1.0"),
    ({"jitter": -0.1}, r"jitter must be in \[0, 1\)"),
])
def test_bad_backoff_options_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Backoff(**options)


# --- job ids -----------------------------------------------------------------------------------


def build(job_id: object) -> None:
    build_job(id=job_id, name=None, handler=lambda ctx: None,  # type: ignore[arg-type]
              trigger="user/signed-up", retries=0, concurrency=None, backoff=None,
              default_backoff=Backoff())


@pytest.mark.parametrize("job_id", ["process-file", "a", "v2.sync_contacts", "0", "j" * 128])
def test_a_job_id_is_a_lowercase_slug(job_id: str) -> None:
    build(job_id)


@pytest.mark.parametrize("job_id", ["", "Process", "process file", "-process", "j" * 129,
                                    "process/file", None, 7])
def test_other_job_ids_are_refused(job_id: object) -> None:
    with pytest.raises(ConfigurationError, match="must be a slug"):
        build(job_id)


def test_a_job_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must be a slug"):
        build("process-file\n")
