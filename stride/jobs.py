"""Job definitions: id, triggers, retry policy and flow-control options.

A job is plain data plus a handler. Everything here is validated when the job is defined,
so a bad option fails at import time with the job id in the message, not at first run.
"""

from __future__ import annotations

import inspect
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, TypedDict, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from typing_extensions import Unpack

from stride._durations import parse_duration as parse_duration
from stride.errors import ConfigurationError
from stride.events import EventType, validate_event_name
from stride.expressions import Expression, compile_expression
from stride.flow import (
    Batch,
    Concurrency,
    Debounce,
    FlowControl,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    normalise_concurrency,
)

DataT = TypeVar("DataT")
ResultT = TypeVar("ResultT")

DEFAULT_RETRIES = 3
MAX_RETRIES = 100
_JOB_ID = re.compile(r"^[a-z0-9][a-z0-9._\-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt n+1: `initial * factor**(n-1)` ± `jitter`, never above `maximum`.

    The default (1 s, doubling, at most 1 h, ±20 %) spreads retries of many failing runs
    so that they do not hit a recovering service at the same instant. The cap applies after
    the jitter: `maximum` is a promise to the user, so runs at the cap spread below it
    (uniformly, not piled up on the cap itself).
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
        low, high = base * (1 - self.jitter), min(self.maximum, base * (1 + self.jitter))
        return max(0.0, (rng or random).uniform(low, high))


@dataclass(frozen=True, slots=True)
class EventTrigger:
    """Start a run for each event with this name (and, with `if_`, matching a CEL filter).

    In `cancel_on`, `match="data.user_id"` means: the cancelling event's `data.user_id`
    equals the run's triggering event's.
    """

    event: str
    if_: str | None = None
    condition: Expression | None = field(default=None, compare=False, repr=False)
    match: str | None = None

    def matches(self, event: Mapping[str, Any]) -> bool:
        return self.condition is None or self.condition.is_true(event=event)


def on_event(event: str | EventType[Any], *, if_: str | None = None,
             match: str | None = None) -> EventTrigger:
    """A trigger (or a `cancel_on` condition) on an event name with an optional CEL filter.

    Example:
        @jobs.define_job(id="scan", trigger=on_event("context/file.uploaded",
                                                     if_="event.data.size > 0"))
    """
    name = event.name if isinstance(event, EventType) else validate_event_name(event)
    if match is not None:
        check_match_path(match)
    return EventTrigger(name, if_, None, match)


def check_match_path(path: str) -> str:
    """A `match=` path: `data.field` or `data.a.b` (compared for equality, indexed)."""
    if not isinstance(path, str) or not re.fullmatch(r"(data|user)(\.[A-Za-z_][\w]*)+", path):
        raise ConfigurationError(
            f"match {path!r} must be a dotted path into the event such as 'data.user_id'")
    return path


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Cancel a run not started within `start` of its event, or not finished within `finish`.

    Example:
        timeouts=Timeouts(start="10m", finish="1h")
    """

    start: float | timedelta | str | None = None
    finish: float | timedelta | str | None = None

    @property
    def start_ms(self) -> int | None:
        return None if self.start is None else int(
            parse_duration(self.start, what="Timeouts start") * 1000)

    @property
    def finish_ms(self) -> int | None:
        return None if self.finish is None else int(
            parse_duration(self.finish, what="Timeouts finish") * 1000)


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


ConcurrencySpec = int | Concurrency | list[Concurrency] | tuple[Concurrency, ...] | None


class JobOptions(TypedDict, total=False):
    """The keyword options of `define_job` besides `id` and `trigger`."""

    name: str | None
    retries: int
    concurrency: ConcurrencySpec
    backoff: Backoff | None
    cancel_on: Sequence[EventTrigger] | None
    timeouts: Timeouts | None
    on_failure: Callable[..., Any] | None
    throttle: Throttle | None
    rate_limit: RateLimit | None
    debounce: Debounce | None
    priority: Priority | None
    batch_events: Batch | None
    idempotency: str | None
    singleton: Singleton | None


@dataclass(frozen=True, slots=True)
class JobConfig:
    """The options of a job, for the call form `jobs.define_job(config, trigger, handler)`."""

    id: str
    name: str | None = None
    retries: int = DEFAULT_RETRIES
    concurrency: ConcurrencySpec = None
    backoff: Backoff | None = None
    cancel_on: Sequence[EventTrigger] | None = None
    timeouts: Timeouts | None = None
    on_failure: Callable[..., Any] | None = None
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    priority: Priority | None = None
    batch_events: Batch | None = None
    idempotency: str | None = None
    singleton: Singleton | None = None

    def options(self) -> JobOptions:
        return JobOptions(
            name=self.name, retries=self.retries, concurrency=self.concurrency,
            backoff=self.backoff, cancel_on=self.cancel_on, timeouts=self.timeouts,
            on_failure=self.on_failure, throttle=self.throttle, rate_limit=self.rate_limit,
            debounce=self.debounce, priority=self.priority, batch_events=self.batch_events,
            idempotency=self.idempotency, singleton=self.singleton)


@dataclass(slots=True)
class Job(Generic[DataT, ResultT]):
    """A registered job. Calling it is not possible: dispatch its trigger event instead."""

    id: str
    name: str
    handler: Callable[..., Any]
    triggers: tuple[Trigger, ...]
    retries: int
    backoff: Backoff
    is_async: bool
    event_types: dict[str, EventType[Any]] = field(default_factory=dict)
    flow: FlowControl = field(default_factory=FlowControl)
    cancel_on: tuple[EventTrigger, ...] = ()
    timeouts: Timeouts | None = None
    on_failure: Callable[..., Any] | None = None

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    @property
    def concurrency(self) -> int | None:
        """The job-wide concurrency limit, if any (keyed limits are in `flow`)."""
        return self.flow.simple_limit

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
    *, id: str, handler: Callable[..., Any], trigger: TriggerSpec | Sequence[TriggerSpec],
    default_backoff: Backoff, **options: Unpack[JobOptions],
) -> Job[Any, Any]:
    """Validate every option and return the job, or raise `ConfigurationError`."""
    _check_job_id(id)
    retries = options.get("retries", DEFAULT_RETRIES)
    if not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise ConfigurationError(f"job {id!r}: retries must be 0..{MAX_RETRIES}, got {retries!r}")
    if not callable(handler):
        raise ConfigurationError(f"job {id!r}: handler {handler!r} is not callable")
    triggers, event_types = _normalise_triggers(id, trigger)
    return Job(
        id=id, name=options.get("name") or id, handler=handler, triggers=triggers,
        retries=retries, backoff=options.get("backoff") or default_backoff,
        is_async=inspect.iscoroutinefunction(handler), event_types=event_types,
        flow=_flow_control(id, options), cancel_on=_cancel_on(id, options.get("cancel_on")),
        timeouts=options.get("timeouts"), on_failure=options.get("on_failure"),
    )


def _flow_control(job_id: str, options: JobOptions) -> FlowControl:
    idempotency = options.get("idempotency")
    return FlowControl(
        concurrency=normalise_concurrency(job_id, options.get("concurrency")),
        throttle=options.get("throttle"), rate_limit=options.get("rate_limit"),
        debounce=options.get("debounce"), priority=options.get("priority"),
        batch_events=options.get("batch_events"),
        idempotency=(compile_expression(idempotency, owner=f"job {job_id!r} idempotency")
                     if idempotency is not None else None),
        singleton=options.get("singleton"))


def _cancel_on(job_id: str, cancel_on: Sequence[EventTrigger] | None
               ) -> tuple[EventTrigger, ...]:
    if cancel_on is None:
        return ()
    if not all(isinstance(item, EventTrigger) for item in cancel_on):
        raise ConfigurationError(
            f"job {job_id!r}: cancel_on takes a list of on_event(...), got {cancel_on!r}")
    return tuple(
        EventTrigger(item.event, item.if_, compile_expression(
            item.if_, owner=f"job {job_id!r} cancel_on") if item.if_ else None, item.match)
        for item in cancel_on)


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
