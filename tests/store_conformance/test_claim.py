"""claim: due runs are leased in rank order, in batches, within each job's concurrency limit."""

from __future__ import annotations

import asyncio

from stride.stores.base import RunFilter, StepRecord, Store

from .conftest import APP, claim, enqueue, now_ms, run_ids


async def test_claim_leases_due_runs_oldest_first_up_to_the_limit(store: Store) -> None:
    base = now_ms() - 10_000
    late = await enqueue(store, available_at=base + 300)
    early = await enqueue(store, available_at=base + 100)
    middle = await enqueue(store, available_at=base + 200)

    claimed = await claim(store, limit=2)

    assert run_ids(claimed) == [*early, *middle]
    rest = await claim(store, limit=2)
    assert run_ids(rest) == late


async def test_a_claimed_run_carries_its_event_and_a_lease(store: Store) -> None:
    [run_id] = await enqueue(store)

    [claimed] = await claim(store, worker_id="worker-7")

    assert claimed.lease.run_id == run_id
    assert claimed.lease.token
    assert claimed.job_id == "job"
    assert claimed.event.data_json == '{"n": 1}'
    assert (claimed.attempt, claimed.steps, claimed.errors_json) == (0, (), None)
    row = await store.get_run(run_id)
    assert row is not None
    assert (row.status, row.lease_owner) == ("running", "worker-7")
    assert row.started_at is not None


async def test_runs_not_yet_due_are_not_claimed(store: Store) -> None:
    await enqueue(store, available_at=now_ms() + 60_000)

    assert await claim(store) == []


async def test_claim_only_takes_runs_of_the_given_app_and_jobs(store: Store) -> None:
    mine = await enqueue(store, "resize")
    await enqueue(store, "resize", app_id="another-app")
    await enqueue(store, "thumbnail")

    claimed = await claim(store, ["resize"])

    assert run_ids(claimed) == mine


async def test_a_leased_run_is_not_claimed_again(store: Store) -> None:
    await enqueue(store, count=3)
    first = await claim(store, limit=2)

    second = await claim(store, limit=10, worker_id="worker-2")

    assert len(second) == 1
    assert not set(run_ids(first)) & set(run_ids(second))


async def test_concurrency_limit_caps_running_runs_of_a_job(store: Store) -> None:
    await enqueue(store, "limited", count=5)

    first = await claim(store, ["limited"], concurrency={"limited": 2})
    second = await claim(store, ["limited"], concurrency={"limited": 2}, worker_id="w2")

    assert len(first) == 2
    assert second == []  # the two running runs count, whichever worker holds them


async def test_a_finished_run_frees_its_concurrency_slot(store: Store) -> None:
    await enqueue(store, "limited", count=3)
    [first] = await claim(store, ["limited"], concurrency={"limited": 1})
    await store.finish(first.lease, status="completed", output_json="null", error_json=None)

    again = await claim(store, ["limited"], concurrency={"limited": 1})

    assert len(again) == 1


async def test_a_job_at_its_limit_does_not_starve_other_jobs(store: Store) -> None:
    base = now_ms() - 10_000
    await enqueue(store, "busy", count=20, available_at=base)  # older: first in rank order
    other = await enqueue(store, "other", count=3, available_at=base + 1)

    claimed = await claim(store, ["busy", "other"], limit=5, concurrency={"busy": 1})

    jobs = [c.job_id for c in claimed]
    assert jobs.count("busy") == 1
    assert sorted(r for r, j in zip(run_ids(claimed), jobs, strict=True) if j == "other") \
        == sorted(other)


async def test_concurrent_claims_never_exceed_a_limit(store: Store, other_store: Store) -> None:
    await enqueue(store, "limited", count=30)
    limits = {"limited": 3}

    results = await asyncio.gather(*(
        claim(s, ["limited"], concurrency=limits, worker_id=f"w{i}")
        for i, s in enumerate([store, other_store] * 4)))

    assert sum(len(r) for r in results) == 3
    running = await store.list_runs(RunFilter(status="running"))
    assert len(running) == 3


async def test_concurrent_claimers_take_different_runs(store: Store, other_store: Store) -> None:
    await enqueue(store, count=40)

    results = await asyncio.gather(*(
        claim(s, limit=7, worker_id=f"w{i}") for i, s in enumerate([store, other_store] * 3)))

    ids = [run_id for result in results for run_id in run_ids(result)]
    assert len(ids) == len(set(ids)) == 40  # six claimers of 7 share the 40 runs, no overlap


async def test_a_resumed_run_is_claimed_with_its_steps_in_position_order(store: Store) -> None:
    [run_id] = await enqueue(store)
    [claimed] = await claim(store)
    for position, step_id in enumerate(["fetch", "parse", "store"]):
        await store.checkpoint(claimed.lease, StepRecord(
            step_id, position, "run", "completed", output_json=f'"{step_id}"'))
    await store.reschedule(claimed.lease, available_at=now_ms(), status="queued")

    [again] = await claim(store)

    assert again.lease.run_id == run_id
    assert again.lease.token != claimed.lease.token
    assert [s.step_id for s in again.steps] == ["fetch", "parse", "store"]
    assert again.steps[1].output_json == '"parse"'


async def test_claim_with_no_jobs_or_no_room_returns_nothing(store: Store) -> None:
    await enqueue(store)

    assert await claim(store, [], limit=5) == []
    assert await claim(store, limit=0) == []
    assert len(await store.list_runs(RunFilter(status="queued"))) == 1


async def test_a_run_of_another_app_with_the_same_job_id_is_left_alone(store: Store) -> None:
    theirs = await enqueue(store, "shared-id", app_id="other-app")

    assert await claim(store, ["shared-id"], app_id=APP) == []
    assert run_ids(await claim(store, ["shared-id"], app_id="other-app")) == theirs
