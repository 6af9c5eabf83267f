"""cancel_runs and create_runs: stopping runs, and new runs for stored events (replay)."""

from __future__ import annotations

import pytest

from stride._ids import new_id
from stride.errors import LeaseLost
from stride.stores.base import NewEvent, NewRun, RunFilter, StepRecord, Store

from .conftest import APP, claim, enqueue, now_ms


async def test_cancel_stops_queued_and_running_runs_but_not_finished_ones(store: Store) -> None:
    [queued, running, finished] = await enqueue(store, count=3)
    claimed = {c.lease.run_id: c for c in await claim(store, limit=3)}
    await store.release([claimed[queued].lease])
    await store.finish(claimed[finished].lease, status="completed", output_json="1",
                       error_json=None)

    cancelled = await store.cancel_runs([queued, running, finished, "unknown"],
                                        error_json='{"message": "cancelled"}')

    assert cancelled == [queued, running]
    for run_id in cancelled:
        row = await store.get_run(run_id)
        assert row is not None
        assert (row.status, row.error_json, row.lease_owner) == (
            "cancelled", '{"message": "cancelled"}', None)
        assert row.ended_at is not None
    done = await store.get_run(finished)
    assert done is not None and done.status == "completed"


async def test_the_worker_of_a_cancelled_run_cannot_checkpoint_again(store: Store) -> None:
    await enqueue(store)
    [claimed] = await claim(store)
    await store.cancel_runs([claimed.lease.run_id], error_json="{}")

    with pytest.raises(LeaseLost):
        await store.checkpoint(claimed.lease, StepRecord("next", 0, "run", "completed", "1"))
    with pytest.raises(LeaseLost):
        await store.finish(claimed.lease, status="completed", output_json="1", error_json=None)


async def test_create_runs_adds_queued_runs_for_a_stored_event(store: Store) -> None:
    await enqueue(store)
    [claimed] = await claim(store)
    await store.finish(claimed.lease, status="failed", output_json=None, error_json="{}")
    replay = NewRun(new_id(), APP, "job", claimed.event.id, now_ms())

    await store.create_runs([replay])

    runs = await store.list_runs(RunFilter(event_id=claimed.event.id))
    assert [(r.id, r.status) for r in runs] == [(replay.id, "queued"),
                                                (claimed.lease.run_id, "failed")]
    [again] = await claim(store)
    assert again.lease.run_id == replay.id
    assert again.steps == ()  # a replay starts with an empty memo


async def test_cancelled_invoked_runs_are_listed_until_their_finished_event_exists(
        store: Store) -> None:
    started = now_ms()
    children = []
    for n in range(2):
        child_event = NewEvent(f"invoke:parent-{n}:0123456789abcdef", "stride/invoke", "{}",
                               None, started)
        children.append(NewRun(new_id(), APP, "child", child_event.id, started))
        await store.publish([(child_event, [children[-1]])], dedupe_ms=60_000)
    [plain] = await enqueue(store)
    await store.cancel_runs([c.id for c in children] + [plain], error_json='{"name": "C"}')

    listed = await store.cancelled_invocations(since_ms=started, limit=10)
    assert sorted(c.run_id for c in listed) == sorted(c.id for c in children)
    assert {(c.job_id, c.error_json) for c in listed} == {("child", '{"name": "C"}')}
    assert await store.cancelled_invocations(since_ms=now_ms() + 1000, limit=10) == []

    told = NewEvent(f"{children[0].event_id}:finished", "stride/invoke.finished", "{}", None,
                    now_ms())
    await store.publish([(told, [])], dedupe_ms=60_000)
    [left] = await store.cancelled_invocations(since_ms=started, limit=10)
    assert left.run_id == children[1].id
