"""The PostgreSQL side of waits, cancel-on conditions and timeouts (see `stride._waits`).

Publishes match waits inside their own statement, through the `publish_waits` function of
migration 0005. A wait registration (`suspend`) and the resolution of a resumed run's open
wait (`resolve`) run here, each as one transaction on a pooled connection: they need the
executor's chooser (CEL `if_` filters) between reading candidates and writing the outcome.

No lost wake-up under READ COMMITTED: `suspend` takes an exclusive transaction-level
advisory lock per awaited event name (in name order) before it reads anything, and every
publish takes the same locks shared before it looks up waits. Whichever comes second sees
what the first committed.
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
        self.hold = (f"SELECT 1 FROM {s}.runs WHERE id = %s AND lease_token = %s "
                     "AND status = 'running' FOR UPDATE")
        self.registered = (f"SELECT step_id FROM {s}.waits WHERE run_id = %s "
                           "AND step_id = ANY(%s::text[])")
        self.upsert_steps = (
            f"INSERT INTO {s}.steps (run_id, step_id, position, kind, status, attempts, "
            "started_at, wake_at) SELECT u.run_id, u.step_id, u.position, u.kind, 'waiting', "
            "u.attempts, u.started_at, u.wake_at FROM "
            + rows("run_id text", "step_id text", "position int", "kind text", "attempts int",
                   "started_at bigint", "wake_at bigint") +
            " AS u ON CONFLICT (run_id, step_id) DO UPDATE SET status = 'waiting', "
            f"wake_at = excluded.wake_at WHERE {s}.steps.status <> 'completed'")
        self.insert_wait = (
            f"INSERT INTO {s}.waits (run_id, step_id, kind, event_name, match_path, "
            "match_value, if_expr, started_at, expires_at) VALUES (%s, %s, 'event', %s, %s, "
            "%s, %s, %s, %s) ON CONFLICT (run_id, step_id) DO UPDATE SET "
            "event_name = excluded.event_name, match_path = excluded.match_path, "
            "match_value = excluded.match_value, if_expr = excluded.if_expr, "
            "started_at = excluded.started_at, expires_at = excluded.expires_at")
        self.insert_path = (f"INSERT INTO {s}.wait_paths (event_name, match_path) "
                            "VALUES (%s, %s) ON CONFLICT DO NOTHING")
        self.received_since = (
            f'SELECT id, name, data, "user", ts FROM {s}.events WHERE name = %s '
            f'AND received_at >= %s AND received_at <= %s AND {s}.event_key(data, "user", %s) '
            "= %s ORDER BY received_at, id")
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
        self.give_back = (
            f"UPDATE {s}.runs SET status = %s, available_at = %s, rank = %s, "
            "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL "
            "WHERE id = %s AND lease_token = %s")
        self.notify = "SELECT pg_notify(%s, '')"
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
                  available_at: int, choose: WaitChooser, now: int) -> bool | None:
    """Register `waits` and give the run back, in one transaction (see `Store`); None if the
    lease is not ours any more."""
    names = sorted({wait.event_name for wait in waits})
    async with conn.transaction():
        await conn.execute(sql.lock_names, (sql.schema, names))
        if not await _holds(conn, sql, lease):
            return None
        cur = await conn.execute(sql.registered, (lease.run_id, [w.step.step_id for w in waits]))
        registered = {row[0] for row in await cur.fetchall()}
        await conn.execute(sql.upsert_steps, (_step_rows(lease.run_id, waits),))
        resumed = False
        for wait in waits:
            if wait.step.step_id in registered:
                candidates = await _recorded(conn, sql, lease.run_id, wait)
            else:
                candidates = await _register(conn, sql, lease.run_id, wait, now)
            chosen = choose(wait, candidates) if candidates else None
            if chosen is not None:
                await _complete(conn, sql, lease.run_id, wait, event_json(chosen), now)
                resumed = True
            elif candidates:
                await conn.execute(sql.drop_hits, (lease.run_id, wait.step.step_id,
                                                   [event.id for event in candidates]))
        status, at = ("queued", now) if resumed else ("waiting", available_at)
        await conn.execute(sql.give_back, (status, at, at, lease.run_id, lease.token))
        if resumed:
            await conn.execute(sql.notify, (sql.schema,))
    return resumed


async def resolve(conn: Conn, sql: WaitStatements, lease: Lease, wait: NewWait,
                  choose: WaitChooser, expire: bool, now: int) -> StepRecord | bool | None:
    """Complete a resumed run's open wait from the events recorded for it (or with null if
    it expired); False if the lease is not ours any more."""
    async with conn.transaction():
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


async def _register(conn: Conn, sql: WaitStatements, run_id: str, wait: NewWait,
                    now: int) -> list[EventRow]:
    """Store the wait; return the events received since its step started that match it
    (the moment between the handler's call and this transaction)."""
    await conn.execute(sql.insert_wait, (
        run_id, wait.step.step_id, wait.event_name, wait.match_path, wait.match_value,
        wait.if_expr, wait.step.started_at, wait.expires_at))
    await conn.execute(sql.insert_path, (wait.event_name, wait.match_path))
    cur = await conn.execute(sql.received_since, (
        wait.event_name, wait.step.started_at or now, min(now, wait.expires_at),
        wait.match_path, wait.match_value))
    return [EventRow(*row) for row in await cur.fetchall()]


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
