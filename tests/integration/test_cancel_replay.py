"""Cancelling a run stops it before its next step; replaying starts a new run of the same event."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stride import Backoff, Context, RunNotFound, Stride


def make_app(url: str, gate: asyncio.Event, executed: list[str],
             started: asyncio.Event | None = None) -> Stride:
    jobs = Stride(app_id="cancel-test", database_url=url, backoff=Backoff(initial=0.05))

    async def wait_at_gate() -> str:
        executed.append("first")
        if started is not None:
            started.set()
        await gate.wait()
        return "first done"

    async def second() -> str:
        executed.append("second")
        return "second done"

    @jobs.define_job(id="two-steps", trigger="test/two.steps", retries=0)
    async def two_steps(ctx: Context[dict[str, Any]]) -> str:
        await ctx.step.run("first", wait_at_gate)
        await ctx.step.run("second", second)
        if ctx.event.data.get("fail"):
            raise RuntimeError("asked to fail")
        return "done"

    return jobs


async def test_a_running_run_cancelled_mid_step_never_starts_its_next_step(sqlite_url: str) -> None:
    gate, started, executed = asyncio.Event(), asyncio.Event(), []
    jobs = make_app(sqlite_url, gate, executed, started)
    [event_id] = await jobs.dispatch("test/two.steps", {})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker(concurrency=2):
        await asyncio.wait_for(started.wait(), 10)
        assert await jobs.cancel(run.id, reason="user asked", by="test") is True
        gate.set()
        cancelled = await jobs.wait_for(run.id)
        await asyncio.sleep(0.2)
    assert cancelled.status == "cancelled"
    assert cancelled.error is not None
    assert cancelled.error["message"] == "user asked" and cancelled.error["by"] == "test"
    assert executed == ["first"]
    assert (await jobs.get_run(run.id)).status == "cancelled"
    await jobs.aclose()


async def test_cancelling_a_finished_run_changes_nothing(sqlite_url: str) -> None:
    gate, executed = asyncio.Event(), []
    gate.set()
    jobs = make_app(sqlite_url, gate, executed)
    [event_id] = await jobs.dispatch("test/two.steps", {})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker():
        done = await jobs.wait_for(run.id)
    assert done.status == "completed"
    assert await jobs.cancel(run.id) is False
    assert (await jobs.get_run(run.id)).status == "completed"
    with pytest.raises(RunNotFound):
        await jobs.cancel("no-such-run")
    await jobs.aclose()


async def test_bulk_cancel_takes_only_unfinished_runs_of_the_job(sqlite_url: str) -> None:
    jobs = make_app(sqlite_url, asyncio.Event(), [])
    await jobs.dispatch_many([("test/two.steps", {}) for _ in range(5)])
    cancelled = await jobs.cancel_many(job_id="two-steps", reason="cleanup")
    assert len(cancelled) == 5
    assert {run.status for run in await jobs.get_runs(job_id="two-steps")} == {"cancelled"}
    assert await jobs.cancel_many(job_id="two-steps") == []
    await jobs.aclose()


async def test_replay_of_a_failed_run_is_a_new_run_with_the_same_event(sqlite_url: str) -> None:
    gate, executed = asyncio.Event(), []
    gate.set()
    jobs = make_app(sqlite_url, gate, executed)
    [event_id] = await jobs.dispatch("test/two.steps", {"fail": True})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker():
        failed = await jobs.wait_for(run.id)
        new_run_id = await jobs.replay(run.id)
        replayed = await jobs.wait_for(new_run_id)
    assert failed.status == "failed" and replayed.status == "failed"
    assert replayed.id != run.id and replayed.event_id == event_id
    assert executed == ["first", "second", "first", "second"]  # a fresh memo, not the old one
    await jobs.aclose()
