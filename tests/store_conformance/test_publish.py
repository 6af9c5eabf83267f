"""publish: events and the runs they trigger are stored together; event ids are deduplicated."""

from __future__ import annotations

from stride._ids import new_id
from stride.stores.base import NewRun, RunFilter, Store

from .conftest import APP, event, now_ms


async def test_publish_stores_the_event_and_its_runs_as_queued(store: Store) -> None:
    ev = event(data_json='{"file": "a.txt"}', user_json='{"id": "u1"}')
    runs = [NewRun(new_id(), APP, job, ev.id, now_ms()) for job in ("parse", "index")]

    result = await store.publish([(ev, runs)], dedupe_ms=60_000)

    assert result.accepted == (ev.id,)
    assert result.duplicates == ()
    assert result.runs_created == 2
    stored = await store.get_event(ev.id)
    assert stored is not None
    assert (stored.name, stored.data_json, stored.user_json, stored.ts) == (
        ev.name, '{"file": "a.txt"}', '{"id": "u1"}', ev.ts)
    listed = await store.list_runs(RunFilter(event_id=ev.id))
    assert sorted(r.job_id for r in listed) == ["index", "parse"]
    assert {r.status for r in listed} == {"queued"}
    assert {r.attempt for r in listed} == {0}


async def test_an_event_without_matching_jobs_is_stored_with_no_runs(store: Store) -> None:
    ev = event()

    result = await store.publish([(ev, [])], dedupe_ms=60_000)

    assert result.accepted == (ev.id,)
    assert result.runs_created == 0
    assert await store.get_event(ev.id) is not None


async def test_an_event_id_seen_before_is_dropped_with_its_runs(store: Store) -> None:
    first = event("order-42")
    await store.publish([(first, [NewRun(new_id(), APP, "job", first.id, now_ms())])],
                        dedupe_ms=60_000)
    again = event("order-42", data_json='{"n": 2}')
    fresh = event()

    result = await store.publish(
        [(again, [NewRun(new_id(), APP, "job", again.id, now_ms())]),
         (fresh, [NewRun(new_id(), APP, "job", fresh.id, now_ms())])], dedupe_ms=60_000)

    assert result.accepted == (fresh.id,)
    assert result.duplicates == ("order-42",)
    assert result.runs_created == 1
    kept = await store.get_event("order-42")
    assert kept is not None and kept.data_json == '{"n": 1}'  # the first one wins
    assert len(await store.list_runs(RunFilter(event_id="order-42"))) == 1


async def test_one_publish_can_carry_many_events(store: Store) -> None:
    batch = []
    for _ in range(300):
        ev = event()
        batch.append((ev, [NewRun(new_id(), APP, "job", ev.id, now_ms())]))

    result = await store.publish(batch, dedupe_ms=60_000)

    assert len(result.accepted) == 300
    assert result.runs_created == 300
    assert len(await store.list_runs(RunFilter(limit=1000))) == 300


async def test_get_event_of_an_unknown_id_is_none(store: Store) -> None:
    assert await store.get_event("no-such-event") is None
