"""Debounce, batching and priority through the public API, on both backends; and how
`stride runs` / `stride run` show flow control's decisions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stride import Batch, Context, Debounce, Priority, RateLimit, Stride
from tests.conftest import all_finished
from tests.integration.test_cli import stride, table_rows


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[Stride]:
    app = Stride(app_id="grouping", database_url=database_url)
    yield app
    await app.aclose()


async def test_debounce_runs_once_with_the_last_event_of_a_burst(app: Stride) -> None:
    seen: list[int] = []

    @app.define_job(id="save-draft", trigger="draft/typed",
                    debounce=Debounce(period="400ms", key="event.data.doc"))
    async def save(ctx: Context[dict[str, Any]]) -> int:
        seen.append(ctx.event.data["n"])
        return int(ctx.event.data["n"])

    async with app.worker(concurrency=5):
        for n in range(5):
            await app.dispatch("draft/typed", {"doc": "d1", "n": n})
            await asyncio.sleep(0.05)
        await app.dispatch("draft/typed", {"doc": "d2", "n": 100})
        await all_finished(app, 6)

    assert sorted(seen) == [4, 100], "one run per document, with its last event"
    runs = await app.get_runs()
    [d1] = [run for run in runs if run.output == 4]
    assert d1.reason == "debounced: 5 events, runs with the last"
    skipped = [run for run in runs if run.status == "skipped"]
    assert len(skipped) == 4
    assert all(d1.id in (run.reason or "") for run in skipped)


async def test_debounce_timeout_runs_a_never_ending_burst_anyway(app: Stride) -> None:
    ran = asyncio.Event()

    @app.define_job(id="autosave", trigger="draft/typed",
                    debounce=Debounce(period="300ms", timeout="600ms"))
    async def autosave(ctx: Context[dict[str, Any]]) -> None:
        ran.set()

    async with app.worker(concurrency=5):
        started = asyncio.get_running_loop().time()
        while not ran.is_set():
            await app.dispatch("draft/typed", {})
            await asyncio.sleep(0.1)
            assert asyncio.get_running_loop().time() - started < 5, "the timeout bounds it"


async def test_batches_hand_the_handler_every_event(app: Stride) -> None:
    sizes: list[list[int]] = []

    @app.define_job(id="index-docs", trigger="doc/saved",
                    batch_events=Batch(max_size=5, timeout="300ms"))
    async def index(ctx: Context[dict[str, Any]]) -> int:
        numbers = [event.data["n"] for event in ctx.events]
        assert ctx.event.data["n"] == numbers[0]
        sizes.append(numbers)
        return len(numbers)

    await app.dispatch_many([("doc/saved", {"n": n}) for n in range(12)])
    async with app.worker(concurrency=5):
        await all_finished(app, 3)

    assert sorted(sizes) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert sorted(run.reason or "" for run in await app.get_runs()) == [
        "batch: 2 events", "batch: 5 events (full)", "batch: 5 events (full)"]


async def test_batches_are_per_key(app: Stride) -> None:
    batches: list[set[str]] = []

    @app.define_job(id="notify", trigger="user/event",
                    batch_events=Batch(max_size=10, timeout="200ms", key="event.data.user"))
    async def notify(ctx: Context[dict[str, Any]]) -> None:
        batches.append({event.data["user"] for event in ctx.events})

    await app.dispatch_many([("user/event", {"user": f"u{n % 2}"}) for n in range(6)])
    async with app.worker(concurrency=5):
        await all_finished(app, 2)

    assert sorted(batches, key=sorted) == [{"u0"}, {"u1"}]


async def test_priority_runs_urgent_work_first(app: Stride) -> None:
    order: list[str] = []

    @app.define_job(id="render", trigger="render/requested",
                    priority=Priority(run="event.data.plan == 'pro' ? 120 : 0"))
    async def render(ctx: Context[dict[str, Any]]) -> None:
        order.append(ctx.event.data["plan"])

    await app.dispatch_many([("render/requested", {"plan": "free"}) for _ in range(5)])
    await app.dispatch("render/requested", {"plan": "pro"})
    async with app.worker(concurrency=1):
        await all_finished(app, 6)

    assert order[0] == "pro"


def test_the_cli_shows_skipped_runs_and_their_reason(sqlite_url: str) -> None:
    async def setup() -> str:
        app = Stride(app_id="cli-flow", database_url=sqlite_url)

        @app.define_job(id="sync", trigger="company/updated",
                        rate_limit=RateLimit(limit=1, period="1h"))
        async def sync(ctx: Context[dict[str, Any]]) -> None:
            pass

        await app.dispatch("company/updated", {})
        [event_id] = await app.dispatch("company/updated", {})
        [skipped] = await app.get_runs(event_id=event_id)
        await app.aclose()
        return skipped.id

    skipped_id = asyncio.run(setup())

    listing = stride(sqlite_url, "runs")
    detail = stride(sqlite_url, "run", skipped_id)
    filtered = stride(sqlite_url, "runs", "--status", "skipped")

    assert listing.returncode == 0, listing.stderr
    row = next(cells for cells in table_rows(listing.stdout) if cells[0] == skipped_id)
    assert row[2] == "skipped"
    assert row[-1] == "rate limited: over 1 per 1h"
    assert "skipped 1" in listing.stdout
    assert detail.returncode == 0, detail.stderr
    assert "reason" in detail.stdout and "rate limited: over 1 per 1h" in detail.stdout
    assert [cells[0] for cells in table_rows(filtered.stdout)] == [skipped_id]


async def test_the_api_and_dashboard_show_skipped_runs_and_their_reason(app: Stride) -> None:
    import httpx

    from stride.server import create_server

    @app.define_job(id="sync", trigger="company/updated",
                    rate_limit=RateLimit(limit=1, period="1h"))
    async def sync(ctx: Context[dict[str, Any]]) -> None:
        pass

    await app.dispatch("company/updated", {})
    [event_id] = await app.dispatch("company/updated", {})
    [skipped] = await app.get_runs(event_id=event_id)
    server = create_server(app, event_keys=["ek_" + "e" * 29], api_keys=["ak_" + "a" * 29])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server),
                                 base_url="http://127.0.0.1",
                                 headers={"Authorization": "Bearer ak_" + "a" * 29}) as client:
        listed = (await client.get("/api/v1/runs", params={"status": "skipped"})).json()
        detail = (await client.get(f"/api/v1/runs/{skipped.id}")).json()
        page = (await client.get(f"/runs/{skipped.id}")).text

    assert [run["id"] for run in listed["data"]] == [skipped.id]
    assert listed["data"][0]["reason"] == "rate limited: over 1 per 1h"
    assert (detail["status"], detail["reason"]) == ("skipped", "rate limited: over 1 per 1h")
    assert "rate limited: over 1 per 1h" in page
