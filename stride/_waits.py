"""Waiting for events, shared by the executor, the worker and both stores (no SQL here).

A step that waits (`wait_for_event`, `invoke`) and a run's `cancel_on` condition are both
stored as rows keyed by (event name, match key): the key of the value the awaited event
must have at a path such as `data.user_id`. A publish computes the keys of the events it
stores and finds the matching rows through an index, so matching costs one query per
(event name, path), however many runs wait.

Keys carry the JSON type, so the string "1" never matches the number 1: `s:` strings,
`n:` numbers (their JSON text), `b:` booleans. Other values (objects, lists, null) never
match. PostgreSQL computes the same keys in SQL (`wait_key` in its migration 0005).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stride import _codec
from stride._decisions import Completed, Decision, Failed
from stride._ids import new_id
from stride.expressions import compile_expression
from stride.jobs import Job
from stride.stores.base import (
    FINISHED_STATUSES,
    CancelCheck,
    CancelCondition,
    ClaimedRun,
    EventRow,
    NewEvent,
    NewRun,
    NewWait,
    Store,
    WaitChooser,
)

if TYPE_CHECKING:
    from stride._flow_decide import RunFlow
    from stride.jobs import EventTrigger

NEVER = 253_402_300_799_000
"""The expiry of a wait without timeout (9999-12-31): never due."""
INVOKE_EVENT = "stride/invoke"
"""The name of the event that starts an invoked (child) run."""
INVOKE_FINISHED = "stride/invoke.finished"
"""Published when an invoked run finishes; the parent's invoke step waits for it."""
FAILED_EVENT = "stride/function.failed"
"""Triggers a job's on-failure handler after the job's run failed for good."""
FAILURE_SUFFIX = "-on-failure"
"""The id of a job's failure handler is the job's id with this suffix."""
PublishBatch = list[tuple[NewEvent, list[NewRun]]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def wait_key(value: Any) -> str | None:
    """The match key of a JSON value, or None if it cannot be matched on."""
    if isinstance(value, bool):
        return "b:true" if value else "b:false"
    if isinstance(value, str):
        return "s:" + value
    if isinstance(value, (int, float)):
        return "n:" + _codec.dumps_str(value)
    return None


def value_at(document: Mapping[str, Any], path: str) -> Any:
    """The value at `data.a.b` / `user.a` of an event as a dict; None where missing."""
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def key_at(document: Mapping[str, Any], path: str) -> str | None:
    """The match key of an event (as a dict) at `path`; '' for no path."""
    return "" if not path else wait_key(value_at(document, path))


def event_dict(event: EventRow | NewEvent) -> dict[str, Any]:
    """An event as the dict CEL expressions and handlers see: id, name, data, user, ts."""
    return {"id": event.id, "name": event.name, "data": _codec.loads(event.data_json),
            "user": _codec.loads(event.user_json), "ts": event.ts}


def event_json(event: EventRow | NewEvent) -> str:
    """The same as JSON text, spliced from the stored JSON (nothing is parsed)."""
    return (f'{{"id":{_codec.dumps_str(event.id)},"name":{_codec.dumps_str(event.name)},'
            f'"data":{event.data_json},"user":{event.user_json or "null"},"ts":{event.ts}}}')


def cancelled_by(event_id: str, event_name: str, now: int) -> str:
    """The error of a run cancelled by an event of its job's `cancel_on`."""
    return _codec.dumps_str({
        "name": "Cancelled", "message": f"cancelled by event {event_name!r} ({event_id})",
        "by": f"event {event_id}", "event": event_name, "at": now})


# -- what runs carry when they are created -------------------------------------------------

def new_run(app_id: str, job: Job[Any, Any], event_id: str, trigger: Mapping[str, Any],
            now: int, run_id: str, *, flow: RunFlow | None = None) -> NewRun:
    """A run of `job` for the event `trigger` (as a dict), with its cancel-on conditions and
    timeouts, so that every way of creating runs stores them alike."""
    timeouts = job.timeouts
    return NewRun(run_id, app_id, job.id, event_id, now, flow,
                  cancel_on=cancel_conditions(job.cancel_on, trigger),
                  start_timeout_ms=timeouts.start_ms if timeouts else None,
                  finish_timeout_ms=timeouts.finish_ms if timeouts else None)


def cancel_conditions(cancel_on: Sequence[EventTrigger], trigger: Mapping[str, Any],
                      ) -> tuple[CancelCondition, ...]:
    conditions = []
    for condition in cancel_on:
        path = condition.match or ""
        key = key_at(trigger, path)
        if key is None:  # the trigger has no value there: nothing can match it
            continue
        conditions.append(CancelCondition(condition.event, path, key, condition.if_))
    return tuple(conditions)


def first_deadline(run: NewRun, created_at: int) -> int | None:
    """When the timeout looper first looks at a new run (None: the job has no timeouts).

    Without a start timeout the earliest a run can overrun `finish` is `finish` after its
    creation (it cannot start earlier), so that is the first look.
    """
    if run.start_timeout_ms is not None:
        return created_at + run.start_timeout_ms
    if run.finish_timeout_ms is not None:
        return created_at + run.finish_timeout_ms
    return None


# -- choosing the event that completes a wait ----------------------------------------------

def chooser(trigger: Mapping[str, Any]) -> WaitChooser:
    """Picks, for a wait of the run triggered by `trigger`, the first candidate that passes
    the wait's `if_` (CEL over `event`, the trigger, and `async`, the candidate)."""

    def choose(wait: NewWait, candidates: Sequence[EventRow]) -> EventRow | None:
        if wait.if_expr is None:
            return candidates[0] if candidates else None
        condition = compile_expression(wait.if_expr, owner=f"wait {wait.step.step_id!r}")
        for candidate in candidates:
            if condition.is_true(**{"event": trigger, "async": event_dict(candidate)}):
                return candidate
        return None

    return choose


async def apply_cancel_checks(store: Store, checks: Sequence[CancelCheck]) -> list[str]:
    """Cancel the runs whose `cancel_on` `if_` holds for the event that matched it; after
    the publish committed (CEL runs here, not in the database). Returns the runs cancelled."""
    cancelled: list[str] = []
    for check in checks:
        run = await store.get_run(check.run_id)
        if run is None or run.status in FINISHED_STATUSES:
            continue
        trigger, candidate = await store.get_event(run.event_id), await store.get_event(
            check.event_id)
        if trigger is None or candidate is None:
            continue
        condition = compile_expression(check.if_expr, owner=f"cancel_on of job {run.job_id!r}")
        if condition.is_true(**{"event": event_dict(trigger), "async": event_dict(candidate)}):
            cancelled += await store.cancel_runs(
                [check.run_id], error_json=cancelled_by(check.event_id, check.event_name,
                                                        _now_ms()))
    return cancelled


# -- what a finishing run publishes --------------------------------------------------------

def invocation_id(run_id: str, step_id: str) -> str:
    """The id of the event an invoke step starts its child with: the same on every replay,
    so that publishing it again after a crash is dropped as a duplicate."""
    digest = hashlib.sha1(step_id.encode()).hexdigest()[:16]
    return f"invoke:{run_id}:{digest}"


def invoke_finished(invocation: str, run_id: str, job_id: str, result: Mapping[str, Any],
                    now: int) -> NewEvent:
    """The event a parent's invoke step waits for: its child's outcome (`result`: status,
    and output or error). Its id derives from the invocation, so a copy is dropped."""
    data = {"invocation": invocation, "run_id": run_id, "job_id": job_id, **result}
    return NewEvent(f"{invocation}:finished", INVOKE_FINISHED, _codec.dumps_str(data), None,
                    now)


def finish_events(app_id: str, job: Job[Any, Any], claimed: ClaimedRun,
                  decision: Decision) -> PublishBatch:
    """Events to publish with the run's finish: the completion of an invoked run, and the
    start of the job's on-failure handler after its last attempt failed."""
    batch: PublishBatch = []
    now = _now_ms()
    event = claimed.event
    if event.name == INVOKE_EVENT and isinstance(decision, (Completed, Failed)):
        result = ({"status": "completed", "output": _codec.loads(decision.output_json)}
                  if isinstance(decision, Completed) else
                  {"status": "failed", "error": _codec.loads(decision.error_json)})
        batch.append((invoke_finished(event.id, claimed.lease.run_id, job.id, result, now),
                      []))
    if isinstance(decision, Failed) and job.on_failure is not None:
        run_id = claimed.lease.run_id
        data = {"run_id": run_id, "job_id": job.id, "error": _codec.loads(decision.error_json),
                "event": event_dict(event)}
        failed = NewEvent(f"failed:{run_id}", FAILED_EVENT, _codec.dumps_str(data),
                          event.user_json, now)
        batch.append((failed, [NewRun(new_id(), app_id, job.id + FAILURE_SUFFIX, failed.id,
                                      now)]))
    return batch
