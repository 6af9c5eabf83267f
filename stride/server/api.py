"""The JSON API under /api/v1 and event ingestion at /e/{event_key}."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.responses import Response

from stride.errors import InvalidEventError
from stride.server import metrics, stream, views
from stride.server.models import (
    BulkResult,
    CancelResult,
    EventPage,
    EventQuery,
    EventWithRuns,
    Health,
    IngestBody,
    IngestResult,
    JobList,
    ReplayResult,
    RunDetail,
    RunFilterBody,
    RunPage,
    RunQuery,
    StreamQuery,
)
from stride.server.queries import event_page, health_report, load_run, matching_runs, run_page
from stride.server.routing import Call, NotFound, Operation, read_json

MAX_EVENTS_PER_REQUEST = 1000  # as IngestBody documents
BULK_CHUNK = 100


# -- event ingestion -------------------------------------------------------------------


def _event_item(item: Any, index: int) -> dict[str, Any]:
    """One event of the body, checked for shape; dispatch validates the rest."""
    where = f"event #{index}"
    if not isinstance(item, dict):
        raise InvalidEventError(f"{where} must be a JSON object with 'name' and 'data'")
    if "name" not in item:
        raise InvalidEventError(f"{where} has no 'name'")
    if not isinstance(item.get("user"), dict | None):
        raise InvalidEventError(f"{where}: 'user' must be a JSON object or null")
    if not isinstance(item.get("id"), str | None):
        raise InvalidEventError(f"{where}: 'id' must be a string")
    data = item.get("data")
    return {"name": item["name"], "data": {} if data is None else data, "id": item.get("id"),
            "user": item.get("user")}


def event_items(body: Any) -> list[dict[str, Any]]:
    """The events of an ingestion body (one object or an array), checked for shape."""
    items = body if isinstance(body, list) else [body]
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise InvalidEventError(
            f"{len(items)} events in one request; send at most {MAX_EVENTS_PER_REQUEST}")
    return [_event_item(item, index) for index, item in enumerate(items)]


async def ingest(call: Call) -> IngestResult:
    events = event_items(await read_json(call.request))
    return IngestResult(ids=await call.server.app.dispatch_many(events))


# -- runs ----------------------------------------------------------------------------------------


async def list_runs(call: Call) -> RunPage:
    return await run_page(await call.server.app.store(), call.query_as(RunQuery))


async def get_run(call: Call) -> RunDetail:
    return await load_run(await call.server.app.store(), call.path("id"))


async def cancel_run(call: Call) -> CancelResult:
    run_id = call.path("id")
    done = await call.server.app.cancel(run_id, reason="cancelled from the HTTP API", by="api")
    return CancelResult(id=run_id, cancelled=done)


async def replay_run(call: Call) -> ReplayResult:
    run_id = call.path("id")
    return ReplayResult(id=await call.server.app.replay(run_id), replay_of=run_id)


async def in_chunks(ids: Sequence[str], action: Callable[[str], Awaitable[Any]]) -> list[Any]:
    """Run `action` for every id, a chunk at a time (their writes share group commits)."""
    results: list[Any] = []
    for start in range(0, len(ids), BULK_CHUNK):
        results += await asyncio.gather(*(action(i) for i in ids[start:start + BULK_CHUNK]))
    return results


async def bulk_cancel(call: Call) -> BulkResult:
    body = call.body_as(RunFilterBody)
    app = call.server.app
    rows = await matching_runs(await app.store(), body)
    ids = [row.id for row in rows]
    done = await in_chunks(ids, lambda run_id: app.cancel(run_id, reason=body.reason, by="api"))
    return BulkResult(matched=len(ids), ids=[run_id for run_id, ok in zip(ids, done, strict=True)
                                             if ok])


async def bulk_replay(call: Call) -> BulkResult:
    app = call.server.app
    rows = await matching_runs(await app.store(), call.body_as(RunFilterBody))
    return BulkResult(matched=len(rows), ids=await in_chunks([row.id for row in rows], app.replay))


async def run_stream(call: Call) -> Response:
    return stream.runs_stream(call.server, call.query_as(StreamQuery))


# -- events, jobs, health ------------------------------------------------------------------------


async def list_events(call: Call) -> EventPage:
    app = call.server.app
    return await event_page(app, await app.store(), call.query_as(EventQuery))


async def get_event(call: Call) -> EventWithRuns:
    store = await call.server.app.store()
    event = await store.get_event(call.path("id"))
    if event is None:
        raise NotFound(f"no event with id {call.path('id')!r}")
    return views.event_with_runs(call.server.app, event, await store.runs_for_events([event.id]))


async def list_jobs(call: Call) -> JobList:
    jobs = sorted(call.server.app.jobs.values(), key=lambda job: job.id)
    return JobList(data=[views.job_out(job.describe()) for job in jobs])


async def health(call: Call) -> Response:
    app = call.server.app
    report = await health_report(app.store, app.database_url.partition(":")[0])
    return Response(report.model_dump_json(), media_type="application/json",
                    status_code=503 if report.status == "unavailable" else 200)


async def prometheus(call: Call) -> Response:
    return await metrics.metrics_response(call.server.app)


def operations() -> list[Operation]:
    """Every API route; the server and the OpenAPI document are both made from this list."""
    v1 = "/api/v1"
    return [
        Operation("POST", "/e/{event_key}", ingest, "Send one event or an array of events",
                  "events", auth="event", body=IngestBody, raw_body=True,
                  response=IngestResult, errors=(413,)),
        Operation("GET", f"{v1}/runs", list_runs, "List runs, newest first", "runs",
                  query=RunQuery, response=RunPage),
        Operation("POST", f"{v1}/runs/cancel", bulk_cancel, "Cancel the runs matching a filter",
                  "runs", body=RunFilterBody, response=BulkResult, errors=(413,)),
        Operation("POST", f"{v1}/runs/replay", bulk_replay, "Replay the runs matching a filter",
                  "runs", body=RunFilterBody, response=BulkResult, errors=(413,)),
        Operation("GET", f"{v1}/runs/{{id}}", get_run, "One run with its steps and event",
                  "runs", response=RunDetail, errors=(404,)),
        Operation("POST", f"{v1}/runs/{{id}}/cancel", cancel_run, "Cancel a run", "runs",
                  response=CancelResult, errors=(404,)),
        Operation("POST", f"{v1}/runs/{{id}}/replay", replay_run,
                  "Start a new run of the same job for the same event", "runs",
                  response=ReplayResult, errors=(404,)),
        Operation("GET", f"{v1}/stream", run_stream,
                  "Server-sent events: a `runs` snapshot of the first page whenever it changes",
                  "runs", query=StreamQuery, media_type="text/event-stream"),
        Operation("GET", f"{v1}/events", list_events, "List events with the runs they started",
                  "events", query=EventQuery, response=EventPage),
        Operation("GET", f"{v1}/events/{{id}}", get_event, "One event with its runs", "events",
                  response=EventWithRuns, errors=(404,)),
        Operation("GET", f"{v1}/jobs", list_jobs, "The jobs, their triggers and options", "jobs",
                  response=JobList),
        Operation("GET", f"{v1}/health", health,
                  "Store, workers and queue; 503 when the store is unreachable", "health",
                  response=Health, also=(503,)),
        Operation("GET", "/metrics", prometheus, "Prometheus metrics (text format)", "health",
                  media_type="text/plain"),
    ]
