"""The Store protocol: every durable thing the engine does is one atomic call on it.

Each backend (SQLite, PostgreSQL) implements the same methods with the same names, and
passes the same conformance suite (`tests/store_conformance/`). No SQL lives outside
the backends. Values cross this boundary as the frozen records below, with JSON payloads
already encoded as text so that a backend never has to know about pydantic.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from stride._audit import AuditRecord
    from stride._flow_decide import RunFlow

RunStatus = Literal["queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled",
                   "skipped"]
RUN_STATUSES: tuple[RunStatus, ...] = (
    "queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled", "skipped",
)
"""`skipped`: flow control decided that the event starts no run (rate limit, idempotency,
singleton, debounce); the row records the decision and its `reason`."""
FINISHED_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "skipped"})
StepStatus = Literal["completed", "failed", "retrying", "sleeping", "waiting"]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to publish, with its data and actor already JSON text."""

    id: str
    name: str
    data_json: str
    user_json: str | None
    ts: int


@dataclass(frozen=True, slots=True)
class CancelCondition:
    """One `cancel_on` condition of a new run, stored as a row so that matching is indexed.

    An event named `event_name` whose value at `match_path` has the key `match_value`
    (`stride._waits.wait_key`; both '' for no `match=`) cancels the run; `if_expr`, a CEL
    filter, is evaluated by the dispatching process right after the publish commits.
    """

    event_name: str
    match_path: str
    match_value: str
    if_expr: str | None = None


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to create together with its triggering event.

    `cancel_on` and the timeouts (ms) are stored beside the run when it is created, as rows
    that publishes and the timeout looper find through indexes.
    """

    id: str
    app_id: str
    job_id: str
    event_id: str
    available_at: int
    flow: RunFlow | None = None
    """The job's flow control with its keys evaluated against the event; None for jobs
    without any (the fast path). The store decides with it (stride._flow_decide)."""
    cancel_on: tuple[CancelCondition, ...] = ()
    start_timeout_ms: int | None = None
    finish_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class CancelCheck:
    """A live run whose `cancel_on` condition with an `if_` filter matched a published event
    on its `match`; the dispatching process evaluates `if_expr` and cancels the run if true."""

    run_id: str
    if_expr: str
    event_id: str
    event_name: str


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Which events were stored, and which were dropped as already seen within the window."""

    accepted: tuple[str, ...]
    duplicates: tuple[str, ...]
    runs_created: int
    checks: tuple[CancelCheck, ...] = ()


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof that one worker holds one run. Every write about the run checks the token."""

    run_id: str
    token: str


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step's memo row: its outcome so far and every attempt's error."""

    step_id: str
    position: int
    kind: str
    status: StepStatus
    output_json: str | None = None
    error_json: str | None = None
    attempts: int = 1
    errors_json: str | None = None
    started_at: int | None = None
    ended_at: int | None = None
    wake_at: int | None = None


@dataclass(frozen=True, slots=True)
class EventRow:
    id: str
    name: str
    data_json: str
    user_json: str | None
    ts: int


@dataclass(frozen=True, slots=True)
class NewWait:
    """A step that waits for an event (`wait_for_event`, `invoke`).

    `step` is its memo row (status 'waiting', `wake_at` the expiry). An event named
    `event_name` whose value at `match_path` has the key `match_value` (both '' when any
    event of that name will do) completes the step; with `if_expr` the executor's chooser
    decides among such events.
    """

    step: StepRecord
    event_name: str
    match_path: str = ""
    match_value: str = ""
    if_expr: str | None = None

    @property
    def expires_at(self) -> int:
        assert self.step.wake_at is not None
        return self.step.wake_at


WaitChooser = Callable[[NewWait, Sequence[EventRow]], EventRow | None]
"""Picks the event that completes a wait among candidates (in order received), or None."""


@dataclass(frozen=True, slots=True)
class CancelledInvocation:
    """An invoked (child) run that was cancelled and whose parent has not been told yet
    (see `cancelled_invocations`)."""

    run_id: str
    job_id: str
    event_id: str
    error_json: str | None
    ended_at: int


