"""Runs that dispatch does not create are held to their job's flow control too: a cron
tick's run takes every option, an invoked run and a replay take the options that always
start the run (concurrency keys, priority, throttle: `_flow_decide.without_skips`), since a
parent waits for its child and an operator's replay is not to be skipped. On both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stride import Concurrency, Context, RateLimit, Stride, cron
from stride._cron import CronScheduler
from tests.conftest import all_finished
from tests.integration.test_flow_concurrency import Gauge

KEYED = Concurrency(limit=1, key="event.data.user")


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[Stride]:
    app = Stride(app_id="other-paths", database_url=database_url)
    yield app
    await app.aclose()


async def test_a_cron_tick_beyond_the_rate_limit_is_skipped_with_its_reason(
        app: Stride) -> None:
    @app.define_job(id="digest", trigger=cron("* * * * *"),
                    rate_limit=RateLimit(limit=1, period="1h"))
    async def digest(ctx: Context[dict[str, Any]]) -> None:
        return None

    scheduler = CronScheduler(app_id=app.app_id, jobs=app.jobs, store=await app.store())
    first = datetime.now(UTC).replace(second=1, microsecond=0)
    assert await scheduler.tick(first) == 1
    assert await scheduler.tick(first + timedelta(minutes=1)) == 1

    runs = sorted(await app.get_runs(job_id="digest"), key=lambda run: run.created_at)
    assert [run.status for run in runs] == ["queued", "skipped"]
    assert runs[1].reason is not None and runs[1].reason.startswith("rate limited")


async def test_invoked_runs_hold_their_jobs_concurrency_key(app: Stride) -> None:
    gauge = Gauge()

    @app.define_job(id="sync-user", trigger="user/sync", concurrency=KEYED,
                    rate_limit=RateLimit(limit=1, period="1h", key="event.data.user"))
    async def sync_user(ctx: Context[dict[str, Any]]) -> str:
        await ctx.step.run("sync", gauge.hold, ctx.event.data["user"], 0.3)
        return str(ctx.event.data["user"])

    @app.define_job(id="parent", trigger="user/parent")
    async def parent(ctx: Context[dict[str, Any]]) -> str:
        result: str = await ctx.step.invoke("sync", job=sync_user,
                                            data={"user": ctx.event.data["user"]})
        return result

    await app.dispatch_many([("user/parent", {"user": "u1"}) for _ in range(3)])
    async with app.worker(concurrency=10):
        await all_finished(app, 6)

    children = await app.get_runs(job_id="sync-user")
    assert [run.status for run in children] == ["completed"] * 3, "invokes are not skipped"
    assert gauge.most["u1"] == 1, "the key held across the invoked runs"


async def test_a_replay_waits_for_the_key_its_run_holds(app: Stride) -> None:
    @app.define_job(id="sync-user", trigger="user/sync", concurrency=KEYED)
    async def sync_user(ctx: Context[dict[str, Any]]) -> None:
        return None

    [event_id] = await app.dispatch("user/sync", {"user": "u1"})
    [original] = await app.get_runs(event_id=event_id)
    replayed = await app.replay(original.id)
    store = await app.store()

    claimed = await store.claim(worker_id="w", app_id=app.app_id, job_ids=["sync-user"],
                                limit=10, lease_ms=60_000, concurrency={},
                                keyed={"sync-user"})

    assert [run.lease.run_id for run in claimed] == [original.id]
    assert (await app.get_run(replayed)).status == "queued"
