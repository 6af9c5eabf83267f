"""The Stride facade: job registry, event types, dispatch, workers and run queries. No SQL."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel
from typing_extensions import Unpack

from stride import _audit, _codec
from stride._audit import AuditRecord
from stride._flow_decide import RunFlow, without_skips
from stride._flow_keys import FlowKeys, has_flow
from stride._ids import new_id
from stride._waits import (
    FAILED_EVENT,
    FAILURE_SUFFIX,
    INVOKE_EVENT,
    apply_cancel_checks,
    event_dict,
    new_run,
)
from stride._worker import Worker, WorkerOptions
from stride.context import Context, SyncContext
from stride.errors import (
    ConfigurationError,
    DuplicateJobError,
    InvalidEventError,
    RunNotFound,
    WaitTimeout,
)
from stride.events import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    EventType,
    OutgoingEvent,
    check_payload_size,
    validate_event_name,
)
from stride.jobs import (
    Backoff,
    CronTrigger,
    EventTrigger,
    Job,
    JobConfig,
    JobOptions,
    TriggerSpec,
    build_job,
    parse_duration,
)
from stride.runs import Run
from stride.security import current_actor
from stride.stores.base import (
    FINISHED_STATUSES,
    EventRow,
    NewEvent,
    NewRun,
    RunFilter,
    Store,
    open_store_for_url,
)
from stride.stores.sqlite import default_sqlite_url

M = TypeVar("M", bound=BaseModel)
H = TypeVar("H", bound=Callable[..., Any])
DataT = TypeVar("DataT")
R = TypeVar("R")

DEFAULT_DEDUPE_WINDOW = "24h"
DATABASE_URL_ENV = "STRIDE_DATABASE_URL"
EventInput = OutgoingEvent | Mapping[str, Any] | tuple[str, Any]


class JobDecorator(Generic[DataT]):
    """Returned by `define_job(...)`: decorate an `async def` or a plain `def` handler."""

    def __init__(self, register: Callable[[Callable[..., Any]], Job[Any, Any]]) -> None:
        self._register = register

    @overload
    def __call__(self, handler: Callable[[Context[DataT]], Awaitable[R]]) -> Job[DataT, R]: ...

    @overload
    def __call__(self, handler: Callable[[SyncContext[DataT]], R]) -> Job[DataT, R]: ...

    def __call__(self, handler: Callable[..., Any]) -> Job[Any, Any]:
        return self._register(handler)


class Stride:
    """One app: its jobs and event types, and the store they run on.

    Example:
        jobs = Stride(app_id="porygon")   # STRIDE_DATABASE_URL, else ./.stride/stride.db

        @jobs.define_job(id="hello", trigger="demo/hello")
        async def hello(ctx: Context[dict[str, Any]]) -> str:
            return await ctx.step.run("greet", lambda: "hi")
    """

    def __init__(self, app_id: str, *, database_url: str | None = None, strict: bool = False,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 dedupe_window: float | timedelta | str = DEFAULT_DEDUPE_WINDOW,
                 backoff: Backoff | None = None, logger: logging.Logger | None = None) -> None:
        if not app_id or not isinstance(app_id, str):
            raise ConfigurationError(f"app_id must be a non-empty string, got {app_id!r}")
        if max_payload_bytes < 1:
            raise ConfigurationError(f"max_payload_bytes must be >= 1, got {max_payload_bytes}")
        self.app_id = app_id
        self.database_url = database_url or os.environ.get(DATABASE_URL_ENV) or default_sqlite_url()
        from stride.stores.base import parse_database_url

        parse_database_url(self.database_url)
        self.strict = strict
        self.max_payload_bytes = max_payload_bytes
        self.dedupe_ms = int(parse_duration(dedupe_window, what="dedupe_window") * 1000)
        self.backoff = backoff or Backoff()
        self.logger = logger or logging.getLogger(f"stride.app.{app_id}")
        self._jobs: dict[str, Job[Any, Any]] = {}
        self._routes: dict[str, list[tuple[Job[Any, Any], EventTrigger]]] = {}
        self._flows: dict[str, FlowKeys] = {}  # jobs with flow control, by id
        self._event_types: dict[str, EventType[Any]] = {}
        self._stores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                asyncio.Task[Store]] = weakref.WeakKeyDictionary()
        self._portal: _SyncPortal | None = None
        _audit.register_app(self)  # bypasses outside a worker are written to this app's store

    # -- definitions -----------------------------------------------------------

    @property
    def jobs(self) -> Mapping[str, Job[Any, Any]]:
        """Registered jobs by id."""
        return dict(self._jobs)

    def event(self, name: str, model: type[M]) -> EventType[M]:
        """Bind an event name to a pydantic model; dispatch validates data against it."""
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigurationError(f"event {name!r}: {model!r} is not a pydantic model class")
        event_type = EventType(name, model)
        known = self._event_types.get(name)
        if known is not None and known.model is not model:
            raise ConfigurationError(
                f"event {name!r} is already defined with {known.model.__name__}")
        self._event_types[name] = event_type
        return event_type

    @overload
    def define_job(self, *, id: str, trigger: EventType[M] | Sequence[EventType[M]],
                   **options: Unpack[JobOptions]) -> JobDecorator[M]: ...

    @overload
    def define_job(self, *, id: str, trigger: str | EventTrigger | CronTrigger
                   | Sequence[TriggerSpec],
                   **options: Unpack[JobOptions]) -> JobDecorator[dict[str, Any]]: ...

    @overload
    def define_job(self, config: JobConfig, trigger: EventType[M],
                   handler: Callable[[Context[M]], Awaitable[R]]) -> Job[M, R]: ...

    @overload
    def define_job(self, config: JobConfig, trigger: EventType[M],
                   handler: Callable[[SyncContext[M]], R]) -> Job[M, R]: ...

    @overload
    def define_job(self, config: JobConfig, trigger: str | EventTrigger | CronTrigger
                   | Sequence[TriggerSpec],
                   handler: Callable[..., Any]) -> Job[dict[str, Any], Any]: ...

    def define_job(self, config: JobConfig | None = None, trigger: Any = None,
                   handler: Callable[..., Any] | None = None, *, id: str | None = None,
                   **options: Any) -> Any:
        """Register a job: as a decorator with keyword options, or as `(config, trigger, handler)`.

        Options: name, retries, concurrency, backoff, cancel_on, timeouts, on_failure,
        throttle, rate_limit, debounce, priority, batch_events, idempotency, singleton.

        Example:
            @jobs.define_job(id="process-context-file", retries=3, concurrency=5,
                             trigger=file_uploaded)
            async def process(ctx: Context[FileUploaded]) -> dict[str, Any]: ...
        """
        if config is not None:
            if handler is None or trigger is None:
                raise ConfigurationError("define_job(config, trigger, handler) needs all three")
            return self._register(handler, trigger=trigger, id=config.id, **config.options())
        if id is None or trigger is None:
            raise ConfigurationError("define_job needs id=... and trigger=...")
        job_id = id
        return JobDecorator(lambda fn: self._register(fn, trigger=trigger, id=job_id, **options))

    def _register(self, handler: Callable[..., Any], *, trigger: Any, id: str,
                  **options: Unpack[JobOptions]) -> Job[Any, Any]:
        if id in self._jobs:
            raise DuplicateJobError(f"job id {id!r} is defined twice in app {self.app_id!r}")
        job = build_job(id=id, handler=handler, trigger=trigger, default_backoff=self.backoff,
                        **options)
        for event_type in job.event_types.values():
            self._event_types.setdefault(event_type.name, event_type)
        self._jobs[id] = job
        for trig in job.triggers:
            if isinstance(trig, EventTrigger):
                self._routes.setdefault(trig.event, []).append((job, trig))
        if has_flow(job.flow):
            self._flows[id] = FlowKeys(job, self.app_id)
        if job.on_failure is not None:
            self._register_failure_handler(job)
        return job

    def _register_failure_handler(self, job: Job[Any, Any]) -> None:
        """The handler runs as its own job, `<job-id>-on-failure`, started by the failed
        run's finish (not routed: dispatching its event by hand starts nothing)."""
        failure_id = job.id + FAILURE_SUFFIX
        if failure_id in self._jobs:
            raise DuplicateJobError(f"job id {failure_id!r} (the on-failure handler of "
                                    f"{job.id!r}) is defined twice in app {self.app_id!r}")
        assert job.on_failure is not None
        self._jobs[failure_id] = build_job(id=failure_id, handler=job.on_failure,
                                           trigger=FAILED_EVENT, default_backoff=self.backoff)

    def on_failure(self, job: Job[Any, Any]) -> Callable[[H], H]:
        """Decorator form of `define_job(on_failure=...)`: the handler runs once after a run
        of `job` failed for good, with `ctx.event.data` = {run_id, job_id, error, event}.

        Example:
            @jobs.on_failure(process)
            async def process_failed(ctx: Context[dict[str, Any]]) -> None: ...
        """
        def register(handler: H) -> H:
            if job.on_failure is not None:
                raise ConfigurationError(f"job {job.id!r} already has an on_failure handler")
            job.on_failure = handler
            self._register_failure_handler(job)
            return handler

        return register

    # -- the store -------------------------------------------------------------

    async def store(self) -> Store:
        """The store for the running event loop, opened (and migrated) on first use."""
        loop = asyncio.get_running_loop()
        task = self._stores.get(loop)
        if task is None or (task.done() and task.exception() is not None):
            task = loop.create_task(self._open_store())
            self._stores[loop] = task
        return await asyncio.shield(task)

    async def _open_store(self) -> Store:
        store = open_store_for_url(self.database_url)
        await store.open()
        return store

    async def aclose(self) -> None:
        """Close the store of the running loop (and the sync portal, if one was started)."""
        task = self._stores.pop(asyncio.get_running_loop(), None)
        if task is not None and task.done() and task.exception() is None:
            await task.result().close()
        if self._portal is not None:
            self._portal.stop()
            self._portal = None

    async def __aenter__(self) -> Stride:
        await self.store()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- dispatch ----------------------------------------------------------------

    @overload
    async def dispatch(self, event: EventType[M], data: M | Mapping[str, Any], *,
                       id: str | None = None, user: Mapping[str, Any] | None = None,
                       conn: Any = None) -> list[str]: ...

    @overload
    async def dispatch(self, event: str, data: Mapping[str, Any] | BaseModel | None = None, *,
                       id: str | None = None, user: Mapping[str, Any] | None = None,
                       conn: Any = None) -> list[str]: ...

    async def dispatch(self, event: EventType[Any] | str, data: Any = None, *,
                       id: str | None = None, user: Mapping[str, Any] | None = None,
                       conn: Any = None) -> list[str]:
        """Store one event and the runs it triggers, in one transaction; return its id.

        When this returns, the event and every run it triggers are committed. On PostgreSQL,
        `conn=` (the app's own psycopg connection, inside its transaction) makes the event
        commit with the app's transaction, or vanish with its rollback.

        Example:
            [event_id] = await jobs.dispatch("context/file.uploaded", {"file_id": "f1"})
        """
        name = event.name if isinstance(event, EventType) else event
        item = OutgoingEvent(name, {} if data is None else data, id, user)
        return await self.dispatch_many([item], conn=conn)

    async def dispatch_many(self, events: Iterable[EventInput], *, conn: Any = None) -> list[str]:
        """Dispatch several events in one transaction (all or none are accepted)."""
        batch = [self._prepare(self._outgoing(item)) for item in events]
        if not batch:
            return []
        store = await self.store()
        result = await store.publish(batch, dedupe_ms=self.dedupe_ms, conn=conn)
        store.notify_local()
        if result.checks:  # cancel_on conditions with an if_ filter: CEL runs here
            await apply_cancel_checks(store, result.checks)
        return [event.id for event, _ in batch]

    def dispatch_sync(self, event: EventType[Any] | str, data: Any = None, *,
                      id: str | None = None, user: Mapping[str, Any] | None = None,
                      conn: Any = None) -> list[str]:
        """`dispatch` for sync code (Django/Flask views, scripts); blocks until committed.

        On PostgreSQL `conn=` may be the app's sync psycopg connection (Django's
        `connection.connection`): the event then commits with the app's transaction.
        """
        return self._sync(self.dispatch(event, data, id=id, user=user, conn=conn))

    def _sync(self, coro: Coroutine[Any, Any, R]) -> R:
        if self._portal is None:
            self._portal = _SyncPortal()
        return self._portal.call(coro)

    def _outgoing(self, item: EventInput) -> OutgoingEvent:
        if isinstance(item, OutgoingEvent):
            return item
        if isinstance(item, tuple) and len(item) == 2:
            return OutgoingEvent(item[0], item[1])
        if isinstance(item, Mapping) and "name" in item:
            return OutgoingEvent(item["name"], item.get("data", {}), item.get("id"),
                                 item.get("user"))
        raise InvalidEventError(
            f"cannot dispatch {item!r}: give an event_type.create(...), a (name, data) tuple, "
            "or a dict with 'name' and 'data'")

    def _prepare(self, item: OutgoingEvent) -> tuple[NewEvent, list[NewRun]]:
        name = validate_event_name(item.name)
        data = self._validate_data(name, item.data)
        actor = item.user if item.user is not None else current_actor()  # set_actor/middleware
        if actor is not None and not isinstance(actor, Mapping):
            raise InvalidEventError(
                f"event {name!r}: user must be a JSON object describing the actor, e.g. "
                f"{{'id': 'u1'}}; got {type(actor).__name__}")
        user = dict(actor) if actor is not None else None
        check_payload_size(name, data, user, self.max_payload_bytes)
        event_id = item.id if item.id is not None else new_id()
        if not isinstance(event_id, str) or not event_id or len(event_id) > 128:
            raise InvalidEventError(
                f"event id must be a string of 1-128 characters, got {event_id!r}")
        now = time.time_ns() // 1_000_000
        new_event = NewEvent(event_id, name, _codec.dumps_str(data), _codec.dumps_str(user)
                             if user is not None else None, now)
        routes = self._routes.get(name, ())
        seen = {"id": event_id, "name": name, "data": data, "user": user, "ts": now}
        if any(trigger.condition is not None for _, trigger in routes):
            routes = [(job, trigger) for job, trigger in routes if trigger.matches(seen)]
        flows = self._flows
        runs = [self._new_run(job, event_id, data, user, now,
                              flows[job.id].run_flow(seen) if job.id in flows else None)
                for job, _ in routes]
        return new_event, runs

    def _new_run(self, job: Job[Any, Any], event_id: str, data: Any, user: Any,
                 now: int, flow: RunFlow | None) -> NewRun:
        """A run of `job` for the event, with its flow control's keys evaluated (`flow`)."""
        if not job.cancel_on and job.timeouts is None:
            return NewRun(new_id(), self.app_id, job.id, event_id, now, flow)
        return new_run(self.app_id, job, event_id, {"data": data, "user": user}, now, new_id(),
                       flow=flow)

    def _child_run(self, job: Job[Any, Any] | str, data: Any, *, event_id: str,
                   user: dict[str, Any] | None) -> tuple[NewEvent, list[NewRun]]:
        """The event and run of an invoked job (`step.invoke`); data is validated against
        the job's event model when it has exactly one."""
        target = self._jobs.get(job if isinstance(job, str) else job.id)
        if target is None:
            raise ConfigurationError(f"step.invoke: no job {job!r} in app {self.app_id!r}; "
                                     f"known: {sorted(self._jobs)}")
        types = list(target.event_types.values())
        if len(types) == 1:
            payload = types[0].to_json_data(data)
        elif isinstance(data, BaseModel):
            payload = data.model_dump(mode="json")
        elif isinstance(data, Mapping):
            payload = dict(data)
        else:
            raise InvalidEventError(f"step.invoke of {target.id!r}: data must be a JSON "
                                    f"object (dict), got {type(data).__name__}")
        now = time.time_ns() // 1_000_000
        event = NewEvent(event_id, INVOKE_EVENT, _codec.dumps_str(payload),
                         _codec.dumps_str(user) if user is not None else None, now)
        return event, [new_run(self.app_id, target, event_id, {"data": payload, "user": user},
                               now, new_id(), flow=self._unskipped_flow(target.id, event))]

    def _unskipped_flow(self, job_id: str, event: EventRow | NewEvent) -> RunFlow | None:
        """An invoked or replayed run's flow control (`without_skips`), read from its event."""
        keys = self._flows.get(job_id)
        return without_skips(keys.run_flow(event_dict(event))) if keys is not None else None

    def _validate_data(self, name: str, data: Any) -> dict[str, Any]:
        event_type = self._event_types.get(name)
        if event_type is not None:
            return event_type.to_json_data(data)
        if self.strict:
            raise InvalidEventError(
                f"event {name!r} is not defined and the app is strict; define it with "
                f"jobs.event({name!r}, Model) or turn strict off")
        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json")
        if not isinstance(data, Mapping):
            raise InvalidEventError(
                f"event {name!r}: data must be a JSON object (dict), got {type(data).__name__}")
        return dict(data)

    # -- workers -----------------------------------------------------------------

    def worker(self, *, concurrency: int = 10, lease: float | timedelta | str = 30.0,
               grace: float | timedelta | str = 10.0, jobs: Sequence[str] | None = None,
               retention: float | timedelta | str = "7d") -> WorkerHandle:
        """An in-process worker for an `async with` block (or `await handle.run()` forever).

        `retention`: finished runs and old events are pruned after this long.
        """
        selected = self._select_jobs(jobs)
        options = WorkerOptions(concurrency=concurrency,
                                lease_seconds=parse_duration(lease, what="lease"),
                                grace_seconds=parse_duration(grace, what="grace"),
                                retention_seconds=parse_duration(retention, what="retention"))
        return WorkerHandle(self, selected, options)

    def _select_jobs(self, job_ids: Sequence[str] | None) -> dict[str, Job[Any, Any]]:
        if job_ids is None:
            return dict(self._jobs)
        unknown = [job_id for job_id in job_ids if job_id not in self._jobs]
        if unknown:
            raise ConfigurationError(f"unknown job ids {unknown}; known: {sorted(self._jobs)}")
        selected = [*job_ids, *(job_id + FAILURE_SUFFIX for job_id in job_ids
                                if job_id + FAILURE_SUFFIX in self._jobs)]  # with handlers
        return {job_id: self._jobs[job_id] for job_id in selected}

    # -- runs ------------------------------------------------------------------

    async def get_runs(self, *, event_id: str | None = None, job_id: str | None = None,
                       status: str | None = None, limit: int = 50) -> list[Run]:
        """Runs, newest first, without their steps (use `get_run` for those)."""
        store = await self.store()
        rows = await store.list_runs(RunFilter(job_id=job_id, status=status, event_id=event_id,
                                               limit=limit))
        return [Run.from_row(row) for row in rows]

    async def get_run(self, run_id: str) -> Run:
        """One run with its steps, attempts and errors."""
        row = await (await self.store()).get_run(run_id)
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return Run.from_row(row)

    async def cancel(self, run_id: str, *, reason: str = "cancelled", by: str = "api") -> bool:
        """Cancel a run that has not finished. A running run stops before its next step.

        Returns False if the run had already finished (nothing changed).
        """
        await self.get_run(run_id)  # RunNotFound for unknown ids
        cancelled = await (await self.store()).cancel_runs(
            [run_id], error_json=_cancellation(reason, by))
        return bool(cancelled)

    async def cancel_many(self, *, job_id: str, since_ms: int | None = None,
                          until_ms: int | None = None, reason: str = "bulk cancel",
                          by: str = "api") -> list[str]:
        """Cancel every unfinished run of `job_id` created in [since_ms, until_ms)."""
        store = await self.store()
        cancelled: list[str] = []
        before: str | None = None
        while True:
            rows = await store.list_runs(RunFilter(job_id=job_id, since_ms=since_ms,
                                                   until_ms=until_ms, before=before, limit=500))
            if not rows:
                return cancelled
            cancelled += await store.cancel_runs(
                [row.id for row in rows if row.status not in FINISHED_STATUSES],
                error_json=_cancellation(reason, by))
            before = rows[-1].id

    async def replay(self, run_id: str) -> str:
        """Start a new run of the same job with the same event; returns the new run's id."""
        store = await self.store()
        original = await store.get_run(run_id)
        if original is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        now = time.time_ns() // 1_000_000
        job = self._jobs.get(original.job_id)
        event = await store.get_event(original.event_id)
        replayed = (new_run(original.app_id, job, original.event_id, event_dict(event), now,
                            new_id(), flow=self._unskipped_flow(job.id, event))
                    if job is not None and event is not None else
                    NewRun(new_id(), original.app_id, original.job_id, original.event_id, now))
        await store.create_runs([replayed])
        store.notify_local()
        return replayed.id

    async def list_audit(self, *, run_id: str | None = None, tag: str | None = None,
                         limit: int = 100) -> list[AuditRecord]:
        """RLS bypass records (`with_rls_bypass`), newest first."""
        return await (await self.store()).list_audit(run_id=run_id, tag=tag, limit=limit)

    async def wait_for(self, run_id: str, *, timeout: float = 30.0) -> Run:
        """Wait until the run finished (completed, failed or cancelled) and return it."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            run = await self.get_run(run_id)
            if run.finished:
                return run
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"run {run_id} is still {run.status} after {timeout} s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.1)


def _cancellation(reason: str, by: str) -> str:
    return _codec.dumps_str({"name": "Cancelled", "message": reason, "by": by,
                             "at": time.time_ns() // 1_000_000})


class WorkerHandle:
    """A worker bound to an app; `async with` runs it for the block."""

    def __init__(self, app: Stride, jobs: dict[str, Job[Any, Any]], options: WorkerOptions) -> None:
        self._app = app
        self._jobs = jobs
        self.options = options
        self.worker: Worker | None = None

    async def start(self) -> Worker:
        store = await self._app.store()
        self.worker = Worker(app_id=self._app.app_id, jobs=self._jobs, store=store,
                             logger=self._app.logger, options=self.options,
                             host=_AppHost(self._app))
        await self.worker.start()
        return self.worker

    async def stop(self, grace: float | None = None) -> None:
        if self.worker is not None:
            await self.worker.stop(grace)
            self.worker = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` is set (or forever)."""
        await self.start()
        try:
            await (stop or asyncio.Event()).wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> Worker:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


class _AppHost:
    """What the app lends its runs: dispatch (`step.send_event`) and its jobs (`step.invoke`)."""

    def __init__(self, app: Stride) -> None:
        self._app = app
        self.dedupe_ms = app.dedupe_ms

    async def send_from_run(self, events: Sequence[Any], *, id_prefix: str,
                            user: dict[str, Any] | None) -> list[str]:
        items = []
        for index, item in enumerate(events):
            event = self._app._outgoing(item)
            items.append(OutgoingEvent(event.name, event.data, event.id or f"{id_prefix}:{index}",
                                       event.user if event.user is not None else user))
        return await self._app.dispatch_many(items)

    def child_run(self, job: Job[Any, Any] | str, data: Any, *, event_id: str,
                  user: dict[str, Any] | None) -> tuple[NewEvent, list[NewRun]]:
        return self._app._child_run(job, data, event_id=event_id, user=user)


class _SyncPortal:
    """A private event loop in a daemon thread, so sync code can call the async API."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stride-sync",
                                        daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, R]) -> R:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