@dataclass(frozen=True, slots=True)
class DeadlineRow:
    """A run with a start or finish timeout whose next check is due (see `due_deadlines`)."""

    run_id: str
    due_at: int
    start_ms: int | None
    finish_ms: int | None
    status: str | None
    created_at: int | None
    started_at: int | None


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A run this worker now holds under `lease`, with all it needs to execute."""

    lease: Lease
    job_id: str
    event: EventRow
    attempt: int
    errors_json: str | None
    steps: tuple[StepRecord, ...]
    created_at: int


@dataclass(frozen=True, slots=True)
class RunRow:
    """A run as the dashboard and CLI show it."""

    id: str
    app_id: str
    job_id: str
    event_id: str
    status: str
    attempt: int
    created_at: int
    started_at: int | None
    ended_at: int | None
    available_at: int
    output_json: str | None
    error_json: str | None
    errors_json: str | None
    lease_owner: str | None
    steps: tuple[StepRecord, ...] = field(default=())
    reason: str | None = None
    """Why flow control delayed, skipped, merged or cancelled the run (None if it did not)."""


@dataclass(frozen=True, slots=True)
class RunFilter:
    """What `list_runs` selects; every field is optional. Newest first, `before` is a cursor."""

    job_id: str | None = None
    status: str | None = None
    event_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    before: str | None = None
    limit: int = 50


class Store(Protocol):
    """Durable state of events, runs, steps, leases and workers."""

    url: str

    async def open(self) -> None:
        """Connect and apply migrations; idempotent and safe to race with other processes."""
        ...

    async def close(self) -> None: ...

    async def publish(
        self, batch: Sequence[tuple[NewEvent, Sequence[NewRun]]], *, dedupe_ms: int,
        conn: Any = None,
    ) -> PublishResult:
        """Store events and their runs in one transaction.

        An event whose id is already stored is dropped with its runs (`dedupe_ms` is the
        minimum time an id is remembered). With `conn` (PostgreSQL only: the app's own
        psycopg connection) the rows are written in the caller's open transaction and
        commit or roll back with it (transactional outbox).
        """
        ...

    async def claim(
        self, *, worker_id: str, app_id: str, job_ids: Sequence[str], limit: int,
        lease_ms: int, concurrency: Mapping[str, int], keyed: Collection[str] = (),
    ) -> list[ClaimedRun]:
        """Lease up to `limit` due runs of `job_ids`, never exceeding a job's concurrency.

        `keyed`: the jobs whose runs carry concurrency keys (keyed or shared limits, stored
        on the run at publish). Their runs are leased only while every key they hold has a
        free slot, across all workers; a run whose key is full is parked until a run of
        that key lets go, so a key with a long backlog never holds up the other keys.
        """
        ...

    async def run_events(self, run_id: str) -> list[EventRow]:
        """Every event of a batched run (`batch_events`), in arrival order; empty for a run
        that has only its triggering event."""
        ...

    async def checkpoint(self, lease: Lease, step: StepRecord) -> None:
        """Record a step's outcome. Raises `LeaseLost` if the run is no longer ours."""
        ...

    async def reschedule(
        self, lease: Lease, *, available_at: int, status: RunStatus,
        attempt: int | None = None, errors_json: str | None = None,
        step: StepRecord | None = None,
    ) -> None:
        """Give the run back (retry later, sleep) and drop the lease.

        `step`: a step record written first, in the same transaction and under the same
        lease check as `checkpoint` (a fresh sleep's record goes with the run's reschedule
        instead of costing a commit of its own). Raises `LeaseLost` if the run is no longer
        ours; then nothing is written, neither the step nor the run.
        """
        ...

    async def finish(
        self, lease: Lease, *, status: RunStatus, output_json: str | None,
        error_json: str | None, errors_json: str | None = None,
        publish: Sequence[tuple[NewEvent, Sequence[NewRun]]] | None = None,
    ) -> None:
        """Mark the run completed or failed, exactly once.

        `publish`: events (and runs) published in the same transaction, only if the finish
        is accepted (an invoked run's completion event, an on-failure handler's run).
        """
        ...

    async def suspend_for_events(
        self, lease: Lease, waits: Sequence[NewWait], *, available_at: int,
    ) -> bool:
        """Register `waits` and give the run back as 'waiting' until `available_at`.
        Raises `LeaseLost` if the run is no longer ours.

        No lost wake-up: events that match a wait and came before it was registered (since
        its step started, or while its run was running) count as if they came after: a wait
        without `if_` completes with the first of them, one with `if_` keeps them for
        `resolve_wait`, and the run is due at once (returns True). SQLite does it in one
        transaction; PostgreSQL registers, then looks for such events under an exclusive
        advisory lock per event name that every publish of that name takes shared.
        """
        ...

    async def resolve_wait(
        self, lease: Lease, wait: NewWait, *, choose: WaitChooser, expire: bool,
    ) -> StepRecord | None:
        """For a resumed run: complete the wait step with the first event `choose` picks
        among those recorded for it; with `expire` (its timeout passed), complete it with
        null if none. Returns the completed step, or None (the wait stays registered)."""
        ...

    async def due_deadlines(self, now_ms: int, limit: int) -> list[DeadlineRow]:
        """Up to `limit` timeout checks due at `now_ms`, with their runs' state (index on
        due time: finished or far-off runs are never scanned)."""
        ...

    async def move_deadlines(self, moves: Sequence[tuple[str, int | None]]) -> None:
        """Set the next check of each run id to the given time, or delete it (None)."""
        ...

    async def cancelled_invocations(self, *, since_ms: int,
                                    limit: int) -> list[CancelledInvocation]:
        """Up to `limit` invoked runs cancelled at or after `since_ms` for which no
        `<event id>:finished` event exists yet, oldest first (a partial index of cancelled
        invoked runs: other runs are never scanned)."""
        ...

    async def release(self, leases: Sequence[Lease]) -> None:
        """Give runs back unfinished (graceful shutdown); they are due at once."""
        ...

    async def heartbeat(
        self, *, worker_id: str, app_id: str, lease_ms: int, info_json: str
    ) -> int:
        """Extend every lease the worker holds; record the worker as alive. Returns runs held."""
        ...

    async def reclaim_expired(self) -> list[str]:
        """Requeue runs whose lease expired (their worker died); returns their ids."""
        ...

    async def get_run(self, run_id: str) -> RunRow | None:
        """One run with its steps."""
        ...

    async def list_runs(self, query: RunFilter) -> list[RunRow]:
        """Runs matching `query`, newest first, without steps."""
        ...

    async def get_event(self, event_id: str) -> EventRow | None: ...

    async def cancel_runs(self, run_ids: Sequence[str], *, error_json: str) -> list[str]:
        """Cancel the runs that have not finished; returns the ids actually cancelled.

        A run being executed is cancelled too: its worker's next checkpoint is refused, so
        it stops before its next step.
        """
        ...

    async def create_runs(self, runs: Sequence[NewRun]) -> None:
        """Add runs for events that are already stored (replay)."""
        ...

    async def prune(self, *, older_than_ms: int, batch_size: int = 1000) -> int:
        """Delete runs that finished more than `older_than_ms` ago (with their steps), then
        events received before that cutoff that no remaining run references, in batches of
        `batch_size`, each its own short transaction. Returns how many runs and events went.

        Event ids are remembered for dedupe until pruned: keep `older_than_ms` at least as
        long as the app's dedupe window.
        """
        ...

    async def wait_for_change(self, timeout: float) -> None:
        """Return when the store may have new work (a commit elsewhere) or after `timeout`."""
        ...

    def notify_local(self) -> None:
        """Wake this process's waiters (called after an in-process dispatch)."""
        ...

    # -- read-only queries for the dashboard, the HTTP API and /metrics --------

    async def search_runs(self, query: RunFilter, *, text: str | None = None) -> list[RunRow]:
        """Like `list_runs`, index-backed for deep cursors and time ranges, and with `text`:
        only runs whose event data contains that text (case-insensitive substring)."""
        ...

    async def list_events(self, *, name: str | None = None, before: str | None = None,
                          limit: int = 50) -> list[EventListing]:
        """Events, most recently received first (ties by id). `before` is the `cursor` of
        the last event of the previous page (see `event_cursor`); a malformed one raises
        ValueError."""
        ...

    async def runs_for_events(self, event_ids: Sequence[str]) -> list[RunRow]:
        """The runs (without steps) that these events triggered, newest first."""
        ...

    async def queue_stats(self, now_ms: int) -> QueueStats:
        """How many runs wait to start or resume, how many are due, the oldest due one."""
        ...

    async def list_workers(self, *, since_ms: int) -> list[WorkerRow]:
        """Workers whose last heartbeat is at or after `since_ms`, latest first."""
        ...

    async def run_counts(self) -> list[RunCount]:
        """How many runs each job has in each status."""
        ...

    async def job_activity(self, *, since_ms: int, bucket_ms: int,
                           limit: int) -> list[JobActivity]:
        """Per job and time bucket (from `since_ms`): runs created, failed, p50/p95 duration
        and mean queue lag, over at most `limit` of the newest runs created since then."""
        ...

    async def step_timings(self, *, since_ms: int, limit: int) -> list[StepTiming]:
        """Durations of finished step attempts of runs created since `since_ms` (bounded)."""
        ...

    # -- the audit trail of RLS bypasses (stride.security) ---------------------

    async def record_audit(self, records: Sequence[AuditRecord]) -> None:
        """Store audit records in one transaction; a record whose id is stored is skipped,
        so a batch retried after a failure is never recorded twice."""
        ...

    async def list_audit(self, *, run_id: str | None = None, tag: str | None = None,
                         limit: int = 100) -> list[AuditRecord]:
        """Audit records, newest first, of one run and/or one tag (all when both are None)."""
        ...


