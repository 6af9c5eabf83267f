"""WakeTimes: an idle worker wakes up when runs it suspended fall due, not at its next poll."""

from __future__ import annotations

from stride._worker import WAKE_COALESCE_SECONDS, WakeTimes


def test_with_nothing_suspended_the_worker_waits_its_poll_interval() -> None:
    assert WakeTimes().seconds_to_next(1_000, 0.25) == 0.25


def test_it_waits_until_the_next_run_falls_due() -> None:
    wakes = WakeTimes()
    wakes.add(1_100)
    wakes.add(1_050)

    assert wakes.seconds_to_next(1_000, 0.25) == 0.05
    assert wakes.seconds_to_next(1_000, 0.01) == 0.01  # never past the poll interval


def test_a_run_that_fell_due_means_claim_now_once() -> None:
    wakes = WakeTimes()
    wakes.add(1_000)
    wakes.add(1_010)
    wakes.add(2_000)

    assert wakes.seconds_to_next(1_020, 5.0) == 0.0
    assert wakes.seconds_to_next(1_020, 5.0) == 0.98


def test_wake_ups_close_together_are_coalesced() -> None:
    wakes = WakeTimes()
    wakes.add(1_001)

    assert wakes.seconds_to_next(1_000, 0.25) == WAKE_COALESCE_SECONDS
