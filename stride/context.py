"""What a handler receives: the event, the step API, run identity and a bound logger."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from stride._current import current_step
from stride.events import Event
from stride.security import ActorScope, with_actor
from stride.step import Step, SyncStep

DataT = TypeVar("DataT")


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger bound to app, job, run and attempt; the current step is added per record.

    `extra=` given at the call is merged with the bound fields (the stdlib adapter would
    drop it), so `ctx.logger.info("stored", extra={"file_id": f})` keeps both.
    """

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        step = current_step.get()
        bound = dict(self.extra or {})
        bound["step_id"] = step.step_id if step else None
        if step is not None:
            bound["attempt"] = step.attempt
        bound.update(kwargs.get("extra") or {})
        kwargs["extra"] = bound
        return msg, kwargs


@dataclass(slots=True)
class BaseContext(Generic[DataT]):
    event: Event[DataT]
    """The event that triggered this run (`event.data` is the model for typed events)."""
    events: list[Event[DataT]]
    """Every event of the run: one, or several for batched jobs."""
    run_id: str
    job_id: str
    app_id: str
    attempt: int
    """Zero-based: how many attempts of the current step (or handler) failed before this one."""
    logger: RunLogger

    def as_actor(self) -> ActorScope:
        """Act as the user who dispatched the event: database work in the block runs under
        their row-level security policies (`with` or `async with`). Raises
        `MissingSecurityContext` if the event has no user.

        Example:
            async with ctx.as_actor(), AsyncSession(engine) as session: ...
        """
        return with_actor(self.event.user)


@dataclass(slots=True)
class Context(BaseContext[DataT]):
    """The argument of an `async def` handler.

    Example:
        @jobs.define_job(id="greet", trigger=user_signed_up)
        async def greet(ctx: Context[UserSignedUp]) -> dict[str, bool]:
            await ctx.step.run("send-mail", send_welcome, ctx.event.data.email)
            return {"sent": True}
    """

    step: Step


@dataclass(slots=True)
class SyncContext(BaseContext[DataT]):
    """The argument of a plain `def` handler (run in a thread); `step.run` returns values."""

    step: SyncStep
