"""What is executing right now, carried in context variables.

Context variables follow asyncio tasks and are copied into worker threads, so the logger,
the security context and idempotency keys always see the run and step they belong to,
even with many runs interleaved in one process.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RunScope:
    app_id: str
    job_id: str
    run_id: str
    event_id: str
    actor: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class StepScope:
    step_id: str
    attempt: int


current_run: ContextVar[RunScope | None] = ContextVar("stride_run", default=None)
current_step: ContextVar[StepScope | None] = ContextVar("stride_step", default=None)


def current_idempotency_key() -> str:
    """A key that is the same for every attempt of the running step, and unique to it.

    Pass it to outside services that deduplicate requests (payment APIs, mailers), so a step
    that runs twice after a crash does not charge or send twice.

    Example:
        stripe.PaymentIntent.create(..., idempotency_key=current_idempotency_key())
    """
    run = current_run.get()
    step = current_step.get()
    if run is None or step is None:
        from stride.errors import StrideError

        raise StrideError("current_idempotency_key() is only available inside step.run")
    return f"{run.run_id}:{step.step_id}"
