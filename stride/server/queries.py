"""Reads that the JSON API, the live stream and the dashboard share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from stride.app import Stride
from stride.errors import StoreError
from stride.server import views
from stride.server.models import (
    EventPage,
    EventQuery,
    Health,
    QueueOut,
    RunDetail,
    RunFilterBody,
    RunPage,
    RunQuery,
    StoreHealth,
    to_epoch_ms,
)
from stride.server.routing import BadRequest, NotFound
from stride.stores.base import RunFilter, RunRow, Store


def run_filter(query: RunQuery | RunFilterBody, *, before: str | None, limit: int) -> RunFilter:
    return RunFilter(job_id=query.job, status=query.status, event_id=query.event_id,
                     since_ms=to_epoch_ms(query.since), until_ms=to_epoch_ms(query.until),
                     before=before, limit=limit)


async def run_page(store: Store, query: RunQuery) -> RunPage:
    """One page of runs, newest first; one extra row tells whether there is a next page."""
    rows = await store.search_runs(run_filter(query, before=query.cursor, limit=query.limit + 1),
                                   text=query.q or None)
    page = rows[:query.limit]
    more = len(rows) > query.limit
    return RunPage(data=[views.run_summary(row) for row in page],
                   next_cursor=page[-1].id if more and page else None)


async def load_run(store: Store, run_id: str) -> RunDetail:
    row = await store.get_run(run_id)
    if row is None:
        raise NotFound(f"no run with id {run_id!r}")
    return views.run_detail(row, await store.get_event(row.event_id))


async def matching_runs(store: Store, body: RunFilterBody) -> list[RunRow]:
    """The runs a bulk action applies to: the listed ids, or the filter's newest `limit`."""
    if body.ids is not None:
        rows = [await store.get_run(run_id) for run_id in dict.fromkeys(body.ids)]
        return [row for row in rows if row is not None][:body.limit]
    found: list[RunRow] = []
    before: str | None = None
    while len(found) < body.limit:
        page = await store.search_runs(run_filter(body, before=before, limit=500),
                                       text=body.q or None)
        found += page
        if len(page) < 500:
            break
        before = page[-1].id
    return found[:body.limit]


async def health_report(store_of: Callable[[], Awaitable[Store]], backend: str) -> Health:
    now = views.now_ms()
    try:
        store = await store_of()
        stats = await store.queue_stats(now)
        workers = await store.list_workers(since_ms=now - 24 * 3600_000)
    except StoreError as exc:
        return Health(status="unavailable", time=now, workers=[], queue=None,
                      store=StoreHealth(reachable=False, backend=backend,
                                        error=str(exc).splitlines()[0]))
    alive = [views.worker_out(row, now) for row in workers]
    queue = QueueOut(depth=stats.due, waiting=stats.waiting, running=stats.running,
                     oldest_queued_age_ms=None if stats.oldest_due_at is None
                     else max(0, now - stats.oldest_due_at))
    status = "ok" if any(worker.alive for worker in alive) or not stats.due else "degraded"
    return Health(status=status, time=now, workers=alive, queue=queue,
                  store=StoreHealth(reachable=True, backend=backend))




async def event_page(app: Stride, store: Store, query: EventQuery) -> EventPage:
    """One page of events, each with the runs it started (or why it started none)."""
    try:
        rows = await store.list_events(name=query.name, before=query.cursor,
                                       limit=query.limit + 1)
    except ValueError:
        raise BadRequest("the cursor is malformed; pass next_cursor as given") from None
    page = rows[:query.limit]
    by_event: dict[str, list[RunRow]] = {}
    for run in await store.runs_for_events([row.id for row in page]):
        by_event.setdefault(run.event_id, []).append(run)
    data = [views.event_with_runs(app, row, by_event.get(row.id, [])) for row in page]
    return EventPage(data=data, next_cursor=page[-1].cursor if len(rows) > query.limit else None)
