"""Cron triggers: every worker computes due ticks; each tick fires once across the cluster.

A tick becomes an event whose id is derived from (app, job, tick time). Every worker that
notices the tick publishes the same id, and the store keeps only the first, so a tick fires
exactly once however many workers and machines run, with no leader election.
Missed ticks (everything was down): `missed="skip"` (default) fires only ticks younger than
`MISSED_WINDOW_SECONDS`; `missed="run_once"` fires the most recent missed tick once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from stride import _codec
from stride._flow_keys import FlowKeys, has_flow
from stride._ids import new_id
from stride._waits import new_run
from stride.jobs import CronTrigger, Job
from stride.stores.base import NewEvent, NewRun, Store

log = logging.getLogger("stride.cron")

CRON_EVENT_NAME = "stride/cron"
MISSED_WINDOW_SECONDS = 60.0
TICK_DEDUPE_MS = 7 * 24 * 3600 * 1000


def tick_event_id(app_id: str, job_id: str, tick: datetime) -> str:
    """The same id on every worker for one tick of one job."""
    digest = hashlib.sha1(f"{app_id}\0{job_id}".encode()).hexdigest()[:16]
    return f"cron:{digest}:{int(tick.timestamp() * 1000)}"


class CronScheduler:
    """Publishes due cron ticks of `jobs`; call `tick()` about once a second (a Looper)."""

    def __init__(self, *, app_id: str, jobs: Mapping[str, Job[Any, Any]], store: Store) -> None:
        self._app_id = app_id
        self._store = store
        self._triggers = [(job, trigger) for job in jobs.values() for trigger in job.triggers
                          if isinstance(trigger, CronTrigger)]
        # a tick's run is held to its job's flow control like a dispatched one
        self._flows = {job.id: FlowKeys(job, app_id) for job, _ in self._triggers
                       if has_flow(job.flow)}
        self._fired: dict[tuple[str, str], datetime] = {}

    @property
    def has_work(self) -> bool:
        return bool(self._triggers)

    async def tick(self, now: datetime | None = None) -> int:
        """Publish every tick that is due and not yet seen here; returns how many were new."""
        now = now or datetime.now(UTC)
        batch = []
        for job, trigger in self._triggers:
            due = trigger.previous_tick(now)
            key = (job.id, trigger.schedule)
            if self._fired.get(key) == due:
                continue
            self._fired[key] = due
            too_old = now - due > timedelta(seconds=MISSED_WINDOW_SECONDS)
            if too_old and trigger.missed == "skip":
                continue
            batch.append(self._tick_event(job, trigger, due))
        if not batch:
            return 0
        result = await self._store.publish(batch, dedupe_ms=TICK_DEDUPE_MS)
        for event_id in result.accepted:
            log.info("cron tick %s fired", event_id)
        self._store.notify_local()
        return len(result.accepted)

    def _tick_event(self, job: Job[Any, Any], trigger: CronTrigger,
                    due: datetime) -> tuple[NewEvent, list[NewRun]]:
        event_id = tick_event_id(self._app_id, job.id, due)
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        data = {"job_id": job.id, "schedule": trigger.schedule, "tz": trigger.tz,
                "tick": due.isoformat()}
        event = NewEvent(event_id, CRON_EVENT_NAME, _codec.dumps_str(data), None, now_ms)
        keys = self._flows.get(job.id)
        flow = keys.run_flow({"id": event_id, "name": CRON_EVENT_NAME, "data": data,
                              "user": None, "ts": now_ms}) if keys is not None else None
        return event, [new_run(self._app_id, job, event_id, {"data": data, "user": None},
                               now_ms, new_id(), flow=flow)]
