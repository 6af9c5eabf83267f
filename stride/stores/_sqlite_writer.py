"""Group commit for SQLite: one writer thread runs every write of this process.

SQLite allows one writer at a time, and each commit costs a WAL append and (with
`synchronous=FULL`) an fsync. So concurrent writes from many runs are queued, and the
writer runs everything queued in one transaction: hundreds of checkpoints cost one commit.
Each caller awaits its own future, which resolves only once its transaction committed.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stride.errors import StoreCorrupt, StoreError, StoreUnavailable

log = logging.getLogger("stride.store.sqlite")

WriteOp = Callable[[sqlite3.Connection], Any]
MAX_BATCH = 1024


@dataclass(slots=True)
class _Request:
    op: WriteOp
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass(slots=True)
class WriterStats:
    """What the writer committed so far. Cheap counters, so benchmarks and metrics can
    report transactions and rows per job instead of guessing them."""

    transactions: int = 0
    ops: int = 0
    rows_changed: int = 0


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
    """The writer thread. `submit` from any event loop; `stop` drains and joins."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], path: str) -> None:
        self._connect = connect
        self._path = path
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="stride-sqlite-writer", daemon=True)
        self._started = False
        self.stats = WriterStats()

    def start(self) -> None:
        self._started = True
        self._thread.start()

    def submit(self, op: WriteOp) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Request(op, future, loop))
        return future

    async def run(self, op: WriteOp) -> Any:
        result = await self.submit(op)
        if isinstance(result, OpFailed):
            raise result.error
        return result

    def stop(self) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._started = False

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            if conn is None:
                conn = self._open_or_fail(batch)
                if conn is None:
                    continue
            self._run_batch(conn, batch)
        if conn is not None:
            conn.close()

    def _open_or_fail(self, batch: list[_Request]) -> sqlite3.Connection | None:
        try:
            return self._connect()
        except sqlite3.Error as exc:
            self._fail_all(batch, translate(exc, self._path))
            return None

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Request]) -> None:
        try:
            results = self._transaction(conn, [r.op for r in batch])
        except sqlite3.Error as exc:
            if len(batch) == 1 or _is_fatal(exc):
                self._fail_all(batch, translate(exc, self._path))
                return
            # one op broke the shared transaction: run each alone so only it fails
            for request in batch:
                self._run_batch(conn, [request])
            return
        except Exception as exc:  # a bug in one op: isolate it the same way
            if len(batch) == 1:
                self._fail_all(batch, exc)
                return
            for request in batch:
                self._run_batch(conn, [request])
            return
        for request, result in zip(batch, results, strict=True):
            _resolve(request, result, None)

    def _transaction(self, conn: sqlite3.Connection, ops: list[WriteOp]) -> list[Any]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = [op(conn) for op in ops]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.stats.transactions += 1
        self.stats.ops += len(ops)
        self.stats.rows_changed = conn.total_changes
        return results

    def _fail_all(self, batch: list[_Request], error: BaseException) -> None:
        for request in batch:
            _resolve(request, None, error)


def _is_fatal(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "not a database" in text or "disk" in text


def _resolve(request: _Request, result: Any, error: BaseException | None) -> None:
    def deliver() -> None:
        if request.future.done():
            return
        if error is not None:
            request.future.set_exception(error)
        else:
            request.future.set_result(result)

    try:
        request.loop.call_soon_threadsafe(deliver)
    except RuntimeError:  # the caller's loop is closed; nobody is waiting any more
        log.debug("dropped a write result for a closed event loop")
