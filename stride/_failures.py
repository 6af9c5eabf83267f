"""Errors as stored JSON: name, message, traceback, and when the attempt ran."""

from __future__ import annotations

import traceback
from typing import Any

from stride import _codec

MAX_TRACEBACK_CHARS = 16_000


def describe_error(exc: BaseException, *, attempt: int, started_at: int | None,
                   ended_at: int) -> dict[str, Any]:
    """The JSON form of a failed attempt, kept on the step or run for observability."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(text) > MAX_TRACEBACK_CHARS:
        text = text[:1000] + "\n...\n" + text[-(MAX_TRACEBACK_CHARS - 1005):]
    return {
        "name": type(exc).__name__,
        "message": str(exc),
        "traceback": text,
        "attempt": attempt,
        "started_at": started_at,
        "ended_at": ended_at,
    }


# -- runs whose worker was lost --------------------------------------------------------------

WORKER_LOST = "WorkerLost"
LOST_MESSAGE = ("the worker running this run stopped renewing its lease (killed, out of "
                "memory, frozen or cut off from the database); another worker took it over")
MIN_TAKEOVERS = 3
"""A run survives at least this many lost workers at one point of its code, whatever its
retries: an ordinary crash must never fail a run (DESIGN.md guarantee 3)."""


def losses_in_a_row(errors_json: str | None, steps_done: int) -> int:
    """How many times in a row the run's worker was lost with `steps_done` completed steps.

    The store appends a `WorkerLost` entry, with the completed steps at that moment, to the
    run's errors each time it takes a run over from a dead worker. Losses after the run made
    progress start the count again: a long workflow may meet several unrelated crashes; a
    run that kills its worker at the same point every time is a poison pill."""
    errors = loads_errors(errors_json)
    count = 0
    for error in reversed(errors):
        if error.get("name") != WORKER_LOST or error.get("steps_done") != steps_done:
            break
        count += 1
    return count


def gave_up_on_lost_workers(losses: int, steps_done: int, ended_at: int) -> dict[str, Any]:
    """The error of a run failed because it lost its worker `losses` times at one point."""
    return {"name": WORKER_LOST,
            "message": (f"the run lost its worker {losses} times in a row after {steps_done} "
                        "completed steps (killed, out of memory, frozen?); it is failed so that "
                        "it cannot take down more workers. Fix the cause, then replay it"),
            "traceback": None, "attempt": losses, "started_at": None, "ended_at": ended_at}


def loads_errors(errors_json: str | None) -> list[dict[str, Any]]:
    if not errors_json:
        return []
    value = _codec.loads(errors_json)
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []
