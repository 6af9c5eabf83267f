"""A job limited to two concurrent runs across all workers; each run logs when it worked.

The single step sleeps `seconds` and then appends `start end pid` (wall-clock seconds) to
the file named by the event's `log`, in one write so lines from processes never interleave.
"""

from __future__ import annotations

import os
import time
from typing import Any

from stride import Context, Stride

EVENT = "limited/work"
CONCURRENCY = 2


def work(log: str, seconds: float) -> None:
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{start:.6f} {end:.6f} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def make_app(database_url: str | None = None) -> Stride:
    app = Stride(app_id="limited", database_url=database_url)

    @app.define_job(id="limited", trigger=EVENT, concurrency=CONCURRENCY)
    async def limited(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("work", work, ctx.event.data["log"], ctx.event.data["seconds"])

    return app


jobs = make_app()
