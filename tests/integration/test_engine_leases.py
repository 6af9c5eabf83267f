"""Leases inside one process: a run is held by one worker for as long as it works on it.

(Leases that expire because a worker died or froze are in tests/acceptance/.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stride import Context, Stride, WaitTimeout
from stride._failures import MIN_TAKEOVERS
from stride._worker import Worker, WorkerOptions
from stride.stores.sqlite import SqliteStore
from tests.conftest import eventually


@pytest.fixture
async def app(sqlite_url: str) -> AsyncIterator[Stride]:
    app = Stride(app_id="engine-leases", database_url=sqlite_url)
    yield app
    await app.aclose()


async def test_a_step_longer_than_the_lease_keeps_its_run_through_heartbeats(
        app: Stride) -> None:
    ran: list[str] = []

    def convert_video() -> str:
        ran.append("convert")
        time.sleep(2.0)  # twice the lease; the heartbeat renews it every third of a lease
        return "video.mp4"

    @app.define_job(id="convert", trigger="media/uploaded")
    async def convert(ctx: Context[dict[str, Any]]) -> str:
        return await ctx.step.run("convert", convert_video)

    # two workers, each reclaiming expired leases: neither may take the run from the other
    async with app.worker(lease=1), app.worker(lease=1):
        [event_id] = await app.dispatch("media/uploaded", {})
        [run] = await app.get_runs(event_id=event_id)
        run = await app.wait_for(run.id, timeout=10)

    assert (run.status, run.output) == ("completed", "video.mp4")
    assert ran == ["convert"]
    assert run.step("convert").attempts == 1


async def test_one_run_is_claimed_by_one_worker_only(app: Stride) -> None:
    ran: list[str] = []

    @app.define_job(id="greet", trigger="user/signed-up")
    async def greet(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("mail", lambda: ran.append(ctx.event.data["user"]))

    async with app.worker(lease=2), app.worker(lease=2), app.worker(lease=2):
        await app.dispatch_many([("user/signed-up", {"user": f"u{n}"}) for n in range(30)])
        runs = await app.get_runs(limit=100)
        for run in runs:
            await app.wait_for(run.id, timeout=10)

    assert sorted(ran) == sorted(f"u{n}" for n in range(30))


def lock_database_briefly(path: str, seconds: float) -> None:
    """Another connection takes the write lock now and lets go after `seconds`."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        conn.execute("ROLLBACK")
        conn.close()

    threading.Timer(seconds, release).start()


async def test_a_run_abandoned_after_a_store_blip_is_taken_up_again(
        app: Stride, sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    ran: list[str] = []

    def write_report() -> str:
        ran.append("report")
        if len(ran) == 1:  # the database is busy just when this result must be committed
            lock_database_briefly(path, 0.5)
        return "report.pdf"

    @app.define_job(id="report", trigger="report/requested")
    async def report(ctx: Context[dict[str, Any]]) -> str:
        return await ctx.step.run("write", write_report)

    [event_id] = await app.dispatch("report/requested", {})
    [run] = await app.get_runs(event_id=event_id)
    # the app has no busy-timeout option, so this worker runs on a store opened with one
    store = SqliteStore(sqlite_url, busy_timeout_ms=200)
    await store.open()
    worker = Worker(app_id=app.app_id, jobs=app.jobs, store=store,
                    logger=logging.getLogger("test"), options=WorkerOptions(lease_seconds=3))
    await worker.start()
    try:
        with contextlib.suppress(WaitTimeout):
            await app.wait_for(run.id, timeout=6)
        run = await app.get_run(run.id)
    finally:
        await worker.stop()
        await store.close()

    assert len(ran) >= 1
    assert run.status == "completed", "the lease of a run nobody works on must lapse"


async def lose_worker(app: Stride, job_id: str) -> None:
    """A worker takes a run of `job_id` and dies: its lease expires and is reclaimed."""
    store = await app.store()
    [_claimed] = await store.claim(worker_id="doomed", app_id=app.app_id, job_ids=[job_id],
                                   limit=1, lease_ms=20, concurrency={})
    await asyncio.sleep(0.05)
    assert await store.reclaim_expired()


async def test_a_run_that_keeps_killing_its_worker_is_failed_not_retaken_forever(
        database_url: str) -> None:
    app = Stride(app_id="poison", database_url=database_url)
    ran: list[str] = []
    told: list[dict[str, Any]] = []

    @app.define_job(id="poison", trigger="test/poison", retries=1)
    async def poison(ctx: Context[dict[str, Any]]) -> str:
        ran.append("poison")
        return "survived"

    @app.on_failure(poison)
    async def report(ctx: Context[dict[str, Any]]) -> None:
        told.append(ctx.event.data["error"])

    [event_id] = await app.dispatch("test/poison", {})
    for _ in range(MIN_TAKEOVERS):
        await lose_worker(app, "poison")
    async with app.worker():
        [run] = await app.get_runs(event_id=event_id)
        run = await app.wait_for(run.id, timeout=20)
        await eventually(lambda: asyncio.sleep(0, told or None), what="on_failure ran")
    await app.aclose()

    assert run.status == "failed" and ran == []
    assert run.error["name"] == "WorkerLost"
    assert f"lost its worker {MIN_TAKEOVERS} times in a row" in run.error["message"]
    assert [e["name"] for e in run.errors] == ["WorkerLost"] * (MIN_TAKEOVERS + 1)
    assert told[0]["name"] == "WorkerLost"


async def test_fewer_lost_workers_than_the_limit_and_the_run_still_completes(
        database_url: str) -> None:
    app = Stride(app_id="survivor", database_url=database_url)

    @app.define_job(id="sturdy", trigger="test/sturdy", retries=0)
    async def sturdy(ctx: Context[dict[str, Any]]) -> str:
        return "done"

    [event_id] = await app.dispatch("test/sturdy", {})
    for _ in range(MIN_TAKEOVERS - 1):  # retries=0 and yet crashes never fail a run alone
        await lose_worker(app, "sturdy")
    async with app.worker():
        [run] = await app.get_runs(event_id=event_id)
        run = await app.wait_for(run.id, timeout=20)
    await app.aclose()

    assert (run.status, run.output) == ("completed", "done")
