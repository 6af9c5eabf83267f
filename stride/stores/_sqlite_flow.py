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
    Candidate,
    ClaimState,
    FlowState,
    PendingRun,
    PublishPlan,
    StateKey,
    admit,
    backlogs,
    park_reason,
    pending_run_ids,
    plan_publish,
    state_keys,
    to_park,
    unpark_counts,
)
from stride._ids import new_id
from stride.flow import MAX_PRIORITY_SECONDS
from stride.stores.base import ClaimedRun, EventRow, NewRun

CLAIMABLE = "status IN ('queued', 'sleeping', 'waiting')"
MAX_PASSES = 4
"""Claim passes at most: each pass parks the runs of full keys it met, so the next sees
other runs; a claim stays bounded even while keys fill up."""
BULK_SCAN = 1000
"""Due runs a claim looks through for more runs of keys with a backlog, to park at once."""
OVERFETCH, OVERFETCH_EXTRA = 1.25, 8
"""A pass reads up to want * 1.25 + 8 due runs and takes at most `want`: some candidates' keys
are full, and a claim that returns fewer runs than asked tells the worker nothing more is
due (it then waits for a change)."""
SCAN_KEYS = 256
"""Keys with parked runs a claim checks for free slots (round robin over all of them)."""
RANK_HORIZON_MS = MAX_PRIORITY_SECONDS * 1000
"""A due run's rank is at most this far past now (see the plain claim)."""
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
        "created_at, ended_at, reason, ckey, ckey2) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r.id, r.app_id, r.job_id, r.event_id, r.status, r.available_at, r.rank, now,
          r.ended_at, r.reason, r.ckey, r.ckey2) for r in plan.inserts])
    conn.executemany(
        "INSERT INTO run_keys (run_id, ckey, clim, ckey2, clim2) VALUES (?, ?, ?, ?, ?)",
        [(r.id, r.ckey, r.clim, r.ckey2, r.clim2) for r in plan.inserts if r.ckey is not None])
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
                limit: int, lease_ms: int, concurrency: dict[str, int],
                state: ClaimState) -> list[ClaimedRun]:
    """Release the oldest parked runs of keys with free slots again (they are the first
    candidates then), then lease due runs in rank order while their keys (and jobs) have free
    slots, parking the runs of full keys where they would hold the claim up."""
    from stride.stores import sqlite as store  # its claim helpers (it imports this module)

    now = _now_ms()
    parked = _parked_keys(conn, state)
    running = _running_counts(conn, parked)
    _release(conn, parked, running)
    since = state.collect_since()
    if since is not None:
        collect(conn, app_id, job_ids, since)
    job_free = store._free_capacity(conn, app_id, job_ids, concurrency)
    token = new_id()
    picked: list[tuple[str, int | None]] = []
    for _ in range(MAX_PASSES):
        eligible = [job for job in job_ids if job_free.get(job, 1) > 0]
        want = limit - len(picked)
        if want <= 0 or not eligible:
            break
        window = int(want * OVERFETCH) + OVERFETCH_EXTRA
        rows = _due(conn, app_id, eligible, now, window)
        candidates = [Candidate(row[0], row[1], _keys(row[4:])) for row in rows]
        met = {key for candidate in candidates for key, _ in candidate.keys
               if key not in running}
        found = _running_counts(conn, met)
        running.update({key: found.get(key, 0) for key in met})
        admission = admit(candidates, running, job_free, want)
        running, job_free = admission.running, admission.job_free
        by_id = {row[0]: row for row in rows}
        taken = [(run_id, by_id[run_id][2]) for run_id in admission.taken]
        _lease(conn, taken, worker_id, token, now, lease_ms)
        _park(conn, [(run_id, key, limit, by_id[run_id][3])
                     for run_id, key, limit in to_park(admission, want)])
        _park_backlogs(conn, backlogs(admission), now)
        picked += taken
        if len(rows) < window or not (admission.parked or admission.held_jobs):
            break
    return store._load_claimed(conn, [run_id for run_id, _ in picked],
                               [run_id for run_id, at in picked if at is not None], token)


