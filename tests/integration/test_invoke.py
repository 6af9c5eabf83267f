"""step.invoke: run another job as a child and get its output (or its error as StepError)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from stride import Backoff, Context, StepError, Stride, SyncContext
from stride._waits import INVOKE_EVENT
from tests.conftest import eventually


class Size(BaseModel):
    width: int
    height: int


def make_app(url: str, calls: list[str]) -> Stride:
    jobs = Stride(app_id="invoke-test", database_url=url, backoff=Backoff(initial=0.05))
    resize = jobs.event("test/resize", Size)

    @jobs.define_job(id="area", trigger=resize)
    async def area(ctx: Context[Size]) -> int:
        calls.append("area")
        return ctx.event.data.width * ctx.event.data.height

    @jobs.define_job(id="broken", trigger="test/broken", retries=1)
    async def broken(ctx: Context[dict[str, Any]]) -> None:
        calls.append("broken")
        raise ValueError(f"cannot do {ctx.event.data['what']}")

    @jobs.define_job(id="slow", trigger="test/slow")
    async def slow(ctx: Context[dict[str, Any]]) -> str:
        await ctx.step.sleep("nap", 30)
        return "late"

    @jobs.define_job(id="parent", trigger="test/parent")
    async def parent(ctx: Context[dict[str, Any]]) -> dict[str, Any]:
        await ctx.step.run("before", calls.append, "parent-before")
        size = await ctx.step.invoke("area", job=area, data=Size(width=3, height=4))
        try:
            await ctx.step.invoke("broken", job="broken", data={"what": "this"})
            failure = None
        except StepError as exc:
            failure = exc.message
        return {"area": size, "failure": failure}

    @jobs.define_job(id="patient", trigger="test/patient")
    async def patient(ctx: Context[dict[str, Any]]) -> dict[str, Any]:
        try:  # no timeout: only the child's end can wake it
            return {"output": await ctx.step.invoke("slow", job="slow")}
        except StepError as exc:
            return {"error": exc.name, "message": exc.message}

    @jobs.define_job(id="impatient", trigger="test/impatient")
    def impatient(ctx: SyncContext[dict[str, Any]]) -> str:
        try:
            return ctx.step.invoke("slow", job="slow", timeout=0.5)
        except StepError as exc:
            return exc.name

    return jobs


async def test_a_parent_gets_the_output_and_the_error_of_its_children(database_url: str) -> None:
    calls: list[str] = []
    jobs = make_app(database_url, calls)
    [event_id] = await jobs.dispatch("test/parent", {})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker():
        done = await jobs.wait_for(run.id, timeout=30)
    assert done.status == "completed", done.error
    assert done.output == {"area": 12, "failure": "cannot do this"}
    assert calls.count("parent-before") == 1 and calls.count("area") == 1
    assert calls.count("broken") == 2  # its own retries, then its error went to the parent
    assert (done.step("area").kind, done.step("area").status) == ("invoke", "completed")
    children = {child.job_id: child for child in await jobs.get_runs(job_id="area")}
    child = children["area"]
    assert child.status == "completed" and child.output == 12
    event = await (await jobs.store()).get_event(child.event_id)
    assert event is not None and event.name == INVOKE_EVENT
    assert [r.status for r in await jobs.get_runs(job_id="broken")] == ["failed"]
    await jobs.aclose()


async def test_an_invoke_times_out_with_a_step_error(database_url: str) -> None:
    jobs = make_app(database_url, [])
    [event_id] = await jobs.dispatch("test/impatient", {})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker():
        done = await jobs.wait_for(run.id, timeout=30)
    assert done.status == "completed" and done.output == "InvokeTimeout"
    await jobs.aclose()


async def patient_with_a_sleeping_child(jobs: Stride) -> tuple[str, str]:
    """Start a `patient` run (a worker is running); its id and its `slow` child's, once the
    child sleeps."""
    [event_id] = await jobs.dispatch("test/patient", {})
    [run] = await jobs.get_runs(event_id=event_id)

    async def child() -> str | None:
        children = await jobs.get_runs(job_id="slow")
        return children[0].id if children and children[0].status == "sleeping" else None
    return run.id, await eventually(child, timeout=20, what="the child run sleeping")


async def test_a_cancelled_child_fails_the_parents_invoke_with_the_reason(
        database_url: str) -> None:
    jobs = make_app(database_url, [])
    async with jobs.worker():
        run_id, child = await patient_with_a_sleeping_child(jobs)
        assert await jobs.cancel(child, reason="the upload was deleted", by="test")
        done = await jobs.wait_for(run_id, timeout=20)
    assert done.status == "completed", done.error
    assert done.output["error"] == "Cancelled"
    assert "the upload was deleted" in done.output["message"]
    assert done.step("slow").status == "completed"  # the invoke step recorded the outcome
    await jobs.aclose()


async def test_a_child_cancelled_while_no_worker_ran_is_reported_by_the_next_one(
        database_url: str) -> None:
    jobs = make_app(database_url, [])
    async with jobs.worker():
        run_id, child = await patient_with_a_sleeping_child(jobs)
        await eventually(lambda: _status_is(jobs, run_id, "waiting"), what="parent waiting")
    assert await jobs.cancel(child, reason="nobody was running", by="test")

    async with jobs.worker():
        done = await jobs.wait_for(run_id, timeout=20)
    assert done.status == "completed" and done.output["error"] == "Cancelled"
    await jobs.aclose()


async def _status_is(jobs: Stride, run_id: str, status: str) -> bool:
    return (await jobs.get_run(run_id)).status == status
