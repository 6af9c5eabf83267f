"""What the CLI shows about runs, gathered from the store: one `RunLine` per run.

`stride runs` takes one snapshot; `stride dev` takes one every refresh. Finished runs never
change again, so their details and their events' names are kept between snapshots and only
unfinished runs are read again: a refresh costs one list query plus one read per active run.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from stride.runs import Run
from stride.stores.base import RunFilter, RunRow, Store

COUNT_LIMIT = 1000
"""Runs counted per status at most (the store's page limit); more shows as "1000+"."""


@dataclass(frozen=True, slots=True)
class RunLine:
    """One run as a table row: who, what, how far, how long."""

    id: str
    job_id: str
    status: str
    event_name: str
    attempts: int
    created_at: int
    duration_ms: int | None
    step_id: str | None
    step_status: str | None
    step_error: str | None
    """The latest error of the current step while it is being retried."""
    error: str | None
    reason: str | None = None
    """Why flow control delayed, skipped or cancelled the run."""

    @classmethod
    def from_run(cls, run: Run, event_name: str, now_ms: int) -> RunLine:
        step = run.steps[-1] if run.steps else None
        return cls(id=run.id, job_id=run.job_id, status=run.status, event_name=event_name,
                   attempts=highest_attempt(run), created_at=run.created_at,
                   duration_ms=elapsed_ms(run, now_ms), step_id=step.id if step else None,
                   step_status=step.status if step else None,
                   step_error=_error_text(step.errors[-1]) if step and step.errors else None,
                   error=error_line(run), reason=run.reason)


def highest_attempt(run: Run) -> int:
    """The furthest any step (or the handler) got: 1 means nothing had to be retried.

    One number per run is what a table has room for; `stride run ID` shows every step's.
    """
    return max([run.attempts + (0 if run.finished else 1),
                *(step.attempts for step in run.steps), 1])


def elapsed_ms(run: Run, now_ms: int) -> int | None:
    """How long the run took, or has been going for if it has not finished."""
    if run.started_at is None:
        return None
    return (run.ended_at or now_ms) - run.started_at


def error_line(run: Run) -> str | None:
    """The run's final error as `Name: message`, if it failed."""
    return _error_text(run.error) if run.error else None


def _error_text(error: dict[str, Any]) -> str:
    return f"{error.get('name', 'Error')}: {error.get('message', '')}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The newest runs, and how many runs the filter matched per status."""

    runs: list[RunLine]
    counts: dict[str, int]
    capped: bool


class RunWatcher:
    """Reads snapshots of the runs matching `query`, caching whatever can no longer change."""

    def __init__(self, store: Store, query: RunFilter, *, window: int) -> None:
        self._store = store
        self._query = query
        self._window = window
        self._finished: dict[str, Run] = {}
        self._event_names: dict[str, str] = {}

    async def snapshot(self, *, count: bool = True) -> Snapshot:
        """The `window` newest runs in detail, plus status counts over the whole filter."""
        limit = COUNT_LIMIT if count else self._window
        rows = await self._store.list_runs(replace(self._query, limit=limit))
        now = time.time_ns() // 1_000_000
        recent = rows[:self._window]
        runs = list(await asyncio.gather(*(self._run(row) for row in recent)))
        names = await asyncio.gather(*(self._event_name(run.event_id) for run in runs))
        lines = [RunLine.from_run(run, name, now) for run, name in zip(runs, names, strict=True)]
        self._forget_all_but(runs)
        counts = Counter(row.status for row in rows) if count else Counter()
        return Snapshot(lines, dict(counts), count and len(rows) >= COUNT_LIMIT)

    def _forget_all_but(self, runs: list[Run]) -> None:
        # a dev session can run for hours: keep the caches to what is on screen
        self._finished = {run.id: run for run in runs if run.id in self._finished}
        self._event_names = {run.event_id: self._event_names[run.event_id] for run in runs
                             if run.event_id in self._event_names}

    async def _run(self, row: RunRow) -> Run:
        cached = self._finished.get(row.id)
        if cached is not None:
            return cached
        detail = await self._store.get_run(row.id)
        run = Run.from_row(detail or row)  # gone between list and read: show what we saw
        if run.finished:
            self._finished[run.id] = run
        return run

    async def _event_name(self, event_id: str) -> str:
        name = self._event_names.get(event_id)
        if name is None:
            event = await self._store.get_event(event_id)
            name = event.name if event is not None else "?"
            self._event_names[event_id] = name
        return name
