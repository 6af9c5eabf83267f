"""Cron triggers: one run per tick across all workers; missed ticks skipped or run once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stride import ConfigurationError, Context, Stride, cron
from stride._cron import CRON_EVENT_NAME, CronScheduler
from stride.jobs import MissedTicks


def make_app(url: str, schedule: str = "* * * * * *", missed: MissedTicks = "skip") -> Stride:
    jobs = Stride(app_id="cron-test", database_url=url)

    @jobs.define_job(id="every-second", trigger=[cron(schedule, missed=missed),
                                                 "test/manual"])
    async def every_second(ctx: Context[dict[str, Any]]) -> str:
        return str(ctx.event.name)

    return jobs


async def test_each_tick_fires_exactly_once_with_three_workers(sqlite_url: str) -> None:
    apps = [make_app(sqlite_url) for _ in range(3)]  # three stores: like three processes
    handles = [app.worker(concurrency=2) for app in apps]
    started = time.monotonic()
    for handle in handles:
        await handle.start()
    await asyncio.sleep(3.2)
    for handle in handles:
        await handle.stop()
    seconds_running = time.monotonic() - started
    runs = await apps[0].get_runs(job_id="every-second", limit=100)
    per_event = Counter(run.event_id for run in runs)
    # every second boundary while running, plus the tick just before the start (still fresh)
    assert 2 <= len(per_event) <= seconds_running + 2
    assert set(per_event.values()) == {1}, per_event
    for app in apps:
        await app.aclose()


async def test_a_cron_job_also_runs_for_its_event_trigger(sqlite_url: str) -> None:
    jobs = make_app(sqlite_url, schedule="0 0 1 1 *")
    [event_id] = await jobs.dispatch("test/manual", {})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker():
        assert (await jobs.wait_for(run.id)).output == "test/manual"
    await jobs.aclose()


@pytest.mark.parametrize(("missed", "fired"), [("skip", 0), ("run_once", 1)])
async def test_ticks_missed_while_everything_was_down(sqlite_url: str, missed: MissedTicks,
                                                      fired: int) -> None:
    jobs = make_app(sqlite_url, schedule="0 9 * * *", missed=missed)
    store = await jobs.store()
    scheduler = CronScheduler(app_id=jobs.app_id, jobs=jobs.jobs, store=store)
    three_hours_late = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert await scheduler.tick(three_hours_late) == fired
    restarted = CronScheduler(app_id=jobs.app_id, jobs=jobs.jobs, store=store)
    assert await restarted.tick(three_hours_late + timedelta(minutes=5)) == 0
    runs = await jobs.get_runs(job_id="every-second")
    assert len(runs) == fired
    if fired:
        event = await store.get_event(runs[0].event_id)
        assert event is not None and event.name == CRON_EVENT_NAME
        assert "2026-11-27T09:00:00" in event.data_json
    await jobs.aclose()


async def test_a_tick_on_time_fires_and_is_not_repeated(sqlite_url: str) -> None:
    jobs = make_app(sqlite_url, schedule="0 9 * * *")
    scheduler = CronScheduler(app_id=jobs.app_id, jobs=jobs.jobs, store=await jobs.store())
    on_time = datetime(2026, 11, 27, 9, 0, 2, tzinfo=UTC)
    assert await scheduler.tick(on_time) == 1
    assert await scheduler.tick(on_time + timedelta(seconds=1)) == 0
    await jobs.aclose()


def test_time_zones_shift_the_tick() -> None:
    berlin = cron("0 9 * * MON", tz="Europe/Berlin")
    tick = berlin.previous_tick(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    assert tick.astimezone(UTC) == datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(("schedule", "tz"), [("0 9 * * XYZ", "UTC"), ("61 * * * *", "UTC"),
                                              ("0 9 * * MON", "Mars/Olympus")])
def test_bad_schedules_and_zones_fail_when_defined(schedule: str, tz: str) -> None:
    with pytest.raises(ConfigurationError):
        cron(schedule, tz=tz)
