"""Flow control in the PostgreSQL store: publishes decided with their limiters' state, and
the claim of runs that hold concurrency keys. Same decisions as SQLite (stride._flow_decide);
what differs is how concurrent processes are kept from deciding on stale state:

- publish: the limiter states are upserted and row-locked in key order (`INSERT ... ON
  CONFLICT DO UPDATE ... RETURNING`), then the runs they point at (FOR UPDATE, id order),
  so two dispatches touching one key decide one after the other, and never deadlock;
- claim (four statements, one transaction): lock the candidate runs (SKIP LOCKED) and take
  the keys freed since the last claim; take transaction advisory locks on every key
  involved, in hash order (after the jobs' own locks, in name order, as the plain claim
  takes them); count the leased runs per key, now that no other claimer can change them;
  then lease, park and release in one statement. Finishing runs never take those locks: a
  trigger appends the keys they let go of to `flow_freed`, which the next claim reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

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
from stride.errors import ConfigurationError
from stride.stores._postgres_sql import STEP_COLUMNS, rows
from stride.stores.base import NewRun

Execute = Callable[[str, Any], Awaitable[list[tuple[Any, ...]]]]
"""Runs one statement on the publishing connection (the store's, or the app's) -> rows."""
BULK_PARK = 1000
FREED_BATCH = 1000
_CLAIMABLE = "status IN ('queued', 'sleeping', 'waiting')"


def _json(items: Sequence[Sequence[Any]]) -> str:
    return orjson.dumps([list(item) for item in items]).decode()


class FlowStatements:
    """The flow-control SQL for one schema."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.schema = schema
        self.lock_states = (
            f"INSERT INTO {s}.flow_state (app_id, job_id, kind, key) "
            "SELECT k.app_id, k.job_id, k.kind, k.key FROM "
            + rows("app_id text", "job_id text", "kind text", "key text") +
            " AS k ORDER BY 1, 2, 3, 4 ON CONFLICT (app_id, job_id, kind, key) DO UPDATE SET "
            f"n = {s}.flow_state.n RETURNING app_id, job_id, kind, key, at, n, run_id")
        self.lock_pending = (
            f"SELECT id, status, started_at IS NOT NULL, event_id FROM {s}.runs "
            "WHERE id = ANY(%s::text[]) ORDER BY id FOR UPDATE")
        self.insert_runs = (
            f"INSERT INTO {s}.runs (id, app_id, job_id, event_id, status, available_at, rank, "
            "created_at, ended_at, reason, ckey, clim, ckey2, clim2) "
            "SELECT r.id, r.app_id, r.job_id, r.event_id, r.status, r.at, r.rank, %s, "
            "r.ended_at, r.reason, r.ckey, r.clim, r.ckey2, r.clim2 FROM "
            + rows("id text", "app_id text", "job_id text", "event_id text", "status text",
                   "at bigint", "rank bigint", "ended_at bigint", "reason text", "ckey text",
                   "clim int", "ckey2 text", "clim2 int") + " AS r")
        self.change_runs = (
            f"UPDATE {s}.runs r SET event_id = coalesce(c.event_id, r.event_id), "
            "available_at = coalesce(c.at, r.available_at), rank = coalesce(c.rank, r.rank), "
            "reason = c.reason FROM "
            + rows("id text", "event_id text", "at bigint", "rank bigint", "reason text") +
            " AS c WHERE r.id = c.id AND r.status = 'queued' AND r.started_at IS NULL")
        self.cancel_runs = (
            f"UPDATE {s}.runs r SET status = 'cancelled', error = c.error, reason = c.reason, "
            "ended_at = %s, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL "
            "FROM " + rows("id text", "reason text", "error text") + " AS c WHERE r.id = c.id "
            "AND r.status NOT IN ('completed', 'failed', 'cancelled', 'skipped')")
        self.link_events = (
            f"INSERT INTO {s}.run_events (run_id, position, event_id) SELECT * FROM "
            + rows("run_id text", "position int", "event_id text") +
            " AS l ON CONFLICT (run_id, position) DO UPDATE SET event_id = excluded.event_id")
        self.save_states = (
            f"INSERT INTO {s}.flow_state (app_id, job_id, kind, key, at, n, run_id) "
            "SELECT * FROM " + rows("app_id text", "job_id text", "kind text", "key text",
                                    "at bigint", "n int", "run_id text") +
            " AS k ON CONFLICT (app_id, job_id, kind, key) DO UPDATE SET at = excluded.at, "
            "n = excluded.n, run_id = excluded.run_id")
        self.drop_states = (
            f"DELETE FROM {s}.flow_state f USING "
            + rows("app_id text", "job_id text", "kind text", "key text") +
            " AS k WHERE (f.app_id, f.job_id, f.kind, f.key) = (k.app_id, k.job_id, k.kind, "
            "k.key)")
        self.run_events = (
            f'SELECT e.id, e.name, e.data, e."user", e.ts FROM {s}.run_events l '
            f"JOIN {s}.events e ON e.id = l.event_id WHERE l.run_id = %s ORDER BY l.position")
        self.candidates = _candidates(s)
        self.lock_keys = (
            "SELECT pg_advisory_xact_lock(hashtext(%s::text), hashtext(k.key)) "
            "FROM unnest(%s::text[]) AS k(key) ORDER BY hashtext(k.key)")
        self.running = _running(s)
        self.apply = _apply(s)


