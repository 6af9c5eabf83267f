"""The exception tree. Every error Stride raises on purpose derives from `StrideError`.

    StrideError
    ├── ConfigurationError        bad option, bad database URL, bad APP import path
    ├── InvalidEventError         bad event name, data not an object, schema failure, too large
    ├── DuplicateJobError         two jobs registered with one id
    ├── SerializationError        a step result or run output that is not JSON
    ├── NonDeterminismError       a replay met a different step than the one recorded
    ├── RunNotFound               no run with that id
    ├── WaitTimeout               `wait_for` gave up before the run finished
    ├── StoreError                the store failed
    │   ├── StoreUnavailable      cannot reach the database (down, locked, unreachable)
    │   ├── StoreCorrupt          the file is not a Stride database
    │   └── LeaseLost             another worker took the run over; this one must stop
    ├── StepError                 a step gave up after its last attempt (handlers may catch it)
    ├── NonRetriableError         raised by user code: fail the step now, no more attempts
    └── RetryAfterError           raised by user code: retry after exactly `delay`

Messages quote the bad value and say how to fix it. Driver errors are chained with
`raise ... from exc`, so the original cause is never lost.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any


class StrideError(Exception):
    """Root of every error Stride raises on purpose."""


class ConfigurationError(StrideError):
    """An option, URL or import path is wrong; the message says which and what to use."""


class InvalidEventError(StrideError):
    """The event cannot be accepted as given; nothing was stored."""


class DuplicateJobError(StrideError):
    """Two jobs in one app share an id; job ids must be unique."""


class SerializationError(StrideError):
    """A value that must be stored is not JSON-serialisable."""


class NonDeterminismError(StrideError):
    """A replay of the handler called a step other than the one recorded at that position.

    Code outside `step.run` must be deterministic: it runs again on every replay.
    """


class RunNotFound(StrideError):
    """No run with the given id exists in the store."""


class WaitTimeout(StrideError):
    """The run did not finish within the time given to `wait_for`."""


class StoreError(StrideError):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The database cannot be reached, or stays locked; the operation did not happen."""


class StoreCorrupt(StoreError):
    """The database file exists but is not a readable Stride database."""


class LeaseLost(StoreError):
    """This worker's lease on a run expired and another worker took it over.

    The worker stops working on the run at once; the new owner resumes it from the memo.
    """


class StepError(StrideError):
    """A step failed on its last attempt. Catch it to recover, or let it fail the run.

    Example:
        try:
            await ctx.step.run("charge", charge_card, order)
        except StepError as err:
            await ctx.step.run("notify", send_failure_mail, str(err))
    """

    def __init__(self, step_id: str, error: dict[str, Any]) -> None:
        self.step_id = step_id
        self.error = error
        self.name = str(error.get("name", "Error"))
        self.message = str(error.get("message", ""))
        super().__init__(f"step {step_id!r} failed: {self.name}: {self.message}")


class NonRetriableError(StrideError):
    """Raise from a step (or a handler) to fail it at once, without further attempts.

    Example:
        if not user_exists:
            raise NonRetriableError(f"user {user_id} was deleted")
    """


class RetryAfterError(StrideError):
    """Raise from a step to retry it after exactly `delay` (seconds or a timedelta), no backoff.

    Example:
        if response.status_code == 429:
            raise RetryAfterError("rate limited", delay=response.headers["Retry-After"])
    """

    def __init__(self, message: str, *, delay: float | timedelta | str) -> None:
        super().__init__(message)
        if isinstance(delay, timedelta):
            seconds = delay.total_seconds()
        else:
            try:
                seconds = float(delay)
            except ValueError as exc:
                raise ConfigurationError(
                    f"RetryAfterError delay {delay!r} is not a number of seconds"
                ) from exc
        if seconds < 0:
            raise ConfigurationError(f"RetryAfterError delay must be >= 0, got {seconds}")
        self.delay_seconds = seconds
