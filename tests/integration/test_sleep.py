"""Durable sleep: the run is suspended in the store (no worker held) and resumes when due."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stride import ConfigurationError, Context, Stride, SyncContext
from tests.conftest import eventually, until_idle


async def until_sleeping(jobs: Stride, run_id: str) -> None:
    async def sleeping() -> bool:
        return (await jobs.get_run(run_id)).status == "sleeping"

    await eventually(sleeping, what=f"run {run_id} to sleep")


def make_app(url: str, log: list[str]) -> Stride:
    jobs = Stride(app_id="sleepers", database_url=url)

    @jobs.define_job(id="nap", trigger="test/nap")
    async def nap(ctx: Context[dict[str, Any]]) -> float:
        started = await ctx.step.run("before", time.time)
        log.append("before-seen")
        await ctx.step.sleep("nap", ctx.event.data["seconds"])
        after = await ctx.step.run("after", time.time)
        return after - started

    @jobs.define_job(id="sync-nap", trigger="test/sync-nap")
    def sync_nap(ctx: SyncContext[dict[str, Any]]) -> str:
        until = datetime.now(UTC) + timedelta(seconds=0.5)
        ctx.step.sleep_until("until", datetime.fromisoformat(ctx.step.run(
            "when", until.isoformat)))
        return "awake"

    @jobs.define_job(id="two-naps", trigger="test/two-naps")
    async def two_naps(ctx: Context[dict[str, Any]]) -> str:
        await asyncio.gather(ctx.step.sleep("short", 1), ctx.step.sleep("long", 1.5))
        return "awake"

    @jobs.define_job(id="nap-or-ping", trigger="test/nap-or-ping")
    async def nap_or_ping(ctx: Context[dict[str, Any]]) -> str:
        await asyncio.gather(ctx.step.sleep("nap", 0.5),
                             ctx.step.wait_for_event("ping", event="test/ping", timeout=60))
        return "awake"

    return jobs


async def test_parallel_sleeps_are_all_recorded_when_the_run_suspends(sqlite_url: str) -> None:
    jobs = make_app(sqlite_url, [])
    [event_id] = await jobs.dispatch("test/two-naps", {})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker():
        await until_sleeping(jobs, run.id)
        asleep = await jobs.get_run(run.id)
        # one record went with the reschedule, the other was checkpointed before it
        assert {(s.id, s.status) for s in asleep.steps} == {("short", "sleeping"),
                                                            ("long", "sleeping")}
        done = await jobs.wait_for(run.id, timeout=10)
    assert done.status == "completed" and done.output == "awake"
    assert [done.step(s).status for s in ("short", "long")] == ["completed", "completed"]
    assert done.ended_at is not None and done.ended_at - done.step("long").started_at >= 1500
    await jobs.aclose()


async def test_a_sleep_beside_a_wait_is_recorded_with_the_suspension(sqlite_url: str) -> None:
    jobs = make_app(sqlite_url, [])
    [event_id] = await jobs.dispatch("test/nap-or-ping", {})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker():
        async def waiting() -> bool:
            return (await jobs.get_run(run.id)).status == "waiting"

        await eventually(waiting, what="the run to wait")
        assert (await jobs.get_run(run.id)).step("nap").status == "sleeping"
        await jobs.dispatch("test/ping", {})
        done = await jobs.wait_for(run.id, timeout=10)
    assert done.status == "completed"
    assert [done.step(s).status for s in ("nap", "ping")] == ["completed", "completed"]
    await jobs.aclose()


async def test_a_sleeping_run_holds_no_worker_and_wakes_when_due(sqlite_url: str) -> None:
    jobs = make_app(sqlite_url, [])
    [event_id] = await jobs.dispatch("test/nap", {"seconds": 1})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker() as worker:
        await until_sleeping(jobs, run.id)
        await until_idle(worker)
        done = await jobs.wait_for(run.id, timeout=10)
    assert done.status == "completed"
    assert 1.0 <= done.output < 10.0
    nap_step = done.step("nap")
    assert nap_step.kind == "sleep" and nap_step.status == "completed"
    await jobs.aclose()


async def test_a_sleep_survives_a_full_restart_of_every_worker(sqlite_url: str) -> None:
    log: list[str] = []
    first = make_app(sqlite_url, log)
    [event_id] = await first.dispatch("test/nap", {"seconds": 1.5})
    [run] = await first.get_runs(event_id=event_id)
    async with first.worker():
        await until_sleeping(first, run.id)
    await first.aclose()  # everything is down now

    second = make_app(sqlite_url, log)  # a new process, as far as the store can tell
    async with second.worker():
        done = await second.wait_for(run.id, timeout=10)
    assert done.status == "completed"
    assert done.output >= 1.5
    assert done.step("before").attempts == 1  # memoized: not run again after the restart
    assert log == ["before-seen", "before-seen"]  # the handler replayed once, from the top
    await second.aclose()


async def test_a_sleeping_run_can_be_cancelled(sqlite_url: str) -> None:
    jobs = make_app(sqlite_url, [])
    [event_id] = await jobs.dispatch("test/nap", {"seconds": 60})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker():
        await until_sleeping(jobs, run.id)
        assert await jobs.cancel(run.id, reason="no longer needed")
    cancelled = await jobs.get_run(run.id)
    assert cancelled.status == "cancelled"
    assert cancelled.step("nap").status == "sleeping"
    await jobs.aclose()


async def test_sync_handlers_sleep_until_an_instant(sqlite_url: str) -> None:
    jobs = make_app(sqlite_url, [])
    [event_id] = await jobs.dispatch("test/sync-nap", {})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker():
        done = await jobs.wait_for(run.id, timeout=10)
    assert done.status == "completed" and done.output == "awake"
    await jobs.aclose()


def test_sleep_until_refuses_a_naive_datetime() -> None:
    from stride.step import _wake_at

    with pytest.raises(ConfigurationError, match="aware datetime"):
        _wake_at(datetime(2030, 1, 1))
