"""The embedded SQLite store: zero set-up, one or several processes on one machine.

WAL mode lets readers run beside the one writer. All writes of a process go through one
writer on the event loop that commits whatever is queued in one transaction (group commit,
see `_sqlite_writer`); reads run on a small thread pool with their own connections. Other
processes' commits are noticed through `PRAGMA data_version`, a counter SQLite bumps on
every foreign commit, polled cheaply instead of querying for work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from stride._audit import AuditRecord
from stride._failures import LOST_MESSAGE, WORKER_LOST
from stride._flow_decide import ClaimState
from stride._ids import new_id
from stride.errors import ConfigurationError, LeaseLost, StoreError
from stride.flow import MAX_PRIORITY_SECONDS
from stride.stores import _sqlite_waits as _waits
from stride.stores._sqlite_writer import OpFailed, SqliteWriter, WriterStats, translate
from stride.stores.base import (
    CancelledInvocation,
    ClaimedRun,
    DeadlineRow,
    EventListing,
    EventRow,
    JobActivity,
    Lease,
    NewEvent,
    NewRun,
    NewWait,
    PublishResult,
    QueueStats,
    RunCount,
    RunFilter,
    RunRow,
    RunStatus,
    StepRecord,
    StepTiming,
    WaitChooser,
    WorkerRow,
    event_cursor,
    id_floor,
    parse_event_cursor,
)

T = TypeVar("T")
DEFAULT_BUSY_TIMEOUT_MS = 5000
CHANGE_POLL_SECONDS = 0.005
_CLAIMABLE = "status IN ('queued', 'sleeping', 'waiting')"
RANK_HORIZON_MS = MAX_PRIORITY_SECONDS * 1000
"""A due run's rank is at most this far past now (a priority's largest delay)."""
_RUN_COLUMNS = (
    "id, app_id, job_id, event_id, status, attempt, created_at, started_at, ended_at, "
    "available_at, output, error, errors, lease_owner, reason"
)
_STEP_COLUMNS = (
    "step_id, position, kind, status, output, error, attempts, errors, started_at, ended_at, "
    "wake_at"
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def sqlite_path(url: str) -> str:
    """The file path of a `sqlite:///relative` or `sqlite:////absolute` URL."""
    if not url.startswith("sqlite:///"):
        raise ConfigurationError(
            f"SQLite URL {url!r} must look like sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = url[len("sqlite:///"):].split("?", 1)[0]
    if not path:
        raise ConfigurationError(f"SQLite URL {url!r} has no file path")
    return path


class SqliteStore:
    """Store backend on one SQLite file. Construct, then `await open()`."""

    def __init__(self, url: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
                 synchronous: str = "NORMAL") -> None:
        self.url = url
        self.path = sqlite_path(url)
        if synchronous.upper() not in {"NORMAL", "FULL"}:
            raise ConfigurationError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self._busy_timeout_ms = busy_timeout_ms
        self._synchronous = synchronous.upper()
        self._writer = SqliteWriter(self._connect, self.path, busy_timeout_ms=busy_timeout_ms)
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stride-sqlite-read")
        self._local = threading.local()
        self._changed = asyncio.Event()
        self._version_conn: sqlite3.Connection | None = None
        self._data_version = -1
        self._opened = False
        self._flow = ClaimState()  # what this process's keyed claims remember

    @property
    def write_stats(self) -> WriterStats:
        """Transactions, ops and rows this process committed (for benchmarks and metrics)."""
        return self._writer.stats

    # -- connections -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self._busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cache_size = -16000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return fn(self._reader())
            except sqlite3.Error as exc:
                raise translate(exc, self.path) from exc

        return await asyncio.get_running_loop().run_in_executor(self._readers, call)

    async def open(self) -> None:
        if self._opened:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the directory {directory} for {self.path}: {exc}") from exc
        self._writer.start()
        await self._writer.run(_migrate)
        self._version_conn = await self._read(lambda _c: self._connect())
        self._data_version = self._poll_version()
        self._opened = True

    async def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        await self._writer.stop()
        self._readers.shutdown(wait=True)
        if self._version_conn is not None:
            self._version_conn.close()

    # -- change notification -----------------------------------------------

    def _poll_version(self) -> int:
        assert self._version_conn is not None
        try:
            row = self._version_conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return self._data_version
        return int(row[0])

    def notify_local(self) -> None:
        self._changed.set()

    async def wait_for_change(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._changed.is_set():
                self._changed.clear()
                return
            version = self._poll_version()
            if version != self._data_version:
                self._data_version = version
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # asyncio.timeout, not wait_for: no task per poll (an idle worker polls 200 times/s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(CHANGE_POLL_SECONDS, remaining)):
                    await self._changed.wait()

    # -- writes --------------------------------------------------------------

    async def publish(self, batch: Sequence[tuple[NewEvent, Sequence[NewRun]]], *,
                      dedupe_ms: int, conn: Any = None) -> PublishResult:
        if conn is not None:
            raise ConfigurationError(
                "dispatch(conn=...) joins the caller's transaction, which only the PostgreSQL "
                "store supports; drop conn= on SQLite")
        result: PublishResult = await self._writer.run(
            lambda conn: _publish(conn, batch, dedupe_ms))
        self._changed.set()
        return result

    async def claim(self, *, worker_id: str, app_id: str, job_ids: Sequence[str], limit: int,
                    lease_ms: int, concurrency: Mapping[str, int],
                    keyed: Collection[str] = ()) -> list[ClaimedRun]:
        if limit <= 0 or not job_ids:
            return []
        if any(job in keyed for job in job_ids):  # runs holding concurrency keys: see there
            from stride.stores import _sqlite_flow

            state = self._flow
            keyed_claim: list[ClaimedRun] = await self._writer.run(
                lambda conn: _sqlite_flow.claim_keyed(conn, worker_id, app_id, list(job_ids),
                                                      limit, lease_ms, dict(concurrency), state))
            return keyed_claim
        claimed: list[ClaimedRun] = await self._writer.run(
            lambda conn: _claim(conn, worker_id, app_id, list(job_ids), limit, lease_ms,
                                dict(concurrency)))
        return claimed

    async def checkpoint(self, lease: Lease, step: StepRecord) -> None:
        await self._writer.run(lambda conn: _checkpoint(conn, lease, step))

    async def reschedule(self, lease: Lease, *, available_at: int, status: RunStatus,
                         attempt: int | None = None, errors_json: str | None = None,
                         step: StepRecord | None = None) -> None:
        def op(conn: sqlite3.Connection) -> object:
            if step is not None:  # first: its lease check needs the lease still in place
                failed = _checkpoint(conn, lease, step)
                if failed is not None:  # nothing written; the update below would not match
                    return failed
            cur = conn.execute(
                "UPDATE runs SET status = ?, available_at = ?, rank = ?, lease_owner = NULL, "
                "lease_token = NULL, lease_expires_at = NULL, attempt = coalesce(?, attempt), "
                "errors = coalesce(?, errors) WHERE id = ? AND lease_token = ?",
                (status, available_at, available_at, attempt, errors_json, lease.run_id,
                 lease.token))
            return None if cur.rowcount else OpFailed(_lease_lost(lease))

        await self._writer.run(op)
        self._changed.set()

    async def finish(self, lease: Lease, *, status: RunStatus, output_json: str | None,
                     error_json: str | None, errors_json: str | None = None,
                     publish: Sequence[tuple[NewEvent, Sequence[NewRun]]] | None = None,
                     ) -> None:
        def op(conn: sqlite3.Connection) -> object:
            cur = conn.execute(
                "UPDATE runs SET status = ?, output = ?, error = ?, errors = coalesce(?, errors), "
                "ended_at = ?, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL "
                "WHERE id = ? AND lease_token = ? AND status = 'running'",
                (status, output_json, error_json, errors_json, _now_ms(), lease.run_id,
                 lease.token))
            if cur.rowcount and publish:  # only with an accepted finish, in its transaction
                _publish(conn, publish, 0)
            return None if cur.rowcount else OpFailed(_lease_lost(lease))

        await self._writer.run(op)
        if publish:
            self._changed.set()

    async def release(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return

        def op(conn: sqlite3.Connection) -> None:
            now = _now_ms()
            conn.executemany(
                "UPDATE runs SET status = 'queued', available_at = ?, rank = ?, "
                "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL "
                "WHERE id = ? AND lease_token = ?",
                [(now, now, lease.run_id, lease.token) for lease in leases])

        await self._writer.run(op)

    async def heartbeat(self, *, worker_id: str, app_id: str, lease_ms: int,
                        info_json: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            now = _now_ms()
            cur = conn.execute(
                "UPDATE runs SET lease_expires_at = ? WHERE lease_owner = ? AND status = 'running'",
                (now + lease_ms, worker_id))
            conn.execute(
                "INSERT INTO workers (id, app_id, info, started_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "heartbeat_at = excluded.heartbeat_at, info = excluded.info",
                (worker_id, app_id, info_json, now, now))
            return cur.rowcount

        held: int = await self._writer.run(op)
        return held

    async def reclaim_expired(self) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            now = _now_ms()
            # the loss is recorded with the run's progress (see `_failures.losses_in_a_row`)
            rows = conn.execute(
                "UPDATE runs SET status = 'queued', lease_owner = NULL, lease_token = NULL, "
                "lease_expires_at = NULL, available_at = ?, rank = ?, "
                "errors = json_insert(coalesce(errors, '[]'), '$[#]', json_object("
                "'name', ?, 'message', ?, 'steps_done', (SELECT count(*) FROM steps s "
                "WHERE s.run_id = runs.id AND s.status = 'completed'), 'ended_at', ?)) "
                "WHERE status = 'running' AND lease_expires_at < ? RETURNING id",
                (now, now, WORKER_LOST, LOST_MESSAGE, now, now)).fetchall()
            return [row[0] for row in rows]

        ids: list[str] = await self._writer.run(op)
        if ids:
            self._changed.set()
        return ids

    # -- reads ---------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRow | None:
        def query(conn: sqlite3.Connection) -> RunRow | None:
            row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?",
                               (run_id,)).fetchone()
            if row is None:
                return None
            steps = _load_steps(conn, [run_id]).get(run_id, ())
            return _run_row(row, steps)

        return await self._read(query)

    async def list_runs(self, query: RunFilter) -> list[RunRow]:
        where, params = _run_filter_sql(query)
        sql = (f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY id DESC LIMIT ?")
        rows = await self._read(
            lambda conn: conn.execute(sql, [*params, max(1, min(query.limit, 1000))]).fetchall())
        return [_run_row(row, ()) for row in rows]

    async def get_event(self, event_id: str) -> EventRow | None:
        row = await self._read(lambda conn: conn.execute(
            "SELECT id, name, data, user, ts FROM events WHERE id = ?", (event_id,)).fetchone())
        return EventRow(*row) if row else None

    async def run_events(self, run_id: str) -> list[EventRow]:
        from stride.stores import _sqlite_flow

        return await self._read(lambda conn: _sqlite_flow.run_events(conn, run_id))

    async def cancel_runs(self, run_ids: Sequence[str], *, error_json: str) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            now = _now_ms()
            cancelled = []
            for run_id in run_ids:
                row = conn.execute(
                    "UPDATE runs SET status = 'cancelled', error = ?, ended_at = ?, "
                    "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL "
                    "WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled', "
                    "'skipped') "
                    "RETURNING id", (error_json, now, run_id)).fetchone()
                if row:
                    cancelled.append(row[0])
            return cancelled

        ids: list[str] = await self._writer.run(op)
        return ids

    async def create_runs(self, runs: Sequence[NewRun]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = _now_ms()
            conn.executemany(
                "INSERT INTO runs (id, app_id, job_id, event_id, status, available_at, rank, "
                "created_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                [(r.id, r.app_id, r.job_id, r.event_id, r.available_at, r.available_at, now)
                 for r in runs if r.flow is None])
            flowing = [run for run in runs if run.flow is not None]
            if flowing:  # replays of jobs with flow control: their keys, priority, throttle
                from stride.stores import _sqlite_flow

                _sqlite_flow.publish_runs(conn, flowing, now)
            _waits.insert_run_extras(conn, runs, now)

        await self._writer.run(op)
        self._changed.set()

    # -- waits for events and timeouts (see stores._sqlite_waits) ------------------

    async def suspend_for_events(self, lease: Lease, waits: Sequence[NewWait], *,
                                 available_at: int) -> bool:
        resumed: bool | None = await self._writer.run(lambda conn: _waits.suspend_for_events(
            conn, lease, waits, available_at, _now_ms()))
        if resumed is None:
            raise _lease_lost(lease)
        if resumed:
            self._changed.set()
        return resumed

    async def resolve_wait(self, lease: Lease, wait: NewWait, *, choose: WaitChooser,
                           expire: bool) -> StepRecord | None:
        done: StepRecord | bool | None = await self._writer.run(
            lambda conn: _waits.resolve_wait(conn, lease, wait, choose, expire, _now_ms()))
        if done is False:
            raise _lease_lost(lease)
        return done if isinstance(done, StepRecord) else None

    async def due_deadlines(self, now_ms: int, limit: int) -> list[DeadlineRow]:
        return await self._read(lambda conn: _waits.due_deadlines(conn, now_ms, limit))

    async def move_deadlines(self, moves: Sequence[tuple[str, int | None]]) -> None:
        if moves:
            await self._writer.run(lambda conn: _waits.move_deadlines(conn, moves))

    async def cancelled_invocations(self, *, since_ms: int,
                                    limit: int) -> list[CancelledInvocation]:
        return await self._read(
            lambda conn: _waits.cancelled_invocations(conn, since_ms, limit))

    async def prune(self, *, older_than_ms: int, batch_size: int = 1000) -> int:
        """Delete finished runs (and steps) older than the cutoff, then unreferenced events.

        One short write transaction per batch, so workers are never held up for long.
        """
        if older_than_ms < 0 or batch_size < 1:
            raise ConfigurationError("prune needs older_than_ms >= 0 and batch_size >= 1")
        cutoff = _now_ms() - older_than_ms
        deleted = 0
        for step in (_prune_runs, _prune_events):
            while True:
                count: int = await self._writer.run(
                    lambda conn, step=step: step(conn, cutoff, batch_size))  # type: ignore[misc]
                deleted += count
                if count < batch_size:
                    break
        return deleted

    # -- the audit trail of RLS bypasses ---------------------------------------

    async def record_audit(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        rows = [(r.id, r.tag, r.app_id, r.job_id, r.run_id, r.step_id, r.attempt, r.actor_json,
                 r.started_at, r.ended_at, r.outcome, r.error) for r in records]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO audit (id, tag, app_id, job_id, run_id, step_id, attempt, actor, "
                "started_at, ended_at, outcome, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING", rows)

        await self._writer.run(op)

    async def list_audit(self, *, run_id: str | None = None, tag: str | None = None,
                         limit: int = 100) -> list[AuditRecord]:
        clauses = [f"{column} = ?" for column, value in (("run_id", run_id), ("tag", tag))
                   if value is not None]
        params: list[Any] = [value for value in (run_id, tag) if value is not None]
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        sql = ("SELECT id, tag, app_id, job_id, run_id, step_id, attempt, actor, started_at, "
               f"ended_at, outcome, error FROM audit {where} ORDER BY id DESC LIMIT ?")
        rows = await self._read(
            lambda conn: conn.execute(sql, [*params, max(1, min(limit, 1000))]).fetchall())
        return [AuditRecord(*row) for row in rows]


    # -- read-only queries for the dashboard, the HTTP API and /metrics ----------

    async def search_runs(self, query: RunFilter, *, text: str | None = None) -> list[RunRow]:
        where, params = _run_search_sql(query, text)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY id DESC LIMIT ?"
        rows = await self._read(
            lambda conn: conn.execute(sql, [*params, _page_limit(query.limit)]).fetchall())
        return [_run_row(row, ()) for row in rows]

    async def list_events(self, *, name: str | None = None, before: str | None = None,
                          limit: int = 50) -> list[EventListing]:
        where, params = _event_list_sql(name, before)
        sql = ("SELECT id, name, data, user, ts, received_at FROM events "
               f"{where} ORDER BY received_at DESC, id DESC LIMIT ?")
        rows = await self._read(
            lambda conn: conn.execute(sql, [*params, _page_limit(limit)]).fetchall())
        return [EventListing(id_, name_, data, user, ts, received_at,
                             event_cursor(received_at, id_))
                for id_, name_, data, user, ts, received_at in rows]

    async def runs_for_events(self, event_ids: Sequence[str]) -> list[RunRow]:
        ids = list(dict.fromkeys(event_ids))[:500]
        if not ids:
            return []
        sql = (f"SELECT {_RUN_COLUMNS} FROM runs WHERE event_id IN ({','.join('?' * len(ids))}) "
               "ORDER BY id DESC LIMIT 5000")
        rows = await self._read(lambda conn: conn.execute(sql, ids).fetchall())
        return [_run_row(row, ()) for row in rows]

    async def queue_stats(self, now_ms: int) -> QueueStats:
        return await self._read(lambda conn: _queue_stats(conn, now_ms))

    async def list_workers(self, *, since_ms: int) -> list[WorkerRow]:
        rows = await self._read(lambda conn: conn.execute(
            "SELECT id, app_id, info, started_at, heartbeat_at FROM workers "
            "WHERE heartbeat_at >= ? ORDER BY heartbeat_at DESC LIMIT 1000",
            (since_ms,)).fetchall())
        return [WorkerRow(*row) for row in rows]

    async def run_counts(self) -> list[RunCount]:
        rows = await self._read(lambda conn: conn.execute(
            "SELECT job_id, status, count(*) FROM runs GROUP BY job_id, status").fetchall())
        return [RunCount(*row) for row in rows]

    async def job_activity(self, *, since_ms: int, bucket_ms: int,
                           limit: int) -> list[JobActivity]:
        params = (since_ms, max(1, bucket_ms), id_floor(since_ms - _ID_SLACK_MS), since_ms,
                  max(1, limit))
        rows = await self._read(lambda conn: conn.execute(_ACTIVITY_SQL, params).fetchall())
        return [JobActivity(job, since_ms + bucket * max(1, bucket_ms), runs, failed, p50, p95,
                            lag) for job, bucket, runs, failed, p50, p95, lag in rows]

    async def step_timings(self, *, since_ms: int, limit: int) -> list[StepTiming]:
        params = (id_floor(since_ms - _ID_SLACK_MS), since_ms, max(1, limit))
        rows = await self._read(lambda conn: conn.execute(_STEP_TIMINGS_SQL, params).fetchall())
        return [StepTiming(*row) for row in rows]


# -- the operations the writer runs, each inside a shared transaction --

def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    scripts = sorted(
        (entry.name, entry.read_text()) for entry in
        resources.files("stride.stores.migrations").joinpath("sqlite").iterdir()
        if entry.name.endswith(".sql"))
    for name, script in scripts:
        number = int(name.split("_", 1)[0])
        if number <= version:
            continue
        for statement in _statements(script):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (comments may contain semicolons)."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return statements


def _publish(conn: sqlite3.Connection, batch: Sequence[tuple[NewEvent, Sequence[NewRun]]],
             dedupe_ms: int) -> PublishResult:
    now = _now_ms()
    accepted: list[str] = []
    accepted_ids: set[str] = set()
    duplicates: list[str] = []
    fresh: list[tuple[Any, ...]] = []
    fresh_items: list[tuple[NewEvent, Sequence[NewRun]]] = []
    runs: list[tuple[Any, ...]] = []
    flowing: list[NewRun] = []
    stored = _stored_event_ids(conn, [event.id for event, _ in batch])
    for event, event_runs in batch:
        row = (event.id, event.name, event.data_json, event.user_json, event.ts, now)
        seen = event.id in accepted_ids or event.id in stored
        if seen:
            duplicates.append(event.id)
            continue
        fresh.append(row)
        fresh_items.append((event, event_runs))
        accepted.append(event.id)
        accepted_ids.add(event.id)
        runs.extend((r.id, r.app_id, r.job_id, r.event_id, "queued", r.available_at,
                     r.available_at, now) for r in event_runs if r.flow is None)
        flowing.extend(r for r in event_runs if r.flow is not None)
    conn.executemany(
        "INSERT INTO events (id, name, data, user, ts, received_at) VALUES (?, ?, ?, ?, ?, ?)",
        fresh)
    conn.executemany(
        "INSERT INTO runs (id, app_id, job_id, event_id, status, available_at, rank, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", runs)
    if flowing:  # jobs with flow control: decided with their limiters' state
        from stride.stores import _sqlite_flow

        runs += _sqlite_flow.publish_runs(conn, flowing, now)
    checks = _waits.publish_waits(conn, fresh_items, now)
    return PublishResult(tuple(accepted), tuple(duplicates), len(runs), checks)


def _stored_event_ids(conn: sqlite3.Connection, event_ids: list[str]) -> set[str]:
    """Which of `event_ids` are already stored: one query per 500 ids, not one per event."""
    stored: set[str] = set()
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start:start + 500]
        stored.update(row[0] for row in conn.execute(
            f"SELECT id FROM events WHERE id IN ({','.join('?' * len(chunk))})", chunk))
    return stored


def _claim(conn: sqlite3.Connection, worker_id: str, app_id: str, job_ids: list[str],
           limit: int, lease_ms: int, concurrency: dict[str, int]) -> list[ClaimedRun]:
    now = _now_ms()
    capacity = _free_capacity(conn, app_id, job_ids, concurrency)
    eligible = [job for job in job_ids if capacity.get(job, 1) > 0]
    token = new_id()
    picked: list[str] = []
    resumed: list[str] = []
    # Each pass takes due runs in rank order. A pass that skipped runs of a job that filled
    # up is repeated without that job, so one saturated job cannot starve the others.
    while len(picked) < limit and eligible:
        want = limit - len(picked)
        marks = ",".join("?" * len(eligible))
        # INDEXED BY: given the choice, the planner takes runs_job_status and sorts every
        # queued run to return the first few (11 ms with 10,000 queued, against 0.3 ms)
        # rank <= horizon: the scan stops before runs that sleep or wait for later (their rank
        # is their wake-up time); without it 10,000 waiting runs cost every claim 1.5 ms
        rows = conn.execute(
            f"SELECT id, job_id, started_at FROM runs INDEXED BY runs_due WHERE {_CLAIMABLE} "
            f"AND rank <= ? AND available_at <= ? AND app_id = ? AND job_id IN ({marks}) "
            "ORDER BY rank LIMIT ?",
            (now + RANK_HORIZON_MS, now, app_id, *eligible, want)).fetchall()
        taken, skipped = _take_within_capacity(rows, capacity)
        _lease_runs(conn, taken, worker_id, token, now, lease_ms)
        picked.extend(run_id for run_id, _ in taken)
        resumed.extend(run_id for run_id, started in taken if started is not None)
        eligible = [job for job in eligible if capacity.get(job, 1) > 0]
        if not skipped or len(rows) < want:
            break
    return _load_claimed(conn, picked, resumed, token)


def _free_capacity(conn: sqlite3.Connection, app_id: str, job_ids: list[str],
                   concurrency: dict[str, int]) -> dict[str, int]:
    limited = [job for job in job_ids if job in concurrency]
    if not limited:
        return {}
    marks = ",".join("?" * len(limited))
    running = dict(conn.execute(
        f"SELECT job_id, count(*) FROM runs WHERE status = 'running' AND job_id IN ({marks}) "
        "AND app_id = ? GROUP BY job_id", [*limited, app_id]).fetchall())
    return {job: concurrency[job] - running.get(job, 0) for job in limited}


def _take_within_capacity(rows: list[tuple[str, str, int | None]], capacity: dict[str, int],
                          ) -> tuple[list[tuple[str, int | None]], bool]:
    taken: list[tuple[str, int | None]] = []
    skipped = False
    for run_id, job_id, started_at in rows:
        if job_id in capacity:
            if capacity[job_id] <= 0:
                skipped = True
                continue
            capacity[job_id] -= 1
        taken.append((run_id, started_at))
    return taken, skipped


def _lease_runs(conn: sqlite3.Connection, taken: list[tuple[str, int | None]], worker_id: str,
                token: str, now: int, lease_ms: int) -> None:
    conn.executemany(
        "UPDATE runs SET status = 'running', lease_owner = ?, lease_token = ?, "
        "lease_expires_at = ?, started_at = coalesce(started_at, ?) WHERE id = ?",
        [(worker_id, token, now + lease_ms, now, run_id) for run_id, _ in taken])


def _load_claimed(conn: sqlite3.Connection, picked: list[str], resumed: list[str],
                  token: str) -> list[ClaimedRun]:
    """The claimed runs with their events, and the memo of those that resume; the claim's
    transaction also completes their due sleep steps (both claims end here)."""
    if not picked:
        return []
    if resumed:
        _complete_sleeps(conn, resumed, _now_ms())
    steps = _load_steps(conn, resumed) if resumed else {}
    claimed = []
    for chunk_start in range(0, len(picked), 500):
        chunk = picked[chunk_start:chunk_start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            "SELECT r.id, r.job_id, r.attempt, r.errors, r.created_at, "
            "e.id, e.name, e.data, e.user, e.ts FROM runs r JOIN events e ON e.id = r.event_id "
            f"WHERE r.id IN ({marks})", chunk).fetchall()
        for run_id, job_id, attempt, errors, created_at, *event in rows:
            claimed.append(ClaimedRun(
                lease=Lease(run_id, token), job_id=job_id, event=EventRow(*event),
                attempt=attempt, errors_json=errors, steps=steps.get(run_id, ()),
                created_at=created_at))
    return claimed


def _complete_sleeps(conn: sqlite3.Connection, run_ids: list[str], now: int) -> None:
    """Mark the sleep steps of resuming runs whose wake-up time has passed completed, in
    the claim's transaction: the replay then finds them done, instead of each resumed run
    paying one more write (a checkpoint) before it goes on. Same rule as the executor's
    (`RunExecution.sleep_until`): a sleep is over once its wake-up time is reached."""
    conn.executemany(
        "UPDATE steps SET status = 'completed', ended_at = ? WHERE run_id = ? AND "
        "kind = 'sleep' AND status = 'sleeping' AND wake_at <= ?",
        [(now, run_id, now) for run_id in run_ids])


def _load_steps(conn: sqlite3.Connection, run_ids: list[str]) -> dict[str, tuple[StepRecord, ...]]:
    found: dict[str, list[StepRecord]] = {}
    for chunk_start in range(0, len(run_ids), 500):
        chunk = run_ids[chunk_start:chunk_start + 500]
        marks = ",".join("?" * len(chunk))
        for run_id, *columns in conn.execute(
                f"SELECT run_id, {_STEP_COLUMNS} FROM steps WHERE run_id IN ({marks}) "
                "ORDER BY run_id, position", chunk):
            found.setdefault(run_id, []).append(StepRecord(*columns))
    return {run_id: tuple(steps) for run_id, steps in found.items()}


def _prune_runs(conn: sqlite3.Connection, cutoff: int, batch_size: int) -> int:
    ids = [(row[0],) for row in conn.execute(
        "SELECT id FROM runs WHERE ended_at < ? AND status IN ('completed', 'failed', "
        "'cancelled', 'skipped') ORDER BY ended_at LIMIT ?", (cutoff, batch_size))]
    conn.executemany("DELETE FROM steps WHERE run_id = ?", ids)
    conn.executemany("DELETE FROM run_events WHERE run_id = ?", ids)
    conn.executemany("DELETE FROM run_keys WHERE run_id = ?", ids)
    _waits.prune_run_waits(conn, ids)
    conn.executemany("DELETE FROM runs WHERE id = ?", ids)
    return len(ids)


def _prune_events(conn: sqlite3.Connection, cutoff: int, batch_size: int) -> int:
    cur = conn.execute(
        "DELETE FROM events WHERE id IN (SELECT e.id FROM events e WHERE e.received_at < ? "
        "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id) "
        "AND NOT EXISTS (SELECT 1 FROM run_events b WHERE b.event_id = e.id) "
        "ORDER BY e.received_at LIMIT ?)", (cutoff, batch_size))
    return cur.rowcount


def _checkpoint(conn: sqlite3.Connection, lease: Lease, step: StepRecord) -> object:
    cur = conn.execute(
        "INSERT INTO steps (run_id, step_id, position, kind, status, output, error, attempts, "
        "errors, started_at, ended_at, wake_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
        "WHERE EXISTS (SELECT 1 FROM runs WHERE id = ? AND lease_token = ? AND "
        "status = 'running') ON CONFLICT (run_id, step_id) DO UPDATE SET "
        "status = excluded.status, output = excluded.output, error = excluded.error, "
        "attempts = excluded.attempts, errors = excluded.errors, "
        "ended_at = excluded.ended_at, wake_at = excluded.wake_at "
        "WHERE steps.status <> 'completed'",
        (lease.run_id, step.step_id, step.position, step.kind, step.status, step.output_json,
         step.error_json, step.attempts, step.errors_json, step.started_at, step.ended_at,
         step.wake_at, lease.run_id, lease.token))
    return None if cur.rowcount else OpFailed(_lease_lost(lease))


def _lease_lost(lease: Lease) -> LeaseLost:
    return LeaseLost(f"run {lease.run_id} is no longer held by this worker (it was cancelled, "
                     "or its lease expired and another worker took it over); this worker "
                     "stops working on it")


def _run_filter_sql(query: RunFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("job_id", query.job_id), ("status", query.status),
                          ("event_id", query.event_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.since_ms is not None:
        clauses.append("created_at >= ?")
        params.append(query.since_ms)
    if query.until_ms is not None:
        clauses.append("created_at < ?")
        params.append(query.until_ms)
    if query.before is not None:
        clauses.append("id < ?")
        params.append(query.before)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _run_row(row: tuple[Any, ...], steps: tuple[StepRecord, ...]) -> RunRow:
    (run_id, app_id, job_id, event_id, status, attempt, created_at, started_at, ended_at,
     available_at, output, error, errors, lease_owner, reason) = row
    return RunRow(run_id, app_id, job_id, event_id, status, attempt, created_at, started_at,
                  ended_at, available_at, output, error, errors, lease_owner, steps, reason)


def default_sqlite_url() -> str:
    """The default store: ./.stride/stride.db in the working directory."""
    return "sqlite:///" + str(Path(".stride") / "stride.db")


# -- the dashboard queries ---------------------------------------------------------------

# Run ids start with their creation time (see stride._ids), so a time range is also an id
# range on the primary key. The slack covers the few ms between making an id and the commit.
_ID_SLACK_MS = 60_000

# One pass over the newest runs of the window: counts, failures, mean lag, and p50/p95 of
# durations picked by rank (SQLite has no percentile function). Portable to PostgreSQL.
_ACTIVITY_SQL = """
WITH recent AS (
    SELECT job_id, (created_at - ?) / ? AS bucket, status,
           CASE WHEN ended_at IS NOT NULL AND started_at IS NOT NULL
                THEN ended_at - started_at END AS duration,
           started_at - created_at AS lag
    FROM runs WHERE id >= ? AND created_at >= ? ORDER BY id DESC LIMIT ?
), ranked AS (
    SELECT job_id, bucket, status, duration, lag,
           row_number() OVER (PARTITION BY job_id, bucket
                              ORDER BY duration IS NULL, duration) AS rn,
           count(duration) OVER (PARTITION BY job_id, bucket) AS n
    FROM recent
)
SELECT job_id, bucket, count(*), sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END),
       max(CASE WHEN rn = (n * 50 + 99) / 100 THEN duration END),
       max(CASE WHEN rn = (n * 95 + 99) / 100 THEN duration END),
       avg(lag)
