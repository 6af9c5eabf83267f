"""The app the benchmarks run: a no-op job with N no-op steps, and a job that stamps its start.

`jobs` reads its database from STRIDE_DATABASE_URL when this module is imported, so that
`python -m stride worker bench.apps:jobs` in another process opens the benchmark's store.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from stride import Context, Stride

NOOP_EVENT = "bench/noop"
PING_EVENT = "bench/ping"


async def _nothing(sleep_ms: float = 0) -> None:
    """The body of every benchmark step: no work (or an I/O-like wait of `sleep_ms`), so
    only the engine's cost is measured."""
    if sleep_ms:
        await asyncio.sleep(sleep_ms / 1000)


def build(database_url: str | None = None) -> Stride:
    """The benchmark app on `database_url` (default: STRIDE_DATABASE_URL)."""
    app = Stride(app_id="bench", database_url=database_url)

    @app.define_job(id="noop", trigger=NOOP_EVENT, retries=0)
    async def noop(ctx: Context[dict[str, Any]]) -> None:
        sleep_ms = float(ctx.event.data.get("sleep_ms", 0))
        for index in range(int(ctx.event.data.get("steps", 1))):
            await ctx.step.run(f"step-{index}", _nothing, sleep_ms)

    @app.define_job(id="ping", trigger=PING_EVENT, retries=0)
    async def ping(ctx: Context[dict[str, Any]]) -> dict[str, int]:
        # first line of the handler: when the worker handed the run to user code
        return {"started_ns": time.time_ns()}

    return app


jobs = build()