def parse_database_url(url: str) -> tuple[str, str]:
    """Split a database URL into (scheme, rest) and validate the scheme."""
    from stride.errors import ConfigurationError

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in {"sqlite", "postgresql", "postgres"}:
        raise ConfigurationError(
            f"database URL {url!r} is not supported; use sqlite:///path/to/file.db or "
            "postgresql://user@host:5432/dbname"
        )
    return scheme, rest


def open_store_for_url(url: str, **options: Any) -> Store:
    """The backend for `url` (not yet opened)."""
    scheme, _rest = parse_database_url(url)
    if scheme == "sqlite":
        from stride.stores.sqlite import SqliteStore

        return SqliteStore(url, **options)
    from stride.stores.postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]

    store: Store = PostgresStore(url, **options)
    return store


# -- records of the dashboard queries ------------------------------------------------------

ACTIVITY_LIMIT = 50_000
"""The `limit` the dashboard gives `job_activity` and `step_timings`: the newest runs read."""


@dataclass(frozen=True, slots=True)
class EventListing:
    """An event as the dashboard lists it: the stored event and when it was received."""

    id: str
    name: str
    data_json: str
    user_json: str | None
    ts: int
    received_at: int
    cursor: str


@dataclass(frozen=True, slots=True)
class QueueStats:
    """`waiting`: runs queued, sleeping or waiting; `due`: those a worker could claim now."""

    waiting: int
    due: int
    running: int
    oldest_due_at: int | None


