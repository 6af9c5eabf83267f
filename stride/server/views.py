"""Store rows turned into the API's models; shared by the JSON API and the dashboard."""

from __future__ import annotations

import time
from typing import Any

from stride import _codec
from stride.app import Stride
from stride.server.models import (
    ErrorInfo,
    EventOut,
    EventWithRuns,
    JobOut,
    RunDetail,
    RunSummary,
    StepAttempt,
    StepDetail,
    WorkerOut,
)
from stride.stores.base import EventListing, EventRow, RunRow, StepRecord, WorkerRow

WORKER_ALIVE_MS = 60_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _duration(start: int | None, end: int | None) -> int | None:
    return None if start is None or end is None else max(0, end - start)


def _error(value: Any) -> ErrorInfo | None:
    return ErrorInfo.model_validate(value) if isinstance(value, dict) else None


def _errors(text: str | None) -> list[ErrorInfo]:
    values = _codec.loads(text) or []
    return [error for error in map(_error, values if isinstance(values, list) else [])
            if error is not None]


def run_summary(row: RunRow) -> RunSummary:
    return RunSummary(
        id=row.id, job_id=row.job_id, event_id=row.event_id, status=row.status,
        attempts=row.attempt, created_at=row.created_at, started_at=row.started_at,
        ended_at=row.ended_at, duration_ms=_duration(row.started_at, row.ended_at),
        error=_error(_codec.loads(row.error_json)), reason=row.reason)


def run_detail(row: RunRow, event: EventRow | None) -> RunDetail:
    summary = run_summary(row)
    return RunDetail(
        **summary.model_dump(), output=_codec.loads(row.output_json),
        errors=_errors(row.errors_json), steps=[step_detail(step) for step in row.steps],
        event=event_out(event) if event is not None else None)


def step_detail(step: StepRecord) -> StepDetail:
    return StepDetail(
        id=step.step_id, position=step.position, kind=step.kind, status=step.status,
        attempts=step.attempts, started_at=step.started_at, ended_at=step.ended_at,
        duration_ms=_duration(step.started_at, step.ended_at),
        output=_codec.loads(step.output_json), error=_error(_codec.loads(step.error_json)),
        history=step_history(step))


def step_history(step: StepRecord) -> list[StepAttempt]:
    """Every attempt of a step: the failed ones from its error list, then the last one."""
    history = [StepAttempt(attempt=error.attempt or number, outcome="failed",
                           started_at=error.started_at, ended_at=error.ended_at,
                           duration_ms=_duration(error.started_at, error.ended_at), error=error)
               for number, error in enumerate(_errors(step.errors_json), start=1)]
    if step.status in ("completed", "sleeping"):
        end = step.ended_at if step.status == "completed" else step.wake_at
        # a step's started_at is its first attempt's; the last one began after the last error
        starts = [step.started_at, *(a.ended_at for a in history)]
        start = max((t for t in starts if t is not None), default=None)
        history.append(StepAttempt(
            attempt=step.attempts, outcome=step.status, started_at=start, ended_at=end,
            duration_ms=_duration(start, end), error=None))
    return history


def event_out(event: EventRow | EventListing) -> EventOut:
    data = _codec.loads(event.data_json)
    return EventOut(id=event.id, name=event.name, data=data if isinstance(data, dict) else {},
                    user=_codec.loads(event.user_json), ts=event.ts,
                    received_at=getattr(event, "received_at", None))


def event_with_runs(app: Stride, event: EventRow | EventListing,
                    runs: list[RunRow]) -> EventWithRuns:
    return EventWithRuns(**event_out(event).model_dump(),
                         runs=[run_summary(run) for run in runs],
                         no_runs_reason=None if runs else no_runs_reason(app, event.name))


def no_runs_reason(app: Stride, event_name: str) -> str:
    """Why an event started no run, judged from the jobs this server knows."""
    listening = [(job.id, trigger) for job in app.jobs.values()
                 for trigger in job.describe()["triggers"] if trigger.get("event") == event_name]
    if not listening:
        return f"no job is triggered by {event_name!r}"
    filtered = sorted({job_id for job_id, trigger in listening if trigger.get("if")})
    if filtered:
        return "the trigger filter of " + ", ".join(filtered) + " did not match"
    return "its runs were pruned, or no job listened for it when it was sent"


def job_out(describe: dict[str, Any]) -> JobOut:
    options = {key: value for key, value in describe.items()
               if key not in ("id", "name", "triggers")}
    return JobOut(id=describe["id"], name=describe.get("name") or describe["id"],
                  triggers=list(describe.get("triggers", [])), options=options)


def worker_out(row: WorkerRow, now: int) -> WorkerOut:
    info = _codec.loads(row.info_json)
    age = max(0, now - row.heartbeat_at)
    return WorkerOut(id=row.id, app_id=row.app_id, started_at=row.started_at,
                     heartbeat_at=row.heartbeat_at, heartbeat_age_ms=age,
                     alive=age <= WORKER_ALIVE_MS, info=info if isinstance(info, dict) else {})
