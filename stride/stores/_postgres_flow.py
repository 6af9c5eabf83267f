"""Flow control in the PostgreSQL store: publishes decided with their limiters' state, and
the claim of runs that hold concurrency keys. Same decisions as SQLite (stride._flow_decide);
what differs is how concurrent processes are kept from deciding on stale state:

- publish: the limiter states are upserted and row-locked in key order (`INSERT ... ON
  CONFLICT DO UPDATE ... RETURNING`), then the runs they point at (FOR UPDATE, id order),
  so two dispatches touching one key decide one after the other, and never deadlock;
- claim (one transaction, pipelined in two round trips): lock the candidate runs (SKIP
  LOCKED): the oldest parked runs of keys with parked runs (round robin) and the due runs,
  and try their keys' transaction advisory locks in the same statement: a candidate whose
  key another claimer holds is left for the next claim, so claims never wait on each
  other; then (sent with it) the jobs' own locks, as the plain claim takes them, and the
  count of leased runs per key, which no other claimer can change for the locked keys;
  then lease, park and release in one statement.
  Finishing runs take no lock and write nothing about keys: a claim counts leased runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
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
    backlogs,
    park_reason,
    pending_run_ids,
    plan_publish,
    state_keys,
    to_park,
    unpark_counts,
)
from stride.errors import ConfigurationError
from stride.flow import MAX_PRIORITY_SECONDS
from stride.stores._postgres_sql import STEP_COLUMNS, rows
from stride.stores.base import NewRun

Execute = Callable[[str, Any], Awaitable[list[tuple[Any, ...]]]]
"""Runs one statement on the publishing connection (the store's, or the app's) -> rows."""
BULK_SCAN = 1000
COLLECT_SECONDS = 2.0
SCAN_KEYS = 32
OVERFETCH, OVERFETCH_EXTRA, MAX_CANDIDATES = 2, 8, 512
"""A keyed claim reads up to limit * 2 + 8 due runs (at most 512) and takes at most `limit`:
some candidates' keys are full or being decided by another claimer, and a claim that
returns fewer runs than asked tells the worker that nothing more is due."""
RANK_HORIZON_MS = MAX_PRIORITY_SECONDS * 1000
"""A due run's rank is at most this far past now (see the plain claim)."""
_CLAIMABLE = "status IN ('queued', 'sleeping', 'waiting')"
_FINISHED = "('completed', 'failed', 'cancelled', 'skipped')"
INDEX_DRIVEN = ("SELECT set_config('enable_seqscan', 'off', true), "
                "set_config('enable_bitmapscan', 'off', true), "
                "set_config('enable_hashjoin', 'off', true), "
                "set_config('enable_mergejoin', 'off', true), set_config('jit', 'off', true), "
                "set_config('plan_cache_mode', 'force_generic_plan', true)")
"""The keyed claim's statements touch a few rows each by index; where a table has no
statistics yet (a fresh schema under load: autovacuum has not analysed it) the planner
preferred hash joins over full scans of runs (8-30 ms a statement instead of < 1 ms), and
read every parked run of a key to sort them where the index gives the oldest first.
Disabling them adds a huge cost to the alternatives, which would make PostgreSQL JIT-compile
the statements (100+ ms each): so no JIT either. And once psycopg has prepared a statement
(its 5th run on a connection), its generic plan: left to choose, PostgreSQL planned the
apply afresh for every claim (a custom plan, 0.6-1.3 ms: it never found the generic one
cheaper), though with the settings above and the fenced subqueries both plans have the
same shape. For the claim's transaction only."""
_BY_ID = ("SELECT id, job_id, started_at, rank, status, app_id, available_at FROM {s}.runs "
          "WHERE id = k.run_id OFFSET 0 FOR UPDATE SKIP LOCKED")
"""One run by primary key, locked. The key is its only condition (OFFSET 0 keeps the outer
conditions from being pushed in), so no plan can take another index: without statistics
the planner scanned a partial index of every queued run with `id` as a mere filter."""


def _json(items: Sequence[Sequence[Any]]) -> str:
    return orjson.dumps([list(item) for item in items]).decode()


