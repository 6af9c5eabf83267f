"""The JSON shapes of the HTTP API, as pydantic models: they validate input, serialise output
and are the single source of the OpenAPI document (see `openapi.py`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

RunStatusName = Literal["queued", "running", "sleeping", "waiting", "completed", "failed",
                        "cancelled", "skipped"]
MAX_PAGE = 200
MAX_BULK = 10_000


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ------------------------------------------------------------------------------


class ErrorBody(ApiModel):
    """Every 4xx and 5xx answer: one line saying what was wrong."""

    error: str


class ErrorInfo(BaseModel):
    """A failed attempt (or a cancellation) as recorded on a run or a step."""

    model_config = ConfigDict(extra="allow")
    name: str = "Error"
    message: str = ""
    traceback: str | None = None
    attempt: int | None = None
    started_at: int | None = None
    ended_at: int | None = None


# -- runs ----------------------------------------------------------------------------------


class RunSummary(ApiModel):
    """A run as lists show it (no steps). Times are epoch milliseconds."""

    id: str
    job_id: str
    event_id: str
    status: RunStatusName
    attempts: int = Field(description="handler-level attempts that failed")
    created_at: int
    started_at: int | None
    ended_at: int | None
    duration_ms: int | None
    error: ErrorInfo | None
    reason: str | None = Field(
        default=None, description="why flow control delayed, skipped, merged or cancelled it")


class StepAttempt(ApiModel):
    """One try of one step."""

    attempt: int
    outcome: Literal["completed", "failed", "retrying", "sleeping", "running"]
    started_at: int | None
    ended_at: int | None
    duration_ms: int | None
    error: ErrorInfo | None


class StepDetail(ApiModel):
    id: str
    position: int
    kind: str
    status: str
    attempts: int
    started_at: int | None
    ended_at: int | None
    duration_ms: int | None
    output: Any = Field(default=None, description="the step's JSON result")
    error: ErrorInfo | None
    history: list[StepAttempt] = Field(description="every attempt, oldest first")


class EventOut(ApiModel):
    id: str
    name: str
    data: dict[str, Any]
    user: dict[str, Any] | None
    ts: int
    received_at: int | None = None


class RunDetail(RunSummary):
    """One run with its steps, attempts, timings, output or error, and its event."""

    output: Any = None
    errors: list[ErrorInfo]
    steps: list[StepDetail]
    event: EventOut | None


class RunPage(ApiModel):
    data: list[RunSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")


class RunQuery(ApiModel):
    """Filters of the runs list. Times are ISO 8601 (UTC if no offset) or epoch seconds."""

    model_config = ConfigDict(extra="ignore")
    status: RunStatusName | None = None
    job: str | None = Field(default=None, max_length=128)
    event_id: str | None = Field(default=None, max_length=128)
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = Field(default=None, max_length=200, description="text in the event data")
    cursor: str | None = Field(default=None, max_length=128)
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)


class StreamQuery(RunQuery):
    """The runs list filters, plus how many snapshots to send before closing (default: no end)."""

    max_events: int | None = Field(default=None, ge=1, le=1000)


class RunFilterBody(ApiModel):
    """Which runs a bulk action applies to: explicit `ids`, or every run matching the filter."""

    ids: list[str] | None = Field(default=None, max_length=MAX_BULK)
    status: RunStatusName | None = None
    job: str | None = Field(default=None, max_length=128)
    event_id: str | None = Field(default=None, max_length=128)
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=1000, ge=1, le=MAX_BULK, description="at most this many runs")
    reason: str = Field(default="cancelled from the API", max_length=500)


class CancelResult(ApiModel):
    id: str
    cancelled: bool = Field(description="false if the run had already finished")


class ReplayResult(ApiModel):
    id: str = Field(description="the new run")
    replay_of: str


class BulkResult(ApiModel):
    matched: int
    ids: list[str] = Field(description="cancelled runs, or the new runs of a replay")


# -- events ----------------------------------------------------------------------------------


class EventWithRuns(EventOut):
    runs: list[RunSummary]
    no_runs_reason: str | None = Field(description="why the event started no run, if it did not")


class EventPage(ApiModel):
    data: list[EventWithRuns]
    next_cursor: str | None


class EventQuery(ApiModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(default=None, max_length=256)
    cursor: str | None = Field(default=None, max_length=150, pattern=r"^[0-9]{1,15}\..+$",
                               description="next_cursor of the previous page")
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)


class EventIn(BaseModel):
    """An event to dispatch. Dispatch validates it further (name characters, the event type's
    schema, payload size); other keys are ignored."""

    name: str = Field(min_length=1, max_length=256, examples=["context/file.uploaded"])
    data: dict[str, Any] | None = None
    id: str | None = Field(default=None, min_length=1, max_length=128,
                           description="defaults to a new sortable id; repeats are dropped")
    user: dict[str, Any] | None = Field(default=None, description="who caused the event")


class IngestBody(RootModel[EventIn | Annotated[list[EventIn], Field(max_length=1000)]]):
    """One event, or an array of at most 1000."""


class IngestResult(ApiModel):
    ids: list[str] = Field(description="the event ids, in the order sent")


# -- jobs and health ---------------------------------------------------------------------------


class JobOut(ApiModel):
    id: str
    name: str
    triggers: list[dict[str, Any]]
    options: dict[str, Any] = Field(description="retries, concurrency and other flow control")


class JobList(ApiModel):
    data: list[JobOut]


class WorkerOut(ApiModel):
    id: str
    app_id: str
    started_at: int
    heartbeat_at: int
    heartbeat_age_ms: int
    alive: bool = Field(description="heartbeat within the last minute")
    info: dict[str, Any]


class QueueOut(ApiModel):
    depth: int = Field(description="runs due now that no worker has claimed yet")
    waiting: int = Field(description="runs queued, sleeping or waiting, due or not")
    running: int
    oldest_queued_age_ms: int | None


class StoreHealth(ApiModel):
    reachable: bool
    backend: str
    error: str | None = None


class Health(ApiModel):
    status: Literal["ok", "degraded", "unavailable"]
    time: int
    store: StoreHealth
    workers: list[WorkerOut]
    queue: QueueOut | None


def to_epoch_ms(value: datetime | None) -> int | None:
    """Epoch ms of a datetime; a naive one is taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)
