"""Throttle, rate limit, idempotency and singleton through the public API, on both backends:
what runs, when, and the reason recorded for every run that was delayed, skipped or
cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stride import Context, RateLimit, Singleton, Stride, Throttle
from tests.conftest import all_finished, eventually


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[Stride]:
    app = Stride(app_id="limits", database_url=database_url)
    yield app
    await app.aclose()


async def test_throttle_spreads_run_starts_and_drops_none(app: Stride) -> None:
    @app.define_job(id="call-api", trigger="api/call",
                    throttle=Throttle(limit=2, period="1s", key="event.data.account"))
    async def call_api(ctx: Context[dict[str, Any]]) -> None:
        pass

    acme = await app.dispatch_many([("api/call", {"account": "acme"}) for _ in range(5)])
    [other] = await app.dispatch("api/call", {"account": "other"})
    async with app.worker(concurrency=10):
        await all_finished(app, 6)

    runs = {run.event_id: run for run in await app.get_runs(limit=10)}
    assert all(run.status == "completed" for run in runs.values())
    starts = [runs[event_id].started_at or 0 for event_id in acme]
    dispatched = min(runs[event_id].created_at for event_id in acme)
    # two at once (limit 2 per 1 s), then one every 500 ms, in dispatch order; measured from
    # the dispatch, since a loaded machine may start the first run late but never the rest early
    assert starts == sorted(starts)
    assert [start - dispatched >= at - 50 for start, at in zip(starts, [0, 0, 500, 1000, 1500],
                                                               strict=True)] == [True] * 5
    reasons = [runs[event_id].reason for event_id in acme]
    assert reasons[:2] == [None, None]
    assert all(reason is not None and reason.startswith("throttled: delayed")
               and "for key 'acme'" in reason for reason in reasons[2:])
    assert runs[other].reason is None, "each key has its own throttle"


async def test_rate_limit_skips_the_excess_and_records_it(app: Stride) -> None:
    @app.define_job(id="sync-company", trigger="company/updated",
                    rate_limit=RateLimit(limit=1, period="4h", key="event.data.company_id"))
    async def sync(ctx: Context[dict[str, Any]]) -> str:
        return str(ctx.event.data["company_id"])

    [first] = await app.dispatch("company/updated", {"company_id": "c1"})
    [second] = await app.dispatch("company/updated", {"company_id": "c1"})
    await app.dispatch("company/updated", {"company_id": "c2"})
    async with app.worker(concurrency=5):
        await all_finished(app, 3)

    [skipped] = await app.get_runs(event_id=second)
    assert skipped.status == "skipped"
    assert skipped.reason == "rate limited: over 1 per 4h for key 'c1'"
    assert [run.status for run in await app.get_runs(event_id=first)] == ["completed"]
    assert sorted(run.status for run in await app.get_runs()) == [
        "completed", "completed", "skipped"]


async def test_idempotency_runs_once_per_key(app: Stride) -> None:
    calls: list[str] = []

    @app.define_job(id="process-file", trigger="file/uploaded",
                    idempotency="event.data.file_id")
    async def process(ctx: Context[dict[str, Any]]) -> None:
        calls.append(ctx.event.data["file_id"])

    await app.dispatch_many([("file/uploaded", {"file_id": "f1"}),
                             ("file/uploaded", {"file_id": "f1"}),
                             ("file/uploaded", {"file_id": "f2"})])
    async with app.worker(concurrency=5):
        await all_finished(app, 3)

    assert sorted(calls) == ["f1", "f2"]
    [skipped] = await app.get_runs(status="skipped")
    assert skipped.reason is not None and skipped.reason.startswith("idempotency: key 'f1'")


async def test_singleton_skip_ignores_events_while_one_run_is_alive(app: Stride) -> None:
    release = asyncio.Event()

    @app.define_job(id="reindex", trigger="index/stale",
                    singleton=Singleton(key="event.data.index", mode="skip"))
    async def reindex(ctx: Context[dict[str, Any]]) -> None:
        await release.wait()

    async with app.worker(concurrency=5):
        await app.dispatch("index/stale", {"index": "docs"})
        await eventually(lambda: _statuses(app, ["running"]), what="the first run running")
        await app.dispatch("index/stale", {"index": "docs"})
        release.set()
        await all_finished(app, 2)

    statuses = sorted(run.status for run in await app.get_runs())
    assert statuses == ["completed", "skipped"]
    [skipped] = await app.get_runs(status="skipped")
    assert skipped.reason is not None and "has not finished" in skipped.reason


async def test_singleton_cancel_replaces_the_running_run(app: Stride) -> None:
    started: list[int] = []
    release = asyncio.Event()

    @app.define_job(id="render-preview", trigger="doc/edited",
                    singleton=Singleton(key="event.data.doc", mode="cancel"))
    async def render(ctx: Context[dict[str, Any]]) -> int:
        version: int = ctx.event.data["version"]
        started.append(version)
        if version == 1:
            await release.wait()
        await ctx.step.run("render", lambda: version)
        return version

    async with app.worker(concurrency=5):
        await app.dispatch("doc/edited", {"doc": "d1", "version": 1})
        await eventually(lambda: _statuses(app, ["running"]), what="version 1 running")
        await app.dispatch("doc/edited", {"doc": "d1", "version": 2})
        await eventually(lambda: _statuses(app, ["cancelled", "completed"]), timeout=15,
                         what="version 1 cancelled, version 2 completed")
        release.set()  # version 1's next step is refused: it lost its lease
        await asyncio.sleep(0.2)

    cancelled, completed = sorted(await app.get_runs(), key=lambda run: run.status)
    assert completed.output == 2
    assert cancelled.reason == f"singleton: replaced by run {completed.id}"
    assert (await app.get_run(cancelled.id)).status == "cancelled"


async def _statuses(app: Stride, expected: list[str]) -> bool:
    return sorted(run.status for run in await app.get_runs()) == expected
