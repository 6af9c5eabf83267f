"""Errors as stored JSON: name, message, traceback, and when the attempt ran."""

from __future__ import annotations

import traceback
from typing import Any

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
