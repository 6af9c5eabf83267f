"""What one execution of a handler decided, as frozen values both executors share.

The executor drives a handler until it returns, fails, or must stop (a step to retry
later, a sleep, a shutdown); the worker then applies the decision to the store in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

from stride.stores.base import NewWait, RunStatus, StepRecord


@dataclass(frozen=True, slots=True)
class Completed:
    """The handler returned; `output_json` is its return value."""

    output_json: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The run failed for good: no attempts left, a non-retriable error, or a step gave up."""

    error_json: str
    errors_json: str | None


@dataclass(frozen=True, slots=True)
class Rescheduled:
    """Stop now and run the handler again at `available_at` (a retry, a sleep, a drain)."""

    available_at: int
    status: RunStatus
    attempt: int | None = None
    errors_json: str | None = None
    waits: tuple[NewWait, ...] = ()
    """Steps waiting for events: registered with the suspension (`suspend_for_events`)."""
    step: StepRecord | None = None
    """A fresh sleep step's record, written with the reschedule in its transaction (instead of
    a checkpoint before it: one commit fewer when a run starts to sleep)."""


@dataclass(frozen=True, slots=True)
class Abandoned:
    """The worker stops working on the run: it lost it (cancelled, taken over), or the store
    failed. With `release`, the run is still ours and is given back to be taken up again."""

    reason: str
    release: bool = False


Decision = Completed | Failed | Rescheduled | Abandoned
