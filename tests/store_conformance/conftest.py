"""Fixtures of the store conformance suite: every test here runs once per backend.

A test takes `store` (opened on a fresh database of one backend) and, where it needs a
second process's view of the same database, `other_store` (a second instance on the same
URL, with its own connections, exactly what another worker process would have).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import pytest

from stride._ids import new_id
from stride.stores.base import ClaimedRun, NewEvent, NewRun, Store, open_store_for_url

APP = "conformance"
LEASE_MS = 30_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = open_store_for_url(database_url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def other_store(database_url: str, store: Store) -> AsyncIterator[Store]:
    opened = open_store_for_url(database_url)
    await opened.open()
    yield opened
    await opened.close()


def event(event_id: str | None = None, *, name: str = "test/happened",
          data_json: str = '{"n": 1}', user_json: str | None = None) -> NewEvent:
    return NewEvent(event_id or new_id(), name, data_json, user_json, now_ms())


async def enqueue(store: Store, job_id: str = "job", count: int = 1, *, app_id: str = APP,
                  available_at: int | None = None) -> list[str]:
    """Publish `count` events, each triggering one run of `job_id`; return the run ids."""
    at = now_ms() if available_at is None else available_at
    batch = []
    run_ids = []
    for _ in range(count):
        ev = event()
        run_id = new_id()
        run_ids.append(run_id)
        batch.append((ev, [NewRun(run_id, app_id, job_id, ev.id, at)]))
    await store.publish(batch, dedupe_ms=60_000)
    return run_ids


async def claim(store: Store, job_ids: Sequence[str] = ("job",), *, limit: int = 10,
                worker_id: str = "worker-1", app_id: str = APP, lease_ms: int = LEASE_MS,
                concurrency: dict[str, int] | None = None) -> list[ClaimedRun]:
    return await store.claim(worker_id=worker_id, app_id=app_id, job_ids=list(job_ids),
                             limit=limit, lease_ms=lease_ms, concurrency=concurrency or {})


def run_ids(claimed: Sequence[ClaimedRun]) -> list[str]:
    return [c.lease.run_id for c in claimed]
