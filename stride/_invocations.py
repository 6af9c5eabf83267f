"""Tell the parent when its invoked (child) run is cancelled.

A child run finishing through the executor publishes `stride/invoke.finished` in the same
transaction as its finish (`_waits.finish_events`), which wakes the parent's invoke step.
A cancelled child never gets there: an API call, its own timeout, a cancel-on event or a
singleton replacing it ends it from outside. Without word, a parent whose `invoke` has no
timeout would wait forever. So a worker Looper looks for cancelled children whose finished
event does not exist yet (a partial index holds cancelled children only) and publishes it
for them, with the cancellation's reason; the parent's step raises `StepError`.

Several workers may sweep at once: the event id is the same for all of them
(`<invocation id>:finished`), so the store drops the copies. A cancellation committed
while no worker ran is found by the first sweep of the next one, which looks back over the
retention period; later sweeps look back a few minutes (an `ended_at` stamped just before
a slow commit is still seen).
"""

from __future__ import annotations

import logging
import time

from stride import _codec
from stride._waits import invoke_finished
from stride.stores.base import CancelledInvocation, NewEvent, Store

log = logging.getLogger("stride.invocations")

SWEEP_INTERVAL_SECONDS = 1.0
BATCH = 500
RECENT_MS = 5 * 60 * 1000
DEDUPE_MS = 24 * 3600 * 1000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def finished_event(child: CancelledInvocation, now: int) -> NewEvent:
    """The event a cancelled child's parent waits for: as a finishing child would publish
    it, with status "cancelled" and the cancellation as the error."""
    error = _codec.loads(child.error_json) if child.error_json else None
    return invoke_finished(child.event_id, child.run_id, child.job_id, {
        "status": "cancelled",
        "error": error or {"name": "Cancelled", "message": "the invoked run was cancelled"}},
        now)


class CancelledChildren:
    """The sweep: each call publishes the finished events of cancelled children not yet
    reported (up to `BATCH`; the next call takes the rest)."""

    def __init__(self, store: Store, *, lookback_ms: int) -> None:
        self._store = store
        self._lookback_ms = lookback_ms
        self._swept_once = False  # until a sweep found less than a batch: look far back

    async def sweep(self) -> int:
        now = _now_ms()
        since = now - (RECENT_MS if self._swept_once else max(self._lookback_ms, RECENT_MS))
        children = await self._store.cancelled_invocations(since_ms=since, limit=BATCH)
        if children:
            await self._store.publish([(finished_event(child, now), []) for child in children],
                                      dedupe_ms=DEDUPE_MS)
            log.info("told the parents of %d cancelled invoked runs", len(children))
        self._swept_once = self._swept_once or len(children) < BATCH
        return len(children)

    async def tick(self) -> None:
        """The Looper's tick."""
        await self.sweep()
