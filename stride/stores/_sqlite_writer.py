"""Group commit for SQLite: every write of a process runs on its event loop, in batches.

SQLite allows one writer at a time. Writes submitted while the loop runs one iteration
(the checkpoints of many runs, a claim, some completions) run together at its end, in one
transaction: hundreds of checkpoints cost one commit. Each caller awaits its own future,
which resolves only once its transaction committed.

Why on the loop thread, not in a writer thread: under load the loop thread holds the GIL,
and the driver releases it around every statement, so a writer thread waited up to the
interpreter's switch interval (5 ms) after each statement, while holding SQLite's write
lock, and the other processes waited for that lock as long (measured: 20 ms for a
transaction of 60 small writes). On the loop a transaction is a few hundred microseconds.
The lock is taken with `BEGIN IMMEDIATE` and no busy timeout: while another process holds
it, the writer retries after a short sleep *on the loop* (runs go on meanwhile), instead of
SQLite's busy handler, which blocks the thread and sleeps in coarse 1, 2, 5, 10 ms steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stride.errors import StoreCorrupt, StoreError, StoreUnavailable

log = logging.getLogger("stride.store.sqlite")

WriteOp = Callable[[sqlite3.Connection], Any]
MAX_BATCH = 1024
LOCK_RETRY_FIRST_SECONDS = 0.0002
LOCK_RETRY_MAX_SECONDS = 0.002


@dataclass(slots=True)
class _Request:
    op: WriteOp
    future: asyncio.Future[Any]


@dataclass(slots=True)
class WriterStats:
    """What the writer committed so far. Cheap counters, so benchmarks and metrics can
    report transactions and rows per job instead of guessing them."""

    transactions: int = 0
    ops: int = 0
    rows_changed: int = 0
    lock_retries: int = 0
    lock_wait_seconds: float = 0.0


class OpFailed(Exception):
    """Returned (not raised) by an op whose failure must not roll back its batch-mates."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def translate(exc: sqlite3.Error, path: str) -> StoreError:
    """Turn a driver error into a one-line StoreError that says what to do."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StoreUnavailable(
            f"SQLite database {path} stayed locked by another process; "
            "check for a stuck process holding it, or raise the busy timeout"
        )
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return StoreCorrupt(
            f"{path} is not a readable Stride SQLite database ({text}); "
            "point STRIDE_DATABASE_URL at another file or restore it from a backup"
        )
    if "unable to open" in text or "readonly" in text or "disk" in text:
        return StoreUnavailable(f"cannot write SQLite database {path}: {text}")
    return StoreError(f"SQLite error on {path}: {text}")


class SqliteWriter:
    """The writer of one process, bound to the event loop that opened the store.

    `submit` from that loop (a call from another loop is relayed to it); `stop` commits
    what is queued and closes the connection.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], path: str, *,
                 busy_timeout_ms: int) -> None:
        self._connect = connect
        self._path = path
        self._busy_timeout = busy_timeout_ms / 1000
        self._pending: list[_Request] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._locked_since: float | None = None
        self._closed = False
        self.stats = WriterStats()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closed = False

    def submit(self, op: WriteOp) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if self._loop is None or not self._loop.is_running():
            self._loop = loop  # the loop that opened the store ended: this one takes over
        if loop is not self._loop:
            return self._relay(loop, op)
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(StoreUnavailable(f"the SQLite store {self._path} is closed"))
            return future
        self._pending.append(_Request(op, future))
        if self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        return future

    def _relay(self, loop: asyncio.AbstractEventLoop, op: WriteOp) -> asyncio.Future[Any]:
        """A write from another event loop (another thread): run it on the owner's loop."""
        async def submit_there() -> Any:
            return await self.submit(op)

        assert self._loop is not None
        return asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(submit_there(), self._loop), loop=loop)

    async def run(self, op: WriteOp) -> Any:
        result = await self.submit(op)
        if isinstance(result, OpFailed):
            raise result.error
        return result

    async def stop(self) -> None:
        """Commit what is queued (within the busy timeout), then close the connection."""
        if self._loop is not None and self._loop.is_running() \
                and asyncio.get_running_loop() is not self._loop:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.stop(), self._loop))
            return
        pending = [request.future for request in self._pending]
        if pending:
            await asyncio.wait(pending)
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- one flush: take the lock, run the batch, commit ---------------------------

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._pending:
            return
        conn = self._connection()
        if conn is None or not self._begin(conn):
            return
        batch = self._pending[:MAX_BATCH]
        del self._pending[:MAX_BATCH]
        self._run_batch(conn, batch)
        if self._pending:
            self._schedule(0.0)

    def _schedule(self, delay: float) -> None:
        assert self._loop is not None
        if delay > 0:
            self._flush_handle = self._loop.call_later(delay, self._flush)
        else:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _connection(self) -> sqlite3.Connection | None:
        if self._conn is None:
            try:
                conn = self._connect()
                conn.execute("PRAGMA busy_timeout = 0")  # lock waits are ours: see _begin
            except sqlite3.Error as exc:
                self._fail_pending(translate(exc, self._path))
                return None
            self._conn = conn
        return self._conn

    def _begin(self, conn: sqlite3.Connection) -> bool:
        """Take the write lock now; if another process holds it, retry soon and say False."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not (_is_busy(exc) and self._retry_later()):
                self._locked_since = None
                self._fail_pending(translate(exc, self._path))
            return False
        if self._locked_since is not None:
            self.stats.lock_wait_seconds += time.monotonic() - self._locked_since
            self._locked_since = None
        return True

    def _retry_later(self) -> bool:
        """Schedule the next try of the lock without blocking the loop: after 0.2 ms at
        first, then about as long as already waited, at most 2 ms (SQLite's own busy
        handler sleeps 1, 2, 5, 10 ... ms and blocks the thread). False after the timeout."""
        now = time.monotonic()
        if self._locked_since is None:
            self._locked_since = now
        waited = now - self._locked_since
        if waited > self._busy_timeout:
            return False
        self.stats.lock_retries += 1
        self._schedule(min(LOCK_RETRY_MAX_SECONDS, max(LOCK_RETRY_FIRST_SECONDS, waited)))
        return True

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Request]) -> None:
        """Run `batch` in the open transaction and commit; resolve every caller's future."""
        try:
            outcomes = _run_ops(conn, batch, self._path)
            conn.execute("COMMIT")
        except Exception as exc:
            _rollback(conn)
            for request in batch:
                _resolve(request, None, _error_for(exc, self._path))
            return
        except BaseException:
            _rollback(conn)
            raise
        self.stats.transactions += 1
        self.stats.ops += len(batch)
        self.stats.rows_changed = conn.total_changes
        for request, (result, failure) in zip(batch, outcomes, strict=True):
            _resolve(request, result, failure)

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending = self._pending, []
        for request in pending:
            _resolve(request, None, error)


