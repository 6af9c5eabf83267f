"""cancel_on: an event that matches a live run's condition cancels it, at publish."""

from __future__ import annotations

import asyncio
from typing import Any

from stride import Context, Priority, Stride, on_event
from tests.conftest import eventually


def make_app(url: str) -> Stride:
    jobs = Stride(app_id="cancel-on-test", database_url=url)

    @jobs.define_job(id="onboarding", trigger="user/signed.up",
                     cancel_on=[on_event("user/deleted", match="data.user_id")])
    async def onboarding(ctx: Context[dict[str, Any]]) -> str:
        await ctx.step.sleep("wait-a-day", "1d")
        return "sent"

    @jobs.define_job(id="urgent", trigger="ticket/opened", priority=Priority(run="60"),
                     cancel_on=[on_event("ticket/closed", match="data.ticket")])
    async def urgent(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.sleep("escalate-later", "1h")

    @jobs.define_job(id="order", trigger="order/placed", cancel_on=[
        on_event("order/cancelled", if_="async.data.order == event.data.order")])
    async def order(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.wait_for_event("shipped", event="order/shipped", timeout="1d")

    return jobs


async def start(jobs: Stride, name: str, data: dict[str, Any]) -> str:
    [event_id] = await jobs.dispatch(name, data)
    [run] = await jobs.get_runs(event_id=event_id)
    return run.id


async def status(jobs: Stride, run_id: str) -> str:
    return (await jobs.get_run(run_id)).status


async def test_a_matching_event_cancels_a_sleeping_and_a_queued_run(database_url: str) -> None:
    jobs = make_app(database_url)
    sleeping = await start(jobs, "user/signed.up", {"user_id": "u1"})
    other = await start(jobs, "user/signed.up", {"user_id": "u2"})
    async with jobs.worker():
        await eventually(lambda: _is(jobs, sleeping, "sleeping"), what="sleep")
    queued = await start(jobs, "user/signed.up", {"user_id": "u1"})  # no worker: stays queued

    [deleted] = await jobs.dispatch("user/deleted", {"user_id": "u1"})

    for run_id in (sleeping, queued):
        run = await jobs.get_run(run_id)
        assert run.status == "cancelled" and run.error is not None
        assert run.error["by"] == f"event {deleted}" and run.error["event"] == "user/deleted"
    assert await status(jobs, other) == "sleeping"
    await jobs.aclose()


async def test_an_if_condition_is_evaluated_against_both_events(database_url: str) -> None:
    jobs = make_app(database_url)
    keep = await start(jobs, "order/placed", {"order": "o1"})
    drop = await start(jobs, "order/placed", {"order": "o2"})
    async with jobs.worker():
        await eventually(lambda: _is(jobs, drop, "waiting"), what="wait")
        await jobs.dispatch("order/cancelled", {"order": "o2"})
        await asyncio.sleep(0.1)
    assert await status(jobs, drop) == "cancelled"
    assert await status(jobs, keep) in ("waiting", "queued")
    await jobs.aclose()


async def _is(jobs: Stride, run_id: str, expected: str) -> bool:
    return await status(jobs, run_id) == expected


async def test_runs_of_a_flow_controlled_job_are_cancelled_too(database_url: str) -> None:
    jobs = make_app(database_url)
    run_id = await start(jobs, "ticket/opened", {"ticket": "t1"})
    await jobs.dispatch("ticket/closed", {"ticket": "t1"})
    assert await status(jobs, run_id) == "cancelled"
    await jobs.aclose()


async def test_a_sleeping_run_cancelled_by_hand_stays_cancelled(database_url: str) -> None:
    jobs = make_app(database_url)
    run_id = await start(jobs, "user/signed.up", {"user_id": "u1"})
    async with jobs.worker():
        await eventually(lambda: _is(jobs, run_id, "sleeping"), what="sleep")
        assert await jobs.cancel(run_id, reason="changed my mind")
        await asyncio.sleep(0.2)
    run = await jobs.get_run(run_id)
    assert run.status == "cancelled" and run.error is not None
    assert run.error["message"] == "changed my mind"
    assert run.step("wait-a-day").status == "sleeping"
    await jobs.aclose()
