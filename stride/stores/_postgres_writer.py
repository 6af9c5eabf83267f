"""Group commit for PostgreSQL: the writes of many concurrent runs share one transaction.

A commit costs a round trip and a WAL flush, whatever it holds. So checkpoints, finishes,
reschedules and publishes are queued; one task takes everything queued (ops submitted in
the same event-loop tick, plus all that arrived while the previous transaction was in
flight), merges the ops of each kind into one array statement, and sends BEGIN, those
statements, at most one NOTIFY and COMMIT in a single pipeline: one round trip. Each caller
awaits its own future, resolved only after COMMIT.

An op that breaks the shared transaction does not fail its batch-mates: the batch is rerun
one op per transaction. When the server is unreachable the batch is retried with backoff
until each op's own patience runs out; only then does that op fail with StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import psycopg_pool

from stride.errors import LeaseLost
from stride.stores._postgres_conn import PgTarget, is_unavailable, translate, unavailable
from stride.stores.base import Lease

log = logging.getLogger("stride.store.postgres")

MAX_BATCH = 512
_BACKOFF_START = 0.05
_BACKOFF_MAX = 1.0


class OpKind(Protocol):
    """One kind of write: how a batch of its items becomes one statement, and back."""

    @property
    def name(self) -> str: ...

    @property
    def sql(self) -> str: ...

    def params(self, items: Sequence[Any], now: int) -> Sequence[Any]: ...

    def results(self, items: Sequence[Any], rows: list[tuple[Any, ...]]) -> list[Any]:
        """One value per item; an exception instance fails that item's caller alone."""
        ...

    def wakes(self, items: Sequence[Any], now: int) -> bool:
        """Whether the batch makes runs due now, so idle workers should be notified."""
        ...

    def lease(self, item: Any) -> Lease | None: ...


@dataclass(slots=True)
class WriteStats:
    """What the writer committed so far (same fields as the SQLite writer's counters), so
    benchmarks and metrics can report ops per transaction: the group commit at work."""

    transactions: int = 0
    ops: int = 0
    rows_changed: int = 0
    retries: int = 0


@dataclass(slots=True)
class _Op:
    kind: OpKind
    item: Any
    future: asyncio.Future[Any]
    deadline: float


@dataclass(slots=True)
class _Outage:
    """Backoff state while the server is unreachable."""

    delay: float = _BACKOFF_START
    checked: bool = False


