"""reschedule(step=...): a step record written with the run's reschedule, in its transaction."""

from __future__ import annotations

import asyncio

import pytest

from stride.errors import LeaseLost
from stride.stores.base import StepRecord, Store

from .conftest import claim, enqueue, now_ms


def _sleep(wake_at: int) -> StepRecord:
    return StepRecord(step_id="nap", position=0, kind="sleep", status="sleeping",
                      started_at=now_ms(), wake_at=wake_at)


async def test_reschedule_writes_the_step_with_the_run(store: Store) -> None:
    [run_id] = await enqueue(store)
    [claimed] = await claim(store)
    later = now_ms() + 60_000
    nap = _sleep(later)

    await store.reschedule(claimed.lease, available_at=later, status="sleeping", step=nap)

    row = await store.get_run(run_id)
    assert row is not None
    assert (row.status, row.available_at, row.lease_owner) == ("sleeping", later, None)
    assert row.steps == (nap,)


async def test_the_step_comes_back_with_the_next_claim(store: Store) -> None:
    [run_id] = await enqueue(store)
    [claimed] = await claim(store)
    now = now_ms()

    await store.reschedule(claimed.lease, available_at=now - 10, status="sleeping",
                           step=_sleep(now - 10))
    [again] = await claim(store)

    assert again.lease.run_id == run_id
    assert [(s.step_id, s.status, s.wake_at) for s in again.steps] == [
        ("nap", "completed", now - 10)]  # over: completed by the claim, as a checkpointed one


async def test_with_a_lost_lease_neither_is_written(store: Store) -> None:
    [run_id] = await enqueue(store)
    [first] = await claim(store, worker_id="dies", lease_ms=50)
    await asyncio.sleep(0.1)
    await store.reclaim_expired()
    [taken] = await claim(store, worker_id="survivor")

    with pytest.raises(LeaseLost):
        await store.reschedule(first.lease, available_at=now_ms() + 60_000,
                               status="sleeping", step=_sleep(now_ms() + 60_000))

    row = await store.get_run(run_id)
    assert row is not None
    assert (row.status, row.lease_owner, row.steps) == ("running", "survivor", ())
    assert taken.lease.run_id == run_id


async def test_runs_rescheduled_together_succeed_or_fail_alone(store: Store) -> None:
    kept_id, lost_id = await enqueue(store, count=2)
    claimed = {c.lease.run_id: c for c in await claim(store, limit=2)}
    await store.reschedule(claimed[lost_id].lease, available_at=now_ms(), status="queued")
    later = now_ms() + 60_000

    kept, lost = await asyncio.gather(  # the same group commit, where the store has one
        store.reschedule(claimed[kept_id].lease, available_at=later, status="sleeping",
                         step=_sleep(later)),
        store.reschedule(claimed[lost_id].lease, available_at=later, status="sleeping",
                         step=_sleep(later)),
        return_exceptions=True)

    assert kept is None and isinstance(lost, LeaseLost)
    kept_row, lost_row = await store.get_run(kept_id), await store.get_run(lost_id)
    assert kept_row is not None and lost_row is not None
    assert (kept_row.status, [s.step_id for s in kept_row.steps]) == ("sleeping", ["nap"])
    assert (lost_row.status, lost_row.steps) == ("queued", ())
