"""claim with concurrency keys: a key's limit holds across claimers, a full key's runs are
parked out of the way (no starvation of other keys), and come back as slots free up."""

from __future__ import annotations

from collections.abc import Sequence

from stride._flow_decide import RunFlow
from stride._ids import new_id
from stride.stores.base import ClaimedRun, NewRun, RunFilter, Store

from .conftest import APP, event, now_ms, run_ids

JOB = "keyed"


async def enqueue_keyed(store: Store, keys: Sequence[tuple[tuple[str, int], ...]], *,
                        job_id: str = JOB, available_at: int | None = None) -> list[str]:
    """One event and run per entry of `keys` (each run's (key, limit) pairs), in order."""
    at = now_ms() - 1000 if available_at is None else available_at
    batch, ids = [], []
    for offset, run_keys in enumerate(keys):
        ev = event()
        run_id = new_id()
        ids.append(run_id)
        batch.append((ev, [NewRun(run_id, APP, job_id, ev.id, at + offset,
                                  flow=RunFlow(concurrency=run_keys))]))
    await store.publish(batch, dedupe_ms=60_000)
    return ids


async def claim_keyed(store: Store, jobs: Sequence[str] = (JOB,), *, limit: int = 10,
                      worker_id: str = "worker-1",
                      concurrency: dict[str, int] | None = None) -> list[ClaimedRun]:
    return await store.claim(worker_id=worker_id, app_id=APP, job_ids=list(jobs), limit=limit,
                             lease_ms=30_000, concurrency=concurrency or {}, keyed=set(jobs))


async def complete(store: Store, claimed: Sequence[ClaimedRun]) -> None:
    for run in claimed:
        await store.finish(run.lease, status="completed", output_json="null", error_json=None)


def one(key: str, limit: int = 1) -> tuple[tuple[str, int], ...]:
    return ((key, limit),)


async def test_a_key_never_has_more_leased_runs_than_its_limit(store: Store,
                                                               other_store: Store) -> None:
    await enqueue_keyed(store, [one("a", 2)] * 5 + [one("b", 2)] * 5)

    first = await claim_keyed(store, limit=3)
    second = await claim_keyed(other_store, limit=10, worker_id="worker-2")

    assert len(first) + len(second) == 4, "two of key a and two of key b, whoever claims"
    assert await claim_keyed(store) == []


async def test_a_key_with_a_long_backlog_does_not_starve_a_key_with_one_run(store: Store) -> None:
    await enqueue_keyed(store, [one("busy")] * 300)
    [lonely] = await enqueue_keyed(store, [one("lonely")], available_at=now_ms() - 500)

    first = await claim_keyed(store, limit=5)
    second = await claim_keyed(store, limit=5)

    claimed = run_ids(first) + run_ids(second)
    assert lonely in claimed, "the lonely key's run is reached within two claims"
    assert len(claimed) == 2, "one run of each key"


async def test_parked_runs_come_back_one_per_freed_slot_oldest_first(store: Store) -> None:
    ids = await enqueue_keyed(store, [one("k")] * 4)
    [held] = await claim_keyed(store)
    assert run_ids([held]) == ids[:1]
    assert await claim_keyed(store) == []  # the others are parked now

    await complete(store, [held])
    [second] = await claim_keyed(store)
    await complete(store, [second])
    [third] = await claim_keyed(store)

    assert [second.lease.run_id, third.lease.run_id] == ids[1:3]


async def test_every_way_of_leaving_running_frees_the_key(store: Store) -> None:
    """Finish, reschedule (a retry or a sleep), release, cancel: each lets a parked run in."""
    ids = await enqueue_keyed(store, [one("k")] * 5)
    [run] = await claim_keyed(store)
    assert await claim_keyed(store) == []

    await store.reschedule(run.lease, available_at=now_ms() + 60_000, status="sleeping")
    [run] = await claim_keyed(store)
    await store.release([run.lease])
    [run] = await claim_keyed(store)
    await store.cancel_runs([run.lease.run_id], error_json='{"name": "Cancelled"}')
    [run] = await claim_keyed(store)
    await store.finish(run.lease, status="failed", output_json=None, error_json="{}")
    [last] = await claim_keyed(store)

    assert last.lease.run_id in ids


async def test_a_shared_key_limits_runs_of_several_jobs_together(store: Store) -> None:
    await enqueue_keyed(store, [one("account/api", 2)] * 3, job_id="resize")
    await enqueue_keyed(store, [one("account/api", 2)] * 3, job_id="scan")

    claimed = await claim_keyed(store, ["resize", "scan"])

    assert len(claimed) == 2
    await complete(store, claimed[:1])
    assert len(await claim_keyed(store, ["resize", "scan"])) == 1


async def test_a_run_with_two_keys_waits_for_both(store: Store) -> None:
    both = (("user:1", 1), ("team:a", 2))
    await enqueue_keyed(store, [both, both, (("user:2", 1), ("team:a", 2)),
                                (("user:3", 1), ("team:a", 2))])

    claimed = await claim_keyed(store)

    assert len(claimed) == 2, "user:1 allows one, team:a allows two"


async def test_keyed_claims_respect_the_job_wide_limit_too(store: Store) -> None:
    await enqueue_keyed(store, [one(f"user:{n}") for n in range(6)])

    claimed = await claim_keyed(store, concurrency={JOB: 3})

    assert len(claimed) == 3


async def test_a_parked_run_shows_why_it_waits(store: Store) -> None:
    _, waiting = await enqueue_keyed(store, [one("k")] * 2)
    await claim_keyed(store)

    row = await store.get_run(waiting)

    assert row is not None
    assert row.status == "queued"
    assert row.reason == "concurrency: waited for key 'k' (limit 1)"


async def test_runs_without_keys_of_keyed_jobs_are_claimed_freely(store: Store) -> None:
    await enqueue_keyed(store, [(), (), ()])

    assert len(await claim_keyed(store)) == 3


async def test_queued_counts_see_parked_runs_as_queued(store: Store) -> None:
    await enqueue_keyed(store, [one("k")] * 3)
    await claim_keyed(store)

    queued = await store.list_runs(RunFilter(status="queued"))

    assert len(queued) == 2
