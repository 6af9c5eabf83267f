"""Flow-control options of a job: how many run at once, how fast, in what order, how grouped.

Each option is a frozen value validated when the job is defined: periods are parsed, and
every key or condition is a CEL expression over `event`, compiled once (a bad one fails at
definition time with the job id, the expression and the position). The store enforces them
globally, across all workers and machines (DESIGN.md guarantee 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from stride._durations import parse_duration
from stride.errors import ConfigurationError
from stride.expressions import Expression, compile_expression

Duration = float | timedelta | str
MAX_PRIORITY_SECONDS = 600


def _positive_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{what} must be a positive int, got {value!r}")
    return value


def _period_ms(value: Duration, what: str) -> int:
    seconds = parse_duration(value, what=what)
    if seconds <= 0:
        raise ConfigurationError(f"{what} must be longer than zero, got {value!r}")
    return int(seconds * 1000)


def _key(source: str | None, what: str) -> Expression | None:
    return None if source is None else compile_expression(source, owner=what)


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most `limit` steps of this job executing at once, per value of `key` if given.

    `scope="fn"` counts this job only; `scope="account"` with a `name` shares one limit
    between every job that names it (e.g. one external API used by several jobs).

    Example:
        concurrency=[Concurrency(limit=1, key="event.data.user_id"), Concurrency(limit=20)]
    """

    limit: int
    key: str | None = None
    scope: Literal["fn", "account"] = "fn"
    name: str | None = None
    compiled_key: Expression | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _positive_int(self.limit, "Concurrency limit")
        if self.scope not in ("fn", "account"):
            raise ConfigurationError(f"Concurrency scope must be 'fn' or 'account', "
                                     f"got {self.scope!r}")
        if self.scope == "account" and not self.name:
            raise ConfigurationError("Concurrency(scope='account') needs a name= shared by "
                                     "the jobs that use it")
        object.__setattr__(self, "compiled_key", _key(self.key, "Concurrency key"))


@dataclass(frozen=True, slots=True)
class Throttle:
    """Runs start at a steady `limit` per `period`; runs beyond wait for their turn (FIFO),
    none is dropped. As in Inngest (GCRA): `limit + burst` may start at once, then one every
    `period / limit`.

    Example:
        throttle=Throttle(limit=10, period="1m", key="event.data.customer_id")
    """

    limit: int
    period: Duration
    burst: int = 0
    key: str | None = None
    period_ms: int = field(default=0, compare=False, repr=False)
    compiled_key: Expression | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _positive_int(self.limit, "Throttle limit")
        if not isinstance(self.burst, int) or isinstance(self.burst, bool) or self.burst < 0:
            raise ConfigurationError(f"Throttle burst must be an int >= 0 (runs that may start "
                                     f"at once on top of limit), got {self.burst!r}")
        object.__setattr__(self, "period_ms", _period_ms(self.period, "Throttle period"))
        object.__setattr__(self, "compiled_key", _key(self.key, "Throttle key"))


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `limit` runs per `period`; events beyond start no run (recorded as skipped)."""

    limit: int
    period: Duration
    key: str | None = None
    period_ms: int = field(default=0, compare=False, repr=False)
    compiled_key: Expression | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _positive_int(self.limit, "RateLimit limit")
        object.__setattr__(self, "period_ms", _period_ms(self.period, "RateLimit period"))
        object.__setattr__(self, "compiled_key", _key(self.key, "RateLimit key"))


@dataclass(frozen=True, slots=True)
class Debounce:
    """A burst of events yields one run, with the last event, `period` after the last one;
    `timeout` bounds how long the run can be pushed back."""

    period: Duration
    key: str | None = None
    timeout: Duration | None = None
    period_ms: int = field(default=0, compare=False, repr=False)
    timeout_ms: int | None = field(default=None, compare=False, repr=False)
    compiled_key: Expression | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "period_ms", _period_ms(self.period, "Debounce period"))
        if self.timeout is not None:
            object.__setattr__(self, "timeout_ms", _period_ms(self.timeout, "Debounce timeout"))
        object.__setattr__(self, "compiled_key", _key(self.key, "Debounce key"))


@dataclass(frozen=True, slots=True)
class Priority:
    """`run` is a CEL expression giving seconds of head start (-600..600) over other runs."""

    run: str
    compiled: Expression | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", compile_expression(self.run, owner="Priority"))


@dataclass(frozen=True, slots=True)
class Batch:
    """Collect up to `max_size` events (per `key`) for at most `timeout`; the handler gets
    them all in `ctx.events`."""

    max_size: int
    timeout: Duration
    key: str | None = None
    timeout_ms: int = field(default=0, compare=False, repr=False)
    compiled_key: Expression | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _positive_int(self.max_size, "Batch max_size")
        object.__setattr__(self, "timeout_ms", _period_ms(self.timeout, "Batch timeout"))
        object.__setattr__(self, "compiled_key", _key(self.key, "Batch key"))


@dataclass(frozen=True, slots=True)
class Singleton:
    """At most one run per `key` alive: a new one is skipped (`mode="skip"`) or replaces the
    old one (`mode="cancel"`)."""

    key: str | None = None
    mode: Literal["skip", "cancel"] = "skip"
    compiled_key: Expression | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("skip", "cancel"):
            raise ConfigurationError(f"Singleton mode must be 'skip' or 'cancel', "
                                     f"got {self.mode!r}")
        object.__setattr__(self, "compiled_key", _key(self.key, "Singleton key"))


@dataclass(frozen=True, slots=True)
class FlowControl:
    """Every flow-control option of one job, normalised."""

    concurrency: tuple[Concurrency, ...] = ()
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    priority: Priority | None = None
    batch_events: Batch | None = None
    idempotency: Expression | None = None
    singleton: Singleton | None = None

    @property
    def simple_limit(self) -> int | None:
        """The job-wide limit (`concurrency=5`), the one the claim enforces per job."""
        for limit in self.concurrency:
            if limit.key is None and limit.scope == "fn":
                return limit.limit
        return None


def normalise_concurrency(job_id: str,
                          value: int | Concurrency | list[Concurrency] | tuple[Concurrency, ...]
                          | None) -> tuple[Concurrency, ...]:
    """`5`, `Concurrency(...)` or a list of them, as a tuple of Concurrency values."""
    if value is None:
        return ()
    if isinstance(value, bool):
        raise ConfigurationError(f"job {job_id!r}: concurrency must be a positive int or None, "
                                 f"got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ConfigurationError(
                f"job {job_id!r}: concurrency must be a positive int or None, got {value!r}")
        return (Concurrency(limit=value),)
    limits = ([value] if isinstance(value, Concurrency)
              else list(value) if isinstance(value, (list, tuple)) else [value])
    if not all(isinstance(limit, Concurrency) for limit in limits) or len(limits) > 2:
        if len(limits) == 1 and not isinstance(limits[0], Concurrency):
            raise ConfigurationError(f"job {job_id!r}: concurrency must be a positive int or "
                                     f"None, got {value!r}")
        raise ConfigurationError(
            f"job {job_id!r}: concurrency must be an int, a Concurrency or a list of at most two")
    return tuple(limits)
