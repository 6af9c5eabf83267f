"""Read-only views of runs and their steps, as `get_run`, `wait_for` and the CLI return them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stride import _codec
from stride.stores.base import FINISHED_STATUSES, RunRow, StepRecord


@dataclass(frozen=True, slots=True)
class StepInfo:
    """One step of a run: outcome, attempts, every attempt's error, timing (epoch ms)."""

    id: str
    position: int
    kind: str
    status: str
    output: Any
    error: dict[str, Any] | None
    attempts: int
    errors: list[dict[str, Any]]
    started_at: int | None
    ended_at: int | None

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    @classmethod
    def from_record(cls, record: StepRecord) -> StepInfo:
        return cls(
            id=record.step_id, position=record.position, kind=record.kind, status=record.status,
            output=_codec.loads(record.output_json), error=_codec.loads(record.error_json),
            attempts=record.attempts, errors=_codec.loads(record.errors_json) or [],
            started_at=record.started_at, ended_at=record.ended_at)


@dataclass(frozen=True, slots=True)
class Run:
    """One execution of one job for one event.

    `attempts` counts the handler-level attempts that failed (errors outside steps, one per
    entry of `errors`); each step keeps its own attempts and errors in `steps`.
    """

    id: str
    job_id: str
    event_id: str
    status: str
    output: Any
    error: dict[str, Any] | None
    errors: list[dict[str, Any]]
    attempts: int
    created_at: int
    started_at: int | None
    ended_at: int | None
    steps: list[StepInfo]
    reason: str | None = None
    """Why flow control delayed, skipped, merged or cancelled the run (None if it did not)."""

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    def step(self, step_id: str) -> StepInfo:
        """The step with this id (raises KeyError if the run has none)."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    @classmethod
    def from_row(cls, row: RunRow) -> Run:
        errors: list[dict[str, Any]] = _codec.loads(row.errors_json) or []
        return cls(
            id=row.id, job_id=row.job_id, event_id=row.event_id, status=row.status,
            output=_codec.loads(row.output_json), error=_codec.loads(row.error_json),
            errors=errors, attempts=len(errors),
            created_at=row.created_at, started_at=row.started_at, ended_at=row.ended_at,
            steps=[StepInfo.from_record(step) for step in row.steps], reason=row.reason)
