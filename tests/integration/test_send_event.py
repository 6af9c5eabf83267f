"""step.send_event: dispatch from inside a run, memoized: a replay does not send again."""

from __future__ import annotations

from typing import Any

from stride import Backoff, Context, OutgoingEvent, Stride, SyncContext


def make_app(url: str, received: list[Any]) -> Stride:
    jobs = Stride(app_id="send-test", database_url=url, backoff=Backoff(initial=0.05))

    @jobs.define_job(id="sender", trigger="test/send", retries=1)
    async def sender(ctx: Context[dict[str, Any]]) -> list[str]:
        ids = await ctx.step.send_event("notify", [
            ("test/notified", {"n": 1}), OutgoingEvent("test/notified", {"n": 2})])
        if ctx.attempt == 0:
            raise RuntimeError("fail once after sending: the retry replays the send step")
        return ids

    @jobs.define_job(id="sync-sender", trigger="test/sync-send")
    def sync_sender(ctx: SyncContext[dict[str, Any]]) -> list[str]:
        return ctx.step.send_event("one", {"name": "test/notified", "data": {"n": 3}})

    @jobs.define_job(id="receiver", trigger="test/notified")
    async def receiver(ctx: Context[dict[str, Any]]) -> None:
        received.append((ctx.event.data["n"], ctx.event.user))

    return jobs


async def test_events_sent_from_a_run_are_sent_once(database_url: str) -> None:
    received: list[Any] = []
    jobs = make_app(database_url, received)
    [event_id] = await jobs.dispatch("test/send", {}, user={"id": "u1"})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker():
        done = await jobs.wait_for(run.id)
        [sent_a, sent_b] = done.output
        for sent in (sent_a, sent_b):
            [child] = await jobs.get_runs(event_id=sent)
            await jobs.wait_for(child.id)
    assert done.status == "completed" and done.attempts == 1
    step = done.step("notify")
    assert (step.kind, step.status, step.output) == ("send", "completed", [sent_a, sent_b])
    assert sorted(received) == [(1, {"id": "u1"}), (2, {"id": "u1"})]  # the actor carries over
    assert len(await jobs.get_runs(job_id="receiver")) == 2
    await jobs.aclose()


async def test_a_sync_handler_sends_one_event(database_url: str) -> None:
    received: list[Any] = []
    jobs = make_app(database_url, received)
    [event_id] = await jobs.dispatch("test/sync-send", {})
    [run] = await jobs.get_runs(event_id=event_id)
    async with jobs.worker():
        done = await jobs.wait_for(run.id)
        [child] = await jobs.get_runs(event_id=done.output[0])
        await jobs.wait_for(child.id)
    assert received == [(3, None)]
    await jobs.aclose()