def _candidates(s: str) -> str:
    # The keys freed since the last claim (taken off the queue), the oldest parked runs of
    # each (up to its limit: they come first, they waited longest), and the due runs in
    # rank order below PARK; all locked, so concurrent claimers take different ones.
    run_columns = "id, job_id, started_at, rank, ckey, clim, ckey2, clim2, parked_on"
    mine = "app_id = %(app)s AND job_id = ANY(%(jobs)s::text[]) AND available_at <= %(now)s"
    return (
        f"WITH freed AS (DELETE FROM {s}.flow_freed WHERE id IN (SELECT id FROM "
        f"{s}.flow_freed ORDER BY id LIMIT {FREED_BATCH} FOR UPDATE SKIP LOCKED) "
        "RETURNING ckey, lim), "
        "keys AS (SELECT ckey, max(lim) AS lim FROM freed GROUP BY ckey), "
        f"heads AS (SELECT x.* FROM keys k CROSS JOIN LATERAL (SELECT {run_columns} "
        f"FROM {s}.runs WHERE parked_on = k.ckey AND {_CLAIMABLE} AND rank >= %(park)s "
        f"AND {mine} ORDER BY rank LIMIT k.lim FOR UPDATE SKIP LOCKED) AS x), "
        f"due AS (SELECT {run_columns} FROM {s}.runs WHERE {_CLAIMABLE} AND {mine} "
        "AND rank < %(park)s ORDER BY rank LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
        "SELECT 'h', id, job_id, started_at IS NOT NULL, rank, ckey, clim, ckey2, clim2, "
        "parked_on FROM heads "
        "UNION ALL SELECT 'c', id, job_id, started_at IS NOT NULL, rank, ckey, clim, ckey2, "
        "clim2, parked_on FROM due "
        "UNION ALL SELECT 'f', NULL, NULL, NULL, NULL, ckey, lim, NULL, NULL, NULL FROM keys")


def _running(s: str) -> str:
    # leased runs per key (either key column) and per job with a job-wide limit
    return (
        f"SELECT 'k', k.key, (SELECT count(*) FROM {s}.runs WHERE status = 'running' AND "
        f"ckey = k.key) + (SELECT count(*) FROM {s}.runs WHERE status = 'running' AND "
        "ckey2 = k.key) FROM unnest(%(keys)s::text[]) AS k(key) "
        f"UNION ALL SELECT 'j', j.job_id, (SELECT count(*) FROM {s}.runs WHERE "
        "status = 'running' AND app_id = %(app)s AND job_id = j.job_id) "
        "FROM unnest(%(limited)s::text[]) AS j(job_id)")


