"""Jobs with global concurrency keys; each run logs when its step worked.

`per-user` allows one run per `data.user` at a time; `scan` and `rescan` share one limit of
two (`scope="account"`). The step sleeps `seconds` and appends `start end pid key` to the
file named by the event's `log`, in one write so lines from processes never interleave.
"""

from __future__ import annotations

import os
import time
from typing import Any

from stride import Concurrency, Context, Stride

PER_USER = "flow/per-user"
SCAN, RESCAN = "flow/scan", "flow/rescan"
SHARED_LIMIT = 2


def work(log: str, seconds: float, key: str) -> None:
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{start:.6f} {end:.6f} {os.getpid()} {key}\n".encode())
    finally:
        os.close(fd)


def make_app(database_url: str | None = None) -> Stride:
    app = Stride(app_id="flow-keyed", database_url=database_url)
    shared = Concurrency(limit=SHARED_LIMIT, scope="account", name="ocr")

    @app.define_job(id="per-user", trigger=PER_USER,
                    concurrency=Concurrency(limit=1, key="event.data.user"))
    def per_user(ctx: Context[dict[str, Any]]) -> None:
        data = ctx.event.data
        ctx.step.run("work", work, data["log"], data["seconds"], data["user"])

    @app.define_job(id="scan", trigger=SCAN, concurrency=shared)
    def scan(ctx: Context[dict[str, Any]]) -> None:
        ctx.step.run("work", work, ctx.event.data["log"], ctx.event.data["seconds"], "ocr")

    @app.define_job(id="rescan", trigger=RESCAN, concurrency=shared)
    def rescan(ctx: Context[dict[str, Any]]) -> None:
        ctx.step.run("work", work, ctx.event.data["log"], ctx.event.data["seconds"], "ocr")

    return app


jobs = make_app()
