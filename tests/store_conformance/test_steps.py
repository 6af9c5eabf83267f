"""checkpoint: a step's outcome is stored under the run's lease; a completed step is final."""

from __future__ import annotations

import pytest

from stride.errors import LeaseLost
from stride.stores.base import Lease, StepRecord, Store

from .conftest import claim, enqueue, now_ms


def step(status: str = "completed", *, step_id: str = "fetch", position: int = 0,
         output_json: str | None = '"ok"', attempts: int = 1) -> StepRecord:
    return StepRecord(step_id, position, "run", status,  # type: ignore[arg-type]
                      output_json=output_json, attempts=attempts, started_at=now_ms(),
                      ended_at=now_ms())


async def test_a_checkpoint_is_visible_in_the_run(store: Store) -> None:
    await enqueue(store)
    [claimed] = await claim(store)

    await store.checkpoint(claimed.lease, step(output_json='{"rows": 3}'))

    row = await store.get_run(claimed.lease.run_id)
    assert row is not None
    [stored] = row.steps
    assert (stored.step_id, stored.status, stored.output_json, stored.attempts) == (
        "fetch", "completed", '{"rows": 3}', 1)


async def test_a_retrying_step_is_updated_in_place_until_it_completes(store: Store) -> None:
    await enqueue(store)
    [claimed] = await claim(store)
    await store.checkpoint(claimed.lease, StepRecord(
        "fetch", 0, "run", "retrying", error_json='{"message": "timeout"}', attempts=1,
        errors_json='[{"message": "timeout"}]'))

    await store.checkpoint(claimed.lease, StepRecord(
        "fetch", 0, "run", "completed", output_json='"body"', attempts=2,
        errors_json='[{"message": "timeout"}]'))

    row = await store.get_run(claimed.lease.run_id)
    assert row is not None
    [stored] = row.steps
    assert (stored.status, stored.output_json, stored.attempts) == ("completed", '"body"', 2)
    assert stored.error_json is None
    assert stored.errors_json == '[{"message": "timeout"}]'


async def test_a_completed_step_is_never_overwritten(store: Store) -> None:
    await enqueue(store)
    [claimed] = await claim(store)
    await store.checkpoint(claimed.lease, step(output_json='"first"'))

    # whoever tries to record the step again is not driving this run's memo: refused
    with pytest.raises(LeaseLost):
        await store.checkpoint(claimed.lease, step("failed", output_json=None))

    row = await store.get_run(claimed.lease.run_id)
    assert row is not None
    assert [(s.status, s.output_json) for s in row.steps] == [("completed", '"first"')]


async def test_a_checkpoint_under_a_stale_lease_is_refused(store: Store) -> None:
    await enqueue(store)
    [claimed] = await claim(store)
    await store.reschedule(claimed.lease, available_at=now_ms(), status="queued")
    [taken_over] = await claim(store, worker_id="worker-2")

    with pytest.raises(LeaseLost, match=claimed.lease.run_id):
        await store.checkpoint(claimed.lease, step())

    await store.checkpoint(taken_over.lease, step(output_json='"new owner"'))
    row = await store.get_run(claimed.lease.run_id)
    assert row is not None
    assert [s.output_json for s in row.steps] == ['"new owner"']


async def test_a_checkpoint_for_a_finished_run_is_refused(store: Store) -> None:
    await enqueue(store)
    [claimed] = await claim(store)
    await store.finish(claimed.lease, status="completed", output_json="1", error_json=None)

    with pytest.raises(LeaseLost):
        await store.checkpoint(claimed.lease, step())


async def test_a_checkpoint_with_a_made_up_lease_is_refused(store: Store) -> None:
    [run_id] = await enqueue(store)

    with pytest.raises(LeaseLost):
        await store.checkpoint(Lease(run_id, "not-a-token"), step())


async def test_one_refused_checkpoint_does_not_fail_concurrent_ones(store: Store) -> None:
    import asyncio

    await enqueue(store, count=3)
    claimed = await claim(store)
    stale = Lease(claimed[0].lease.run_id, "stale-token")

    results = await asyncio.gather(
        store.checkpoint(claimed[1].lease, step()), store.checkpoint(stale, step()),
        store.checkpoint(claimed[2].lease, step()), return_exceptions=True)

    assert results[0] is None and results[2] is None
    assert isinstance(results[1], LeaseLost)
