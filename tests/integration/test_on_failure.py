"""on_failure: after the last retry, a separate run executes the job's failure handler once."""

from __future__ import annotations

from typing import Any

from stride import Backoff, Context, Stride, SyncContext
from stride._waits import FAILED_EVENT
from tests.conftest import eventually


def make_app(url: str, handled: list[dict[str, Any]]) -> Stride:
    jobs = Stride(app_id="on-failure-test", database_url=url, backoff=Backoff(initial=0.05))

    async def report(ctx: Context[dict[str, Any]]) -> str:
        handled.append(ctx.event.data)
        return "reported"

    @jobs.define_job(id="flaky", trigger="test/flaky", retries=2, on_failure=report)
    async def flaky(ctx: Context[dict[str, Any]]) -> str:
        if ctx.event.data.get("fail"):
            raise RuntimeError(f"attempt {ctx.attempt} failed")
        return "fine"

    @jobs.define_job(id="sync-broken", trigger="test/sync-broken", retries=0)
    def sync_broken(ctx: SyncContext[dict[str, Any]]) -> None:
        raise ValueError("broken")

    @jobs.on_failure(sync_broken)
    def sync_broken_failed(ctx: SyncContext[dict[str, Any]]) -> None:
        handled.append(ctx.event.data)

    return jobs


async def test_the_failure_handler_runs_once_after_the_last_retry(database_url: str) -> None:
    handled: list[dict[str, Any]] = []
    jobs = make_app(database_url, handled)
    [event_id] = await jobs.dispatch("test/flaky", {"fail": True}, user={"id": "u1"})
    [event_ok] = await jobs.dispatch("test/flaky", {"fail": False})
    [run] = await jobs.get_runs(event_id=event_id)
    [ok] = await jobs.get_runs(event_id=event_ok)
    async with jobs.worker():
        failed = await jobs.wait_for(run.id)
        assert (await jobs.wait_for(ok.id)).status == "completed"

        async def handler_run() -> Any:
            runs = await jobs.get_runs(job_id="flaky-on-failure")
            return runs if runs and runs[0].finished else None

        [failure_run] = await eventually(handler_run, what="the on-failure run")
    assert failed.status == "failed" and len(failed.errors) == 3
    assert failure_run.status == "completed" and failure_run.output == "reported"
    [data] = handled
    assert data["run_id"] == run.id and data["job_id"] == "flaky"
    assert data["error"]["message"] == "attempt 2 failed"
    assert data["event"]["id"] == event_id and data["event"]["data"] == {"fail": True}
    event = await (await jobs.store()).get_event(failure_run.event_id)
    assert event is not None and event.name == FAILED_EVENT and event.user_json is not None
    await jobs.aclose()


async def test_the_decorator_form_registers_a_sync_handler(database_url: str) -> None:
    handled: list[dict[str, Any]] = []
    jobs = make_app(database_url, handled)
    assert "sync-broken-on-failure" in jobs.jobs
    [event_id] = await jobs.dispatch("test/sync-broken", {})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker():
        assert (await jobs.wait_for(run.id)).status == "failed"
        await eventually(lambda: _any(handled), what="the handler")
    assert [data["job_id"] for data in handled] == ["sync-broken"]
    await jobs.aclose()


async def _any(items: list[Any]) -> bool:
    return bool(items)
