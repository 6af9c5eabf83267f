"""PostgreSQL keyed claims under races the conformance suite cannot stage: another
transaction holds a row the claim needs (it skips it, SKIP LOCKED), or a key's lock."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from stride._flow_decide import RunFlow
from stride._ids import new_id
from stride.stores.base import NewEvent, NewRun
from stride.stores.postgres import PostgresStore
from tests.conftest import POSTGRES_URL

APP, JOB = "races", "keyed"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(postgres_url)
    await opened.open()
    yield opened
    await opened.close()


async def enqueue(store: PostgresStore, count: int) -> list[str]:
    batch, ids = [], []
    for offset in range(count):
        event = NewEvent(new_id(), "race/key", "{}", None, now_ms())
        run_id = new_id()
        ids.append(run_id)
        batch.append((event, [NewRun(run_id, APP, JOB, event.id, now_ms() - 1000 + offset,
                                     flow=RunFlow(concurrency=(("k", 1),)))]))
    await store.publish(batch, dedupe_ms=60_000)
    return ids


async def claim(store: PostgresStore) -> list[str]:
    claimed = await store.claim(worker_id="w", app_id=APP, job_ids=[JOB], limit=10,
                                lease_ms=30_000, concurrency={}, keyed={JOB})
    for run in claimed:
        await store.finish(run.lease, status="completed", output_json="null", error_json=None)
    return [run.lease.run_id for run in claimed]


async def test_a_release_missed_while_another_transaction_held_the_run_comes_later(
        store: PostgresStore) -> None:
    first, parked = await enqueue(store, 2)
    assert await claim(store) == [first]  # leased and finished; `parked` was parked
    schema = store.schema
    with psycopg.connect(POSTGRES_URL) as other:  # holds the parked run's row meanwhile
        other.execute(f'SELECT 1 FROM "{schema}".runs WHERE id = %s FOR UPDATE', (parked,))
        assert await claim(store) == [], "the claim that saw the freed slot skipped the run"
        other.rollback()

    taken: list[str] = []
    for _ in range(3):
        taken += await claim(store)
    assert taken == [parked], "a later claim finds the key free and its parked run"


async def test_a_key_another_claimer_is_deciding_on_is_left_for_the_next_claim(
        store: PostgresStore) -> None:
    [only] = await enqueue(store, 1)
    key_lock: Any = f"{store.schema}/flow"
    with psycopg.connect(POSTGRES_URL) as other:  # as if another claimer held key "k"
        other.execute("SELECT pg_advisory_xact_lock(hashtext(%s::text), hashtext('k'))",
                      (key_lock,))
        assert await claim(store) == [], "no waiting on the key: left for later"
        other.rollback()

    assert await claim(store) == [only]
