"""The real engine (Stride app + worker) on each backend, and on PostgreSQL across processes."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stride import Backoff, Context, Stride
from tests.conftest import eventually
from tests.integration.apps_pg.jobs import make_app
from tests.integration.apps_pg.processes import (
    executions,
    max_overlap,
    start_worker,
    stop_workers,
)


async def test_a_multi_step_job_with_a_retried_step_completes_once(database_url: str) -> None:
    jobs = Stride(app_id="engine", database_url=database_url,
                  backoff=Backoff(initial=0.05, factor=1.0, jitter=0.0))
    calls: Counter[str] = Counter()

    def step(name: str, fail_first: bool = False) -> Any:
        def body() -> str:
            calls[name] += 1
            if fail_first and calls[name] == 1:
                raise RuntimeError(f"{name} fails once")
            return f"{name} ok"
        return body

    @jobs.define_job(id="pipeline", trigger="doc/uploaded", retries=2)
    async def pipeline(ctx: Context[dict[str, Any]]) -> list[str]:
        return [await ctx.step.run("fetch", step("fetch")),
                await ctx.step.run("parse", step("parse", fail_first=True)),
                await ctx.step.run("store", step("store"))]

    async with jobs, jobs.worker(concurrency=4):
        [event_id] = await jobs.dispatch("doc/uploaded", {"doc": 1})
        [queued] = await jobs.get_runs(event_id=event_id)
        run = await jobs.wait_for(queued.id, timeout=10)

    assert run.status == "completed"
    assert run.output == ["fetch ok", "parse ok", "store ok"]
    assert [(s.id, s.attempts) for s in run.steps] == [("fetch", 1), ("parse", 2), ("store", 1)]
    assert run.step("parse").errors[0]["message"] == "parse fails once"
    # the retry replays the handler from the top: fetch's memo is used, not its body
    assert calls == {"fetch": 1, "parse": 2, "store": 1}


async def test_many_runs_through_the_group_commit_all_complete(database_url: str) -> None:
    jobs = Stride(app_id="engine", database_url=database_url)

    @jobs.define_job(id="square", trigger="num/given")
    async def square(ctx: Context[dict[str, Any]]) -> int:
        n = int(ctx.event.data["n"])
        return await ctx.step.run("square", lambda: n * n)

    async with jobs, jobs.worker(concurrency=50):
        await jobs.dispatch_many([("num/given", {"n": n}) for n in range(300)])

        async def all_done() -> list[Any] | None:
            runs = await jobs.get_runs(status="completed", limit=1000)
            return runs if len(runs) == 300 else None

        runs = await eventually(all_done, timeout=30, what="300 completed runs")

    assert sorted(run.output for run in runs) == sorted(n * n for n in range(300))


@pytest.mark.slow
async def test_a_concurrency_limit_of_two_holds_across_four_worker_processes(
        postgres_url: str, tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    workers = [start_worker(postgres_url, log, concurrency=5, lease=2) for _ in range(4)]
    jobs = make_app(postgres_url)
    try:
        async with jobs:
            await jobs.dispatch_many([("pg/limited", {"n": n}) for n in range(16)])

            async def all_completed() -> bool:
                return len(await jobs.get_runs(status="completed", limit=100)) == 16

            await eventually(all_completed, timeout=60, what="16 completed runs")
    finally:
        errors = stop_workers(workers)

    work = [e for e in executions(log) if e.step == "work"]
    spans = [(e.start_us, e.end_us) for e in work if e.end_us is not None]
    assert len({e.run_id for e in work}) == 16, errors
    assert max_overlap(spans) == 2  # never more than the limit, and the limit is used
    assert len({e.pid for e in work}) >= 2  # the runs really were spread over processes


async def test_an_idle_worker_is_woken_by_the_dispatch_not_by_its_poll(
        postgres_url: str) -> None:
    jobs = Stride(app_id="latency", database_url=postgres_url)
    started: dict[str, float] = {}

    @jobs.define_job(id="ping", trigger="ping/sent")
    async def ping(ctx: Context[dict[str, Any]]) -> None:
        started[ctx.event.id] = time.monotonic()

    handle = jobs.worker(concurrency=4)
    # a poll so slow that only LISTEN/NOTIFY can explain a start within seconds
    handle.options = dataclasses.replace(handle.options, poll_seconds=60.0)
    async with jobs, handle:
        await asyncio.sleep(0.3)  # idle: the worker waits on LISTEN
        delays = []
        for _ in range(5):
            sent = time.monotonic()
            [event_id] = await jobs.dispatch("ping/sent", {})
            await eventually(lambda eid=event_id: _found(started, eid), timeout=20,
                             interval=0.001)
            delays.append(started[event_id] - sent)
            await asyncio.sleep(0.05)

    assert max(delays) < 5.0, delays  # milliseconds on a quiet machine; never the 60 s poll


async def _found(started: dict[str, float], event_id: str) -> bool:
    return event_id in started