FROM ranked GROUP BY job_id, bucket ORDER BY job_id, bucket
"""

_STEP_TIMINGS_SQL = """
SELECT r.job_id, s.kind, s.status, s.ended_at - s.started_at
FROM (SELECT id, job_id FROM runs WHERE id >= ? AND created_at >= ?
      ORDER BY id DESC LIMIT ?) AS r
JOIN steps s ON s.run_id = r.id
WHERE s.started_at IS NOT NULL AND s.ended_at IS NOT NULL
"""


def _page_limit(limit: int) -> int:
    return max(1, min(limit, 1000))


def _run_search_sql(query: RunFilter, text: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("job_id", query.job_id), ("status", query.status),
                          ("event_id", query.event_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.since_ms is not None:
        clauses += ["id >= ?", "created_at >= ?"]
        params += [id_floor(query.since_ms - _ID_SLACK_MS), query.since_ms]
    if query.until_ms is not None:
        clauses += ["id < ?", "created_at < ?"]
        params += [id_floor(query.until_ms + _ID_SLACK_MS), query.until_ms]
    if query.before is not None:
        clauses.append("id < ?")
        params.append(query.before)
    if text:
        clauses.append("EXISTS (SELECT 1 FROM events e WHERE e.id = runs.event_id "
                       "AND e.data LIKE ? ESCAPE '\\')")
        params.append(f"%{_like_escape(text)}%")
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _event_list_sql(name: str | None, before: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if name is not None:
        clauses.append("name = ?")
        params.append(name)
    if before is not None:
        clauses.append("(received_at, id) < (?, ?)")
        params += parse_event_cursor(before)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _queue_stats(conn: sqlite3.Connection, now_ms: int) -> QueueStats:
    waiting, due, oldest = conn.execute(
        "SELECT count(*), coalesce(sum(available_at <= ?), 0), "
        f"min(CASE WHEN available_at <= ? THEN available_at END) FROM runs WHERE {_CLAIMABLE}",
        (now_ms, now_ms)).fetchone()
    running = conn.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
    return QueueStats(waiting=waiting, due=due, running=running, oldest_due_at=oldest)