def _apply(s: str) -> str:
    # One statement: lease the runs taken; park those met whose key is full, and up to
    # BULK_PARK more due runs of each full key (SKIP LOCKED); release parked runs of freed
    # keys, oldest first; return the leased runs with their events (and memo if resumed).
    # The sets never overlap: taken and parked are candidates (below PARK, locked by us),
    # bulk excludes them, and released runs are above PARK. Lease-only commit, as the plain
    # claim's: a claim lost in a crash loses leases, parks and releases together.
    memo_columns = ", ".join(f"m.{column}" for column in STEP_COLUMNS.split(", "))
    bulk = (
        "SELECT f.key, f.reason, x.id FROM unnest(%(full_keys)s::text[], "
        "%(full_reasons)s::text[]) AS f(key, reason) CROSS JOIN LATERAL ("
        f"SELECT * FROM (SELECT id FROM {s}.runs WHERE ckey = f.key AND {_CLAIMABLE} "
        "AND rank < %(park)s AND available_at <= %(now)s AND id <> ALL(%(seen)s::text[]) "
        f"ORDER BY rank LIMIT {BULK_PARK} FOR UPDATE SKIP LOCKED) AS one UNION ALL "
        f"SELECT * FROM (SELECT id FROM {s}.runs WHERE ckey2 = f.key AND {_CLAIMABLE} "
        "AND rank < %(park)s AND available_at <= %(now)s AND id <> ALL(%(seen)s::text[]) "
        f"ORDER BY rank LIMIT {BULK_PARK} FOR UPDATE SKIP LOCKED) AS two) AS x")
    release = (
        "SELECT x.id FROM unnest(%(free_keys)s::text[], %(free_counts)s::int[]) AS u(key, n) "
        f"CROSS JOIN LATERAL (SELECT id FROM {s}.runs WHERE parked_on = u.key AND {_CLAIMABLE} "
        "AND rank >= %(park)s AND id <> ALL(%(seen)s::text[]) ORDER BY rank LIMIT u.n "
        "FOR UPDATE SKIP LOCKED) AS x UNION ALL SELECT unnest(%(released)s::text[])")
    return (
        f"WITH leased AS (UPDATE {s}.runs r SET status = 'running', lease_owner = %(worker)s, "
        "lease_token = %(token)s, lease_expires_at = %(expires)s, "
        "started_at = coalesce(r.started_at, %(now)s), parked_on = NULL, "
        "rank = CASE WHEN r.rank >= %(park)s THEN r.rank - %(park)s ELSE r.rank END "
        "WHERE r.id = ANY(%(taken)s::text[]) AND r.status IN ('queued', 'sleeping', 'waiting') "
        "RETURNING r.id, r.job_id, r.event_id, r.attempt, r.errors, r.created_at, r.rank), "
        f"parked AS (UPDATE {s}.runs r SET parked_on = p.key, reason = p.reason, "
        "rank = CASE WHEN r.rank < %(park)s THEN r.rank + %(park)s ELSE r.rank END "
        "FROM unnest(%(parked)s::text[], %(parked_keys)s::text[], "
        "%(parked_reasons)s::text[]) AS p(id, key, reason) WHERE r.id = p.id RETURNING 1), "
        f"bulk AS (UPDATE {s}.runs r SET rank = r.rank + %(park)s, parked_on = b.key, "
        f"reason = b.reason FROM ({bulk}) AS b WHERE r.id = b.id RETURNING 1), "
        f"released AS (UPDATE {s}.runs r SET rank = r.rank - %(park)s, parked_on = NULL "
        f"FROM ({release}) AS u WHERE r.id = u.id AND r.rank >= %(park)s RETURNING 1) "
        "SELECT l.id, l.job_id, l.attempt, l.errors, l.created_at, "
        "CASE WHEN l.id = ANY(%(resumed)s::text[]) THEN (SELECT json_agg(json_build_array("
        f"{memo_columns}) ORDER BY m.position)::text FROM {s}.steps m WHERE m.run_id = l.id) "
        f'END, e.id, e.name, e.data, e."user", e.ts FROM leased l JOIN {s}.events e '
        "ON e.id = l.event_id CROSS JOIN (SELECT set_config('synchronous_commit', 'off', "
        "true)) AS lease_only ORDER BY l.rank")


