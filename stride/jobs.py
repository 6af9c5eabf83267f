"""Job definitions: id, triggers, retry policy and flow-control options.

A job is plain data plus a handler. Everything here is validated when the job is defined,
so a bad option fails at import time with the job id in the message, not at first run.
"""

from __future__ import annotations

import inspect
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from stride.errors import ConfigurationError
from stride.events import EventType, validate_event_name
from stride.expressions import Expression, compile_expression

DataT = TypeVar("DataT")
ResultT = TypeVar("ResultT")

DEFAULT_RETRIES = 3
MAX_RETRIES = 100
_JOB_ID = re.compile(r"^[a-z0-9][a-z0-9._\-]{0,127}$")
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


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt n+1: `initial * factor**(n-1)`, capped at `maximum`, ± `jitter`.

    The default (1 s, doubling, at most 1 h, ±20 %) spreads retries of many failing runs
    so that they do not hit a recovering service at the same instant.
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0:
            raise ConfigurationError("Backoff initial and maximum must be >= 0 seconds")
        if self.factor < 1:
            raise ConfigurationError(f"Backoff factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError(f"Backoff jitter must be in [0, 1), got {self.jitter}")

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failed_attempts`-th failure (1-based)."""
        base = min(self.maximum, self.initial * self.factor ** max(0, failed_attempts - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))


@dataclass(frozen=True, slots=True)
class EventTrigger:
    """Start a run for each event with this name (and, with `if_`, matching a CEL filter)."""

    event: str
    if_: str | None = None
    condition: Expression | None = field(default=None, compare=False, repr=False)

    def matches(self, event: Mapping[str, Any]) -> bool:
        return self.condition is None or self.condition.is_true(event=event)


def on_event(event: str | EventType[Any], *, if_: str | None = None) -> EventTrigger:
    """A trigger on an event name with an optional CEL filter over `event`.

    Example:
        @jobs.define_job(id="scan", trigger=on_event("context/file.uploaded",
                                                     if_="event.data.size > 0"))
    """
    name = event.name if isinstance(event, EventType) else validate_event_name(event)
    return EventTrigger(name, if_)


MissedTicks = Literal["skip", "run_once"]


@dataclass(frozen=True, slots=True)
class CronTrigger:
    """Start a run on a cron schedule (5 fields, or 6 with seconds last), in time zone `tz`."""

    schedule: str
    tz: str = "UTC"
    missed: MissedTicks = "skip"

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.schedule):
            raise ConfigurationError(
                f"cron schedule {self.schedule!r} is not valid; use 5 fields "
                "(minute hour day-of-month month day-of-week), e.g. '0 9 * * MON'")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(f"cron time zone {self.tz!r} is unknown") from exc
        if self.missed not in ("skip", "run_once"):
            raise ConfigurationError(f"cron missed= must be 'skip' or 'run_once', "
                                     f"got {self.missed!r}")

    def previous_tick(self, now: datetime) -> datetime:
        """The latest scheduled instant at or before `now`."""
        local = now.astimezone(ZoneInfo(self.tz))
        ahead = croniter(self.schedule, local).get_next(datetime)
        if ahead == local:
            return ahead
        tick: datetime = croniter(self.schedule, local).get_prev(datetime)
        return tick


def cron(schedule: str, *, tz: str = "UTC", missed: MissedTicks = "skip") -> CronTrigger:
    """A cron trigger: `trigger=cron("0 9 * * MON", tz="Europe/Berlin")`.

    Each tick starts one run across all workers and machines. Ticks missed while nothing was
    running are skipped, or with `missed="run_once"` the latest one runs once.
    """
    return CronTrigger(schedule, tz, missed)


Trigger = EventTrigger | CronTrigger
TriggerSpec = EventType[Any] | str | EventTrigger | CronTrigger


@dataclass(frozen=True, slots=True)
class JobConfig:
    """The options of a job, for the call form `jobs.define_job(config, trigger, handler)`."""

    id: str
    name: str | None = None
    retries: int = DEFAULT_RETRIES
    concurrency: int | None = None
    backoff: Backoff | None = None


@dataclass(slots=True)
class Job(Generic[DataT, ResultT]):
    """A registered job. Calling it is not possible: dispatch its trigger event instead."""

    id: str
    name: str
    handler: Callable[..., Any]
    triggers: tuple[Trigger, ...]
    retries: int
    concurrency: int | None
    backoff: Backoff
    is_async: bool
    event_types: dict[str, EventType[Any]] = field(default_factory=dict)

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def describe(self) -> dict[str, Any]:
        """The JSON form shown by the CLI and stored for dashboards."""
        return {
            "id": self.id, "name": self.name, "retries": self.retries,
            "concurrency": self.concurrency,
            "triggers": [_describe_trigger(t) for t in self.triggers],
        }


def _describe_trigger(trigger: Trigger) -> dict[str, Any]:
    if isinstance(trigger, CronTrigger):
        return {"cron": trigger.schedule, "tz": trigger.tz, "missed": trigger.missed}
    return {"event": trigger.event, "if": trigger.if_}


def build_job(
    *, id: str, name: str | None, handler: Callable[..., Any],
    trigger: TriggerSpec | Sequence[TriggerSpec], retries: int, concurrency: int | None,
    backoff: Backoff | None, default_backoff: Backoff,
) -> Job[Any, Any]:
    """Validate every option and return the job, or raise `ConfigurationError`."""
    _check_job_id(id)
    if not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise ConfigurationError(f"job {id!r}: retries must be 0..{MAX_RETRIES}, got {retries!r}")
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise ConfigurationError(
            f"job {id!r}: concurrency must be a positive int or None, got {concurrency!r}"
        )
    if not callable(handler):
        raise ConfigurationError(f"job {id!r}: handler {handler!r} is not callable")
    triggers, event_types = _normalise_triggers(id, trigger)
    return Job(
        id=id, name=name or id, handler=handler, triggers=triggers, retries=retries,
        concurrency=concurrency, backoff=backoff or default_backoff,
        is_async=inspect.iscoroutinefunction(handler), event_types=event_types,
    )


def _check_job_id(job_id: object) -> None:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ConfigurationError(
            f"job id {job_id!r} must be a slug: lowercase letters, digits, '.', '_' or '-', "
            "at most 128 characters, e.g. 'process-context-file'"
        )


def _normalise_triggers(
    job_id: str, trigger: TriggerSpec | Sequence[TriggerSpec]
) -> tuple[tuple[Trigger, ...], dict[str, EventType[Any]]]:
    if isinstance(trigger, (str, EventType, EventTrigger, CronTrigger)):
        specs: Sequence[Any] = [trigger]
    elif isinstance(trigger, (list, tuple)):
        specs = list(trigger)
    else:
        raise ConfigurationError(
            f"job {job_id!r}: {trigger!r} is not a trigger; give an event name, an event type, "
            "on_event(...), cron(...) or a list of them")
    if not specs:
        raise ConfigurationError(f"job {job_id!r} has no trigger; give an event name or type")
    triggers: list[Trigger] = []
    event_types: dict[str, EventType[Any]] = {}
    for spec in specs:
        if isinstance(spec, EventType):
            event_types[spec.name] = spec
            triggers.append(EventTrigger(spec.name))
        elif isinstance(spec, EventTrigger):
            condition = (compile_expression(spec.if_, owner=f"job {job_id!r} trigger filter")
                         if spec.if_ is not None else None)
            triggers.append(EventTrigger(validate_event_name(spec.event), spec.if_, condition))
        elif isinstance(spec, CronTrigger):
            triggers.append(spec)
        elif isinstance(spec, str):
            triggers.append(EventTrigger(validate_event_name(spec)))
        else:
            raise ConfigurationError(f"job {job_id!r}: {spec!r} is not a trigger")
    return tuple(triggers), event_types
