"""Flow control in the SQLite store: publishes decided with their limiters' state, and the
claim of runs that hold concurrency keys.

Every write of a process runs in the writer's transaction, and SQLite has one writer at a
time across processes, so state is read and written here without further locking. The
decisions themselves are stride._flow_decide's pure functions, shared with PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from stride._flow_decide import (
    PARK,
    Admission,
    Candidate,
    FlowState,
    PendingRun,
    PublishPlan,
    StateKey,
    admit,
    park_reason,
    pending_run_ids,
    plan_publish,
    state_keys,
    unpark_counts,
)
from stride._ids import new_id
from stride.stores.base import ClaimedRun, EventRow, NewRun

CLAIMABLE = "status IN ('queued', 'sleeping', 'waiting')"
MAX_PASSES = 4
"""Claim passes at most: each pass parks the runs of full keys it met, so the next sees
other runs; a claim stays bounded even while keys fill up."""
BULK_PARK = 1000
"""Queued runs of a key found full parked at once (the rest on later claims)."""
FREED_BATCH = 1000
_CHUNK = 400


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]


# -- publish -----------------------------------------------------------------------------


def publish_runs(conn: sqlite3.Connection, runs: Sequence[NewRun], now: int) -> list[tuple[str]]:
    """Decide and write the runs of jobs with flow control; the ids of runs created (not
    skipped, not merged into a pending run)."""
    states = _load_states(conn, state_keys(runs))
    plan = plan_publish(runs, now=now, states=states,
                        pending=_load_pending(conn, pending_run_ids(states)))
    _write_plan(conn, plan, now)
    return [(row.id,) for row in plan.inserts if row.status != "skipped"]


def _load_states(conn: sqlite3.Connection,
                 keys: list[StateKey]) -> dict[StateKey, FlowState | None]:
    found: dict[StateKey, FlowState | None] = dict.fromkeys(keys)
    for chunk in _chunks(keys):
        values = ",".join("(?, ?, ?, ?)" for _ in chunk)
        rows = conn.execute(
            "SELECT app_id, job_id, kind, key, at, n, run_id FROM flow_state "
            f"WHERE (app_id, job_id, kind, key) IN (VALUES {values})",
            [part for key in chunk for part in key]).fetchall()
        for app_id, job_id, kind, key, at, n, run_id in rows:
            found[(app_id, job_id, kind, key)] = FlowState(at, n, run_id)
    return found


def _load_pending(conn: sqlite3.Connection, run_ids: list[str]) -> dict[str, PendingRun]:
    pending: dict[str, PendingRun] = {}
    for chunk in _chunks(run_ids):
        for run_id, status, started, event_id in conn.execute(
                "SELECT id, status, started_at IS NOT NULL, event_id FROM runs "
                f"WHERE id IN ({_marks(len(chunk))})", chunk):
            pending[run_id] = PendingRun(status, bool(started), event_id)
    return pending


def _write_plan(conn: sqlite3.Connection, plan: PublishPlan, now: int) -> None:
    conn.executemany(
        "INSERT INTO runs (id, app_id, job_id, event_id, status, available_at, rank, "
        "created_at, ended_at, reason, ckey, clim, ckey2, clim2) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r.id, r.app_id, r.job_id, r.event_id, r.status, r.available_at, r.rank, now,
          r.ended_at, r.reason, r.ckey, r.clim, r.ckey2, r.clim2) for r in plan.inserts])
    conn.executemany(
        "UPDATE runs SET event_id = coalesce(?, event_id), "
        "available_at = coalesce(?, available_at), rank = coalesce(?, rank), reason = ? "
        "WHERE id = ? AND status = 'queued' AND started_at IS NULL",
        [(c.event_id, c.available_at, c.rank, c.reason, c.id) for c in plan.changes.values()])
    conn.executemany(
        "UPDATE runs SET status = 'cancelled', error = ?, reason = ?, ended_at = ?, "
        "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL "
        "WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled', 'skipped')",
        [(error, reason, now, run_id) for run_id, (reason, error) in plan.cancels.items()])
    conn.executemany("INSERT OR REPLACE INTO run_events (run_id, position, event_id) "
                     "VALUES (?, ?, ?)", plan.links)
    _write_states(conn, plan)


def _write_states(conn: sqlite3.Connection, plan: PublishPlan) -> None:
    conn.executemany(
        "INSERT INTO flow_state (app_id, job_id, kind, key, at, n, run_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (app_id, job_id, kind, key) DO UPDATE SET "
        "at = excluded.at, n = excluded.n, run_id = excluded.run_id",
        [(*key, state.at, state.n, state.run_id) for key, state in plan.states.items()
         if state is not None])
    conn.executemany(
        "DELETE FROM flow_state WHERE app_id = ? AND job_id = ? AND kind = ? AND key = ?",
        [key for key, state in plan.states.items() if state is None])


# -- claim --------------------------------------------------------------------------------


def claim_keyed(conn: sqlite3.Connection, worker_id: str, app_id: str, job_ids: list[str],
                limit: int, lease_ms: int, concurrency: dict[str, int]) -> list[ClaimedRun]:
    """Release parked runs of the keys that runs let go of since the last claim (as many as
    free slots: oldest first, so they are the first candidates), then lease due runs in rank
    order while their keys (and jobs) have free slots, parking the runs of full keys."""
    from stride.stores import sqlite as store  # its claim helpers (it imports this module)

    now = _now_ms()
    freed = _drain_freed(conn)
    running = _count_running(conn, list(freed))
    _unpark(conn, unpark_counts(freed, running))
    job_free = store._free_capacity(conn, app_id, job_ids, concurrency)
    token = new_id()
    picked: list[tuple[str, int | None]] = []
    for _ in range(MAX_PASSES):
        eligible = [job for job in job_ids if job_free.get(job, 1) > 0]
        want = limit - len(picked)
        if want <= 0 or not eligible:
            break
        rows = _due(conn, app_id, eligible, now, want)
        candidates = [Candidate(row[0], row[1], _keys(row)) for row in rows]
        running.update(_count_running(conn, _unknown_keys(candidates, running)))
        admission = admit(candidates, running, job_free)
        running, job_free = admission.running, admission.job_free
        started = {row[0]: row[2] for row in rows}
        taken = [(run_id, started[run_id]) for run_id in admission.taken]
        _lease(conn, taken, worker_id, token, now, lease_ms)
        _park(conn, admission, now)
        picked += taken
        if len(rows) < want or not (admission.parked or admission.held_jobs):
            break
    return store._load_claimed(conn, [run_id for run_id, _ in picked],
                               [run_id for run_id, at in picked if at is not None], token)


def _due(conn: sqlite3.Connection, app_id: str, jobs: list[str], now: int,
         want: int) -> list[tuple[Any, ...]]:
    # INDEXED BY: as in the plain claim, the planner would otherwise sort every queued run
    return conn.execute(
        "SELECT id, job_id, started_at, ckey, clim, ckey2, clim2 FROM runs INDEXED BY runs_due "
        f"WHERE {CLAIMABLE} AND rank < ? AND available_at <= ? AND app_id = ? "
        f"AND job_id IN ({_marks(len(jobs))}) ORDER BY rank LIMIT ?",
        (PARK, now, app_id, *jobs, want)).fetchall()


def _keys(row: tuple[Any, ...]) -> tuple[tuple[str, int], ...]:
    _, _, _, ckey, clim, ckey2, clim2 = row
    if ckey is None:
        return ()
    return ((ckey, clim),) if ckey2 is None else ((ckey, clim), (ckey2, clim2))


def _unknown_keys(candidates: list[Candidate], known: dict[str, int]) -> list[str]:
    return sorted({key for c in candidates for key, _ in c.keys if key not in known})


def _count_running(conn: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
    """Leased runs holding each key (in either key column)."""
    counts = dict.fromkeys(keys, 0)
    for chunk in _chunks(keys):
        for column in ("ckey", "ckey2"):
            for key, count in conn.execute(
                    f"SELECT {column}, count(*) FROM runs WHERE status = 'running' AND "
                    f"{column} IN ({_marks(len(chunk))}) GROUP BY {column}", chunk):
                counts[key] += count
    return counts


def _drain_freed(conn: sqlite3.Connection) -> dict[str, int]:
    freed: dict[str, int] = {}
    for key, limit in conn.execute(
            "DELETE FROM flow_freed WHERE id IN (SELECT id FROM flow_freed ORDER BY id "
            "LIMIT ?) RETURNING ckey, lim", (FREED_BATCH,)):
        freed[key] = max(limit, freed.get(key, 0))
    return freed


def _lease(conn: sqlite3.Connection, taken: list[tuple[str, int | None]], worker_id: str,
           token: str, now: int, lease_ms: int) -> None:
    conn.executemany(
        "UPDATE runs SET status = 'running', lease_owner = ?, lease_token = ?, "
        "lease_expires_at = ?, started_at = coalesce(started_at, ?), parked_on = NULL "
        "WHERE id = ?", [(worker_id, token, now + lease_ms, now, run_id)
                         for run_id, _ in taken])


def _park(conn: sqlite3.Connection, admission: Admission, now: int) -> None:
    """Move the runs of full keys out of the claims' way: the candidates met, then up to
    BULK_PARK more queued runs of each full key (so a backlog is stepped over once)."""
    conn.executemany(
        "UPDATE runs SET rank = rank + ?, parked_on = ?, reason = ? WHERE id = ? AND rank < ?",
        [(PARK, key, park_reason(key, limit), run_id, PARK)
         for run_id, key, limit in admission.parked])
    for key, limit in admission.full.items():
        for column in ("ckey", "ckey2"):
            conn.execute(
                "UPDATE runs SET rank = rank + ?, parked_on = ?, reason = ? WHERE rowid IN "
                f"(SELECT rowid FROM runs WHERE {column} = ? AND {CLAIMABLE} AND rank < ? "
                "AND available_at <= ? ORDER BY rank LIMIT ?)",
                (PARK, key, park_reason(key, limit), key, PARK, now, BULK_PARK))


def _unpark(conn: sqlite3.Connection, counts: dict[str, int]) -> None:
    """Release the oldest parked runs of each key, as many as it has free slots."""
    for key, count in counts.items():
        conn.execute(
            "UPDATE runs SET rank = rank - ?, parked_on = NULL WHERE rowid IN "
            f"(SELECT rowid FROM runs WHERE parked_on = ? AND {CLAIMABLE} AND rank >= ? "
            "ORDER BY rank LIMIT ?)", (PARK, key, PARK, count))


# -- reads ---------------------------------------------------------------------------------


def run_events(conn: sqlite3.Connection, run_id: str) -> list[EventRow]:
    rows = conn.execute(
        "SELECT e.id, e.name, e.data, e.user, e.ts FROM run_events l "
        "JOIN events e ON e.id = l.event_id WHERE l.run_id = ? ORDER BY l.position",
        (run_id,)).fetchall()
    return [EventRow(*row) for row in rows]
