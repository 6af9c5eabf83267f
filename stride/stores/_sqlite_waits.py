"""The SQLite side of waits, cancel-on conditions and timeouts (see `stride._waits`).

Every function here runs inside the writer's transaction (`_sqlite_writer`): SQLite has one
writer, so a wait registration and a publish can never interleave, and no lock is needed
to avoid a lost wake-up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stride import _codec
from stride._waits import NEVER, cancelled_by, event_json, first_deadline, key_at
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

_FINISHED = frozenset({"completed", "failed", "cancelled", "skipped"})
_WAIT_COLUMNS = ("run_id, step_id, kind, event_name, match_path, match_value, if_expr, "
                 "started_at, expires_at")


@dataclass(frozen=True, slots=True)
class _Hit:
    """A wait (or cancel condition) that a published event matched on its key."""

    run_id: str
    step_id: str
    kind: str
    if_expr: str | None
    expires_at: int
    status: str | None
    event: NewEvent


def insert_run_extras(conn: sqlite3.Connection, runs: Sequence[NewRun], now: int) -> None:
    """Store the cancel-on conditions and the first timeout check of new runs."""
    waits = [(run.id, f"cancel:{index}", "cancel", c.event_name, c.match_path, c.match_value,
              c.if_expr, now, NEVER) for run in runs for index, c in enumerate(run.cancel_on)]
    if waits:
        conn.executemany(f"INSERT OR IGNORE INTO waits ({_WAIT_COLUMNS}) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", waits)
        conn.executemany("INSERT OR IGNORE INTO wait_paths (event_name, match_path) "
                         "VALUES (?, ?)", sorted({(w[3], w[4]) for w in waits}))
    deadlines = [(run.id, due, run.start_timeout_ms, run.finish_timeout_ms) for run in runs
                 if (due := first_deadline(run, now)) is not None]
    if deadlines:
        conn.executemany("INSERT OR IGNORE INTO deadlines (run_id, due_at, start_ms, "
                         "finish_ms) VALUES (?, ?, ?, ?)", deadlines)


# -- a publish: find the waits its events complete -----------------------------------------

def match_published(conn: sqlite3.Connection, events: Sequence[NewEvent],
                    now: int) -> tuple[CancelCheck, ...]:
    """Complete the waits, and cancel the runs, that these just-stored events match."""
    by_name: dict[str, list[NewEvent]] = {}
    for event in events:
        by_name.setdefault(event.name, []).append(event)
    if not by_name:
        return ()
    names = list(by_name)
    paths = conn.execute(
        "SELECT event_name, match_path FROM wait_paths WHERE event_name IN "
        f"({','.join('?' * len(names))})", names).fetchall()
    if not paths:
        return ()
    hits: dict[tuple[str, str], _Hit] = {}
    documents: dict[str, dict[str, Any]] = {}
    for name, path in paths:
        for hit in _hits_on(conn, by_name[name], name, path, documents):
            hits.setdefault((hit.run_id, hit.step_id), hit)
    return _apply_hits(conn, list(hits.values()), now) if hits else ()


def _hits_on(conn: sqlite3.Connection, events: list[NewEvent], name: str, path: str,
             documents: dict[str, dict[str, Any]]) -> list[_Hit]:
    """One query for every event of this name, on the key at this path."""
    keyed: dict[str, NewEvent] = {}
    for event in events:
        document = documents.get(event.id)
        if document is None and path:
            document = documents[event.id] = {"data": _codec.loads(event.data_json),
                                              "user": _codec.loads(event.user_json)}
        key = key_at(document or {}, path)
        if key is not None:
            keyed.setdefault(key, event)  # the first event with a key completes the wait
    found: list[_Hit] = []
    keys = list(keyed)
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        rows = conn.execute(
            "SELECT w.run_id, w.step_id, w.kind, w.if_expr, w.expires_at, r.status, "
            "w.match_value FROM waits w LEFT JOIN runs r ON r.id = w.run_id "
            "WHERE w.event_name = ? AND w.match_path = ? AND w.match_value IN "
            f"({','.join('?' * len(chunk))})", [name, path, *chunk]).fetchall()
        found += [_Hit(run_id, step_id, kind, if_expr, expires_at, status, keyed[key])
                  for run_id, step_id, kind, if_expr, expires_at, status, key in rows]
    return found


def _apply_hits(conn: sqlite3.Connection, hits: list[_Hit], now: int) -> tuple[CancelCheck, ...]:
    cancels: dict[str, NewEvent] = {}
    checks: list[CancelCheck] = []
    stale: set[str] = set()
    for hit in hits:
        if hit.status is None or hit.status in _FINISHED:
            stale.add(hit.run_id)
        elif hit.kind == "cancel" and hit.if_expr is None:
            cancels.setdefault(hit.run_id, hit.event)
        elif hit.kind == "cancel":
            checks.append(CancelCheck(hit.run_id, hit.if_expr or "", hit.event.id,
                                      hit.event.name))
    for run_id, event in cancels.items():
        conn.execute(
            "UPDATE runs SET status = 'cancelled', error = ?, ended_at = ?, lease_owner = NULL, "
            "lease_token = NULL, lease_expires_at = NULL WHERE id = ? AND status NOT IN "
            "('completed', 'failed', 'cancelled', 'skipped')",
            (cancelled_by(event.id, event.name, now), now, run_id))
    if stale or cancels:
        _forget_runs(conn, stale | set(cancels))
    events = [hit for hit in hits if hit.kind == "event" and hit.run_id not in cancels
              and hit.run_id not in stale and hit.expires_at >= now]
    if events:
        _complete_or_record(conn, events, now)
    return tuple(checks)


def _complete_or_record(conn: sqlite3.Connection, hits: list[_Hit], now: int) -> None:
    """A waiting run's wait without `if_` completes now; otherwise the event is recorded
    for the executor (it evaluates `if_`, or picks it up when the running run suspends)."""
    done = [hit for hit in hits if hit.status == "waiting" and hit.if_expr is None]
    recorded = [hit for hit in hits if not (hit.status == "waiting" and hit.if_expr is None)]
    conn.executemany(
        "UPDATE steps SET status = 'completed', output = ?, ended_at = ? "
        "WHERE run_id = ? AND step_id = ? AND status = 'waiting'",
        [(event_json(hit.event), now, hit.run_id, hit.step_id) for hit in done])
    _forget_waits(conn, [(hit.run_id, hit.step_id) for hit in done])
    conn.executemany("INSERT OR IGNORE INTO wait_hits (run_id, step_id, event_id) "
                     "VALUES (?, ?, ?)", [(h.run_id, h.step_id, h.event.id) for h in recorded])
    woken = sorted({hit.run_id for hit in hits if hit.status == "waiting"})
    conn.executemany("UPDATE runs SET status = 'queued', available_at = ?, rank = ? "
                     "WHERE id = ? AND status = 'waiting'", [(now, now, r) for r in woken])


def _forget_waits(conn: sqlite3.Connection, keys: Sequence[tuple[str, str]]) -> None:
    conn.executemany("DELETE FROM waits WHERE run_id = ? AND step_id = ?", keys)
    conn.executemany("DELETE FROM wait_hits WHERE run_id = ? AND step_id = ?", keys)


def _forget_runs(conn: sqlite3.Connection, run_ids: set[str]) -> None:
    ids = [(run_id,) for run_id in sorted(run_ids)]
    conn.executemany("DELETE FROM waits WHERE run_id = ?", ids)
    conn.executemany("DELETE FROM wait_hits WHERE run_id = ?", ids)


def prune_run_waits(conn: sqlite3.Connection, run_ids: Sequence[tuple[str]]) -> None:
    """Drop the waits, recorded hits and timeout checks of runs being pruned."""
    for table in ("waits", "wait_hits", "deadlines"):
        conn.executemany(f"DELETE FROM {table} WHERE run_id = ?", run_ids)


# -- a run suspends on waits, or resumes with one still open -------------------------------

def suspend_for_events(conn: sqlite3.Connection, lease: Lease, waits: Sequence[NewWait],
                       available_at: int, now: int) -> bool | None:
    """Register `waits` and give the run back; None if the lease is not ours any more.

    Events that match a wait and came before this transaction (since its step started, or
    recorded while the run was running) count as if they came now: a wait without `if_`
    completes with the first, one with `if_` keeps them for the executor and the run is due.
    """
    if not _holds(conn, lease):
        return None
    resumed = False
    for wait in waits:
        registered = conn.execute("SELECT 1 FROM waits WHERE run_id = ? AND step_id = ?",
                                  (lease.run_id, wait.step.step_id)).fetchone() is not None
        _upsert_step(conn, lease.run_id, wait.step)
        if not registered:
            _insert_wait(conn, lease.run_id, wait)
            conn.executemany("INSERT OR IGNORE INTO wait_hits (run_id, step_id, event_id) "
                             "VALUES (?, ?, ?)", [(lease.run_id, wait.step.step_id, event.id)
                                                  for event in _received_since(conn, wait, now)])
        candidates = _recorded_hits(conn, lease.run_id, wait)
        if candidates and wait.if_expr is None:
            _complete(conn, lease.run_id, wait, event_json(candidates[0]), now)
        resumed = resumed or bool(candidates)
    status, at = ("queued", now) if resumed else ("waiting", available_at)
    conn.execute(
        "UPDATE runs SET status = ?, available_at = ?, rank = ?, lease_owner = NULL, "
        "lease_token = NULL, lease_expires_at = NULL WHERE id = ? AND lease_token = ?",
        (status, at, at, lease.run_id, lease.token))
    return resumed


def resolve_wait(conn: sqlite3.Connection, lease: Lease, wait: NewWait, choose: WaitChooser,
                 expire: bool, now: int) -> StepRecord | bool | None:
    """Complete a resumed run's open wait if an event was recorded for it (or it expired);
    False if the lease is not ours any more."""
    if not _holds(conn, lease):
        return False
    candidates = _recorded_hits(conn, lease.run_id, wait)
    chosen = choose(wait, candidates) if candidates else None
    if chosen is None and not expire:
        _drop_hits(conn, lease.run_id, wait, candidates)
        return None
    output = event_json(chosen) if chosen is not None else "null"
    _upsert_step(conn, lease.run_id, wait.step)
    return _complete(conn, lease.run_id, wait, output, now)


def _holds(conn: sqlite3.Connection, lease: Lease) -> bool:
    return conn.execute(
        "SELECT 1 FROM runs WHERE id = ? AND lease_token = ? AND status = 'running'",
        (lease.run_id, lease.token)).fetchone() is not None


def _upsert_step(conn: sqlite3.Connection, run_id: str, step: StepRecord) -> None:
    conn.execute(
        "INSERT INTO steps (run_id, step_id, position, kind, status, attempts, started_at, "
        "wake_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step_id) DO UPDATE SET "
        "status = excluded.status, wake_at = excluded.wake_at WHERE steps.status <> 'completed'",
        (run_id, step.step_id, step.position, step.kind, "waiting", step.attempts,
         step.started_at, step.wake_at))


def _insert_wait(conn: sqlite3.Connection, run_id: str, wait: NewWait) -> None:
    conn.execute(f"INSERT OR REPLACE INTO waits ({_WAIT_COLUMNS}) VALUES "
                 "(?, ?, 'event', ?, ?, ?, ?, ?, ?)",
                 (run_id, wait.step.step_id, wait.event_name, wait.match_path,
                  wait.match_value, wait.if_expr, wait.step.started_at, wait.expires_at))
    conn.execute("INSERT OR IGNORE INTO wait_paths (event_name, match_path) VALUES (?, ?)",
                 (wait.event_name, wait.match_path))


def _received_since(conn: sqlite3.Connection, wait: NewWait, now: int) -> list[EventRow]:
    """Events of the awaited name received since the wait's step started (the no-lost-wake-up
    check of a first registration: the window is the moment between the handler's call and
    this transaction), that have the awaited key."""
    rows = conn.execute(
        "SELECT id, name, data, user, ts FROM events WHERE name = ? AND received_at >= ? "
        "AND received_at <= ? ORDER BY received_at, id",
        (wait.event_name, wait.step.started_at or now, wait.expires_at)).fetchall()
    found = []
    for row in rows:
        event = EventRow(*row)
        document = {"data": _codec.loads(event.data_json),
                    "user": _codec.loads(event.user_json)} if wait.match_path else {}
        if key_at(document, wait.match_path) == wait.match_value:
            found.append(event)
    return found


def _recorded_hits(conn: sqlite3.Connection, run_id: str, wait: NewWait) -> list[EventRow]:
    rows = conn.execute(
        "SELECT e.id, e.name, e.data, e.user, e.ts FROM wait_hits h JOIN events e "
        "ON e.id = h.event_id WHERE h.run_id = ? AND h.step_id = ? AND e.received_at <= ? "
        "ORDER BY e.received_at, e.id", (run_id, wait.step.step_id, wait.expires_at)).fetchall()
    return [EventRow(*row) for row in rows]


def _drop_hits(conn: sqlite3.Connection, run_id: str, wait: NewWait,
               seen: Sequence[EventRow]) -> None:
    conn.executemany("DELETE FROM wait_hits WHERE run_id = ? AND step_id = ? AND event_id = ?",
                     [(run_id, wait.step.step_id, event.id) for event in seen])


def _complete(conn: sqlite3.Connection, run_id: str, wait: NewWait, output_json: str,
              now: int) -> StepRecord:
    conn.execute("UPDATE steps SET status = 'completed', output = ?, ended_at = ? "
                 "WHERE run_id = ? AND step_id = ?",
                 (output_json, now, run_id, wait.step.step_id))
    _forget_waits(conn, [(run_id, wait.step.step_id)])
    step = wait.step
    return StepRecord(step.step_id, step.position, step.kind, "completed", output_json,
                      attempts=step.attempts, started_at=step.started_at, ended_at=now,
                      wake_at=step.wake_at)


# -- timeouts ------------------------------------------------------------------------------

def due_deadlines(conn: sqlite3.Connection, now: int, limit: int) -> list[DeadlineRow]:
    rows = conn.execute(
        "SELECT d.run_id, d.due_at, d.start_ms, d.finish_ms, r.status, r.created_at, "
        "r.started_at FROM deadlines d LEFT JOIN runs r ON r.id = d.run_id "
        "WHERE d.due_at <= ? ORDER BY d.due_at LIMIT ?", (now, limit)).fetchall()
    return [DeadlineRow(*row) for row in rows]


def move_deadlines(conn: sqlite3.Connection, moves: Sequence[tuple[str, int | None]]) -> None:
    conn.executemany("DELETE FROM deadlines WHERE run_id = ?",
                     [(run_id,) for run_id, at in moves if at is None])
    conn.executemany("UPDATE deadlines SET due_at = ? WHERE run_id = ?",
                     [(at, run_id) for run_id, at in moves if at is not None])


def publish_waits(conn: sqlite3.Connection, fresh: Sequence[tuple[NewEvent, Sequence[NewRun]]],
                  now: int) -> tuple[CancelCheck, ...]:
    """The part of a publish about waits: store the new runs' cancel-on conditions and
    timeouts, then complete the waits (and cancel the runs) the new events match."""
    insert_run_extras(conn, [run for _, runs in fresh for run in runs], now)
    return match_published(conn, [event for event, _ in fresh], now)


def cancelled_invocations(conn: sqlite3.Connection, since_ms: int,
                          limit: int) -> list[CancelledInvocation]:
    """See `Store.cancelled_invocations`; the predicate is the partial index's (0007)."""
    rows = conn.execute(
        "SELECT r.id, r.job_id, r.event_id, r.error, r.ended_at FROM runs r "
        "INDEXED BY runs_cancelled_invocations WHERE r.status = 'cancelled' "
        "AND r.event_id LIKE 'invoke:%' AND r.ended_at >= ? AND NOT EXISTS "
        "(SELECT 1 FROM events e WHERE e.id = r.event_id || ':finished') "
        "ORDER BY r.ended_at LIMIT ?", (since_ms, limit)).fetchall()
    return [CancelledInvocation(*row) for row in rows]
