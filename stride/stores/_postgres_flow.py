"""Flow control in the PostgreSQL store: publishes decided with their limiters' state, and
the claim of runs that hold concurrency keys. Same decisions as SQLite (stride._flow_decide);
what differs is how concurrent processes are kept from deciding on stale state:

- publish: the limiter states are upserted and row-locked in key order (`INSERT ... ON
  CONFLICT DO UPDATE ... RETURNING`), then the runs they point at (FOR UPDATE, id order),
  so two dispatches touching one key decide one after the other, and never deadlock;
- claim: one call of the schema's `claim_keyed` function (migration 0011), which holds the
  keyed claims' advisory lock while it counts the leased runs per key, decides and writes:
  one round trip, as a plain claim. Finishing runs take no lock and write nothing about
  keys: a claim counts leased runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from stride._flow_decide import (
    ClaimState,
    FlowState,
    PendingRun,
    PublishPlan,
    StateKey,
    pending_run_ids,
    plan_publish,
    state_keys,
)
from stride.errors import ConfigurationError
from stride.stores._postgres_sql import rows
from stride.stores.base import NewRun

Execute = Callable[[str, Any], Awaitable[list[tuple[Any, ...]]]]
"""Runs one statement on the publishing connection (the store's, or the app's) -> rows."""


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
            f"WITH created AS (INSERT INTO {s}.runs (id, app_id, job_id, event_id, status, "
            "available_at, rank, created_at, ended_at, reason, ckey, ckey2) "
            "SELECT r.id, r.app_id, r.job_id, r.event_id, r.status, r.at, r.rank, %s, "
            "r.ended_at, r.reason, r.ckey, r.ckey2 FROM "
            + rows("id text", "app_id text", "job_id text", "event_id text", "status text",
                   "at bigint", "rank bigint", "ended_at bigint", "reason text", "ckey text",
                   "ckey2 text") + " AS r RETURNING 1) "
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
        self.claim = (
            f"SELECT * FROM {s}.claim_keyed(%s, %s::text[], %s::text[], %s::int[], %s, %s, "
            "%s, %s, %s, %s)")
        # the run_keys rows of an app's runs that finished since a time (ms), by index
        self.collect = f"SELECT {s}.collect_run_keys(%s, %s)"


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
             r.ended_at, r.reason, r.ckey, r.ckey2) for r in plan.inserts]), _json([
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
                      p: ClaimParams) -> list[tuple[Any, ...]]:
    """The keyed claim (autocommit: the call is its own transaction); returns the leased
    runs as the plain claim does."""
    limited = sorted(job for job in set(p.job_ids) if job in p.limits)
    cur = await conn.execute(sql.claim, (
        p.app_id, p.job_ids, limited, [p.limits[job] for job in limited], p.now, p.limit,
        p.worker_id, p.token, p.lease_ms, p.state.cursor))
    *leased, last = await cur.fetchall()
    p.state.cursor = last[-1]  # the last row: where the round robin over parked keys goes on
    return [row[:-1] for row in leased]
