"""A job's concurrency limit: how many of its runs may be running at once, across workers.

(The multi-process version, three `stride worker` processes on one file, is in
tests/acceptance/test_global_concurrency.py; these run workers inside the test's loop.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stride import Context, Stride, WaitTimeout
from tests.conftest import eventually


@pytest.fixture
async def app(sqlite_url: str) -> AsyncIterator[Stride]:
    app = Stride(app_id="billing", database_url=sqlite_url)
    yield app
    await app.aclose()


async def test_two_workers_together_respect_the_limit(app: Stride) -> None:
    running = 0
    most = 0

    async def sync_contacts() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1

    @app.define_job(id="sync-contacts", trigger="crm/changed", concurrency=2)
    async def job(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("sync", sync_contacts)

    async with app.worker(concurrency=5, lease=2), app.worker(concurrency=5, lease=2):
        await app.dispatch_many([("crm/changed", {"n": n}) for n in range(10)])

        async def all_completed() -> bool:
            return len(await app.get_runs(status="completed")) == 10

        await eventually(all_completed, what="10 completed runs")

    assert most == 2


async def test_the_limit_counts_only_the_runs_of_this_apps_job(
        app: Stride, sqlite_url: str) -> None:
    """Job ids are unique per app; two apps may share a database and a job id."""
    release = asyncio.Event()
    other = Stride(app_id="marketing", database_url=sqlite_url)

    @app.define_job(id="sync-contacts", trigger="crm/changed", concurrency=1)
    async def billing_sync(ctx: Context[dict[str, Any]]) -> str:
        await ctx.step.run("wait", release.wait)
        return "billing"

    @other.define_job(id="sync-contacts", trigger="crm/changed", concurrency=1)
    async def marketing_sync(ctx: Context[dict[str, Any]]) -> str:
        return "marketing"

    try:
        async with app.worker(lease=2), other.worker(lease=2):
            [billing_event] = await app.dispatch("crm/changed", {})
            [billing_run] = await app.get_runs(event_id=billing_event)

            async def billing_running() -> bool:
                return (await app.get_run(billing_run.id)).status == "running"

            await eventually(billing_running, what="billing's run to start")
            [marketing_event] = await other.dispatch("crm/changed", {})
            [marketing_run] = await other.get_runs(event_id=marketing_event)
            try:
                done = await other.wait_for(marketing_run.id, timeout=3)
            except WaitTimeout:
                done = None
            finally:
                release.set()

        assert done is not None and done.output == "marketing", \
            "marketing's run waited for billing's run of a different job"
    finally:
        await other.aclose()
