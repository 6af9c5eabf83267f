"""The PostgreSQL side of waits, cancel-on conditions and timeouts (see `stride._waits`).

Publishes match waits inside their own statement, through the `publish_waits` function of
migration 0005. A wait registration (`suspend`) is two short transactions, the functions
`suspend_waits` and `settle_waits` of migration 0007. The resolution of a resumed run's
open wait (`resolve`) is one transaction here: it needs the executor's chooser (CEL `if_`
filters) between reading the recorded events and writing the outcome.

No lost wake-up under READ COMMITTED: every publish takes a transaction-level advisory lock
per event name, shared, before it looks waits up; `settle_waits` takes it exclusively
after the registration committed, before it looks for events the registration missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg

from stride._waits import NEVER, event_json, first_deadline
from stride.stores._postgres_sql import rows
from stride.stores.base import (
    CancelCheck,
    CancelledInvocation,
    DeadlineRow,
    EventRow,
    Lease,
    NewEvent,
    NewRun,
    NewWait,
    StepRecord,
    WaitChooser,
)

Conn = psycopg.AsyncConnection[Any]
PublishItem = Sequence[tuple[NewEvent, Sequence[NewRun]]]


def extras_json(ordered: Sequence[tuple[NewEvent, Sequence[NewRun]]], now: int) -> str:
    """The new runs' cancel-on conditions and first timeout checks, as `publish_waits`
    reads them: [[cancel rows], [deadline rows]], each row ending with its event id."""
    cancels = [[run.id, f"cancel:{index}", c.event_name, c.match_path, c.match_value,
                c.if_expr, run.event_id]
               for _, runs in ordered for run in runs for index, c in enumerate(run.cancel_on)]
    deadlines = [[run.id, due, run.start_timeout_ms, run.finish_timeout_ms, run.event_id]
                 for _, runs in ordered for run in runs
                 if (due := first_deadline(run, now)) is not None]
    return orjson.dumps([cancels, deadlines]).decode()


def parse_checks(text: str | None) -> list[CancelCheck]:
    """The `if_` cancel conditions `publish_waits` returned for the caller to evaluate."""
    return [CancelCheck(*row) for row in orjson.loads(text)] if text else []


class WaitStatements:
    """The SQL of waits and deadlines for one schema."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.schema = schema
        self.lock_names = (
            "SELECT pg_advisory_xact_lock(hashtext(%s || '/wait/' || u.name)) "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS u(name, n) ORDER BY u.n")
        self.suspend_call = f"SELECT {s}.suspend_waits(%s, %s, %s::jsonb, %s)"
        self.settle_call = f"SELECT {s}.settle_waits(%s, %s::text[], %s::text[], %s)"
        self.hold = (f"SELECT 1 FROM {s}.runs WHERE id = %s AND lease_token = %s "
                     "AND status = 'running' FOR UPDATE")
        self.upsert_steps = (
            f"INSERT INTO {s}.steps (run_id, step_id, position, kind, status, attempts, "
            "started_at, wake_at) SELECT u.run_id, u.step_id, u.position, u.kind, 'waiting', "
            "u.attempts, u.started_at, u.wake_at FROM "
            + rows("run_id text", "step_id text", "position int", "kind text", "attempts int",
                   "started_at bigint", "wake_at bigint") +
            " AS u ON CONFLICT (run_id, step_id) DO UPDATE SET status = 'waiting', "
            f"wake_at = excluded.wake_at WHERE {s}.steps.status <> 'completed'")
        self.recorded_hits = (
            f'SELECT e.id, e.name, e.data, e."user", e.ts FROM {s}.wait_hits h '
            f"JOIN {s}.events e ON e.id = h.event_id WHERE h.run_id = %s AND h.step_id = %s "
            "AND e.received_at <= %s ORDER BY e.received_at, e.id")
        self.drop_hits = (f"DELETE FROM {s}.wait_hits WHERE run_id = %s AND step_id = %s "
                          "AND event_id = ANY(%s::text[])")
        self.complete = (f"UPDATE {s}.steps SET status = 'completed', output = %s, "
                         "ended_at = %s WHERE run_id = %s AND step_id = %s")
        self.forget_wait = f"DELETE FROM {s}.waits WHERE run_id = %s AND step_id = %s"
        self.forget_hits = f"DELETE FROM {s}.wait_hits WHERE run_id = %s AND step_id = %s"
        self.insert_cancels = (
            f"INSERT INTO {s}.waits (run_id, step_id, kind, event_name, match_path, "
            "match_value, if_expr, started_at, expires_at) SELECT c->>0, c->>1, 'cancel', "
            f"c->>2, c->>3, c->>4, c->>5, %s, {NEVER} FROM "
            "jsonb_array_elements(%s::jsonb -> 0) AS c ON CONFLICT DO NOTHING")
        self.insert_cancel_paths = (
            f"INSERT INTO {s}.wait_paths (event_name, match_path) SELECT DISTINCT c->>2, "
            "c->>3 FROM jsonb_array_elements(%s::jsonb -> 0) AS c ON CONFLICT DO NOTHING")
        self.insert_deadlines = (
            f"INSERT INTO {s}.deadlines (run_id, due_at, start_ms, finish_ms) SELECT d->>0, "
            "(d->>1)::bigint, (d->>2)::bigint, (d->>3)::bigint FROM "
            "jsonb_array_elements(%s::jsonb -> 1) AS d ON CONFLICT DO NOTHING")
        self.due_deadlines = (
            "SELECT d.run_id, d.due_at, d.start_ms, d.finish_ms, r.status, r.created_at, "
            f"r.started_at FROM {s}.deadlines d LEFT JOIN {s}.runs r ON r.id = d.run_id "
            "WHERE d.due_at <= %s ORDER BY d.due_at LIMIT %s")
        self.cancelled_invocations = (
            f"SELECT r.id, r.job_id, r.event_id, r.error, r.ended_at FROM {s}.runs r "
            "WHERE r.status = 'cancelled' AND r.event_id LIKE 'invoke:%%' "
            f"AND r.ended_at >= %s AND NOT EXISTS (SELECT 1 FROM {s}.events e "
            "WHERE e.id = r.event_id || ':finished') ORDER BY r.ended_at LIMIT %s")
        self.move_deadlines = (
            f"WITH moves AS (SELECT * FROM unnest(%s::text[], %s::bigint[]) AS m(id, at)), "
            f"gone AS (DELETE FROM {s}.deadlines d USING moves m WHERE d.run_id = m.id "
            "AND m.at IS NULL) "
            f"UPDATE {s}.deadlines d SET due_at = m.at FROM moves m WHERE d.run_id = m.id "
            "AND m.at IS NOT NULL")

    def extras(self, runs: Sequence[NewRun], now: int) -> list[tuple[str, Sequence[Any]]]:
        """Statements that store the cancel-on conditions and timeouts of runs created
        outside a publish (replays)."""
        if not any(run.cancel_on or first_deadline(run, now) is not None for run in runs):
            return []
        extras = extras_json([(NewEvent("", "", "", None, 0), runs)], now)
        return [(self.insert_cancels, (now, extras)), (self.insert_cancel_paths, (extras,)),
                (self.insert_deadlines, (extras,))]


async def suspend(conn: Conn, sql: WaitStatements, lease: Lease, waits: Sequence[NewWait],
                  available_at: int, now: int) -> bool | None:
    """Register `waits` and give the run back (`suspend_waits`, no lock), then look for the
    events it may have missed under the lock (`settle_waits`): two short transactions, see
    migration 0007. None if the lease is not ours any more; True if the run is due at once."""
    pending = orjson.dumps([[w.step.step_id, w.step.position, w.step.kind, w.step.attempts,
                             w.step.started_at or now, w.expires_at, w.event_name,
                             w.match_path, w.match_value, w.if_expr] for w in waits]).decode()
    cur = await conn.execute(sql.suspend_call, (lease.run_id, lease.token, pending,
                                                available_at))
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return None
    fresh = orjson.loads(row[0])
    cur = await conn.execute(sql.settle_call, (lease.run_id, [w.step.step_id for w in waits],
                                               fresh, now))
    row = await cur.fetchone()
    return bool(row and row[0])


async def resolve(conn: Conn, sql: WaitStatements, lease: Lease, wait: NewWait,
                  choose: WaitChooser, expire: bool, now: int) -> StepRecord | bool | None:
    """Complete a resumed run's open wait from the events recorded for it (or with null if
    it expired); False if the lease is not ours any more."""
    async with conn.transaction():
        if expire:  # an event of just before the expiry may still be committing: wait for it
            await conn.execute(sql.lock_names, (sql.schema, [wait.event_name]))
        if not await _holds(conn, sql, lease):
            return False
        candidates = await _recorded(conn, sql, lease.run_id, wait)
        chosen = choose(wait, candidates) if candidates else None
        if chosen is None and not expire:
            if candidates:
                await conn.execute(sql.drop_hits, (lease.run_id, wait.step.step_id,
                                                   [event.id for event in candidates]))
            return None
        await conn.execute(sql.upsert_steps, (_step_rows(lease.run_id, [wait]),))
        output = event_json(chosen) if chosen is not None else "null"
        return await _complete(conn, sql, lease.run_id, wait, output, now)


async def _holds(conn: Conn, sql: WaitStatements, lease: Lease) -> bool:
    cur = await conn.execute(sql.hold, (lease.run_id, lease.token))
    return await cur.fetchone() is not None


def _step_rows(run_id: str, waits: Sequence[NewWait]) -> str:
    return orjson.dumps([[run_id, w.step.step_id, w.step.position, w.step.kind,
                          w.step.attempts, w.step.started_at, w.step.wake_at]
                         for w in waits]).decode()


async def _recorded(conn: Conn, sql: WaitStatements, run_id: str,
                    wait: NewWait) -> list[EventRow]:
    cur = await conn.execute(sql.recorded_hits, (run_id, wait.step.step_id, wait.expires_at))
    return [EventRow(*row) for row in await cur.fetchall()]


async def _complete(conn: Conn, sql: WaitStatements, run_id: str, wait: NewWait,
                    output_json: str, now: int) -> StepRecord:
    step = wait.step
    await conn.execute(sql.complete, (output_json, now, run_id, step.step_id))
    await conn.execute(sql.forget_wait, (run_id, step.step_id))
    await conn.execute(sql.forget_hits, (run_id, step.step_id))
    return StepRecord(step.step_id, step.position, step.kind, "completed", output_json,
                      attempts=step.attempts, started_at=step.started_at, ended_at=now,
                      wake_at=step.wake_at)


async def due_deadlines(conn: Conn, sql: WaitStatements, now: int,
                        limit: int) -> list[DeadlineRow]:
    cur = await conn.execute(sql.due_deadlines, (now, limit))
    return [DeadlineRow(*row) for row in await cur.fetchall()]


async def move_deadlines(conn: Conn, sql: WaitStatements,
                         moves: Sequence[tuple[str, int | None]]) -> None:
    await conn.execute(sql.move_deadlines, ([run_id for run_id, _ in moves],
                                            [at for _, at in moves]))


async def cancelled_invocations(conn: Conn, sql: WaitStatements, since_ms: int,
                                limit: int) -> list[CancelledInvocation]:
    cur = await conn.execute(sql.cancelled_invocations, (since_ms, limit))
    return [CancelledInvocation(*row) for row in await cur.fetchall()]