class ClaimState:
    """A process's keyed claims' memory: where the round robin over keys with parked runs
    goes on (see `_candidates`), and when the run_keys rows of finished runs were last
    collected."""

    def __init__(self) -> None:
        self.cursor = ""
        self._collected = 0.0

    def collect_since(self) -> int | None:
        """Every COLLECT_SECONDS, the time (ms) since which finished runs' rows go; else None."""
        now = time.monotonic()
        if now - self._collected < COLLECT_SECONDS:
            return None
        since, self._collected = self._collected, now
        back = now - since + COLLECT_SECONDS if since else 60.0  # the first time: a minute
        return time.time_ns() // 1_000_000 - int(back * 1000)


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
            f"WITH created AS (INSERT INTO {s}.runs (id, app_id, job_id, event_id, status, "
            "available_at, rank, created_at, ended_at, reason) "
            "SELECT r.id, r.app_id, r.job_id, r.event_id, r.status, r.at, r.rank, %s, "
            "r.ended_at, r.reason FROM "
            + rows("id text", "app_id text", "job_id text", "event_id text", "status text",
                   "at bigint", "rank bigint", "ended_at bigint", "reason text", "ckey text",
                   "clim int", "ckey2 text", "clim2 int") + " AS r RETURNING 1) "
            f"INSERT INTO {s}.run_keys (run_id, ckey, clim, ckey2, clim2) "
            "SELECT k.id, k.ckey, k.clim, k.ckey2, k.clim2 FROM "
            + rows("id text", "ckey text", "clim int", "ckey2 text", "clim2 int") + " AS k")
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
        self.running = _running(s)
        self.apply = _apply(s)


def _candidates(s: str) -> str:
    # The next SCAN_KEYS keys with parked runs after `cursor` (round robin over all of them,
    # one index lookup per key), the oldest parked runs of each (up to the key's limit: they
    # waited longest, and the claim takes them if the key has free slots), and the due runs
    # in rank order (rank <= horizon < PARK: parked runs and runs due later are out of the
    # scan), with their keys; the runs locked (SKIP LOCKED), so concurrent claimers take
    # different ones; and the keys of those runs (and of the scanned keys) whose advisory
    # lock this claim got: try, never wait, so claims of different workers never queue
    # behind each other, nor deadlock (a key another claimer is deciding on is left for the
    # next claim). Shapes that do not depend on statistics (a fresh table has none):
    # index-ordered subqueries kept apart by OFFSET 0, runs looked up by primary key.
    mine = ("app_id = %(app)s AND job_id = ANY(%(jobs)s::text[]) "
            "AND available_at <= %(now)s")
    keys = "k.ckey, k.clim, k.ckey2, k.clim2"
    return (
        f"WITH RECURSIVE scan(key) AS ((SELECT parked_on FROM {s}.run_keys "
        "WHERE parked_on > %(cursor)s ORDER BY parked_on LIMIT 1) UNION ALL SELECT (SELECT "
        f"parked_on FROM {s}.run_keys WHERE parked_on > scan.key ORDER BY parked_on LIMIT 1) "
        "FROM scan WHERE scan.key IS NOT NULL), "
        f"scanned AS (SELECT key FROM scan WHERE key IS NOT NULL LIMIT {SCAN_KEYS}), "
        "freed AS (SELECT q.key, (SELECT CASE WHEN ckey = q.key THEN clim ELSE clim2 END "
        f"FROM {s}.run_keys WHERE parked_on = q.key LIMIT 1) AS lim FROM scanned q), "
        "heads AS (SELECT x.* FROM freed f CROSS JOIN LATERAL (SELECT r.id, r.job_id, "
        f"r.started_at, k.parked_rank AS rank, {keys}, k.parked_on FROM (SELECT * FROM "
        f"{s}.run_keys WHERE parked_on = f.key ORDER BY parked_rank OFFSET 0) AS k "
        f"CROSS JOIN LATERAL ({_BY_ID.format(s=s)}) AS r WHERE r.{_CLAIMABLE} "
        f"AND r.{mine.replace(' AND ', ' AND r.')} ORDER BY k.parked_rank LIMIT f.lim) AS x), "
        f"due AS (SELECT r.id, r.job_id, r.started_at, r.rank, {keys}, NULL::text AS parked_on "
        f"FROM {s}.runs r LEFT JOIN {s}.run_keys k ON k.run_id = r.id WHERE r.{_CLAIMABLE} "
        f"AND r.rank <= %(horizon)s AND r.{mine.replace(' AND ', ' AND r.')} ORDER BY r.rank "
        "LIMIT %(limit)s FOR UPDATE OF r SKIP LOCKED), "
        "keys AS (SELECT DISTINCT x.key FROM (SELECT ckey FROM heads UNION ALL SELECT ckey2 "
        "FROM heads UNION ALL SELECT ckey FROM due UNION ALL SELECT ckey2 FROM due "
        "UNION ALL SELECT key FROM freed) AS x(key) WHERE x.key IS NOT NULL), "
        "locked AS (SELECT key FROM keys "
        "WHERE pg_try_advisory_xact_lock(hashtext(%(lock_space)s::text), hashtext(key))) "
        "SELECT 'h', id, job_id, started_at IS NOT NULL, rank, ckey, clim, ckey2, clim2, "
        "parked_on FROM heads "
        "UNION ALL SELECT 'c', id, job_id, started_at IS NOT NULL, rank, ckey, clim, ckey2, "
        "clim2, parked_on FROM due "
        "UNION ALL SELECT 'f', NULL, NULL, NULL, NULL, key, lim, NULL, NULL, NULL FROM freed "
        "UNION ALL SELECT 'l', NULL, NULL, NULL, NULL, key, NULL, NULL, NULL, NULL FROM locked")


