"""timeouts=Timeouts(start, finish): overdue runs are cancelled with the reason."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from stride import Context, Stride, Timeouts
from stride._timeouts import check
from stride.stores.base import DeadlineRow


def make_app(url: str, gate: asyncio.Event, steps: list[str]) -> Stride:
    jobs = Stride(app_id="timeouts-test", database_url=url)

    @jobs.define_job(id="single-file", trigger="test/queued", concurrency=1,
                     timeouts=Timeouts(start=0.5))
    async def single_file(ctx: Context[dict[str, Any]]) -> str:
        await ctx.step.run("hold", gate.wait)
        return "done"

    @jobs.define_job(id="sleepy", trigger="test/sleepy", timeouts=Timeouts(finish="1s"))
    async def sleepy(ctx: Context[dict[str, Any]]) -> str:
        await ctx.step.sleep("long", 60)
        return "woke"

    async def slow_step() -> None:
        await asyncio.sleep(2)

    @jobs.define_job(id="busy", trigger="test/busy", timeouts=Timeouts(finish="1s"))
    async def busy(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("slow", slow_step)
        await ctx.step.run("after", steps.append, "after")

    return jobs


async def start(jobs: Stride, name: str) -> str:
    [event_id] = await jobs.dispatch(name, {})
    [run] = await jobs.get_runs(event_id=event_id)
    return run.id


async def test_a_run_not_started_in_time_is_cancelled(database_url: str) -> None:
    gate = asyncio.Event()
    jobs = make_app(database_url, gate, [])
    first = await start(jobs, "test/queued")
    async with jobs.worker():
        await asyncio.sleep(0.2)
        second = await start(jobs, "test/queued")  # the concurrency slot stays taken
        cancelled = await jobs.wait_for(second, timeout=10)
        gate.set()
        done = await jobs.wait_for(first, timeout=10)
    assert done.status == "completed"
    assert cancelled.status == "cancelled" and cancelled.error is not None
    assert cancelled.error["by"] == "timeout"
    assert "not started within 0.5s" in cancelled.error["message"]
    assert cancelled.started_at is None
    await jobs.aclose()


async def test_a_sleeping_run_past_its_finish_timeout_is_cancelled(database_url: str) -> None:
    jobs = make_app(database_url, asyncio.Event(), [])
    run_id = await start(jobs, "test/sleepy")
    began = time.monotonic()
    async with jobs.worker():
        run = await jobs.wait_for(run_id, timeout=10)
    assert 1.0 <= time.monotonic() - began < 5
    assert run.status == "cancelled" and run.error is not None
    assert "not finished within 1s of its start" in run.error["message"]
    await jobs.aclose()


async def test_a_running_run_past_its_finish_timeout_stops_at_its_next_step(
        database_url: str) -> None:
    steps: list[str] = []
    jobs = make_app(database_url, asyncio.Event(), steps)
    run_id = await start(jobs, "test/busy")
    async with jobs.worker():
        run = await jobs.wait_for(run_id, timeout=10)
        await asyncio.sleep(1.5)  # the slow step ends; its checkpoint is refused
    assert run.status == "cancelled"
    assert steps == []
    assert (await jobs.get_run(run_id)).status == "cancelled"
    await jobs.aclose()


# -- the check itself (pure) ---------------------------------------------------------------

def row(*, status: str | None = "queued", created: int = 0, started: int | None = None,
        start_ms: int | None = None, finish_ms: int | None = None) -> DeadlineRow:
    return DeadlineRow("r1", 0, start_ms, finish_ms, status, created, started)


def test_a_check_cancels_a_run_that_did_not_start_in_time() -> None:
    reason, next_check = check(row(start_ms=600_000), now=600_000)
    assert reason is not None and "not started within 10m" in reason and next_check is None
    assert check(row(start_ms=600_000), now=599_999) == (None, 600_000)


def test_a_check_cancels_a_run_that_did_not_finish_in_time() -> None:
    reason, _ = check(row(status="sleeping", started=1_000, finish_ms=3_600_000),
                      now=3_601_000)
    assert reason is not None and "not finished within 1h of its start" in reason
    assert check(row(status="running", started=1_000, finish_ms=3_600_000),
                 now=5_000) == (None, 3_601_000)


def test_a_run_not_started_yet_is_looked_at_again_when_it_could_first_overrun() -> None:
    assert check(row(finish_ms=1_000), now=50) == (None, 1_050)
    assert check(row(start_ms=10_000, finish_ms=1_000), now=50) == (None, 1_050)


def test_a_finished_or_missing_run_needs_no_more_checks() -> None:
    assert check(row(status="completed", start_ms=1), now=10) == (None, None)
    assert check(row(status=None, start_ms=1), now=10) == (None, None)
    assert check(row(status="running", started=5, start_ms=1), now=10) == (None, None)