# -- publish ---------------------------------------------------------------------------


async def publish_runs(execute: Execute, sql: FlowStatements, runs: Sequence[NewRun],
                       now: int) -> int:
    """Decide and write the runs of jobs with flow control, in the caller's transaction;
    how many runs were created (not skipped, not merged into a pending run)."""
    states = await _lock_states(execute, sql, state_keys(runs))
    pending_ids = pending_run_ids(states)
    pending = {row[0]: PendingRun(row[1], bool(row[2]), row[3])
               for row in (await execute(sql.lock_pending, (pending_ids,))
                           if pending_ids else [])}
    plan = plan_publish(runs, now=now, states=states, pending=pending)
    for statement, params in _plan_statements(sql, plan, now):
        await execute(statement, params)
    return sum(1 for row in plan.inserts if row.status != "skipped")


async def _lock_states(execute: Execute, sql: FlowStatements,
                       keys: list[StateKey]) -> dict[StateKey, FlowState | None]:
    if not keys:
        return {}
    found: dict[StateKey, FlowState | None] = {}
    for app_id, job_id, kind, key, at, n, run_id in await execute(sql.lock_states,
                                                                  (_json(keys),)):
        empty = at is None and not n and run_id is None  # just created by the upsert
        found[(app_id, job_id, kind, key)] = None if empty else FlowState(at, n, run_id)
    return found


def _plan_statements(sql: FlowStatements, plan: PublishPlan,
                     now: int) -> list[tuple[str, Any]]:
    statements: list[tuple[str, Any]] = []
    if plan.inserts:
        statements.append((sql.insert_runs, (now, _json([
            (r.id, r.app_id, r.job_id, r.event_id, r.status, r.available_at, r.rank,
             r.ended_at, r.reason, r.ckey, r.clim, r.ckey2, r.clim2) for r in plan.inserts]))))
    if plan.changes:
        statements.append((sql.change_runs, (_json([
            (c.id, c.event_id, c.available_at, c.rank, c.reason)
            for c in plan.changes.values()]),)))
    if plan.cancels:
        statements.append((sql.cancel_runs, (now, _json([
            (run_id, reason, error) for run_id, (reason, error) in plan.cancels.items()]))))
    if plan.links:
        statements.append((sql.link_events, (_json(plan.links),)))
    saved = [(*key, state.at, state.n, state.run_id) for key, state in plan.states.items()
             if state is not None]
    if saved:
        statements.append((sql.save_states, (_json(saved),)))
    dropped = [key for key, state in plan.states.items() if state is None]
    if dropped:
        statements.append((sql.drop_states, (_json(dropped),)))
    return statements


def executor_for(conn: Any) -> Execute:
    """Statements on a psycopg connection: async, or sync (in a thread: the caller waits for
    us, so nothing else uses it meanwhile), or a wrapper with `driver_connection`."""
    conn = getattr(conn, "driver_connection", conn)
    if isinstance(conn, psycopg.AsyncConnection):
        async_conn: psycopg.AsyncConnection[Any] = conn

        async def run_async(statement: str, params: Any) -> list[tuple[Any, ...]]:
            cur = await async_conn.execute(statement, params)
            return await cur.fetchall() if cur.description is not None else []

        return run_async
    if isinstance(conn, psycopg.Connection):
        sync_conn: psycopg.Connection[Any] = conn

        def run_sync(statement: str, params: Any) -> list[tuple[Any, ...]]:
            cur = sync_conn.execute(statement, params)
            return cur.fetchall() if cur.description is not None else []

        async def run_in_thread(statement: str, params: Any) -> list[tuple[Any, ...]]:
            return await asyncio.to_thread(run_sync, statement, params)

        return run_in_thread
    raise ConfigurationError(
        "dispatch(conn=...) needs a psycopg 3 connection (psycopg.AsyncConnection or "
        f"psycopg.Connection) in an open transaction, got {type(conn).__name__}")


