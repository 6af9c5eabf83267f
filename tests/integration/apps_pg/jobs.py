"""The app the PostgreSQL process tests run in `stride worker` subprocesses.

Every step execution appends one line to the file named by STRIDE_TEST_LOG:
`<event time ms> <run id> <step> <start|end> <pid>`, written with O_APPEND so lines from
several processes never interleave. The tests read it to count executions and overlaps.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from stride import Backoff, Context, Stride

APP_ID = "pg-processes"
SLOW_STEP_SECONDS = float(os.environ.get("STRIDE_TEST_SLOW_SECONDS", "4"))


def record(ctx: Context[Any], step: str, phase: str) -> None:
    line = f"{time.time_ns() // 1000} {ctx.run_id} {step} {phase} {os.getpid()}\n"
    fd = os.open(os.environ["STRIDE_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def recorded(ctx: Context[Any], step: str, seconds: float) -> str:
    async def body() -> str:
        record(ctx, step, "start")
        await asyncio.sleep(seconds)
        record(ctx, step, "end")
        return step

    return await ctx.step.run(step, body)


def define_jobs(app: Stride) -> Stride:
    """Register the jobs on `app`: the workers' app and the tests' dispatching app alike."""

    @app.define_job(id="limited", trigger="pg/limited", concurrency=2)
    async def limited(ctx: Context[dict[str, Any]]) -> str:
        """At most two runs at once, whichever worker process holds them."""
        return await recorded(ctx, "work", 0.4)  # long enough to overlap on a loaded machine

    @app.define_job(id="crashy", trigger="pg/crashy")
    async def crashy(ctx: Context[dict[str, Any]]) -> list[str]:
        """The test kills the worker during `slow`; another worker must finish the run."""
        return [await recorded(ctx, "one", 0), await recorded(ctx, "slow", SLOW_STEP_SECONDS),
                await recorded(ctx, "three", 0)]

    @app.define_job(id="bulk", trigger="pg/bulk")
    async def bulk(ctx: Context[dict[str, Any]]) -> int:
        """Two short steps; a thousand of these are in flight when PostgreSQL restarts."""
        await recorded(ctx, "a", 0.01)
        await recorded(ctx, "b", 0.01)
        return int(ctx.event.data["n"])

    return app


def make_app(database_url: str | None = None) -> Stride:
    return define_jobs(Stride(app_id=APP_ID, database_url=database_url,
                              backoff=Backoff(initial=0.05, factor=1.0, jitter=0.0)))


jobs = make_app()  # the database comes from STRIDE_DATABASE_URL
