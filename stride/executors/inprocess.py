"""The in-process executor: call the handler in this process and checkpoint each step.

Between steps there is no replay: a step's result is committed (group commit) and the
handler continues in the same call. Replay from the top happens only when the run was
rescheduled (a retry after backoff, a drain) or taken over after a crash.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any

from pydantic import TypeAdapter, ValidationError

from stride import _codec
from stride._current import RunScope, current_run
from stride._decisions import Abandoned, Completed, Decision, Failed, Rescheduled
from stride._failures import (
    MIN_TAKEOVERS,
    describe_error,
    gave_up_on_lost_workers,
    loads_errors,
    losses_in_a_row,
)
from stride._replay import Memo, RunLost, StepCall, Suspend
from stride._waits import INVOKE_EVENT
from stride.context import Context, RunLogger, SyncContext
from stride.errors import (
    LeaseLost,
    NonRetriableError,
    RetryAfterError,
    SerializationError,
    StepError,
    StoreError,
)
from stride.events import Event
from stride.executors._workflow import WorkflowHost, WorkflowSteps
from stride.jobs import Job
from stride.security import MissingSecurityContext
from stride.step import Step, SyncStep
from stride.stores.base import ClaimedRun, EventRow, NewWait, StepRecord, Store

log = logging.getLogger("stride.executor")
_PLAIN_TYPES: frozenset[Any] = frozenset({None, Any, dict, list, str, int, float, bool,
                                          type(None), object})

NEVER_RETRIED: tuple[type[Exception], ...] = (
    NonRetriableError, SerializationError, StepError, MissingSecurityContext)
"""Failures another attempt cannot fix: the user said so, a result that is not JSON, a step
that already gave up, or database work with no security context (the same event and code
meet it again: backoff would only delay the error strict mode exists to show). A replay
that diverged (`NonDeterminismError`) is retried on purpose: during a rolling deploy a
worker still on the old code can finish the run."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


