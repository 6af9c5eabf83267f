"""step.wait_for_event: the run waits in the store (no worker held) for a matching event."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from stride import Context, Stride, SyncContext
from tests.conftest import eventually, until_idle


class Approval(BaseModel):
    request_id: str
    by: str


def make_app(url: str, log: list[str] | None = None) -> Stride:
    jobs = Stride(app_id="waits-test", database_url=url)
    approved = jobs.event("test/approved", Approval)
    seen = log if log is not None else []

    @jobs.define_job(id="approval", trigger="test/requested")
    async def approval(ctx: Context[dict[str, Any]]) -> dict[str, Any]:
        await ctx.step.run("before", seen.append, "before")
        found = await ctx.step.wait_for_event(
            "approval", event=approved, timeout=ctx.event.data.get("timeout", 60),
            match="data.request_id")
        return {"by": found.data.by if found else None,
                "typed": isinstance(found.data, Approval) if found else None}

    @jobs.define_job(id="sync-approval", trigger="test/sync-requested")
    def sync_approval(ctx: SyncContext[dict[str, Any]]) -> Any:
        found = ctx.step.wait_for_event("big-enough", event="test/offer", timeout=60,
                                        if_="async.data.amount >= event.data.amount")
        return found.data["amount"] if found else None

    @jobs.define_job(id="both", trigger="test/both")
    async def both(ctx: Context[dict[str, Any]]) -> list[Any]:
        first, second = await asyncio.gather(
            ctx.step.wait_for_event("first", event="test/first", timeout=60),
            ctx.step.wait_for_event("second", event="test/second", timeout=60))
        return [first.id if first else None, second.id if second else None]

    return jobs


async def until_status(jobs: Stride, run_id: str, status: str) -> None:
    async def reached() -> bool:
        return (await jobs.get_run(run_id)).status == status

    await eventually(reached, what=f"run {run_id} to be {status}")


async def start(jobs: Stride, name: str, data: dict[str, Any]) -> str:
    [event_id] = await jobs.dispatch(name, data)
    [run] = await jobs.get_runs(event_id=event_id)
    return run.id


async def test_a_waiting_run_holds_no_worker_and_resumes_with_its_event(database_url: str) -> None:
    jobs = make_app(database_url)
    run_id = await start(jobs, "test/requested", {"request_id": "r1"})
    async with jobs.worker() as worker:
        await until_status(jobs, run_id, "waiting")
        await until_idle(worker)
        await jobs.dispatch("test/approved", {"request_id": "r2", "by": "mallory"})
        await jobs.dispatch("test/other", {"request_id": "r1", "by": "mallory"})
        await asyncio.sleep(0.2)
        assert (await jobs.get_run(run_id)).status == "waiting"
        [approval_id] = await jobs.dispatch("test/approved", {"request_id": "r1", "by": "alice"})
        done = await jobs.wait_for(run_id)
    assert done.status == "completed" and done.output == {"by": "alice", "typed": True}
    step = done.step("approval")
    assert (step.kind, step.status, step.output["id"]) == ("wait", "completed", approval_id)
    await jobs.aclose()


async def test_a_wait_times_out_with_none(database_url: str) -> None:
    jobs = make_app(database_url)
    run_id = await start(jobs, "test/requested", {"request_id": "r1", "timeout": 0.5})
    async with jobs.worker():
        done = await jobs.wait_for(run_id)
    assert done.status == "completed" and done.output == {"by": None, "typed": None}
    assert done.step("approval").output is None
    await jobs.aclose()


async def test_a_sync_handler_waits_with_an_if_filter(database_url: str) -> None:
    jobs = make_app(database_url)
    run_id = await start(jobs, "test/sync-requested", {"amount": 10})
    async with jobs.worker():
        await until_status(jobs, run_id, "waiting")
        await jobs.dispatch("test/offer", {"amount": 5})
        await asyncio.sleep(0.3)
        assert (await jobs.get_run(run_id)).status == "waiting"  # woken, checked, waiting again
        await jobs.dispatch("test/offer", {"amount": 12})
        done = await jobs.wait_for(run_id)
    assert done.status == "completed" and done.output == 12
    await jobs.aclose()


async def test_an_event_that_arrives_before_the_wait_is_committed_is_not_lost(
        database_url: str) -> None:
    jobs = make_app(database_url)
    store = await jobs.store()
    register = store.suspend_for_events

    async def event_first(*args: Any, **kwargs: Any) -> bool:
        # the handler has decided to wait; the event comes before the wait is registered
        await jobs.dispatch("test/approved", {"request_id": "r1", "by": "early"})
        return await register(*args, **kwargs)

    store.suspend_for_events = event_first  # type: ignore[method-assign]
    run_id = await start(jobs, "test/requested", {"request_id": "r1"})
    async with jobs.worker():
        done = await jobs.wait_for(run_id)
    assert done.status == "completed" and done.output["by"] == "early"
    await jobs.aclose()


async def test_a_waiting_run_can_be_cancelled(database_url: str) -> None:
    jobs = make_app(database_url)
    run_id = await start(jobs, "test/requested", {"request_id": "r1"})
    async with jobs.worker():
        await until_status(jobs, run_id, "waiting")
        assert await jobs.cancel(run_id, reason="not needed")
        await jobs.dispatch("test/approved", {"request_id": "r1", "by": "alice"})
        await asyncio.sleep(0.3)
    run = await jobs.get_run(run_id)
    assert run.status == "cancelled" and run.step("approval").status == "waiting"
    await jobs.aclose()


async def test_a_wait_survives_a_full_restart_of_every_worker(database_url: str) -> None:
    log: list[str] = []
    first = make_app(database_url, log)
    run_id = await start(first, "test/requested", {"request_id": "r1"})
    async with first.worker():
        await until_status(first, run_id, "waiting")
    await first.aclose()  # everything is down now

    second = make_app(database_url, log)  # a new process, as far as the store can tell
    await second.dispatch("test/approved", {"request_id": "r1", "by": "bob"})  # no worker up
    assert (await second.get_run(run_id)).status == "queued"  # the publish woke it
    async with second.worker():
        done = await second.wait_for(run_id)
    assert done.status == "completed" and done.output["by"] == "bob"
    assert log == ["before"]  # the step before the wait ran once, memoized across the restart
    await second.aclose()


async def test_parallel_waits_each_take_their_event(database_url: str) -> None:
    jobs = make_app(database_url)
    run_id = await start(jobs, "test/both", {})
    async with jobs.worker():
        await until_status(jobs, run_id, "waiting")
        [second] = await jobs.dispatch("test/second", {})
        await eventually(lambda: _step_done(jobs, run_id, "second"), what="second wait")
        [first] = await jobs.dispatch("test/first", {})
        done = await jobs.wait_for(run_id)
    assert done.status == "completed" and done.output == [first, second]
    await jobs.aclose()


async def _step_done(jobs: Stride, run_id: str, step_id: str) -> bool:
    run = await jobs.get_run(run_id)
    return any(step.id == step_id and step.status == "completed" for step in run.steps)



def test_match_keys_keep_the_json_type() -> None:
    from stride._waits import key_at, wait_key

    assert wait_key("1") != wait_key(1)
    assert wait_key(True) == "b:true" and wait_key(1.5) == "n:1.5"
    assert wait_key(None) is None and wait_key({"a": 1}) is None
    event = {"data": {"user": {"id": 7}}, "user": {"org": "o1"}}
    assert key_at(event, "data.user.id") == "n:7" and key_at(event, "user.org") == "s:o1"
    assert key_at(event, "data.missing") is None and key_at(event, "") == ""