def _due(conn: sqlite3.Connection, app_id: str, jobs: list[str], now: int,
         want: int) -> list[tuple[Any, ...]]:
    # INDEXED BY: as in the plain claim, the planner would otherwise sort every queued run;
    # rank <= horizon (< PARK) also keeps parked runs and runs due later out of the scan
    return conn.execute(
        "SELECT r.id, r.job_id, r.started_at, r.rank, k.ckey, k.clim, k.ckey2, k.clim2 "
        "FROM runs r INDEXED BY runs_due LEFT JOIN run_keys k ON k.run_id = r.id "
        f"WHERE r.{CLAIMABLE} AND r.rank <= ? AND r.available_at <= ? AND r.app_id = ? "
        f"AND r.job_id IN ({_marks(len(jobs))}) ORDER BY r.rank LIMIT ?",
        (now + RANK_HORIZON_MS, now, app_id, *jobs, want)).fetchall()


def _keys(columns: Sequence[Any]) -> tuple[tuple[str, int], ...]:
    ckey, clim, ckey2, clim2 = columns
    if ckey is None:
        return ()
    return ((ckey, clim),) if ckey2 is None else ((ckey, clim), (ckey2, clim2))


def _running_counts(conn: sqlite3.Connection, keys: Iterable[str]) -> dict[str, int]:
    """Leased runs holding each of `keys` (those without any are absent): one probe per key
    in the partial indexes of leased runs by key, however many runs other keys hold.
    Claims are serialised, so this stays true for the whole claim."""
    counts: dict[str, int] = {}
    wanted = list(keys)
    for chunk in _chunks(wanted):
        marks = _marks(len(chunk))
        for key, count in conn.execute(
                "SELECT ckey, count(*) FROM runs INDEXED BY runs_leased_ckey "
                f"WHERE status = 'running' AND ckey IS NOT NULL AND ckey IN ({marks}) "
                "GROUP BY ckey UNION ALL "
                "SELECT ckey2, count(*) FROM runs INDEXED BY runs_leased_ckey2 "
                f"WHERE status = 'running' AND ckey2 IS NOT NULL AND ckey2 IN ({marks}) "
                "GROUP BY ckey2", (*chunk, *chunk)):
            counts[key] = counts.get(key, 0) + count
    return counts


def _parked_keys(conn: sqlite3.Connection, state: ClaimState) -> dict[str, int]:
    """The next SCAN_KEYS keys with parked runs after the state's cursor (key -> limit), by
    a loose scan of the parked index: one lookup per key, however many runs are parked."""
    # each key's limit read from one of its parked runs, in the same statement (one
    # statement, not one per key: a claim meets up to SCAN_KEYS of them)
    rows = conn.execute(
        "WITH RECURSIVE scan(key) AS (SELECT min(parked_on) FROM run_keys "
        "WHERE parked_on > ? UNION ALL SELECT (SELECT min(parked_on) FROM run_keys "
        "WHERE parked_on > scan.key) FROM scan WHERE scan.key IS NOT NULL) "
        "SELECT key, (SELECT CASE WHEN ckey = scan.key THEN clim ELSE clim2 END "
        "FROM run_keys WHERE parked_on = scan.key LIMIT 1) "
        "FROM scan WHERE key IS NOT NULL LIMIT ?", (state.cursor, SCAN_KEYS)).fetchall()
    state.cursor = rows[-1][0] if len(rows) >= SCAN_KEYS else ""
    return {key: limit or 1 for key, limit in rows}


def collect(conn: sqlite3.Connection, app_id: str, job_ids: list[str], since: int) -> None:
    """Delete the run_keys rows of the jobs' runs that finished since `since` (ms)."""
    # INDEXED BY: otherwise SQLite walks every finished run of the jobs (runs_job_status)
    conn.execute(
        "DELETE FROM run_keys WHERE run_id IN (SELECT id FROM runs INDEXED BY runs_ended "
        "WHERE ended_at >= ? "
        f"AND app_id = ? AND job_id IN ({_marks(len(job_ids))}) "
        "AND status IN ('completed', 'failed', 'cancelled', 'skipped'))",
        (since, app_id, *job_ids))


