"""prune: old finished runs, their steps and unreferenced old events are deleted in batches."""

from __future__ import annotations

import asyncio

from stride.stores.base import RunFilter, StepRecord, Store

from .conftest import claim, enqueue, event


async def prune(store: Store, *, older_than_ms: int, batch_size: int = 1000) -> int:
    return await store.prune(older_than_ms=older_than_ms, batch_size=batch_size)


async def finish_all(store: Store, count: int) -> list[str]:
    claimed = await claim(store, limit=count)
    for c in claimed:
        await store.checkpoint(c.lease, StepRecord("only", 0, "run", "completed", "1"))
        await store.finish(c.lease, status="completed", output_json="1", error_json=None)
    return [c.lease.run_id for c in claimed]


async def test_prune_deletes_finished_runs_their_steps_and_events(store: Store) -> None:
    await enqueue(store, count=5)
    done = await finish_all(store, 5)
    await asyncio.sleep(0.01)

    deleted = await prune(store, older_than_ms=0, batch_size=2)  # several small batches

    assert deleted == 5 + 5
    assert await store.list_runs(RunFilter()) == []
    assert [await store.get_run(run_id) for run_id in done] == [None] * 5


async def test_prune_keeps_live_runs_and_the_events_they_need(store: Store) -> None:
    [queued] = await enqueue(store)
    await asyncio.sleep(0.01)

    assert await prune(store, older_than_ms=0) == 0

    row = await store.get_run(queued)
    assert row is not None and await store.get_event(row.event_id) is not None


async def test_prune_keeps_what_is_younger_than_the_cutoff(store: Store) -> None:
    await enqueue(store, count=2)
    await finish_all(store, 2)

    assert await prune(store, older_than_ms=60_000) == 0
    assert len(await store.list_runs(RunFilter())) == 2


async def test_prune_deletes_old_events_that_triggered_nothing(store: Store) -> None:
    lonely = event()
    await store.publish([(lonely, [])], dedupe_ms=0)
    await asyncio.sleep(0.01)

    assert await prune(store, older_than_ms=0) == 1
    assert await store.get_event(lonely.id) is None
    # a pruned id is forgotten: publishing it again is accepted
    result = await store.publish([(lonely, [])], dedupe_ms=0)
    assert result.accepted == (lonely.id,)
