"""Leases inside one process: a run is held by one worker for as long as it works on it.

(Leases that expire because a worker died or froze are in tests/acceptance/.)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stride import Context, Stride


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
