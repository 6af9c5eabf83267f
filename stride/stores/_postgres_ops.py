"""The write ops the group-commit writer merges: each turns N queued items into one statement.

Items are plain tuples; `results` maps the statement's RETURNING rows back to one outcome
per item (a value, or a `LeaseLost` for the item whose lease no longer matched).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from stride._flow_decide import key_columns
from stride.errors import LeaseLost
from stride.stores._postgres_waits import extras_json, parse_checks
from stride.stores.base import Lease, NewEvent, NewRun, PublishResult, RunStatus, StepRecord

PublishItem = Sequence[tuple[NewEvent, Sequence[NewRun]]]
CheckpointItem = tuple[Lease, StepRecord]
FinishItem = tuple[Lease, RunStatus, str | None, str | None, str | None]
RescheduleItem = tuple[Lease, int, RunStatus, int | None, str | None, StepRecord | None]


def lease_lost(lease: Lease) -> LeaseLost:
    return LeaseLost(f"run {lease.run_id} is no longer held by this worker (lease expired and "
                     "another worker took it over); this worker stops working on it")


@dataclass(frozen=True, slots=True)
class PublishOp:
    """Events and their runs. An event id seen before (stored, or earlier in this same
    batch) is a duplicate, dropped with its runs. Rows go in id order, so two concurrent
    publishes of overlapping ids lock them in the same order and cannot deadlock. Runs
    with flow control come here only with concurrency keys and priority (stateless: see
    `PostgresStore.publish`), their keys beside them."""

    sql: str
    channel: str
    name: str = "publish"

    def params(self, items: Sequence[PublishItem], now: int) -> Sequence[Any]:
        events: dict[str, tuple[NewEvent, Sequence[NewRun]]] = {}
        for batch in items:
            for event, runs in batch:
                events.setdefault(event.id, (event, runs))
        ordered = [events[key] for key in sorted(events)]
        run_rows, key_rows = [], []
        for _, event_runs in ordered:
            for r in event_runs:
                ckey, clim, ckey2, clim2 = key_columns(r.flow)
                run_rows.append((r.id, r.app_id, r.job_id, r.event_id, r.available_at,
                                 r.available_at - (r.flow.priority_ms if r.flow else 0),
                                 ckey, ckey2))
                if ckey is not None:
                    key_rows.append((r.id, ckey, clim, ckey2, clim2))
        return (_json([(e.id, e.name, e.data_json, e.user_json, e.ts) for e, _ in ordered]),
                now, now, _json(run_rows), _json(key_rows), self.channel,
                extras_json(ordered, now), now)

    def results(self, items: Sequence[PublishItem],
                rows: list[tuple[Any, ...]]) -> list[PublishResult]:
        fresh = {row[0] for row in rows}
        checks = parse_checks(rows[0][2] if rows else None)  # cancel_on if_ filters to run
        results = []
        for batch in items:
            accepted: list[str] = []
            duplicates: list[str] = []
            created = 0
            for event, runs in batch:
                if event.id in fresh:
                    fresh.discard(event.id)  # a later copy of the same id is a duplicate
                    accepted.append(event.id)
                    created += len(runs)
                else:
                    duplicates.append(event.id)
            mine = tuple(check for check in checks if check.event_id in accepted)
            results.append(PublishResult(tuple(accepted), tuple(duplicates), created, mine))
        return results

    def wakes(self, items: Sequence[PublishItem], now: int) -> bool:
        return False  # the statement notifies by itself

    def lease(self, item: PublishItem) -> Lease | None:
        return None


@dataclass(frozen=True, slots=True)
class CheckpointOp:
    """Step upserts, each guarded by its run's lease; completed steps are never overwritten."""

    sql: str
    name: str = "checkpoint"

    def params(self, items: Sequence[CheckpointItem], now: int) -> Sequence[Any]:
        return (_json([(lease.run_id, lease.token, s.step_id, s.position, s.kind, s.status,
                        s.output_json, s.error_json, s.attempts, s.errors_json, s.started_at,
                        s.ended_at, s.wake_at) for lease, s in items]),
                [lease.run_id for lease, _ in items])

    def results(self, items: Sequence[CheckpointItem],
                rows: list[tuple[Any, ...]]) -> list[LeaseLost | None]:
        written = {(row[0], row[1]) for row in rows}
        return [None if (lease.run_id, step.step_id) in written else lease_lost(lease)
                for lease, step in items]

    def wakes(self, items: Sequence[CheckpointItem], now: int) -> bool:
        return False

    def lease(self, item: CheckpointItem) -> Lease | None:
        return item[0]


@dataclass(frozen=True, slots=True)
class FinishOp:
    """Runs completed or failed: exactly once, by the holder of the lease. `limited_jobs`
    (kept up to date by the store from the claims it serves) are the jobs whose finished
    runs free a concurrency slot, worth a notification."""

    sql: str
    channel: str
    limited_jobs: set[str]
    name: str = "finish"

    def params(self, items: Sequence[FinishItem], now: int) -> Sequence[Any]:
        return (now, _json([(lease.run_id, lease.token, status, output, error, errors)
                            for lease, status, output, error, errors in items]),
                self.channel, sorted(self.limited_jobs))

    def results(self, items: Sequence[FinishItem],
                rows: list[tuple[Any, ...]]) -> list[LeaseLost | None]:
        return _by_run_id(items, rows)

    def wakes(self, items: Sequence[FinishItem], now: int) -> bool:
        return False

    def lease(self, item: FinishItem) -> Lease | None:
        return item[0]


@dataclass(frozen=True, slots=True)
class RescheduleOp:
    """Runs given back to be claimed again at `available_at` (a retry, a sleep, a drain),
    each with the step record it may carry (a fresh sleep's), written by the same statement."""

    sql: str
    name: str = "reschedule"

    def params(self, items: Sequence[RescheduleItem], now: int) -> Sequence[Any]:
        return (_json([(lease.run_id, lease.token, status, at, attempt, errors, *_step(step))
                       for lease, at, status, attempt, errors, step in items]),)

    def results(self, items: Sequence[RescheduleItem],
                rows: list[tuple[Any, ...]]) -> list[LeaseLost | None]:
        return _by_run_id(items, rows)

    def wakes(self, items: Sequence[RescheduleItem], now: int) -> bool:
        return any(item[1] <= now for item in items)

    def lease(self, item: RescheduleItem) -> Lease | None:
        return item[0]


_NO_STEP = (None,) * 11


def _step(s: StepRecord | None) -> tuple[Any, ...]:
    if s is None:
        return _NO_STEP
    return (s.step_id, s.position, s.kind, s.status, s.output_json, s.error_json, s.attempts,
            s.errors_json, s.started_at, s.ended_at, s.wake_at)


def _json(rows: list[tuple[Any, ...]]) -> str:
    """A batch as the JSON array of arrays that `_postgres_sql.rows` reads."""
    return orjson.dumps(rows).decode()


def _by_run_id(items: Sequence[tuple[Any, ...]],
               rows: list[tuple[Any, ...]]) -> list[LeaseLost | None]:
    done = {row[0] for row in rows}
    return [None if item[0].run_id in done else lease_lost(item[0]) for item in items]
