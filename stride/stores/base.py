"""The Store protocol: every durable thing the engine does is one atomic call on it.

Each backend (SQLite, PostgreSQL) implements the same methods with the same names, and
passes the same conformance suite (`tests/store_conformance/`). No SQL lives outside
the backends. Values cross this boundary as the frozen records below, with JSON payloads
already encoded as text so that a backend never has to know about pydantic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

RunStatus = Literal["queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled"]
RUN_STATUSES: tuple[RunStatus, ...] = (
    "queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled",
)
FINISHED_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
StepStatus = Literal["completed", "failed", "retrying", "sleeping"]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to publish, with its data and actor already JSON text."""

    id: str
    name: str
    data_json: str
    user_json: str | None
    ts: int


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to create together with its triggering event."""

    id: str
    app_id: str
    job_id: str
    event_id: str
    available_at: int


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Which events were stored, and which were dropped as already seen within the window."""

    accepted: tuple[str, ...]
    duplicates: tuple[str, ...]
    runs_created: int


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
        lease_ms: int, concurrency: Mapping[str, int],
    ) -> list[ClaimedRun]:
        """Lease up to `limit` due runs of `job_ids`, never exceeding a job's concurrency."""
        ...

    async def checkpoint(self, lease: Lease, step: StepRecord) -> None:
        """Record a step's outcome. Raises `LeaseLost` if the run is no longer ours."""
        ...

    async def reschedule(
        self, lease: Lease, *, available_at: int, status: RunStatus,
        attempt: int | None = None, errors_json: str | None = None,
    ) -> None:
        """Give the run back (retry later, sleep) and drop the lease."""
        ...

    async def finish(
        self, lease: Lease, *, status: RunStatus, output_json: str | None,
        error_json: str | None, errors_json: str | None = None,
    ) -> None:
        """Mark the run completed or failed, exactly once."""
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

    async def wait_for_change(self, timeout: float) -> None:
        """Return when the store may have new work (a commit elsewhere) or after `timeout`."""
        ...

    def notify_local(self) -> None:
        """Wake this process's waiters (called after an in-process dispatch)."""
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
