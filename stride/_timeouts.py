"""Run timeouts (`timeouts=Timeouts(start=..., finish=...)`): a worker Looper cancels overdue runs.

Why a Looper and not a check at claim time: a run that nobody claims (no worker for its
job, its concurrency full) must still be cancelled when `start` passes, and a run that
sleeps or waits for a week must be cancelled when `finish` passes, not when it next wakes.

Each run of a job with timeouts gets one row in `deadlines` when it is created, with the
time of its next check; the looper reads only rows that are due (an index on the due time,
bounded batches), so live runs that are far from their limits cost nothing. A check either
cancels the run, moves the row to the run's next possible deadline, or deletes it (the run
finished, or nothing is left to check). Checks are idempotent: several workers may do the
same one at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from stride import _codec
from stride.stores.base import FINISHED_STATUSES, DeadlineRow, Store

log = logging.getLogger("stride.timeouts")

TIMEOUTS_INTERVAL_SECONDS = 1.0
BATCH = 500


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _duration(ms: int) -> str:
    seconds = ms / 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def check(row: DeadlineRow, now: int) -> tuple[str | None, int | None]:
    """(why to cancel the run, or None; when to check it next, or None for never)."""
    if row.status is None or row.status in FINISHED_STATUSES:
        return None, None
    if row.started_at is None:
        assert row.created_at is not None
        if row.start_ms is not None and row.created_at + row.start_ms <= now:
            return (f"run not started within {_duration(row.start_ms)} of its creation "
                    "(timeouts.start)"), None
        upcoming = [row.created_at + row.start_ms] if row.start_ms is not None else []
        if row.finish_ms is not None:  # it cannot overrun `finish` before that from now
            upcoming.append(now + row.finish_ms)
        return None, min(upcoming) if upcoming else None
    if row.finish_ms is None:
        return None, None
    if row.started_at + row.finish_ms <= now:
        return (f"run not finished within {_duration(row.finish_ms)} of its start "
                "(timeouts.finish)"), None
    return None, row.started_at + row.finish_ms


async def enforce(store: Store, now: int | None = None) -> list[str]:
    """One round: cancel every overdue run among the due checks; returns the cancelled ids."""
    now = _now_ms() if now is None else now
    cancelled: list[str] = []
    while True:
        rows = await store.due_deadlines(now, BATCH)
        cancelled += await _apply(store, rows, now)
        if len(rows) < BATCH:
            return cancelled


async def _apply(store: Store, rows: Sequence[DeadlineRow], now: int) -> list[str]:
    reasons: dict[str, list[str]] = {}
    moves: list[tuple[str, int | None]] = []
    for row in rows:
        reason, next_check = check(row, now)
        if reason is not None:
            reasons.setdefault(reason, []).append(row.run_id)
        moves.append((row.run_id, next_check))
    cancelled: list[str] = []
    for reason, run_ids in reasons.items():
        error = _codec.dumps_str({"name": "Cancelled", "message": reason, "by": "timeout",
                                  "at": now})
        cancelled += await store.cancel_runs(run_ids, error_json=error)
    for run_id in cancelled:
        log.info("run %s cancelled: timeout", run_id)
    await store.move_deadlines(moves)
    return cancelled