def _running(s: str) -> str:
    # leased runs per key: the leased runs (few, by their partial index) joined to their
    # keys; and per job with a job-wide limit. Sent after the locks (the keys' locks are
    # taken by the candidates statement): counts of locked keys cannot change under the
    # claim (a finish only lowers them).
    return (
        f"SELECT 'k', v.key, count(*) FROM {s}.runs r JOIN {s}.run_keys k ON k.run_id = r.id "
        "CROSS JOIN LATERAL (VALUES (k.ckey), (k.ckey2)) AS v(key) "
        "WHERE r.status = 'running' AND v.key IS NOT NULL GROUP BY v.key "
        f"UNION ALL SELECT 'j', j.job_id, (SELECT count(*) FROM {s}.runs WHERE "
        "status = 'running' AND app_id = %(app)s AND job_id = j.job_id) "
        "FROM unnest(%(limited)s::text[]) AS j(job_id)")


def _apply(s: str) -> str:
    # One statement: lease the runs taken; park those met whose key is full, and the runs
    # of keys with a backlog among the next BULK_SCAN due runs; release parked runs of keys
    # with free slots, oldest first; now and then delete the run_keys rows of runs that
    # finished; return the leased runs with their events (and memo if resumed). No row is
    # changed twice: taken and parked runs are candidates; bulk and released runs are not
    # (and differ by parked_on). Lease-only commit, as the plain claim's: a claim lost in a
    # crash loses its leases, parks and releases together. The finished runs to collect are
    # found by their end time alone (OFFSET 0 keeps the other conditions out): without
    # statistics the planner walked runs_status, every finished run ever, every 2 s.
    memo_columns = ", ".join(f"m.{column}" for column in STEP_COLUMNS.split(", "))
    # the runs of keys with a backlog among the next BULK_SCAN due runs (not a key index:
    # it would cost every keyed run an entry on a random page, in and out). Matched first
    # (m, kept apart by OFFSET 0), then the candidates left out and the rest locked: only
    # the few runs that matched are compared with the candidates (in the generic plan a
    # condition on d compared every scanned run with each of them) and locked, whatever
    # order of the joins the planner would prefer
    bulk = (
        "SELECT m.key, m.reason, r.id, m.rank FROM (SELECT f.key, f.reason, d.id, d.rank "
        f"FROM (SELECT id, rank FROM {s}.runs WHERE cardinality(%(backlog_keys)s::text[]) > 0 "
        f"AND {_CLAIMABLE} AND rank <= %(horizon)s AND available_at <= %(now)s "
        f"AND app_id = %(app)s ORDER BY rank LIMIT {BULK_SCAN}) AS d "
        f"JOIN {s}.run_keys k ON k.run_id = d.id "
        "JOIN unnest(%(backlog_keys)s::text[], %(backlog_reasons)s::text[]) AS f(key, reason) "
        "ON f.key IN (k.ckey, k.ckey2) WHERE k.parked_on IS NULL OFFSET 0) AS m "
        f"CROSS JOIN LATERAL ({_BY_ID.format(s=s).replace('k.run_id', 'm.id')}) AS r "
        f"WHERE m.id <> ALL(%(seen)s::text[]) AND r.{_CLAIMABLE}")
    release = (
        "SELECT x.id FROM unnest(%(free_keys)s::text[], %(free_counts)s::int[]) AS u(key, n) "
        f"CROSS JOIN LATERAL (SELECT r.id FROM (SELECT run_id, parked_rank FROM {s}.run_keys "
        "WHERE parked_on = u.key ORDER BY parked_rank OFFSET 0) AS k CROSS JOIN LATERAL "
        f"({_BY_ID.format(s=s)}) AS r WHERE r.{_CLAIMABLE} AND r.id <> ALL(%(seen)s::text[]) "
        "ORDER BY k.parked_rank LIMIT u.n) AS x UNION ALL SELECT unnest(%(released)s::text[])")
    return (
        f"WITH leased AS (UPDATE {s}.runs r SET status = 'running', lease_owner = %(worker)s, "
        "lease_token = %(token)s, lease_expires_at = %(expires)s, "
        "started_at = coalesce(r.started_at, %(leased_at)s), "
        "rank = CASE WHEN r.rank >= %(park)s THEN r.rank - %(park)s ELSE r.rank END "
        "FROM unnest(%(taken)s::text[]) AS t(id) WHERE r.id = t.id "
        "RETURNING r.id, r.job_id, r.event_id, r.attempt, r.errors, r.created_at, r.rank), "
        f"unparked AS (UPDATE {s}.run_keys k SET parked_on = NULL, parked_rank = NULL "
        "FROM unnest(%(taken_heads)s::text[]) AS t(id) WHERE k.run_id = t.id RETURNING 1), "
        f"parked AS (UPDATE {s}.runs r SET reason = p.reason, "
        "rank = CASE WHEN r.rank < %(park)s THEN r.rank + %(park)s ELSE r.rank END "
        "FROM unnest(%(parked)s::text[], %(parked_reasons)s::text[]) AS p(id, reason) "
        "WHERE r.id = p.id RETURNING 1), "
        f"parked_keys AS (UPDATE {s}.run_keys k SET parked_on = p.key, "
        "parked_rank = coalesce(k.parked_rank, p.rank) FROM unnest(%(parked)s::text[], "
        "%(parked_keys)s::text[], %(parked_ranks)s::bigint[]) AS p(id, key, rank) "
        "WHERE k.run_id = p.id RETURNING 1), "
        f"bulk_ids AS ({bulk}), "
        f"bulk AS (UPDATE {s}.runs r SET rank = r.rank + %(park)s, reason = b.reason "
        "FROM bulk_ids b WHERE r.id = b.id RETURNING 1), "
        f"bulk_keys AS (UPDATE {s}.run_keys k SET parked_on = b.key, parked_rank = b.rank "
        "FROM bulk_ids b WHERE k.run_id = b.id RETURNING 1), "
        f"release_ids AS ({release}), "
        f"released AS (UPDATE {s}.runs r SET rank = r.rank - %(park)s FROM release_ids u "
        "WHERE r.id = u.id AND r.rank >= %(park)s RETURNING 1), "
        f"released_keys AS (UPDATE {s}.run_keys k SET parked_on = NULL, parked_rank = NULL "
        "FROM release_ids u WHERE k.run_id = u.id RETURNING 1), "
        f"collected AS (DELETE FROM {s}.run_keys k USING (SELECT id, app_id, status FROM "
        f"{s}.runs WHERE %(collect)s AND ended_at >= %(collect_since)s OFFSET 0) AS f "
        f"WHERE k.run_id = f.id AND f.app_id = %(app)s AND f.status IN {_FINISHED} "
        "RETURNING 1) "
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
             r.ended_at, r.reason) for r in plan.inserts]), _json([
            (r.id, r.ckey, r.clim, r.ckey2, r.clim2) for r in plan.inserts
            if r.ckey is not None]))))
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
    lease_ms: int
    limit: int
    job_ids: list[str]
    limits: dict[str, int]
    """Job-wide limits of the claimed jobs (taken under the jobs' advisory locks)."""
    state: ClaimState = field(default_factory=lambda: ClaimState())