# -- claim ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimParams:
    app_id: str
    worker_id: str
    token: str
    now: int
    expires: int
    limit: int
    job_ids: list[str]
    limits: dict[str, int]
    """Job-wide limits of the claimed jobs (taken under the jobs' advisory locks)."""


async def claim_keyed(conn: psycopg.AsyncConnection[Any], sql: FlowStatements,
                      lock_jobs: str, p: ClaimParams) -> list[tuple[Any, ...]]:
    """The keyed claim's transaction; returns the leased runs as the plain claim does."""
    async with conn.transaction():
        cur = await conn.execute(sql.candidates, {
            "now": p.now, "app": p.app_id, "jobs": p.job_ids, "park": PARK, "limit": p.limit})
        found = _Found(await cur.fetchall())
        limited = sorted(job for job in set(p.job_ids) if job in p.limits)
        if limited:  # the plain claim's job locks, in the same (name) order
            await conn.execute(lock_jobs, (sql.schema, p.app_id, limited))
        if found.keys:
            await conn.execute(sql.lock_keys, (f"{sql.schema}/flow", found.keys))
        running, job_free = await _counts(conn, sql, p, found.keys, limited)
        admission = admit(found.candidates, running, job_free)
        cur = await conn.execute(sql.apply, _apply_params(p, admission, found))
        return await cur.fetchall()


class _Found:
    """What the first statement found: parked heads of freed keys, then due runs (the
    candidates, in that order), and the freed keys with their limits."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        heads = sorted((r for r in rows if r[0] == "h"), key=lambda r: r[4])
        due = [r for r in rows if r[0] == "c"]
        self.candidates = [Candidate(r[1], r[2], _keys(r[5:9])) for r in heads + due]
        self.parked_on = {r[1]: r[9] for r in heads}
        self.resumed = [r[1] for r in heads + due if r[3]]
        self.freed: dict[str, int] = {}
        for row in rows:
            if row[0] == "f":
                self.freed[row[5]] = max(row[6], self.freed.get(row[5], 0))
        self.keys = sorted({key for c in self.candidates for key, _ in c.keys} | set(self.freed))


def _keys(columns: Sequence[Any]) -> tuple[tuple[str, int], ...]:
    ckey, clim, ckey2, clim2 = columns
    if ckey is None:
        return ()
    return ((ckey, clim),) if ckey2 is None else ((ckey, clim), (ckey2, clim2))


async def _counts(conn: psycopg.AsyncConnection[Any], sql: FlowStatements, p: ClaimParams,
                  keys: list[str], limited: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    if not keys and not limited:
        return {}, {}
    cur = await conn.execute(sql.running, {"keys": keys, "limited": limited, "app": p.app_id})
    running: dict[str, int] = {}
    job_free: dict[str, int] = {}
    for kind, name, count in await cur.fetchall():
        if kind == "k":
            running[name] = int(count)
        else:
            job_free[name] = p.limits[name] - int(count)
    return running, job_free


def _apply_params(p: ClaimParams, admission: Admission, found: _Found) -> dict[str, Any]:
    # a parked head held back by the key it is parked on stays; by another key, it moves
    # there (that key's release will bring it back); by its job's limit, it is released
    parked = [(run_id, key, limit) for run_id, key, limit in admission.parked
              if found.parked_on.get(run_id) != key]
    blocked = {run_id for run_id, _, _ in admission.parked}
    released = [run_id for run_id in found.parked_on
                if run_id not in blocked and run_id not in admission.taken]
    release = unpark_counts(found.freed, admission.running)
    return {
        "worker": p.worker_id, "token": p.token, "expires": p.expires, "now": p.now,
        "park": PARK, "taken": admission.taken, "resumed": found.resumed,
        "parked": [run_id for run_id, _, _ in parked],
        "parked_keys": [key for _, key, _ in parked],
        "parked_reasons": [park_reason(key, limit) for _, key, limit in parked],
        "full_keys": list(admission.full),
        "full_reasons": [park_reason(key, limit) for key, limit in admission.full.items()],
        "seen": [c.run_id for c in found.candidates],
        "free_keys": list(release), "free_counts": list(release.values()),
        "released": released,
    }