Outcome = tuple[Any, BaseException | None]


def _run_ops(conn: sqlite3.Connection, batch: list[_Request], path: str) -> list[Outcome]:
    """Run every op in one go (the common case). If one raises, roll back to the start of
    the batch and run each in its own savepoint, so that only the broken op fails; the
    write lock is kept throughout. A fatal error (disk, corruption) fails them all."""
    conn.execute("SAVEPOINT batch")
    try:
        outcomes: list[Outcome] = [(request.op(conn), None) for request in batch]
    except Exception as exc:
        if _is_fatal_error(exc, conn):
            raise
        conn.execute("ROLLBACK TO batch")
        if len(batch) == 1:
            outcomes = [(None, _error_for(exc, path))]
        else:
            outcomes = [_run_alone(conn, request.op, path) for request in batch]
    conn.execute("RELEASE batch")
    return outcomes


def _run_alone(conn: sqlite3.Connection, op: WriteOp, path: str) -> Outcome:
    conn.execute("SAVEPOINT op")
    try:
        result = op(conn)
    except Exception as exc:
        if _is_fatal_error(exc, conn):
            raise
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return None, _error_for(exc, path)
    conn.execute("RELEASE op")
    return result, None


def _error_for(exc: Exception, path: str) -> BaseException:
    return translate(exc, path) if isinstance(exc, sqlite3.Error) else exc


def _is_fatal_error(exc: Exception, conn: sqlite3.Connection) -> bool:
    """Errors after which the transaction cannot go on (SQLite may have rolled it back)."""
    return not conn.in_transaction or (isinstance(exc, sqlite3.Error) and _is_fatal(exc))


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _is_fatal(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "not a database" in text or "disk" in text


def _resolve(request: _Request, result: Any, error: BaseException | None) -> None:
    if request.future.done():  # the caller was cancelled; the write stands
        return
    if error is not None:
        request.future.set_exception(error)
    else:
        request.future.set_result(result)