async def claim_keyed(conn: psycopg.AsyncConnection[Any], sql: FlowStatements,
                      lock_jobs: str, p: ClaimParams) -> list[tuple[Any, ...]]:
    """The keyed claim's transaction; returns the leased runs as the plain claim does.

    Pipelined: BEGIN, the planner settings, the candidates with their keys' locks, the
    jobs' locks and the counts go in one round trip, the apply and COMMIT in the next."""
    async with conn.pipeline(), conn.transaction():
        await conn.execute(INDEX_DRIVEN)
        cur = await conn.execute(sql.candidates, {
            "now": p.now, "app": p.app_id, "jobs": p.job_ids,
            "horizon": p.now + RANK_HORIZON_MS, "cursor": p.state.cursor,
            "lock_space": f"{sql.schema}/flow",
            "limit": min(p.limit * OVERFETCH + OVERFETCH_EXTRA, MAX_CANDIDATES)})
        limited = sorted(job for job in set(p.job_ids) if job in p.limits)
        if limited:  # the plain claim's job locks, in the same (name) order
            await conn.execute(lock_jobs, (sql.schema, p.app_id, limited))
        counted = await conn.execute(sql.running, {"limited": limited, "app": p.app_id})
        found = _Found(await cur.fetchall())
        p.state.cursor = found.next_cursor
        running, job_free = await _counts_of(counted, p)
        admission = admit(found.candidates, running, job_free, p.limit)
        cur = await conn.execute(sql.apply, _apply_params(p, admission, found))
        # read after the block: the COMMIT goes right behind the apply, in the same round
        # trip (fetching inside it cost a third one, 1.4 ms of a 15 ms claim in the bench)
    return await cur.fetchall()


