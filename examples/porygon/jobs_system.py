"""`health-check`: prove the whole path works (dispatch, claim, checkpoint) and time it.

Written as a plain `def` handler to show that sync code works too: it runs in a worker
thread and `ctx.step.run` returns values directly.
"""

import time
from typing import Any

from pydantic import BaseModel

from stride import SyncContext


class HealthCheck(BaseModel):
    """Someone (a probe, the demo) asked for a health check (`system/health.check`)."""

    source: str = "manual"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def report(dispatched_at: int, pinged_at: int) -> dict[str, Any]:
    """Timing of the round trip: event to first step, and one checkpoint commit."""
    now = now_ms()
    return {"healthy": True, "pickup_ms": pinged_at - dispatched_at,
            "checkpoint_ms": now - pinged_at}


def health_check(ctx: SyncContext[HealthCheck]) -> dict[str, Any]:
    """A trivial step whose checkpoint is the store round trip, then a timing report."""
    pinged_at = ctx.step.run("ping-store", now_ms)
    timing = ctx.step.run("report", report, ctx.event.ts, pinged_at)
    ctx.logger.info("healthy: picked up in %d ms", timing["pickup_ms"],
                    extra={"source": ctx.event.data.source})
    return timing
