"""wait_for_change: an idle worker learns of new work without polling the tables."""

from __future__ import annotations

import asyncio
import time

from stride.stores.base import Store

from .conftest import claim, enqueue, now_ms


async def settle(store: Store) -> None:
    """Consume wake-ups left over from the set-up, so the next wait starts idle."""
    await store.wait_for_change(0.05)
    await store.wait_for_change(0.05)


async def test_wait_for_change_times_out_when_nothing_happens(store: Store) -> None:
    await settle(store)
    started = time.monotonic()

    await store.wait_for_change(0.2)

    assert 0.15 <= time.monotonic() - started < 1.0


async def test_a_publish_by_another_process_wakes_a_waiter_within_100_ms(
        store: Store, other_store: Store) -> None:
    await settle(store)
    waiter = asyncio.create_task(store.wait_for_change(5.0))
    await asyncio.sleep(0.02)
    assert not waiter.done()

    await enqueue(other_store)
    committed = time.monotonic()
    await waiter

    assert time.monotonic() - committed < 0.1


async def test_notify_local_wakes_a_waiter_in_this_process(store: Store) -> None:
    await settle(store)
    waiter = asyncio.create_task(store.wait_for_change(5.0))
    await asyncio.sleep(0.01)
    started = time.monotonic()

    store.notify_local()
    await waiter

    assert time.monotonic() - started < 0.05


async def test_a_change_before_the_wait_is_not_lost(store: Store, other_store: Store) -> None:
    await settle(store)
    await enqueue(other_store)
    await asyncio.sleep(0.1)  # the change lands while nobody waits
    started = time.monotonic()

    await store.wait_for_change(5.0)

    assert time.monotonic() - started < 0.1


async def test_a_due_reschedule_elsewhere_wakes_a_waiter(store: Store,
                                                         other_store: Store) -> None:
    await enqueue(other_store)
    [claimed] = await claim(other_store)
    await settle(store)
    waiter = asyncio.create_task(store.wait_for_change(5.0))
    await asyncio.sleep(0.02)
    assert not waiter.done()

    await other_store.reschedule(claimed.lease, available_at=now_ms(), status="queued")
    committed = time.monotonic()
    await waiter

    assert time.monotonic() - committed < 0.1