class _Found:
    """What the first statement found: the oldest parked runs of keys with parked runs, then
    due runs (the candidates, in that order), and those keys with their limits."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        heads = sorted((r for r in rows if r[0] == "h"), key=lambda r: r[4])
        due = [r for r in rows if r[0] == "c"]
        self.candidates = [Candidate(r[1], r[2], _keys(r[5:9])) for r in heads + due]
        self.parked_on = {r[1]: r[9] for r in heads}
        self.ranks = {r[1]: r[4] for r in heads + due}
        self.resumed = [r[1] for r in heads + due if r[3]]
        self.seen = [c.run_id for c in self.candidates]
        self.freed = {row[5]: row[6] or 1 for row in rows if row[0] == "f"}
        self.next_cursor = max(self.freed) if len(self.freed) >= SCAN_KEYS else ""
        # decide only on what the keys this claim locked allow: candidates whose keys are
        # all locked, and parked keys that are
        locked = {row[5] for row in rows if row[0] == "l"}
        self.candidates = [c for c in self.candidates
                           if all(key in locked for key, _ in c.keys)]
        self.freed = {key: limit for key, limit in self.freed.items() if key in locked}


def _keys(columns: Sequence[Any]) -> tuple[tuple[str, int], ...]:
    ckey, clim, ckey2, clim2 = columns
    if ckey is None:
        return ()
    return ((ckey, clim),) if ckey2 is None else ((ckey, clim), (ckey2, clim2))


async def _counts_of(cur: psycopg.AsyncCursor[Any],
                     p: ClaimParams) -> tuple[dict[str, int], dict[str, int]]:
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
    chosen = {run_id for run_id, _, _ in to_park(admission, p.limit)}
    parked = [(run_id, key, limit) for run_id, key, limit in admission.parked
              if found.parked_on.get(run_id, key) != key
              or (run_id in chosen and run_id not in found.parked_on)]
    blocked = {run_id for run_id, _, _ in admission.parked}
    released = [run_id for run_id in found.parked_on
                if run_id not in blocked and run_id not in admission.taken]
    release = unpark_counts(found.freed, admission.running)
    since = p.state.collect_since()
    backlog = backlogs(admission)
    leased_at = time.time_ns() // 1_000_000  # after the locks: when the leases begin
    return {
        "worker": p.worker_id, "token": p.token, "expires": leased_at + p.lease_ms,
        "now": p.now, "leased_at": leased_at, "app": p.app_id,
        "horizon": p.now + RANK_HORIZON_MS,
        "park": PARK, "taken": admission.taken, "resumed": found.resumed,
        # only heads can be parked among the taken: a due candidate's rank is below PARK
        "taken_heads": [run_id for run_id in admission.taken if run_id in found.parked_on],
        "parked": [run_id for run_id, _, _ in parked],
        "parked_keys": [key for _, key, _ in parked],
        "parked_ranks": [found.ranks[run_id] for run_id, _, _ in parked],
        "parked_reasons": [park_reason(key, limit) for _, key, limit in parked],
        "backlog_keys": list(backlog),
        "backlog_reasons": [park_reason(key, limit) for key, limit in backlog.items()],
        "seen": found.seen,
        "free_keys": list(release), "free_counts": list(release.values()),
        "released": released, "collect": since is not None, "collect_since": since or 0,
    }
