"""Concurrency limits per key and shared between jobs, through the public API, with workers
in the test's loop, on both backends (the multi-process version is
tests/acceptance/test_flow_global.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stride import Concurrency, Context, Stride
from tests.conftest import all_finished, eventually


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[Stride]:
    app = Stride(app_id="flowing", database_url=database_url)
    yield app
    await app.aclose()


class Gauge:
    """How many handlers run at once, per key and in all."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()

    async def hold(self, key: str, seconds: float) -> None:
        self.now[key] += 1
        self.now["*"] += 1
        self.most[key] = max(self.most[key], self.now[key])
        self.most["*"] = max(self.most["*"], self.now["*"])
        await asyncio.sleep(seconds)
        self.now[key] -= 1
        self.now["*"] -= 1


async def test_a_keyed_limit_holds_per_key_while_keys_run_side_by_side(app: Stride) -> None:
    gauge = Gauge()

    @app.define_job(id="sync-user", trigger="user/changed",
                    concurrency=Concurrency(limit=1, key="event.data.user_id"))
    async def sync_user(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("sync", gauge.hold, ctx.event.data["user_id"], 0.05)

    await app.dispatch_many([("user/changed", {"user_id": f"u{n % 3}"}) for n in range(12)])
    async with app.worker(concurrency=10):
        await all_finished(app, 12)

    assert [gauge.most[f"u{n}"] for n in range(3)] == [1, 1, 1]
    assert gauge.most["*"] >= 2, "different keys ran at the same time"


async def test_a_shared_limit_spans_the_jobs_that_name_it(app: Stride) -> None:
    gauge = Gauge()
    shared = Concurrency(limit=2, scope="account", name="ocr-api")

    @app.define_job(id="scan", trigger="doc/uploaded", concurrency=shared)
    async def scan(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("ocr", gauge.hold, "ocr", 0.05)

    @app.define_job(id="rescan", trigger="doc/fixed", concurrency=shared)
    async def rescan(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("ocr", gauge.hold, "ocr", 0.05)

    await app.dispatch_many([("doc/uploaded", {}) for _ in range(5)]
                            + [("doc/fixed", {}) for _ in range(5)])
    async with app.worker(concurrency=10):
        await all_finished(app, 10)

    assert gauge.most["ocr"] == 2


async def test_a_job_wide_limit_and_a_keyed_limit_together(app: Stride) -> None:
    gauge = Gauge()

    @app.define_job(id="export", trigger="export/requested",
                    concurrency=[Concurrency(limit=1, key="event.data.team"),
                                 Concurrency(limit=2)])
    async def export(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("export", gauge.hold, ctx.event.data["team"], 0.05)

    await app.dispatch_many([("export/requested", {"team": f"t{n % 4}"}) for n in range(12)])
    async with app.worker(concurrency=10):
        await all_finished(app, 12)

    assert max(gauge.most[f"t{n}"] for n in range(4)) == 1
    assert gauge.most["*"] == 2


async def test_a_key_with_a_backlog_does_not_starve_another_key(app: Stride) -> None:
    """10,000 queued runs of one key (limit 1) and one run of another: the lonely run
    finishes while the backlog has barely started."""
    finished: list[str] = []

    @app.define_job(id="ingest", trigger="feed/item",
                    concurrency=Concurrency(limit=1, key="event.data.feed"))
    async def ingest(ctx: Context[dict[str, Any]]) -> None:
        await asyncio.sleep(0.001)
        finished.append(ctx.event.data["feed"])

    await app.dispatch_many([("feed/item", {"feed": "firehose"}) for _ in range(10_000)])
    await app.dispatch("feed/item", {"feed": "trickle"})
    async with app.worker(concurrency=20):
        await eventually(lambda: _done(finished, "trickle"), timeout=30,
                         what="the trickle feed's run")

    assert finished.count("firehose") < 100, "the lonely key did not wait for the backlog"


async def _done(finished: list[str], feed: str) -> bool:
    return feed in finished


async def test_a_parked_run_says_what_it_waits_for(app: Stride) -> None:
    release = asyncio.Event()

    @app.define_job(id="slow", trigger="slow/go",
                    concurrency=Concurrency(limit=1, key="event.data.k"))
    async def slow(ctx: Context[dict[str, Any]]) -> None:
        await release.wait()

    await app.dispatch_many([("slow/go", {"k": "a"}), ("slow/go", {"k": "a"})])
    async with app.worker(concurrency=5):
        async def one_running() -> bool:
            runs = await app.get_runs()
            return sorted(run.status for run in runs) == ["queued", "running"]

        await eventually(one_running, what="one run leased, one parked")
        [waiting] = [run for run in await app.get_runs() if run.status == "queued"]
        release.set()
        await all_finished(app, 2)

    assert waiting.reason == "concurrency: waited for key 'flowing/slow#0:a' (limit 1)"
