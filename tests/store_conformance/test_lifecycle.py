"""reschedule, finish, release, heartbeat and reclaim_expired: how a run's lease ends."""

from __future__ import annotations

import asyncio
import json

import pytest

from stride.errors import LeaseLost
from stride.stores.base import StepRecord, Store

from .conftest import claim, enqueue, now_ms


async def test_reschedule_gives_the_run_back_until_its_time(store: Store) -> None:
    [run_id] = await enqueue(store)
    [claimed] = await claim(store)
    later = now_ms() + 60_000

    await store.reschedule(claimed.lease, available_at=later, status="sleeping", attempt=2,
                           errors_json='[{"message": "boom"}]')

    row = await store.get_run(run_id)
    assert row is not None
    assert (row.status, row.available_at, row.attempt, row.errors_json, row.lease_owner) == (
        "sleeping", later, 2, '[{"message": "boom"}]', None)
    assert await claim(store) == []  # not due yet


async def test_a_rescheduled_run_that_is_due_is_claimed_again(store: Store) -> None:
    [run_id] = await enqueue(store)
    [claimed] = await claim(store)
    await store.reschedule(claimed.lease, available_at=now_ms(), status="queued")

    [again] = await claim(store)

    assert again.lease.run_id == run_id
    assert again.attempt == 0  # attempt and errors are kept when not given


async def test_reschedule_under_a_stale_lease_is_refused(store: Store) -> None:
    await enqueue(store)
    [claimed] = await claim(store)
    await store.reschedule(claimed.lease, available_at=now_ms(), status="queued")

    with pytest.raises(LeaseLost):
        await store.reschedule(claimed.lease, available_at=now_ms(), status="queued")


async def test_finish_records_the_outcome_and_ends_the_lease(store: Store) -> None:
    [ok_id, bad_id] = await enqueue(store, count=2)
    ok, bad = await claim(store)

    await store.finish(ok.lease, status="completed", output_json='{"n": 1}', error_json=None)
    await store.finish(bad.lease, status="failed", output_json=None,
                       error_json='{"message": "no"}', errors_json='[{"message": "no"}]')

    done = await store.get_run(ok_id)
    failed = await store.get_run(bad_id)
    assert done is not None and failed is not None
    assert (done.status, done.output_json, done.lease_owner) == ("completed", '{"n": 1}', None)
    assert done.ended_at is not None
    assert (failed.status, failed.error_json, failed.errors_json) == (
        "failed", '{"message": "no"}', '[{"message": "no"}]')


async def test_a_run_is_finished_exactly_once(store: Store) -> None:
    await enqueue(store)
    [claimed] = await claim(store)
    await store.finish(claimed.lease, status="completed", output_json="1", error_json=None)

    with pytest.raises(LeaseLost):
        await store.finish(claimed.lease, status="completed", output_json="2", error_json=None)

    row = await store.get_run(claimed.lease.run_id)
    assert row is not None and row.output_json == "1"


async def test_release_makes_runs_due_at_once(store: Store) -> None:
    await enqueue(store, count=2)
    claimed = await claim(store)

    await store.release([c.lease for c in claimed])

    again = await claim(store, worker_id="worker-2")
    assert sorted(c.lease.run_id for c in again) == sorted(c.lease.run_id for c in claimed)


async def test_release_ignores_leases_that_moved_on(store: Store) -> None:
    await enqueue(store)
    [claimed] = await claim(store)
    await store.release([claimed.lease])
    [taken] = await claim(store, worker_id="worker-2")

    await store.release([claimed.lease])  # the old lease: nothing happens

    row = await store.get_run(taken.lease.run_id)
    assert row is not None and (row.status, row.lease_owner) == ("running", "worker-2")


async def test_heartbeat_extends_every_lease_of_the_worker(store: Store) -> None:
    await enqueue(store, count=3)
    await claim(store, limit=2, worker_id="worker-1", lease_ms=300)
    await claim(store, limit=1, worker_id="worker-2", lease_ms=300)

    held = await store.heartbeat(worker_id="worker-1", app_id="conformance", lease_ms=60_000,
                                 info_json='{"pid": 1}')
    await asyncio.sleep(0.4)

    assert held == 2
    reclaimed = await store.reclaim_expired()
    assert len(reclaimed) == 1  # only worker-2's lease ran out


async def test_reclaim_requeues_only_expired_leases(store: Store) -> None:
    await enqueue(store, count=2)
    [short] = await claim(store, limit=1, worker_id="dies", lease_ms=100)
    [long] = await claim(store, limit=1, worker_id="lives", lease_ms=60_000)
    await asyncio.sleep(0.2)

    reclaimed = await store.reclaim_expired()

    assert reclaimed == [short.lease.run_id]
    row = await store.get_run(short.lease.run_id)
    assert row is not None and (row.status, row.lease_owner) == ("queued", None)
    still = await store.get_run(long.lease.run_id)
    assert still is not None and still.status == "running"
    [retaken] = await claim(store, worker_id="survivor")
    assert retaken.lease.run_id == short.lease.run_id
    assert await store.reclaim_expired() == []


async def test_a_reclaim_records_the_lost_worker_with_the_runs_progress(store: Store) -> None:
    [run_id] = await enqueue(store)
    [first] = await claim(store, worker_id="dies", lease_ms=50)
    await store.checkpoint(first.lease, StepRecord("fetch", 0, "run", "completed", "1",
                                                   attempts=1, started_at=now_ms(),
                                                   ended_at=now_ms()))
    await asyncio.sleep(0.1)
    await store.reclaim_expired()
    [_again] = await claim(store, worker_id="dies-too", lease_ms=50)
    await asyncio.sleep(0.1)
    await store.reclaim_expired()

    [retaken] = await claim(store, worker_id="survivor")

    assert retaken.lease.run_id == run_id
    errors = json.loads(retaken.errors_json or "[]")
    assert [(e["name"], e["steps_done"]) for e in errors] == [("WorkerLost", 1)] * 2
    assert all("lease" in e["message"] and e["ended_at"] > 0 for e in errors)
    assert retaken.attempt == 0, "a lost worker is not a failed attempt of the handler"
