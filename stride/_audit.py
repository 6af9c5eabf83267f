"""The audit trail of RLS bypasses: one record per `with_rls_bypass` block, kept in the store.

Where a record goes depends on what runs in the process:

- A worker runs an `AuditRecorder` (a Looper). Records are appended to its in-memory buffer
  and written in batches every `interval` seconds and when the worker stops: a bypass costs
  a list append, not a write. A worker killed with -9 loses at most the last interval's
  records (the runs themselves are retried, and their bypasses recorded again).
- Anywhere else (a web request, a script), there is no loop to flush later and maybe no clean
  exit, so a record is written before the bypass block returns: awaited by `async with` and
  the async forms, through a small private event-loop thread by a plain `with`. The store
  is the one of the `Stride` app registered with `register_app` (the app registers itself).

A record that cannot be written is never dropped silently: it is logged at ERROR level with
its content, kept, retried with the next write, and counted again at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
import weakref
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from stride import _codec
from stride._ids import new_id
from stride._looper import Looper
from stride.errors import ConfigurationError

if TYPE_CHECKING:
    from stride.security import SecurityContext, _State
    from stride.stores.base import Store

log = logging.getLogger("stride.audit")
T = TypeVar("T")

DEFAULT_FLUSH_SECONDS = 1.0
DEFAULT_MAX_PENDING = 100_000
WRITE_BATCH = 500
SYNC_WRITE_TIMEOUT_SECONDS = 30.0
Outcome = Literal["ok", "error"]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One RLS bypass: why (`tag`), where (app, job, run, step), on whose behalf, when, and how
    it ended (`outcome` "ok", or "error" with the exception's class name in `error`)."""

    id: str
    tag: str
    app_id: str | None
    job_id: str | None
    run_id: str | None
    step_id: str | None
    attempt: int | None
    actor_json: str | None
    started_at: int
    ended_at: int
    outcome: Outcome
    error: str | None = None

    def describe(self) -> str:
        """One line for the CLI: time, duration, tag, outcome and where it ran."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at / 1000))
        outcome = self.outcome if self.error is None else f"{self.outcome} ({self.error})"
        where = (f"job {self.job_id} run {self.run_id} step {self.step_id or '-'}"
                 if self.run_id else "outside a job")
        actor = f" as {self.actor_json}" if self.actor_json else ""
        return (f"{when}  {self.ended_at - self.started_at:>6} ms  {self.tag}  {outcome}  "
                f"{where}{actor}")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_record_id() -> str:
    return new_id()


def bypass_record(state: _State, ctx: SecurityContext, exc: BaseException | None
                  ) -> AuditRecord:
    """The record of a bypass that just ended; `ctx` is where it ran, `exc` what it raised."""
    assert ctx.tag is not None
    actor = _codec.dumps_str(dict(ctx.actor)) if ctx.actor is not None else None
    return AuditRecord(
        id=state.audit_id, tag=ctx.tag, app_id=ctx.app_id, job_id=ctx.job_id, run_id=ctx.run_id,
        step_id=ctx.step_id, attempt=ctx.attempt, actor_json=actor, started_at=state.started_at,
        ended_at=now_ms(), outcome="ok" if exc is None else "error",
        error=None if exc is None else type(exc).__name__)


class AuditRecorder:
    """Buffers audit records in memory; a Looper writes them to `store` in batches.

    The worker starts one with itself and stops it after its last run finished, which
    writes what is left. `flush()` writes everything buffered now (tests, shutdown).

    Example:
        recorder = AuditRecorder(store, app_id="porygon")
        recorder.start()
        ...
        await recorder.stop()
    """

    def __init__(self, store: Store, *, app_id: str, interval: float = DEFAULT_FLUSH_SECONDS,
                 max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if max_pending < WRITE_BATCH:
            raise ConfigurationError(
                f"audit max_pending must be >= {WRITE_BATCH}, got {max_pending}")
        self.store = store
        self.app_id = app_id
        self.max_pending = max_pending
        self._looper = Looper("audit-flusher", interval, self._tick)
        self._lock = threading.Lock()
        self._pending: list[AuditRecord] = []
        self._dropped = 0

    @property
    def pending(self) -> int:
        """Records buffered and not yet written."""
        return len(self._pending)

    def add(self, record: AuditRecord) -> None:
        """Buffer one record; safe from any thread."""
        with self._lock:
            self._pending.append(record)
            overflow = len(self._pending) - self.max_pending
            if overflow > 0:  # the store is down for long: keep the newest, say so loudly
                lost = self._pending[:overflow]
                del self._pending[:overflow]
                self._dropped += overflow
        if overflow > 0:
            for record in lost:
                log.error("audit record dropped (buffer full, store unreachable): %s",
                          _as_json(record))

    async def flush(self) -> int:
        """Write every buffered record; returns how many. On failure they stay buffered."""
        with self._lock:
            batch, self._pending = self._pending, []
        written = 0
        try:
            for start in range(0, len(batch), WRITE_BATCH):
                await self.store.record_audit(batch[start:start + WRITE_BATCH])
                written = start + len(batch[start:start + WRITE_BATCH])
        except BaseException:
            with self._lock:
                self._pending[:0] = batch[written:]
            raise
        return written

    async def _tick(self) -> None:
        if self._pending:
            await self.flush()

    def start(self) -> None:
        """Receive this app's records (and those made outside jobs) and flush periodically."""
        _registry.add_recorder(self)
        self._looper.start()

    async def stop(self) -> None:
        """Stop the periodic flush and write what is left; records go elsewhere after this."""
        _registry.remove_recorder(self)
        await self._looper.stop()
        try:
            await self.flush()
        except Exception as exc:
            for record in self._take_all():
                _registry.keep(record, exc)

    def _take_all(self) -> list[AuditRecord]:
        with self._lock:
            batch, self._pending = self._pending, []
        return batch


