"""Counting lost workers: in a row, at one point of the run's progress."""

from __future__ import annotations

import json
from typing import Any

from stride._failures import WORKER_LOST, losses_in_a_row


def lost(steps_done: int) -> dict[str, Any]:
    return {"name": WORKER_LOST, "message": "lease expired", "steps_done": steps_done}


def failed(attempt: int) -> dict[str, Any]:
    return {"name": "ValueError", "message": "boom", "attempt": attempt}


def test_no_errors_no_losses() -> None:
    assert losses_in_a_row(None, 0) == 0
    assert losses_in_a_row("[]", 3) == 0


def test_losses_at_the_current_progress_are_counted() -> None:
    assert losses_in_a_row(json.dumps([lost(2), lost(2), lost(2)]), 2) == 3


def test_progress_since_the_last_loss_starts_the_count_again() -> None:
    errors = json.dumps([lost(0), lost(0), lost(1)])

    assert losses_in_a_row(errors, 1) == 1
    assert losses_in_a_row(errors, 2) == 0


def test_a_failed_attempt_in_between_breaks_the_series() -> None:
    assert losses_in_a_row(json.dumps([lost(1), failed(1), lost(1)]), 1) == 1