def _release(conn: sqlite3.Connection, parked: dict[str, int], running: dict[str, int]) -> None:
    """Bring back the oldest parked runs of these keys, as many as they have free slots."""
    if not parked:
        return
    counts = unpark_counts(parked, running)
    ids: list[tuple[str]] = []
    for key, count in counts.items():
        ids += conn.execute(
            "SELECT k.run_id FROM run_keys k INDEXED BY run_keys_parked JOIN runs r "
            f"ON r.id = k.run_id WHERE k.parked_on = ? AND r.{CLAIMABLE} "
            "ORDER BY k.parked_rank LIMIT ?", (key, count)).fetchall()
    # the updates of all keys' runs at once (two statements per key cost 20 us a key)
    conn.executemany("UPDATE runs SET rank = rank - ? WHERE id = ? AND rank >= ?",
                     [(PARK, run_id, PARK) for (run_id,) in ids])
    conn.executemany("UPDATE run_keys SET parked_on = NULL, parked_rank = NULL "
                     "WHERE run_id = ?", ids)


def _lease(conn: sqlite3.Connection, taken: list[tuple[str, int | None]], worker_id: str,
           token: str, now: int, lease_ms: int) -> None:
    conn.executemany(
        "UPDATE runs SET status = 'running', lease_owner = ?, lease_token = ?, "
        "lease_expires_at = ?, started_at = coalesce(started_at, ?) WHERE id = ?",
        [(worker_id, token, now + lease_ms, now, run_id) for run_id, _ in taken])


def _park(conn: sqlite3.Connection, parked: list[tuple[str, str, int, int]]) -> None:
    """Move runs of full keys (run id, key, limit, rank) out of the claims' way."""
    conn.executemany(
        "UPDATE runs SET rank = rank + ?, reason = ? WHERE id = ? AND rank < ?",
        [(PARK, park_reason(key, limit), run_id, PARK) for run_id, key, limit, _ in parked])
    conn.executemany(
        "UPDATE run_keys SET parked_on = ?, parked_rank = ? WHERE run_id = ?",
        [(key, rank, run_id) for run_id, key, _, rank in parked])


def _park_backlogs(conn: sqlite3.Connection, keys: dict[str, int], now: int) -> None:
    """Park the runs of keys with a backlog among the next BULK_SCAN due runs, at once."""
    if not keys:
        return
    marks = _marks(len(keys))
    marks_sql = f"({marks})"
    rows = conn.execute(
        f"SELECT r.id, r.rank, CASE WHEN k.ckey IN {marks_sql} THEN k.ckey ELSE k.ckey2 END "
        f"FROM (SELECT id, rank FROM runs INDEXED BY runs_due WHERE {CLAIMABLE} "
        "AND rank <= ? AND available_at <= ? ORDER BY rank LIMIT ?) AS r "
        f"CROSS JOIN run_keys k ON k.run_id = r.id WHERE (k.ckey IN {marks_sql} "
        f"OR k.ckey2 IN {marks_sql}) AND k.parked_on IS NULL",
        (*keys, now + RANK_HORIZON_MS, now, BULK_SCAN, *keys, *keys)).fetchall()
    _park(conn, [(run_id, key, keys[key], rank) for run_id, rank, key in rows])


# -- reads ---------------------------------------------------------------------------------


def run_events(conn: sqlite3.Connection, run_id: str) -> list[EventRow]:
    rows = conn.execute(
        "SELECT e.id, e.name, e.data, e.user, e.ts FROM run_events l "
        "JOIN events e ON e.id = l.event_id WHERE l.run_id = ? ORDER BY l.position",
        (run_id,)).fetchall()
    return [EventRow(*row) for row in rows]
