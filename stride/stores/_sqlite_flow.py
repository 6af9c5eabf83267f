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
    unpark_counts,
)
from stride._ids import new_id
from stride.flow import MAX_PRIORITY_SECONDS
from stride.stores.base import ClaimedRun, EventRow, NewRun

CLAIMABLE = "status IN ('queued', 'sleeping', 'waiting')"
MAX_PASSES = 4
"""Claim passes at most: each pass parks the runs of full keys it met, so the next sees
other runs; a claim stays bounded even while keys fill up."""
BULK_PARK = 1000
"""Queued runs of a key found full parked at once (the rest on later claims)."""
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
        "created_at, ended_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r.id, r.app_id, r.job_id, r.event_id, r.status, r.available_at, r.rank, now,
          r.ended_at, r.reason) for r in plan.inserts])
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
                limit: int, lease_ms: int, concurrency: dict[str, int]) -> list[ClaimedRun]:
    """Release parked runs of the keys that runs let go of since the last claim (as many as
    free slots: oldest first, so they are the first candidates), then lease due runs in rank
    order while their keys (and jobs) have free slots, parking the runs of full keys."""
    from stride.stores import sqlite as store  # its claim helpers (it imports this module)

    now = _now_ms()
    _release(conn, _freed(conn))
    job_free = store._free_capacity(conn, app_id, job_ids, concurrency)
    running: dict[str, int] = {}
    token = new_id()
    picked: list[tuple[str, int | None]] = []
    for _ in range(MAX_PASSES):
        eligible = [job for job in job_ids if job_free.get(job, 1) > 0]
        want = limit - len(picked)
        if want <= 0 or not eligible:
            break
        rows = _due(conn, app_id, eligible, now, want)
        candidates = [Candidate(row[0], row[1], _keys(row[4:])) for row in rows]
        running.update(_count_running(conn, _unknown_keys(candidates, running)))
        admission = admit(candidates, running, job_free)
        running, job_free = admission.running, admission.job_free
        by_id = {row[0]: row for row in rows}
        taken = [(run_id, by_id[run_id][2]) for run_id in admission.taken]
        _lease(conn, taken, worker_id, token, now, lease_ms)
        _park(conn, [(run_id, key, limit, by_id[run_id][3])
                     for run_id, key, limit in admission.parked])
        _park_backlogs(conn, backlogs(admission), now)
        picked += taken
        if len(rows) < want or not (admission.parked or admission.held_jobs):
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


def _unknown_keys(candidates: list[Candidate], known: dict[str, int]) -> list[str]:
    return sorted({key for c in candidates for key, _ in c.keys if key not in known})


def _count_running(conn: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
    """Leased runs holding each key (in either key column). Exact here: every claim first
    clears the marks of runs that stopped running (`_freed`), and claims are serialised."""
    counts = dict.fromkeys(keys, 0)
    for chunk in _chunks(keys):
        marks = _marks(len(chunk))
        for key, count in conn.execute(
                f"SELECT ckey, count(*) FROM run_keys WHERE leased = 1 AND ckey IN ({marks}) "
                f"GROUP BY ckey UNION ALL SELECT ckey2, count(*) FROM run_keys WHERE leased = 1 "
                f"AND ckey2 IN ({marks}) GROUP BY ckey2", [*chunk, *chunk]):
            counts[key] += count
    return counts


def _freed(conn: sqlite3.Connection) -> dict[str, int]:
    """Keys that runs let go of since the last claim (key -> limit): runs marked leased that
    are no longer running. A finished run's row goes; a requeued one is unmarked."""
    rows = conn.execute(
        "SELECT k.run_id, k.ckey, k.clim, k.ckey2, k.clim2, r.status IN "
        "('completed', 'failed', 'cancelled', 'skipped') OR r.id IS NULL "
        "FROM run_keys k INDEXED BY run_keys_leased LEFT JOIN runs r ON r.id = k.run_id "
        "WHERE k.leased = 1 AND (r.status IS NULL OR r.status <> 'running')").fetchall()
    conn.executemany("DELETE FROM run_keys WHERE run_id = ?",
                     [(row[0],) for row in rows if row[5]])
    conn.executemany("UPDATE run_keys SET leased = 0 WHERE run_id = ?",
                     [(row[0],) for row in rows if not row[5]])
    freed: dict[str, int] = {}
    for _, ckey, clim, ckey2, clim2, _ in rows:
        for key, limit in ((ckey, clim), (ckey2, clim2)):
            if key is not None:
                freed[key] = max(limit, freed.get(key, 0))
    return freed


def _release(conn: sqlite3.Connection, freed: dict[str, int]) -> None:
    """Bring back the oldest parked runs of the freed keys, as many as they have free slots."""
    if not freed:
        return
    waiting = [key for chunk in _chunks(list(freed)) for (key,) in conn.execute(
        f"SELECT DISTINCT parked_on FROM run_keys WHERE parked_on IN ({_marks(len(chunk))})",
        chunk)]
    counts = unpark_counts({key: freed[key] for key in waiting},
                           _count_running(conn, waiting))
    for key, count in counts.items():
        ids = [(run_id,) for (run_id,) in conn.execute(
            "SELECT k.run_id FROM run_keys k INDEXED BY run_keys_parked JOIN runs r "
            f"ON r.id = k.run_id WHERE k.parked_on = ? AND r.{CLAIMABLE} "
            "ORDER BY k.parked_rank LIMIT ?", (key, count))]
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
    conn.executemany("UPDATE run_keys SET leased = 1 WHERE run_id = ?",
                     [(run_id,) for run_id, _ in taken])


def _park(conn: sqlite3.Connection, parked: list[tuple[str, str, int, int]]) -> None:
    """Move runs of full keys (run id, key, limit, rank) out of the claims' way."""
    conn.executemany(
        "UPDATE runs SET rank = rank + ?, reason = ? WHERE id = ? AND rank < ?",
        [(PARK, park_reason(key, limit), run_id, PARK) for run_id, key, limit, _ in parked])
    conn.executemany(
        "UPDATE run_keys SET parked_on = ?, parked_rank = ?, leased = 0 WHERE run_id = ?",
        [(key, rank, run_id) for run_id, key, _, rank in parked])


def _park_backlogs(conn: sqlite3.Connection, keys: dict[str, int], now: int) -> None:
    """Park up to BULK_PARK more due runs of each key with a backlog, at once."""
    for key, limit in keys.items():
        for column in ("ckey", "ckey2"):
            rows = conn.execute(
                f"SELECT k.run_id, r.rank FROM run_keys k JOIN runs r ON r.id = k.run_id "
                f"WHERE k.{column} = ? AND k.leased = 0 AND k.parked_on IS NULL "
                f"AND r.{CLAIMABLE} AND r.rank < ? AND r.available_at <= ? LIMIT ?",
                (key, PARK, now, BULK_PARK)).fetchall()
            _park(conn, [(run_id, key, limit, rank) for run_id, rank in rows])


# -- reads ---------------------------------------------------------------------------------


def run_events(conn: sqlite3.Connection, run_id: str) -> list[EventRow]:
    rows = conn.execute(
        "SELECT e.id, e.name, e.data, e.user, e.ts FROM run_events l "
        "JOIN events e ON e.id = l.event_id WHERE l.run_id = ? ORDER BY l.position",
        (run_id,)).fetchall()
    return [EventRow(*row) for row in rows]
