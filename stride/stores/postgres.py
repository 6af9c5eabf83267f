"""The PostgreSQL store: many workers on many machines, one database.

Same semantics as the SQLite store, method for method (the conformance suite checks it).
What PostgreSQL adds:
- claims use `FOR UPDATE SKIP LOCKED`, so concurrent workers take different runs without
  waiting on each other; a job with a concurrency limit is claimed under a transaction-level
  advisory lock per (app, job), so its limit holds across every process;
- checkpoints, finishes, reschedules and publishes share transactions (group commit,
  `_postgres_writer`);
- `LISTEN/NOTIFY` wakes idle workers: one notification per publish or reschedule
  transaction, on a channel named after the schema (`_postgres_listener`);
- `publish(..., conn=app_connection)` writes in the application's own transaction
  (transactional outbox); NOTIFY is transactional too, so workers hear of it at its commit.

Example:
    jobs = Stride(app_id="porygon",
                  database_url="postgresql://app@db:5432/porygon?schema=stride")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import orjson
import psycopg
import psycopg_pool

from stride._audit import AuditRecord
from stride._failures import LOST_MESSAGE, WORKER_LOST
from stride._flow_decide import ClaimState, is_stateless
from stride._ids import new_id
from stride.errors import ConfigurationError, StoreError, StoreUnavailable
from stride.flow import MAX_PRIORITY_SECONDS
from stride.stores import _postgres_waits as _pg_waits
from stride.stores._postgres_conn import (
    PgTarget,
    is_unavailable,
    libpq_timeout,
    parse_postgres_url,
    translate,
)
from stride.stores._postgres_flow import (
    ClaimParams,
    Execute,
    FlowStatements,
    claim_keyed,
    executor_for,
    publish_runs,
)
from stride.stores._postgres_listener import Listener
from stride.stores._postgres_migrate import migrate
from stride.stores._postgres_ops import (
    CheckpointOp,
    FinishItem,
    FinishOp,
    PublishItem,
    PublishOp,
    RescheduleOp,
    lease_lost,
)
from stride.stores._postgres_orphans import Orphans
from stride.stores._postgres_outbox import write_in
from stride.stores._postgres_sql import RUN_COLUMNS, Statements
from stride.stores._postgres_writer import (
    GroupCommitWriter,
    OpKind,
    WriteStats,
    transaction,
)
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
log = logging.getLogger("stride.store.postgres")

DEFAULT_POOL_MIN = 2
DEFAULT_POOL_MAX = 10
DEFAULT_POOL_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_WRITE_PATIENCE = 30.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _needs_flow(batch: PublishItem) -> bool:
    """Whether runs of the batch need flow decisions (throttle, debounce, singleton...)
    beyond what the plain publish statement writes (concurrency keys, priority)."""
    return any(run.flow is not None and not is_stateless(run.flow)
               for _, runs in batch for run in runs)


class PostgresStore:
    """Store backend on a PostgreSQL schema. Construct, then `await open()`.

    `schema` (or `?schema=` in the URL; default "stride") holds every table. `pool_min` and
    `pool_max` size the connection pool; `pool_timeout` is how long an operation waits for a
    connection; `write_patience` is how long a worker's writes (checkpoints, finishes) keep
    retrying while the server is unreachable (dispatches give up after `pool_timeout`).
    """

    def __init__(self, url: str, *, schema: str | None = None,
                 pool_min: int = DEFAULT_POOL_MIN, pool_max: int = DEFAULT_POOL_MAX,
                 pool_timeout: float = DEFAULT_POOL_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 write_patience: float = DEFAULT_WRITE_PATIENCE) -> None:
        if not 1 <= pool_min <= pool_max:
            raise ConfigurationError(
                f"need 1 <= pool_min <= pool_max, got pool_min={pool_min}, pool_max={pool_max}")
        if pool_timeout <= 0 or connect_timeout <= 0 or write_patience <= 0:
            raise ConfigurationError("pool_timeout, connect_timeout and write_patience must be "
                                     "> 0 seconds")
        self.url = url
        self.target: PgTarget = parse_postgres_url(url, schema)
        self.schema = self.target.schema
        self.sql = Statements(self.schema)
        self._pool_min, self._pool_max = pool_min, pool_max
        self._pool_timeout = pool_timeout
        self._connect_timeout = connect_timeout
        self._write_patience = write_patience
        self._changed = asyncio.Event()
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._writer: GroupCommitWriter | None = None
        self._listener = Listener(self.target, self.schema, self._changed.set,
                                  connect_timeout=connect_timeout)
        self._publish_op = PublishOp(self.sql.publish, self.schema)
        self.flow_sql = FlowStatements(self.schema)
        self._flow_state = ClaimState()
        self._collecting: asyncio.Task[None] | None = None
        self._checkpoint_op = CheckpointOp(self.sql.checkpoint)
        self._limited_jobs: set[str] = set()
        self._finish_op = FinishOp(self.sql.finish, self.schema, self._limited_jobs)
        self._reschedule_op = RescheduleOp(self.sql.reschedule)
        self._orphans = Orphans(self._hand_back)
        self._wait_sql = _pg_waits.WaitStatements(self.schema)

    @property
    def write_stats(self) -> WriteStats:
        """Group-commit transactions, ops and rows this process committed (benchmarks)."""
        return self._writer.stats if self._writer is not None else WriteStats()

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        await self._migrate()
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            self.target.conninfo, min_size=self._pool_min, max_size=self._pool_max,
            timeout=self._pool_timeout, open=False, name=f"stride-{self.schema}",
            kwargs={"autocommit": True, "connect_timeout": libpq_timeout(self._connect_timeout),
                    "fallback_application_name": "stride"})
        try:
            await pool.open(wait=True, timeout=self._pool_timeout)
            await self._listener.start()
        except Exception as exc:
            await pool.close()
            raise translate(self.target, exc) from exc
        self._pool = pool
        self._writer = GroupCommitWriter(
            pool, self.target, channel=self.schema, notify_sql=self.sql.notify,
            pool_timeout=self._pool_timeout, on_abandoned=self._orphans.add_leases)

    async def _migrate(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.target.conninfo, autocommit=True,
                connect_timeout=libpq_timeout(self._connect_timeout),
                fallback_application_name="stride-migrate")
        except psycopg.Error as exc:
            raise translate(self.target, exc) from exc
        try:
            async with conn:
                applied = await migrate(conn, self.schema)
        except psycopg.Error as exc:
            raise translate(self.target, exc) from exc
        if applied:
            log.info("migrated schema %r on %s to version %d", self.schema, self.target.where,
                     applied[-1])

    async def close(self) -> None:
        if self._pool is None:
            return
        if self._collecting is not None:
            await self._collecting
        pool, self._pool = self._pool, None
        if self._writer is not None:
            await self._writer.close()
        await self._orphans.stop()
        await self._listener.stop()
        await pool.close()

    # -- plumbing ----------------------------------------------------------------

    def _require_pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        if self._pool is None:
            raise ConfigurationError("the PostgreSQL store is not open; await store.open() first")
        return self._pool

    async def _with_conn(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
                         *, retry: bool = True) -> T:
        """Run `fn` on a pooled connection. A connection the server dropped (a restart) is
        replaced and `fn` tried once more when `retry` (only for idempotent work)."""
        pool = self._require_pool()
        for attempt in (1, 2):
            try:
                async with pool.connection() as conn:
                    return await fn(conn)
            except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
                if attempt == 1 and retry and is_unavailable(exc) and \
                        not isinstance(exc, psycopg_pool.PoolTimeout):
                    continue
                raise translate(self.target, exc) from exc
        raise AssertionError("unreachable")

    async def _write(self, op: OpKind, item: Any, *, patience: float) -> Any:
        if self._writer is None:
            raise ConfigurationError("the PostgreSQL store is not open; await store.open() first")
        return await self._writer.submit(op, item, patience=patience)

    # -- change notification -----------------------------------------------------

    def notify_local(self) -> None:
        self._changed.set()

    async def wait_for_change(self, timeout: float) -> None:
        if not self._changed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        self._changed.clear()

    # -- writes --------------------------------------------------------------------

    async def publish(self, batch: Sequence[tuple[NewEvent, Sequence[NewRun]]], *,
                      dedupe_ms: int, conn: Any = None) -> PublishResult:
        # Event ids are remembered until pruned, which keeps them at least `dedupe_ms`
        # (the pruner's cutoff must not be shorter than the dedupe window).
        if _needs_flow(batch):
            return await self._publish_flow(batch, conn)
        if conn is not None:
            return await self._publish_in(conn, batch)
        result: PublishResult = await self._write(self._publish_op, batch,
                                                  patience=self._pool_timeout)
        return result

    async def _publish_in(self, conn: Any, batch: PublishItem) -> PublishResult:
        """Write in the caller's open transaction; do not commit (it commits or rolls back)."""
        op = self._publish_op
        try:
            rows = await write_in(conn, op.sql, op.params([batch], _now_ms()))
        except psycopg.Error as exc:
            raise translate(self.target, exc) from exc
        return op.results([batch], rows)[0]

    async def _publish_flow(self, batch: PublishItem, conn: Any) -> PublishResult:
        """A batch with runs of flow-controlled jobs: the plain publish statement for the
        events and the other runs, then the flow decisions (`_postgres_flow`), in one
        transaction (the caller's, with `conn`)."""
        now = _now_ms()

        async def own(connection: psycopg.AsyncConnection[Any]) -> PublishResult:
            async with connection.transaction():
                return await self._write_flow(executor_for(connection), batch, now)

        if conn is None:
            return await self._with_conn(own, retry=False)
        try:
            return await self._write_flow(executor_for(conn), batch, now)
        except psycopg.Error as exc:
            raise translate(self.target, exc) from exc

    async def _write_flow(self, execute: Execute, batch: PublishItem, now: int) -> PublishResult:
        """`_publish_flow`'s statements, in the transaction `execute` runs in."""
        op = self._publish_op
        plain = [(event, [run for run in runs if run.flow is None]) for event, runs in batch]
        result = op.results([plain], await execute(op.sql, op.params([plain], now)))[0]
        fresh = set(result.accepted)
        flowing = [run for event, runs in batch if event.id in fresh for run in runs
                   if run.flow is not None]
        created = await publish_runs(execute, self.flow_sql, flowing, now)
        for sql, params in self._wait_sql.extras(flowing, now):  # cancel_on, timeouts
            await execute(sql, params)
        return replace(result, runs_created=result.runs_created + created)

    async def claim(self, *, worker_id: str, app_id: str, job_ids: Sequence[str], limit: int,
                    lease_ms: int, concurrency: Mapping[str, int],
                    keyed: Collection[str] = ()) -> list[ClaimedRun]:
        if limit <= 0 or not job_ids:
            return []
        if any(job in keyed for job in job_ids):
            return await self._claim_keyed(worker_id, app_id, job_ids, limit, lease_ms,
                                           concurrency, keyed)
        token = new_id()
        now = _now_ms()
        limited = sorted(job for job in set(job_ids) if job in concurrency)
        self._limited_jobs.update(limited)
        params = {"now": now, "app": app_id, "limit": limit, "worker": worker_id,
                  "token": token, "expires": now + lease_ms,
                  "horizon": now + MAX_PRIORITY_SECONDS * 1000,
                  "jobs": [job for job in job_ids if job not in concurrency],
                  "limited": limited, "caps": [concurrency[job] for job in limited]}
        try:
            rows = await self._with_conn(lambda conn: self._claim_on(conn, params),
                                         retry=False)
        except StoreUnavailable:
            self._orphans.add_claim(token)  # it may have committed before the line dropped
            raise
        return [_claimed(row, token) for row in rows]

    async def _claim_keyed(self, worker_id: str, app_id: str, job_ids: Sequence[str],
                           limit: int, lease_ms: int, concurrency: Mapping[str, int],
                           keyed: Collection[str]) -> list[ClaimedRun]:
        """Claim runs that hold concurrency keys (see `_postgres_flow`)."""
        now = _now_ms()
        params = ClaimParams(app_id=app_id, worker_id=worker_id, token=new_id(), now=now,
                             lease_ms=lease_ms, limit=limit, job_ids=list(job_ids),
                             limits=dict(concurrency), state=self._flow_state)
        # a finished run of these jobs frees a slot other workers may wait for: notify
        self._limited_jobs.update(job for job in job_ids if job in keyed or job in concurrency)
        try:
            rows = await self._with_conn(
                lambda conn: claim_keyed(conn, self.flow_sql, params),
                retry=False)
        except StoreUnavailable:
            self._orphans.add_claim(params.token)
            raise
        since = self._flow_state.collect_since() if self._collecting is None else None
        if since is not None:
            self._collecting = asyncio.create_task(self._collect_keys(app_id, since))
        return [_claimed(row, params.token) for row in rows]

    async def _collect_keys(self, app_id: str, since: int) -> None:
        """Delete the run_keys rows of the app's runs that finished since `since` (ms), on a
        connection of its own: 10-20 ms every 2 s under load, on no claim's critical path."""
        try:
            await self._with_conn(lambda conn: conn.execute(self.flow_sql.collect,
                                                            (since, app_id)))
        except StoreError as exc:
            log.warning("could not delete the concurrency keys of finished runs (%s); the "
                        "next collection takes them", exc)
            self._flow_state.collect_failed()
        finally:
            self._collecting = None

    async def _claim_on(self, conn: psycopg.AsyncConnection[Any],
                        params: dict[str, Any]) -> list[tuple[Any, ...]]:
        if not params["limited"]:
            cur = await conn.execute(self.sql.claim_unlimited, params)
            return await cur.fetchall()
        # the locks are taken by their own statement: the claim's snapshot must be taken
        # after they are held, so that it sees every run other claimers just leased
        _, rows = await transaction(conn, [
            (self.sql.lock_jobs, (self.schema, params["app"], params["limited"])),
            (self.sql.claim_limited, params)], durable=False)
        return rows

    async def _steps_of(self, conn: psycopg.AsyncConnection[Any],
                        run_ids: list[str]) -> dict[str, tuple[StepRecord, ...]]:
        cur = await conn.execute(self.sql.steps_of, (run_ids,))
        return _steps_by_run(await cur.fetchall())

    async def checkpoint(self, lease: Lease, step: StepRecord) -> None:
        await self._write(self._checkpoint_op, (lease, step), patience=self._write_patience)

    async def reschedule(self, lease: Lease, *, available_at: int, status: RunStatus,
                         attempt: int | None = None, errors_json: str | None = None,
                         step: StepRecord | None = None) -> None:
        await self._write(self._reschedule_op, (lease, available_at, status, attempt,
                                                errors_json, step), patience=self._write_patience)
        self._changed.set()

    async def finish(self, lease: Lease, *, status: RunStatus, output_json: str | None,
                     error_json: str | None, errors_json: str | None = None,
                     publish: PublishItem | None = None) -> None:
        item = (lease, status, output_json, error_json, errors_json)
        if publish:
            await self._finish_and_publish(item, publish)
            return
        await self._write(self._finish_op, item, patience=self._write_patience)

    async def _finish_and_publish(self, item: FinishItem, batch: PublishItem) -> None:
        """A finish that publishes events (an invoked run's completion, an on-failure run):
        its own transaction, in which the events are published only if the finish holds."""
        finish, now = self._finish_op, _now_ms()

        async def run(conn: psycopg.AsyncConnection[Any]) -> bool:
            async with conn.transaction():
                cur = await conn.execute(finish.sql, finish.params([item], now))
                if not await cur.fetchall():
                    return False
                await self._write_flow(executor_for(conn), batch, now)
                return True

        try:
            finished = await self._with_conn(run, retry=False)
        except StoreUnavailable:
            self._orphans.add_leases([item[0]])
            raise
        if not finished:
            raise lease_lost(item[0])

    async def release(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        now = _now_ms()
        params = (now, now, [lease.run_id for lease in leases], [lease.token for lease in leases])

        await self._with_conn(lambda conn: transaction(conn, [
            (self.sql.release, params), (self.sql.notify, (self.schema,))], durable=False))

    async def cancel_runs(self, run_ids: Sequence[str], *, error_json: str) -> list[str]:
        """Cancel the unfinished runs among `run_ids`; a running one loses its lease, so its
        worker's next checkpoint is refused and it stops before its next step."""
        if not run_ids:
            return []
        params = (error_json, _now_ms(), list(run_ids))

        async def run(conn: psycopg.AsyncConnection[Any]) -> set[str]:
            cur = await conn.execute(self.sql.cancel, params)
            return {row[0] for row in await cur.fetchall()}

        cancelled = await self._with_conn(run, retry=False)
        return [run_id for run_id in dict.fromkeys(run_ids) if run_id in cancelled]

    async def create_runs(self, runs: Sequence[NewRun]) -> None:
        if not runs:
            return
        now = _now_ms()
        plain = [run for run in runs if run.flow is None]
        flowing = [run for run in runs if run.flow is not None]
        params = (now, [r.id for r in plain], [r.app_id for r in plain],
                  [r.job_id for r in plain], [r.event_id for r in plain],
                  [r.available_at for r in plain])

        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                execute = executor_for(conn)
                await execute(self.sql.create_runs, params)
                if flowing:  # replays of jobs with flow control: keys, priority, throttle
                    await publish_runs(execute, self.flow_sql, flowing, now)
                for sql, extra in [*self._wait_sql.extras(runs, now),
                                   (self.sql.notify, (self.schema,))]:
                    await execute(sql, extra)

        await self._with_conn(write, retry=False)
        self._changed.set()

    # -- waits for events and timeouts (see stores._postgres_waits) ------------------

    async def suspend_for_events(self, lease: Lease, waits: Sequence[NewWait], *,
                                 available_at: int) -> bool:
        try:
            resumed = await self._with_conn(lambda conn: _pg_waits.suspend(
                conn, self._wait_sql, lease, waits, available_at, _now_ms()), retry=False)
        except StoreUnavailable:
            self._orphans.add_leases([lease])  # it may still be ours: give it back later
            raise
        if resumed is None:
            raise lease_lost(lease)
        if resumed:
            self._changed.set()
        return resumed

    async def resolve_wait(self, lease: Lease, wait: NewWait, *, choose: WaitChooser,
                           expire: bool) -> StepRecord | None:
        done = await self._with_conn(lambda conn: _pg_waits.resolve(
            conn, self._wait_sql, lease, wait, choose, expire, _now_ms()), retry=False)
        if done is False:
            raise lease_lost(lease)
        return done if isinstance(done, StepRecord) else None

    async def due_deadlines(self, now_ms: int, limit: int) -> list[DeadlineRow]:
        return await self._with_conn(
            lambda conn: _pg_waits.due_deadlines(conn, self._wait_sql, now_ms, limit))

    async def move_deadlines(self, moves: Sequence[tuple[str, int | None]]) -> None:
        if moves:
            await self._with_conn(
                lambda conn: _pg_waits.move_deadlines(conn, self._wait_sql, moves))

    async def cancelled_invocations(self, *, since_ms: int,
                                    limit: int) -> list[CancelledInvocation]:
        return await self._with_conn(lambda conn: _pg_waits.cancelled_invocations(
            conn, self._wait_sql, since_ms, limit))

    async def _hand_back(self, claims: list[str], leases: list[Lease]) -> None:
        """Requeue the runs of lost claims and of abandoned leases (see `Orphans`)."""
        now = _now_ms()
        statements: list[tuple[str, Sequence[Any]]] = [(self.sql.notify, (self.schema,))]
        if claims:
            statements.append((self.sql.release_claim, (now, now, claims)))
        if leases:
            statements.append((self.sql.release, (now, now, [x.run_id for x in leases],
                                                   [x.token for x in leases])))
        async with self._require_pool().connection() as conn:
            await transaction(conn, statements, durable=False)

    async def heartbeat(self, *, worker_id: str, app_id: str, lease_ms: int,
                        info_json: str) -> int:
        now = _now_ms()
        params = {"worker": worker_id, "app": app_id, "info": info_json, "now": now,
                  "expires": now + lease_ms}

        async def run(conn: psycopg.AsyncConnection[Any]) -> int:
            [rows] = await transaction(conn, [(self.sql.heartbeat, params)], durable=False)
            return int(rows[0][0]) if rows else 0

        return await self._with_conn(run)

    async def reclaim_expired(self) -> list[str]:
        async def run(conn: psycopg.AsyncConnection[Any]) -> list[str]:
            [rows] = await transaction(
                conn, [(self.sql.reclaim, {"now": _now_ms(), "channel": self.schema,
                                           "lost": WORKER_LOST, "lost_message": LOST_MESSAGE})],
                durable=False)
            return [row[0] for row in rows]

        ids = await self._with_conn(run)
        if ids:
            self._changed.set()
        return ids

    async def prune(self, *, older_than_ms: int, batch_size: int = 1000) -> int:
        """Delete finished runs (with their steps) that ended more than `older_than_ms` ago,
        then events older than that which no remaining run references; each batch of
        `batch_size` in its own short transaction. Returns how many runs and events went."""
        if older_than_ms < 0 or batch_size < 1:
            raise ConfigurationError("prune needs older_than_ms >= 0 and batch_size >= 1")
        params = {"cutoff": _now_ms() - older_than_ms, "batch": batch_size}
        deleted = 0
        for sql in (self.sql.prune_runs, self.sql.prune_events):
            while True:
                count = await self._with_conn(_rowcount_of(sql, params))
                deleted += count
                if count < batch_size:
                    break
        return deleted

    # -- reads ---------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRow | None:
        async def query(conn: psycopg.AsyncConnection[Any]) -> RunRow | None:
            cur = await conn.execute(self.sql.get_run, (run_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            steps = await self._steps_of(conn, [run_id])
            return _run_row(row, steps.get(run_id, ()))

        return await self._with_conn(query)

    async def list_runs(self, query: RunFilter) -> list[RunRow]:
        where, params = _run_filter_sql(query)
        sql = self.sql.list_runs.format(where=where)
        params.append(max(1, min(query.limit, 1000)))

        async def run(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        return [_run_row(row, ()) for row in await self._with_conn(run)]

    async def run_events(self, run_id: str) -> list[EventRow]:
        return [EventRow(*row) for row in await self._rows(self.flow_sql.run_events, (run_id,))]

    async def get_event(self, event_id: str) -> EventRow | None:
        async def run(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...] | None:
            cur = await conn.execute(self.sql.get_event, (event_id,))
            return await cur.fetchone()

        row = await self._with_conn(run)
        return EventRow(*row) if row else None

    # -- the audit trail of RLS bypasses ---------------------------------------------

    async def record_audit(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        columns = [[getattr(r, name) for r in records] for name in _AUDIT_FIELDS]
        sql = (f'INSERT INTO "{self.schema}".audit ({_AUDIT_COLUMNS}) SELECT * FROM unnest('
               "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
               "%s::int[], %s::text[], %s::bigint[], %s::bigint[], %s::text[], %s::text[]) "
               "ON CONFLICT (id) DO NOTHING")

        async def run(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(sql, columns)  # one statement: atomic under autocommit

        await self._with_conn(run)  # retried safely: a stored id is skipped

    async def list_audit(self, *, run_id: str | None = None, tag: str | None = None,
                         limit: int = 100) -> list[AuditRecord]:
        clauses = [f"{column} = %s" for column, value in (("run_id", run_id), ("tag", tag))
                   if value is not None]
        params: list[Any] = [value for value in (run_id, tag) if value is not None]
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        sql = (f'SELECT {_AUDIT_COLUMNS} FROM "{self.schema}".audit {where} '
               "ORDER BY id DESC LIMIT %s")
        params.append(max(1, min(limit, 1000)))

        async def run(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        return [AuditRecord(*row) for row in await self._with_conn(run)]


    # -- read-only queries for the dashboard, the HTTP API and /metrics ----------

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async def run(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        return await self._with_conn(run)

    async def search_runs(self, query: RunFilter, *, text: str | None = None) -> list[RunRow]:
        where, params = _run_search_sql(query, text, f'"{self.schema}"')
        sql = (f'SELECT {RUN_COLUMNS} FROM "{self.schema}".runs {where} '
               "ORDER BY id DESC LIMIT %s")
        rows = await self._rows(sql, [*params, max(1, min(query.limit, 1000))])
        return [_run_row(row, ()) for row in rows]

    async def list_events(self, *, name: str | None = None, before: str | None = None,
                          limit: int = 50) -> list[EventListing]:
        clauses: list[str] = []
        params: list[Any] = []
        if name is not None:
            clauses.append("name = %s")
            params.append(name)
        if before is not None:
            clauses.append("(received_at, id) < (%s, %s)")
            params += list(parse_event_cursor(before))
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        sql = (f'SELECT id, name, data, "user", ts, received_at FROM "{self.schema}".events '
               f"{where} ORDER BY received_at DESC, id DESC LIMIT %s")
        rows = await self._rows(sql, [*params, max(1, min(limit, 1000))])
        return [EventListing(id_, name_, data, user, ts, received_at,
                             event_cursor(received_at, id_))
                for id_, name_, data, user, ts, received_at in rows]

    async def runs_for_events(self, event_ids: Sequence[str]) -> list[RunRow]:
        ids = list(dict.fromkeys(event_ids))[:500]
        if not ids:
            return []
        sql = (f'SELECT {RUN_COLUMNS} FROM "{self.schema}".runs WHERE event_id = ANY(%s) '
               "ORDER BY id DESC LIMIT 5000")
        return [_run_row(row, ()) for row in await self._rows(sql, [ids])]

    async def queue_stats(self, now_ms: int) -> QueueStats:
        s = f'"{self.schema}"'
        [(waiting, due, oldest, running)] = await self._rows(
            "SELECT count(*) FILTER (WHERE status IN ('queued', 'sleeping', 'waiting')), "
            "count(*) FILTER (WHERE status IN ('queued', 'sleeping', 'waiting') "
            "AND available_at <= %s), "
            "min(available_at) FILTER (WHERE status IN ('queued', 'sleeping', 'waiting') "
            "AND available_at <= %s), count(*) FILTER (WHERE status = 'running') "
            f"FROM {s}.runs WHERE status IN ('queued', 'sleeping', 'waiting', 'running')",
            (now_ms, now_ms))
        return QueueStats(waiting=waiting, due=due, running=running, oldest_due_at=oldest)

    async def list_workers(self, *, since_ms: int) -> list[WorkerRow]:
        rows = await self._rows(
            f'SELECT id, app_id, info, started_at, heartbeat_at FROM "{self.schema}".workers '
            "WHERE heartbeat_at >= %s ORDER BY heartbeat_at DESC LIMIT 1000", (since_ms,))
        return [WorkerRow(*row) for row in rows]

    async def run_counts(self) -> list[RunCount]:
        rows = await self._rows(
            f'SELECT job_id, status, count(*) FROM "{self.schema}".runs GROUP BY job_id, status',
            ())
        return [RunCount(*row) for row in rows]

    async def job_activity(self, *, since_ms: int, bucket_ms: int,
                           limit: int) -> list[JobActivity]:
        bucket = max(1, bucket_ms)
        params = (since_ms, bucket, id_floor(since_ms - _ID_SLACK_MS), since_ms, max(1, limit))
        rows = await self._rows(_activity_sql(f'"{self.schema}"'), params)
        return [JobActivity(job, since_ms + int(slot) * bucket, runs, failed, p50, p95,
                            None if lag is None else float(lag))
                for job, slot, runs, failed, p50, p95, lag in rows]

    async def step_timings(self, *, since_ms: int, limit: int) -> list[StepTiming]:
        s = f'"{self.schema}"'
        rows = await self._rows(
            "SELECT r.job_id, st.kind, st.status, st.ended_at - st.started_at "
            f"FROM (SELECT id, job_id FROM {s}.runs WHERE id >= %s AND created_at >= %s "
            f"ORDER BY id DESC LIMIT %s) AS r JOIN {s}.steps st ON st.run_id = r.id "
            "WHERE st.started_at IS NOT NULL AND st.ended_at IS NOT NULL",
            (id_floor(since_ms - _ID_SLACK_MS), since_ms, max(1, limit)))
        return [StepTiming(*row) for row in rows]


_AUDIT_FIELDS = ("id", "tag", "app_id", "job_id", "run_id", "step_id", "attempt", "actor_json",
                 "started_at", "ended_at", "outcome", "error")
_AUDIT_COLUMNS = ("id, tag, app_id, job_id, run_id, step_id, attempt, actor, started_at, "
                  "ended_at, outcome, error")


def _rowcount_of(sql: str, params: Mapping[str, Any],
                 ) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[int]]:
    async def run(conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute(sql, params)
        return cur.rowcount

    return run


def _steps_by_run(rows: list[tuple[Any, ...]]) -> dict[str, tuple[StepRecord, ...]]:
    """Step rows `(run_id, *STEP_COLUMNS)`, ordered by run and position, grouped by run."""
    found: dict[str, list[StepRecord]] = {}
    for run_id, *columns in rows:
        found.setdefault(run_id, []).append(StepRecord(*columns))
    return {run_id: tuple(steps) for run_id, steps in found.items()}


def _claimed(row: tuple[Any, ...], token: str) -> ClaimedRun:
    run_id, job_id, attempt, errors, created_at, memo, *event = row
    steps = tuple(StepRecord(*step) for step in orjson.loads(memo)) if memo else ()
    return ClaimedRun(lease=Lease(run_id, token), job_id=job_id, event=EventRow(*event),
                      attempt=attempt, errors_json=errors, steps=steps, created_at=created_at)


def _run_filter_sql(query: RunFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("job_id", query.job_id), ("status", query.status),
                          ("event_id", query.event_id)):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    bounds: tuple[tuple[str, int | str | None], ...] = (
        ("created_at >= %s", query.since_ms), ("created_at < %s", query.until_ms),
        ("id < %s", query.before))
    for clause, bound in bounds:
        if bound is not None:
            clauses.append(clause)
            params.append(bound)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _run_row(row: tuple[Any, ...], steps: tuple[StepRecord, ...]) -> RunRow:
    (run_id, app_id, job_id, event_id, status, attempt, created_at, started_at, ended_at,
     available_at, output, error, errors, lease_owner, reason) = row
    return RunRow(run_id, app_id, job_id, event_id, status, attempt, created_at, started_at,
                  ended_at, available_at, output, error, errors, lease_owner, steps, reason)


# -- the dashboard queries (the same shapes as the SQLite store's) --------------------------

# Run ids start with their creation time, so a time range is also an id range on the
# primary key; the slack covers the moments between making an id and the commit.
_ID_SLACK_MS = 60_000


def _run_search_sql(query: RunFilter, text: str | None, schema: str) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("job_id", query.job_id), ("status", query.status),
                          ("event_id", query.event_id)):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if query.since_ms is not None:
        clauses += ["id >= %s", "created_at >= %s"]
        params += [id_floor(query.since_ms - _ID_SLACK_MS), query.since_ms]
    if query.until_ms is not None:
        clauses += ["id < %s", "created_at < %s"]
        params += [id_floor(query.until_ms + _ID_SLACK_MS), query.until_ms]
    if query.before is not None:
        clauses.append("id < %s")
        params.append(query.before)
    if text:
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append(f"EXISTS (SELECT 1 FROM {schema}.events e WHERE e.id = runs.event_id "
                       "AND e.data ILIKE %s)")
        params.append(f"%{escaped}%")
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _activity_sql(schema: str) -> str:
    """Counts, failures, mean lag and p50/p95 duration per job and bucket, over the newest
    runs of the window (bounded by the LIMIT)."""
    return f"""
        WITH recent AS (
            SELECT job_id, (created_at - %s) / %s AS bucket, status,
                   ended_at - started_at AS duration, started_at - created_at AS lag
            FROM {schema}.runs WHERE id >= %s AND created_at >= %s ORDER BY id DESC LIMIT %s
        )
        SELECT job_id, bucket, count(*), count(*) FILTER (WHERE status = 'failed'),
               percentile_disc(0.5) WITHIN GROUP (ORDER BY duration),
               percentile_disc(0.95) WITHIN GROUP (ORDER BY duration),
               avg(lag)
        FROM recent GROUP BY job_id, bucket ORDER BY job_id, bucket"""
