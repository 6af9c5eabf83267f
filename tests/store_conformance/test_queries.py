"""get_run and list_runs: what the dashboard and the CLI read."""

from __future__ import annotations

from stride.stores.base import RunFilter, StepRecord, Store

from .conftest import claim, enqueue, now_ms


async def test_get_run_returns_the_run_with_its_steps_in_position_order(store: Store) -> None:
    [run_id] = await enqueue(store)
    [claimed] = await claim(store)
    # recorded out of order (parallel steps finish in any order)
    for position, step_id in [(2, "c"), (0, "a"), (1, "b")]:
        await store.checkpoint(claimed.lease, StepRecord(step_id, position, "run", "completed",
                                                         output_json="1"))

    row = await store.get_run(run_id)

    assert row is not None
    assert [(s.position, s.step_id) for s in row.steps] == [(0, "a"), (1, "b"), (2, "c")]
    assert (row.app_id, row.job_id, row.status) == ("conformance", "job", "running")


async def test_get_run_of_an_unknown_id_is_none(store: Store) -> None:
    assert await store.get_run("no-such-run") is None


async def test_list_runs_is_newest_first_without_steps(store: Store) -> None:
    ids = await enqueue(store, count=3)

    rows = await store.list_runs(RunFilter())

    assert [r.id for r in rows] == ids[::-1]
    assert all(r.steps == () for r in rows)


async def test_list_runs_filters_by_job_status_and_event(store: Store) -> None:
    [a1, a2] = await enqueue(store, "a", count=2)
    [b1] = await enqueue(store, "b")
    [claimed] = await claim(store, ["a"], limit=1)

    assert [r.id for r in await store.list_runs(RunFilter(job_id="b"))] == [b1]
    assert [r.id for r in await store.list_runs(RunFilter(status="running"))] == [a1]
    assert [r.id for r in await store.list_runs(RunFilter(job_id="a", status="queued"))] == [a2]
    assert [r.id for r in await store.list_runs(
        RunFilter(event_id=claimed.event.id))] == [a1]


async def test_list_runs_filters_by_creation_time(store: Store) -> None:
    before = now_ms()
    ids = await enqueue(store, count=2)
    after = now_ms() + 1

    assert len(await store.list_runs(RunFilter(since_ms=before, until_ms=after))) == 2
    assert await store.list_runs(RunFilter(since_ms=after)) == []
    assert await store.list_runs(RunFilter(until_ms=before)) == []
    assert ids


async def test_list_runs_pages_with_the_before_cursor(store: Store) -> None:
    ids = await enqueue(store, count=7)
    newest_first = ids[::-1]

    pages = []
    cursor = None
    while True:
        page = await store.list_runs(RunFilter(limit=3, before=cursor))
        if not page:
            break
        pages.append([r.id for r in page])
        cursor = page[-1].id

    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]