@dataclass(frozen=True, slots=True)
class WorkerRow:
    id: str
    app_id: str
    info_json: str
    started_at: int
    heartbeat_at: int


@dataclass(frozen=True, slots=True)
class RunCount:
    job_id: str
    status: str
    count: int


@dataclass(frozen=True, slots=True)
class JobActivity:
    """One job's runs created in [bucket_start, bucket_start + bucket_ms). Times in ms."""

    job_id: str
    bucket_start: int
    runs: int
    failed: int
    p50_ms: int | None
    p95_ms: int | None
    lag_ms: float | None


@dataclass(frozen=True, slots=True)
class StepTiming:
    job_id: str
    kind: str
    status: str
    duration_ms: int


def id_floor(epoch_ms: int) -> str:
    """The smallest run id made at `epoch_ms`: ids sort by time, so a time bound is an id bound.

    Stores turn time ranges into id ranges with it, so that they use the primary key.
    """
    from stride._ids import _encode

    return _encode(max(0, epoch_ms) << 80, 26)


def event_cursor(received_at: int, event_id: str) -> str:
    """The events-list cursor after this event: `received_at.id` (ids may contain dots)."""
    return f"{received_at}.{event_id}"


def parse_event_cursor(cursor: str) -> tuple[int, str]:
    """(received_at, id) of an `event_cursor`; ValueError if it is not one."""
    received_at, dot, event_id = cursor.partition(".")
    if not dot or not event_id or not received_at.isdigit() or len(received_at) > 15:
        raise ValueError(f"malformed events cursor {cursor!r}")
    return int(received_at), event_id