class AuditApp(Protocol):
    """What the fallback writer needs from an app: its id and its store (a `Stride`)."""

    app_id: str

    async def store(self) -> Store: ...


def register_app(app: AuditApp) -> None:
    """Make `app`'s store the place for records made where no recorder runs.

    `Stride.__init__` calls it; the latest app is the default, and records made inside a job
    go to the app with that job's `app_id` when it is registered.
    """
    _registry.add_app(app)


def record(rec: AuditRecord) -> None:
    """Hand a record over from sync code: buffered if a recorder runs, else written now."""
    recorder = _registry.recorder_for(rec.app_id)
    if recorder is not None:
        recorder.add(rec)
        return
    app = _registry.app_for(rec.app_id)
    if app is None:
        _registry.keep(rec, None)
        return
    try:
        _portal().call(_write(app, rec))
    except Exception as exc:
        _registry.keep(rec, exc)


async def record_async(rec: AuditRecord) -> None:
    """Hand a record over from async code: buffered if a recorder runs, else awaited."""
    recorder = _registry.recorder_for(rec.app_id)
    if recorder is not None:
        recorder.add(rec)
        return
    app = _registry.app_for(rec.app_id)
    if app is None:
        _registry.keep(rec, None)
        return
    try:
        await _write(app, rec)
    except Exception as exc:
        _registry.keep(rec, exc)


async def _write(app: AuditApp, rec: AuditRecord) -> None:
    earlier = _registry.take_kept()
    try:
        store = await app.store()
        await store.record_audit([*earlier, rec])
    except BaseException:
        _registry.restore(earlier)
        raise


def unwritten() -> list[AuditRecord]:
    """Records that could not be written yet (no app registered, or the store failed)."""
    return list(_registry.kept)


def _as_json(rec: AuditRecord) -> str:
    return _codec.dumps_str({name: getattr(rec, name) for name in AuditRecord.__slots__})


class _Registry:
    """Running recorders and registered apps, process-wide (guarded by one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recorders: list[AuditRecorder] = []
        self._apps: dict[str, weakref.ref[AuditApp]] = {}
        self._default: weakref.ref[AuditApp] | None = None
        self.kept: list[AuditRecord] = []

    def add_recorder(self, recorder: AuditRecorder) -> None:
        with self._lock:
            self._recorders.append(recorder)

    def remove_recorder(self, recorder: AuditRecorder) -> None:
        with self._lock:
            if recorder in self._recorders:
                self._recorders.remove(recorder)

    def recorder_for(self, app_id: str | None) -> AuditRecorder | None:
        with self._lock:
            for recorder in reversed(self._recorders):
                if app_id is None or recorder.app_id == app_id:
                    return recorder
        return None

    def add_app(self, app: AuditApp) -> None:
        ref = weakref.ref(app)
        with self._lock:
            self._apps[app.app_id] = ref
            self._default = ref

    def app_for(self, app_id: str | None) -> AuditApp | None:
        with self._lock:
            ref = self._apps.get(app_id) if app_id is not None else None
            ref = ref or self._default
        return ref() if ref is not None else None

    def keep(self, rec: AuditRecord, exc: BaseException | None) -> None:
        reason = (f"the store failed: {exc}" if exc is not None else
                  "no Stride app in this process to write it to (create the Stride app first)")
        log.error("audit record not written yet (%s); kept in memory: %s", reason, _as_json(rec))
        with self._lock:
            self.kept.append(rec)

    def take_kept(self) -> list[AuditRecord]:
        with self._lock:
            kept, self.kept = self.kept, []
        return kept

    def restore(self, records: list[AuditRecord]) -> None:
        with self._lock:
            self.kept[:0] = records

    def at_exit(self) -> None:
        with self._lock:
            left = len(self.kept) + sum(r.pending for r in self._recorders)
        if left:
            log.error("%d RLS bypass audit records were never written to the store (see the "
                      "errors above for their content)", left)


class _Portal:
    """An event loop in a daemon thread, for sync code that must await a store write."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stride-audit",
                                        daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(SYNC_WRITE_TIMEOUT_SECONDS)


_registry = _Registry()
_portal_lock = threading.Lock()
_portal_instance: _Portal | None = None


def _portal() -> _Portal:
    global _portal_instance
    with _portal_lock:
        if _portal_instance is None:
            _portal_instance = _Portal()
        return _portal_instance


atexit.register(_registry.at_exit)