@functools.lru_cache(maxsize=4096)
def _result_adapter(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    """How to restore a memoized JSON result to the type `fn` declares (pydantic models...)."""
    try:
        annotation = typing.get_type_hints(fn).get("return")
    except Exception:  # lambdas, builtins, unresolvable forward references
        return None
    if annotation in _PLAIN_TYPES or typing.get_origin(annotation) in (dict, list):
        return None
    if annotation is None:
        return None
    try:
        return TypeAdapter(annotation)
    except Exception:
        return None


def restore(output_json: str | None, fn: Callable[..., Any]) -> Any:
    value = _codec.loads(output_json)
    try:
        adapter = _result_adapter(fn)
    except TypeError:  # unhashable callable
        return value
    return value if adapter is None else adapter.validate_python(value)


class RunExecution(WorkflowSteps):
    """One execution of one claimed run: the step driver the step API talks to."""

    def __init__(self, store: Store, job: Job[Any, Any], claimed: ClaimedRun,
                 loop: asyncio.AbstractEventLoop, draining: Callable[[], bool],
                 threads: Executor, host: WorkflowHost | None = None) -> None:
        self.store = store
        self.host = host
        self._pending_waits: list[NewWait] = []
        self._pending_sleep: StepRecord | None = None
        self.job = job
        self.claimed = claimed
        self.loop = loop
        self.threads = threads
        self._lost: str | None = None
        self._still_ours = False
        self.memo = Memo(claimed.steps)
        self._draining = draining
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- StepDriver ----------------------------------------------------------

    async def _checkpoint(self, record: StepRecord) -> None:
        """Commit a step's outcome; if the run is no longer ours, stop the handler for good."""
        try:
            await self.store.checkpoint(self.claimed.lease, record)
        except StoreError as exc:
            raise self._lose(exc) from exc
        self.memo.record(record)

    def _lose(self, exc: StoreError) -> RunLost:
        """The run is lost to this worker after a store error (a store blip: give it back)."""
        self._lost = str(exc)
        self._still_ours = not isinstance(exc, LeaseLost)
        return RunLost(self._lost)

    def begin(self, user_id: str) -> StepCall:
        if self._lost is not None:
            raise RunLost(self._lost)
        call = self.memo.next_call(user_id)
        if call.recorded is None and self._draining():
            # shutting down: stop at this step boundary and let another worker continue
            raise Suspend(_now_ms(), "worker is shutting down")
        if call.recorded is None or call.recorded.status == "retrying":
            if _on_loop(self.loop):
                self._step_started()
            else:  # a sync handler's thread: the loop counts it before the step settles
                self.loop.call_soon_threadsafe(self._step_started)
        return call

    def _step_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _step_settled(self) -> None:
        self._in_flight -= 1
        if self._in_flight <= 0:
            self._idle.set()

    async def _settle_parallel_steps(self) -> None:
        """Let sibling steps (asyncio.gather) that are still running checkpoint first."""
        await asyncio.sleep(0)
        await self._idle.wait()

    def replayed(self, call: StepCall, fn: Callable[..., Any]) -> Any:
        assert call.recorded is not None
        if call.recorded.status == "failed":
            raise StepError(call.step_id, _codec.loads(call.recorded.error_json))
        return restore(call.recorded.output_json, fn)

    async def sleep_until(self, user_id: str, wake_at: int) -> None:
        """The durable sleep step: record the wake-up time once, then suspend until it."""
        call = self.memo.next_call(user_id)
        record = call.recorded
        if record is None:
            if self._draining():
                raise Suspend(_now_ms(), "worker is shutting down")
            record = StepRecord(step_id=call.step_id, position=call.position, kind="sleep",
                                status="sleeping", started_at=_now_ms(), wake_at=wake_at)
            if _now_ms() < wake_at and self._pending_sleep is None:
                # no checkpoint: the record goes with the run's reschedule, in its transaction
                # (`Rescheduled.step`). One per suspension: a sibling sleep (asyncio.gather)
                # checkpoints its own below.
                self._pending_sleep = record
                raise Suspend(wake_at, f"step {call.step_id!r} sleeps", "sleeping")
            await self._checkpoint_step(record)
        if record.status == "completed":
            return
        if record.wake_at is None or _now_ms() >= record.wake_at:
            done = replace(record, status="completed", ended_at=_now_ms())
            await self._checkpoint_step(done)
            return
        raise Suspend(record.wake_at, f"step {call.step_id!r} sleeps", "sleeping")

    async def _checkpoint_step(self, record: StepRecord) -> None:
        """A checkpoint counted as a step in flight, so that a sibling's suspension
        (asyncio.gather) waits for it to commit before the run is rescheduled."""
        self._step_started()
        try:
            await self._checkpoint(record)
        finally:
            self._step_settled()

    async def succeeded(self, call: StepCall, fn: Callable[..., Any], value: Any,
                        started_at: int) -> Any:
        try:
            return await self._succeeded(call, fn, value, started_at)
        finally:
            self._step_settled()

    async def failed(self, call: StepCall, exc: Exception, started_at: int) -> Any:
        try:
            return await self._failed(call, exc, started_at)
        finally:
            self._step_settled()

    async def _succeeded(self, call: StepCall, fn: Callable[..., Any], value: Any,
                         started_at: int) -> Any:
        try:
            output_json = _codec.dumps_str(
                value, what=f"step {call.step_id!r} of job {self.job.id!r} returned a value that")
        except SerializationError as exc:
            return await self._failed(call, exc, started_at)
        errors = call.previous_errors
        record = StepRecord(
            step_id=call.step_id, position=call.position, kind="run", status="completed",
            output_json=output_json, attempts=call.previous_attempts + 1,
            errors_json=_codec.dumps_str(errors) if errors else None,
            started_at=started_at, ended_at=_now_ms())
        await self._checkpoint(record)
        return restore(output_json, fn)

    async def _failed(self, call: StepCall, exc: Exception, started_at: int) -> Any:
        attempt = call.previous_attempts + 1
        now = _now_ms()
        error = describe_error(exc, attempt=attempt, started_at=started_at, ended_at=now)
        errors = [*call.previous_errors, error]
        final = (isinstance(exc, NEVER_RETRIED)
                 or attempt >= self.job.max_attempts)
        record = StepRecord(
            step_id=call.step_id, position=call.position, kind="run",
            status="failed" if final else "retrying", error_json=_codec.dumps_str(error),
            attempts=attempt, errors_json=_codec.dumps_str(errors), started_at=started_at,
            ended_at=now)
        await self._checkpoint(record)
        if final:
            raise StepError(call.step_id, error)
        delay = self._retry_delay(exc, attempt)
        raise Suspend(now + int(delay * 1000), f"step {call.step_id!r} attempt {attempt} failed")

    def _retry_delay(self, exc: Exception, failed_attempts: int) -> float:
        if isinstance(exc, RetryAfterError):
            return exc.delay_seconds
        return self.job.backoff.delay(failed_attempts)

    # -- the whole execution ---------------------------------------------------

    @property
    def attempt(self) -> int:
        steps = [s.attempts for s in self.claimed.steps if s.status == "retrying"]
        return max([self.claimed.attempt, *steps])

    async def execute(self, ctx: Context[Any] | SyncContext[Any], threads: Executor) -> Decision:
        started = _now_ms()
        try:
            if self.job.is_async:
                result = await self.job.handler(ctx)
            else:
                context = contextvars.copy_context()
                result = await self.loop.run_in_executor(threads, context.run,
                                                         self.job.handler, ctx)
        except Suspend as suspend:
            return await self._on_suspend(suspend)
        except RunLost:
            return self._abandoned()
        except LeaseLost as exc:
            return Abandoned(str(exc))
        except StoreError as exc:
            return Abandoned(f"store error: {exc}", release=True)
        except Exception as exc:
            if self._lost is not None:  # the handler swallowed RunLost's cause; still lost
                return self._abandoned()
            return self._handler_failed(exc, started)
        if self._lost is not None:
            return self._abandoned()
        try:
            return Completed(_codec.dumps_str(
                result, what=f"the output of job {self.job.id!r} (the handler's return value)"))
        except SerializationError as exc:
            return self._handler_failed(exc, started)

    async def _on_suspend(self, suspend: Suspend) -> Decision:
        await self._settle_parallel_steps()
        if self._lost is not None:
            return self._abandoned()
        try:
            return await self.suspended(suspend)
        except RunLost:  # a sleep's record, checkpointed beside waits, found the run lost
            return self._abandoned()

    def _abandoned(self) -> Abandoned:
        return Abandoned(self._lost or "run lost", release=self._still_ours)

    def _handler_failed(self, exc: Exception, started_at: int) -> Decision:
        attempt = self.claimed.attempt + 1
        error = describe_error(exc, attempt=attempt, started_at=started_at, ended_at=_now_ms())
        errors_json = _codec.dumps_str([*loads_errors(self.claimed.errors_json), error])
        if (isinstance(exc, NEVER_RETRIED)
                or attempt >= self.job.max_attempts):
            return Failed(_codec.dumps_str(error), errors_json)
        delay = self._retry_delay(exc, attempt)
        return Rescheduled(_now_ms() + int(delay * 1000), "queued", attempt, errors_json)


def _parse_event(job: Job[Any, Any], row: EventRow) -> Event[Any]:
    data: Any = _codec.loads(row.data_json)
    event_type = job.event_types.get(row.name)
    if event_type is None and row.name == INVOKE_EVENT and len(job.event_types) == 1:
        [event_type] = job.event_types.values()  # invoked: data was validated by its model
    if event_type is not None:
        data = event_type.parse(data)
    return Event(id=row.id, name=row.name, data=data, user=_codec.loads(row.user_json), ts=row.ts)


def build_context(execution: RunExecution, app_id: str, logger: logging.Logger,
                  batch: Sequence[EventRow] = ()) -> Context[Any] | SyncContext[Any]:
    """The handler's argument, with the event parsed into its model for typed events.

    `batch`: every event of a batched run (the first is also `ctx.event`)."""
    job, claimed = execution.job, execution.claimed
    event = _parse_event(job, claimed.event)
    events = [_parse_event(job, row) for row in batch] if batch else [event]
    bound = RunLogger(logger, {"app_id": app_id, "job_id": job.id,
                               "run_id": claimed.lease.run_id, "attempt": execution.attempt})
    common: dict[str, Any] = dict(event=events[0], events=events, run_id=claimed.lease.run_id,
                                  job_id=job.id, app_id=app_id, attempt=execution.attempt,
                                  logger=bound)
    if job.is_async:
        return Context(step=Step(execution), **common)
    return SyncContext(step=SyncStep(execution), **common)


def _poison_pill(job: Job[Any, Any], claimed: ClaimedRun) -> Failed | None:
    """Fail, without running it, a run that lost its worker at the same point as many times
    as its job allows attempts (at least `MIN_TAKEOVERS`): retaking it forever would crash
    one worker after another."""
    steps_done = sum(1 for step in claimed.steps if step.status == "completed")
    losses = losses_in_a_row(claimed.errors_json, steps_done)
    if losses < max(job.max_attempts, MIN_TAKEOVERS):
        return None
    error = gave_up_on_lost_workers(losses, steps_done, _now_ms())
    errors = [*loads_errors(claimed.errors_json), error]
    return Failed(_codec.dumps_str(error), _codec.dumps_str(errors))


async def run_claimed(store: Store, job: Job[Any, Any], claimed: ClaimedRun, *, app_id: str,
                      threads: Executor, logger: logging.Logger,
                      draining: Callable[[], bool], host: WorkflowHost | None = None,
                      ) -> Decision:
    """Execute one claimed run to its next decision (the worker applies it)."""
    gave_up = _poison_pill(job, claimed)
    if gave_up is not None:
        return gave_up
    execution = RunExecution(store, job, claimed, asyncio.get_running_loop(), draining, threads,
                             host)
    try:  # a batched run's events (one read per batch; other runs carry their one event)
        batch = (await store.run_events(claimed.lease.run_id)
                 if job.flow.batch_events is not None else [])
    except StoreError as exc:
        return Abandoned(f"store error: {exc}", release=True)
    try:
        ctx = build_context(execution, app_id, logger, batch)
    except ValidationError as exc:  # the event type's model changed since the event was sent
        error = describe_error(exc, attempt=1, started_at=None, ended_at=_now_ms())
        error["message"] = (f"the stored event no longer matches the job's event model: "
                            f"{error['message']}")
        return Failed(_codec.dumps_str(error), _codec.dumps_str([error]))
    token = current_run.set(RunScope(app_id, job.id, claimed.lease.run_id, claimed.event.id,
                                     ctx.event.user))
    try:
        return await execution.execute(ctx, threads)
    finally:
        current_run.reset(token)