class GroupCommitWriter:
    """Queues write ops and commits them in shared transactions on pooled connections."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Any], target: PgTarget, *,
                 channel: str, notify_sql: str, pool_timeout: float,
                 on_abandoned: Callable[[list[Lease]], None]) -> None:
        self._pool = pool
        self._target = target
        self._channel = channel
        self._notify_sql = notify_sql
        self._pool_timeout = pool_timeout
        self._on_abandoned = on_abandoned
        self._pending: list[_Op] = []
        self._task: asyncio.Task[None] | None = None
        self.stats = WriteStats()

    def submit(self, kind: OpKind, item: Any, *, patience: float) -> asyncio.Future[Any]:
        """Queue one op; the future resolves after its transaction committed."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Op(kind, item, future, time.monotonic() + patience))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="stride-pg-writer")
        return future

    async def close(self) -> None:
        """Wait for everything queued to be committed (or failed)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # let ops submitted in this same tick join the batch
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._flush(batch)
        finally:
            self._task = None

    async def _flush(self, batch: list[_Op]) -> None:
        outage: _Outage | None = None
        while batch:
            try:
                results = await self._transaction(batch)
            except Exception as exc:
                if is_unavailable(exc):
                    self.stats.retries += 1
                    outage = outage or _Outage()
                    batch = await self._wait_out(batch, exc, outage)
                    continue
                await self._isolate(batch, exc)
                return
            for op, result in zip(batch, results, strict=True):
                _settle(op, result)
            self._hand_back_refused(batch, results)
            return

    def _hand_back_refused(self, batch: list[_Op], results: list[Any]) -> None:
        """Leases refused as lost are handed back all the same: a no-op when another worker
        holds the run, and the way out if this worker still holds it unknowingly."""
        refused = [lease for op, result in zip(batch, results, strict=True)
                   if isinstance(result, LeaseLost) and (lease := op.kind.lease(op.item))]
        if refused:
            self._on_abandoned(refused)

    async def _isolate(self, batch: list[_Op], exc: Exception) -> None:
        """One op broke the shared transaction: rerun each alone so only it fails."""
        if len(batch) == 1:
            driver_error = isinstance(exc, psycopg.Error)
            _settle(batch[0], translate(self._target, exc) if driver_error else exc)
            return
        log.debug("group commit of %d ops failed (%s); rerunning them one by one",
                  len(batch), exc)
        for op in batch:
            await self._flush([op])

    async def _wait_out(self, batch: list[_Op], exc: Exception, outage: _Outage) -> list[_Op]:
        """Fail the ops whose patience ran out; back off; return the ops still waiting."""
        now = time.monotonic()
        expired = [op for op in batch if op.deadline <= now]
        if expired:
            error = unavailable(self._target, exc)
            for op in expired:
                _settle(op, error)
            self._on_abandoned([lease for op in expired
                                if (lease := op.kind.lease(op.item)) is not None])
        if not outage.checked:
            outage.checked = True
            # drop the pool's dead connections now rather than one failed op at a time
            await _check_pool(self._pool)
        await asyncio.sleep(outage.delay)
        outage.delay = min(outage.delay * 2, _BACKOFF_MAX)
        return [op for op in batch if op.deadline > now]

    async def _transaction(self, batch: list[_Op]) -> list[Any]:
        groups: dict[str, tuple[OpKind, list[Any]]] = {}
        for op in batch:
            groups.setdefault(op.kind.name, (op.kind, []))[1].append(op.item)
        timeout = max(0.1, min(self._pool_timeout, min(op.deadline for op in batch)
                                - time.monotonic()))
        async with self._pool.connection(timeout=timeout) as conn:
            # "now" (received_at, ended_at) is read once the connection is in hand, as close
            # to the commit as the client can: a wait registered meanwhile compares its start
            # time with these stamps
            now = time.time_ns() // 1_000_000
            statements = [(kind.sql, kind.params(items, now))
                          for kind, items in groups.values()]
            if any(kind.wakes(items, now) for kind, items in groups.values()):
                statements.append((self._notify_sql, (self._channel,)))
            rows = await transaction(conn, statements)
        self.stats.transactions += 1
        self.stats.ops += len(batch)
        self.stats.rows_changed += sum(len(kind_rows) for kind_rows in rows)
        # each kind's results are in the order its ops were queued, as are the ops in batch
        per_kind = {name: iter(kind.results(items, kind_rows)) for (name, (kind, items)),
                    kind_rows in zip(groups.items(), rows, strict=False)}
        return [next(per_kind[op.kind.name]) for op in batch]


async def transaction(conn: psycopg.AsyncConnection[Any],
                      statements: Sequence[tuple[str, Sequence[Any] | Mapping[str, Any]]],
                      *, durable: bool = True) -> list[list[tuple[Any, ...]]]:
    """Run `statements` in one transaction on an autocommit connection, sent as one pipeline
    (BEGIN ... COMMIT in a single round trip); returns each statement's rows.

    `durable=False` commits without waiting for the WAL flush. Only for writes that a crash
    may lose without harm: lease changes (a lost claim or heartbeat just means the lease
    is gone, and every write that matters checks the lease) and requeues (redone by
    reclaim). WAL is sequential, so any later durable commit makes them durable too.
    """
    if len(statements) == 1 and durable:  # one statement is its own transaction
        cur = await conn.execute(*statements[0])
        return [await cur.fetchall() if cur.description is not None else []]
    try:
        async with conn.pipeline() as pipeline:
            await conn.execute("BEGIN")
            if not durable:
                await conn.execute("SET LOCAL synchronous_commit TO off")
            cursors = [await conn.execute(sql, params) for sql, params in statements]
            await conn.execute("COMMIT")
            await pipeline.sync()
            return [await cur.fetchall() if cur.description is not None else []
                    for cur in cursors]
    except BaseException:
        await _rollback_quietly(conn)
        raise


async def _rollback_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):  # a broken connection: the pool discards it
        await conn.rollback()


async def _check_pool(pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
    try:
        await asyncio.wait_for(pool.check(), 2.0)
    except Exception as exc:  # best effort: the retries work without it
        log.debug("pool check failed: %s", exc)


def _settle(op: _Op, result: Any) -> None:
    if op.future.done():
        return
    if isinstance(result, BaseException):
        op.future.set_exception(result)
    else:
        op.future.set_result(result)
