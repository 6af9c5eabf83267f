"""The SQLite half of `Store.prune`, ready to move into `SqliteStore` (stride/stores/sqlite.py).

Until it moves, the conformance suite calls it for SQLite stores that lack `prune`, so it is
tested exactly like the PostgreSQL method. To move it: paste `prune` as a method (replace
`store` with `self`) and the two `_prune_*` functions beside the other writer operations.
A partial index keeps the runs scan cheap (a new migration, 0004_prune.sql):

    CREATE INDEX IF NOT EXISTS runs_ended ON runs (ended_at) WHERE ended_at IS NOT NULL;
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from stride.errors import ConfigurationError


async def prune(store: Any, *, older_than_ms: int, batch_size: int = 1000) -> int:
    """Delete finished runs (and steps) older than the cutoff, then unreferenced old events."""
    if older_than_ms < 0 or batch_size < 1:
        raise ConfigurationError("prune needs older_than_ms >= 0 and batch_size >= 1")
    cutoff = time.time_ns() // 1_000_000 - older_than_ms
    deleted = 0
    for step in (_prune_runs, _prune_events):
        while True:  # one short write transaction per batch, so workers are never held up
            count: int = await store._writer.run(
                lambda conn, step=step: step(conn, cutoff, batch_size))
            deleted += count
            if count < batch_size:
                break
    return deleted


def _prune_runs(conn: sqlite3.Connection, cutoff: int, batch_size: int) -> int:
    ids = [(row[0],) for row in conn.execute(
        "SELECT id FROM runs WHERE ended_at < ? AND status IN ('completed', 'failed', "
        "'cancelled') ORDER BY ended_at LIMIT ?", (cutoff, batch_size))]
    conn.executemany("DELETE FROM steps WHERE run_id = ?", ids)
    conn.executemany("DELETE FROM runs WHERE id = ?", ids)
    return len(ids)


def _prune_events(conn: sqlite3.Connection, cutoff: int, batch_size: int) -> int:
    cur = conn.execute(
        "DELETE FROM events WHERE id IN (SELECT e.id FROM events e WHERE e.received_at < ? "
        "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id) "
        "ORDER BY e.received_at LIMIT ?)", (cutoff, batch_size))
    return cur.rowcount
