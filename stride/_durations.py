"""Durations as users write them: seconds, a timedelta, or "2h30m", "500ms", "1d"."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from stride.errors import ConfigurationError

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: float | int | timedelta | str, *, what: str = "duration") -> float:
    """Seconds from a number of seconds, a `timedelta`, or a string like "2h30m" or "500ms"."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        parts = _DURATION_PART.findall(text)
        if "".join(n + u for n, u in parts) != text:
            raise ConfigurationError(
                f"{what} {value!r} is not a duration; use seconds, a timedelta or e.g. '2h30m', "
                "'500ms', '1d' (units ms s m h d w)"
            )
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ConfigurationError(f"{what} {value!r} is not a duration")
    if not math.isfinite(seconds):
        raise ConfigurationError(f"{what} must be a finite duration, got {value!r}")
    if seconds < 0:
        raise ConfigurationError(f"{what} must not be negative, got {value!r}")
    return seconds
