"""A three-step job whose middle step hangs the first time it runs: for kill -9 and SIGTERM.

Every step body appends the pid of its process to `<workdir>/<step>.log`, so a test can
count how many times each body really ran, and where, across processes. `workdir` and how
long the first execution of step 2 hangs (`hang_seconds`) come with the event; with
`"best_effort": true` the handler treats step 2 as optional and catches any `Exception`
it raises, as user code often does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from stride import Context, Stride

EVENT = "crashy/start"


def record(workdir: str, step: str) -> int:
    """Append this process's pid to the step's log; return how many times the step ran."""
    path = Path(workdir) / f"{step}.log"
    with path.open("a") as log:
        log.write(f"{os.getpid()}\n")
    return len(path.read_text().splitlines())


def runs_of(workdir: str | Path, step: str) -> list[int]:
    """The pids that ran `step`, in order (empty if it never ran)."""
    path = Path(workdir) / f"{step}.log"
    return [int(line) for line in path.read_text().splitlines()] if path.exists() else []


def hang_the_first_time(workdir: str, hang_seconds: float) -> str:
    if record(workdir, "step-2") == 1:
        time.sleep(hang_seconds)  # long enough to be killed, or to outlast a SIGTERM
    return "two"


def make_app(database_url: str | None = None) -> Stride:
    app = Stride(app_id="crashy", database_url=database_url)

    @app.define_job(id="three-steps", trigger=EVENT)
    async def three_steps(ctx: Context[dict[str, Any]]) -> dict[str, Any]:
        workdir = ctx.event.data["workdir"]
        one = await ctx.step.run("step-1", record, workdir, "step-1")
        try:
            two = await ctx.step.run("step-2", hang_the_first_time, workdir,
                                     ctx.event.data["hang_seconds"])
        except Exception as exc:
            if not ctx.event.data.get("best_effort"):
                raise
            two = f"skipped: {type(exc).__name__}"
        three = await ctx.step.run("step-3", record, workdir, "step-3")
        return {"step-1": one, "step-2": two, "step-3": three}

    return app


jobs = make_app()
