"""publish with flow control: each run is decided with its limiters' state, in the publish
transaction, and every decision is recorded on a run row with its reason."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from stride._flow_decide import (
    Batched,
    Debounced,
    Idempotent,
    KeyedRate,
    RunFlow,
    Unique,
)
from stride._ids import new_id
from stride._limiters import Rate
from stride.stores.base import NewEvent, NewRun, RunFilter, RunRow, Store

from .conftest import APP, claim, event, now_ms, run_ids

JOB = "flowing"


def flow_run(ev: NewEvent, flow: RunFlow, *, job_id: str = JOB) -> NewRun:
    return NewRun(new_id(), APP, job_id, ev.id, now_ms(), flow=flow)


async def publish(store: Store, flow: RunFlow, count: int = 1, *, job_id: str = JOB,
                  data: Sequence[str] | None = None) -> list[NewEvent]:
    """`count` events (in one publish), each with one run of `job_id` under `flow`."""
    events = [event(data_json=data[n] if data else f'{{"n": {n}}}') for n in range(count)]
    await store.publish([(ev, [flow_run(ev, flow, job_id=job_id)]) for ev in events],
                        dedupe_ms=60_000)
    return events


async def runs_of(store: Store, job_id: str = JOB) -> list[RunRow]:
    """The job's runs, oldest first."""
    return list(reversed(await store.list_runs(RunFilter(job_id=job_id, limit=100))))


def throttled(limit: int, period_ms: int, key: str = "") -> RunFlow:
    return RunFlow(throttle=KeyedRate(key, Rate.of(limit=limit, period_ms=period_ms),
                                      f"{limit} per {period_ms}ms"))


async def test_throttle_delays_runs_beyond_the_rate_and_drops_none(store: Store) -> None:
    before = now_ms()
    await publish(store, throttled(1, 10_000), 2)
    await publish(store, throttled(1, 10_000))  # a later publish sees the state

    first, second, third = await runs_of(store)

    assert [run.status for run in (first, second, third)] == ["queued"] * 3
    assert first.available_at - before < 1000 and first.reason is None
    assert 9_000 < second.available_at - before <= 11_000
    assert 19_000 < third.available_at - before <= 21_000
    assert second.reason is not None and second.reason.startswith("throttled: delayed")
    assert len(await claim(store, [JOB])) == 1


async def test_throttle_keys_are_independent(store: Store) -> None:
    await publish(store, throttled(1, 60_000, key="a"))
    await publish(store, throttled(1, 60_000, key="b"))

    assert len(await claim(store, [JOB])) == 2


async def test_rate_limit_skips_events_over_the_limit_and_says_why(store: Store) -> None:
    limited = RunFlow(rate_limit=KeyedRate("acme", Rate.of(limit=1, period_ms=3_600_000),
                                           "1 per 1h"))
    events = await publish(store, limited, 3)

    runs = await runs_of(store)

    assert [run.status for run in runs] == ["queued", "skipped", "skipped"]
    assert [run.event_id for run in runs] == [ev.id for ev in events]
    assert runs[1].reason == "rate limited: over 1 per 1h for key 'acme'"
    assert runs[1].ended_at is not None
    assert len(await claim(store, [JOB])) == 1, "skipped runs are never claimed"


async def test_idempotency_starts_one_run_per_key(store: Store) -> None:
    def once(key: str) -> RunFlow:
        return RunFlow(idempotency=Idempotent(key, 24 * 3_600_000))

    await publish(store, once("file-1"), 2)
    await publish(store, once("file-2"))

    statuses = [run.status for run in await runs_of(store)]

    assert statuses == ["queued", "skipped", "queued"]
    first, second, _ = await runs_of(store)
    assert second.reason is not None and first.id in second.reason


async def test_singleton_skip_keeps_the_live_run(store: Store) -> None:
    single = RunFlow(singleton=Unique("user-1", "skip"))
    await publish(store, single, 2)
    [live] = await claim(store, [JOB])
    await publish(store, single)
    await store.finish(live.lease, status="completed", output_json="null", error_json=None)
    await publish(store, single)

    statuses = [run.status for run in await runs_of(store)]

    assert statuses == ["completed", "skipped", "skipped", "queued"]


async def test_singleton_cancel_replaces_the_live_run(store: Store) -> None:
    single = RunFlow(singleton=Unique("user-1", "cancel"))
    await publish(store, single)
    await claim(store, [JOB])
    await publish(store, single)

    first, second = await runs_of(store)

    assert (first.status, second.status) == ("cancelled", "queued")
    assert first.reason == f"singleton: replaced by run {second.id}"
    assert first.error_json is not None and "singleton" in first.error_json
    assert first.lease_owner is None, "its worker loses the lease at its next checkpoint"


async def test_debounce_keeps_one_pending_run_with_the_last_event(store: Store) -> None:
    debounced = RunFlow(debounce=Debounced("k", 5_000, None))
    events = await publish(store, debounced, 2)
    [last] = await publish(store, debounced)
    events.append(last)

    runs = await runs_of(store)
    pending = [run for run in runs if run.status == "queued"]
    skipped = [run for run in runs if run.status == "skipped"]

    assert len(pending) == 1 and len(skipped) == 2
    assert pending[0].event_id == last.id
    assert pending[0].available_at >= last.ts + 4_000
    assert pending[0].reason == "debounced: 3 events, runs with the last"
    assert sorted(run.event_id for run in skipped) == sorted(ev.id for ev in events[:2])
    assert all(pending[0].id in (run.reason or "") for run in skipped)
    assert await claim(store, [JOB]) == [], "not due before the period has passed"


async def test_debounce_timeout_bounds_the_delay(store: Store) -> None:
    await publish(store, RunFlow(debounce=Debounced("k", 60_000, 1_000)), 3)

    [pending] = [run for run in await runs_of(store) if run.status == "queued"]

    assert pending.available_at <= now_ms() + 1_000


async def test_a_started_debounced_run_is_not_changed_again(store: Store) -> None:
    debounced = RunFlow(debounce=Debounced("k", 1, None))
    await publish(store, debounced)
    await asyncio.sleep(0.01)  # past the 1 ms debounce period: the run is due
    [started] = await claim(store, [JOB])
    await publish(store, debounced)

    runs = await runs_of(store)

    assert [run.status for run in runs] == ["running", "queued"]
    assert runs[0].id == started.lease.run_id


async def test_batches_collect_events_up_to_max_size(store: Store) -> None:
    batched = RunFlow(batch=Batched("", 3, 60_000))
    events = await publish(store, batched, 5)

    full, open_ = await runs_of(store)

    assert [ev.id for ev in await store.run_events(full.id)] == [ev.id for ev in events[:3]]
    assert [ev.id for ev in await store.run_events(open_.id)] == [ev.id for ev in events[3:]]
    assert full.reason == "batch: 3 events (full)"
    assert open_.reason == "batch: 2 events"
    assert run_ids(await claim(store, [JOB])) == [full.id], "the open batch waits its timeout"


async def test_priority_gives_runs_a_head_start(store: Store) -> None:
    [plain] = await publish(store, RunFlow())
    [urgent] = await publish(store, RunFlow(priority_ms=120_000))

    [first] = await claim(store, [JOB], limit=1)
    [second] = await claim(store, [JOB], limit=1)

    assert (first.event.id, second.event.id) == (urgent.id, plain.id)


async def test_runs_of_a_duplicate_event_change_no_state(store: Store) -> None:
    limited = RunFlow(rate_limit=KeyedRate("", Rate.of(limit=1, period_ms=60_000), "1 per 1m"))
    ev = event()
    await store.publish([(ev, [flow_run(ev, limited)])], dedupe_ms=60_000)
    result = await store.publish([(ev, [flow_run(ev, limited)])], dedupe_ms=60_000)

    assert result.duplicates == (ev.id,)
    assert [run.status for run in await runs_of(store)] == ["queued"]


async def test_plain_and_flow_runs_publish_together(store: Store) -> None:
    ev = event()
    plain = NewRun(new_id(), APP, "plain", ev.id, now_ms())
    result = await store.publish([(ev, [plain, flow_run(ev, throttled(5, 1000))])],
                                 dedupe_ms=60_000)

    assert result.runs_created == 2
    assert len(await claim(store, ["plain", JOB], limit=5)) == 2


async def test_skipped_runs_are_finished_for_cancel_and_prune(store: Store) -> None:
    await publish(store, RunFlow(idempotency=Idempotent("k", 3_600_000)), 2)
    _, skipped = await runs_of(store)

    assert await store.cancel_runs([skipped.id], error_json="{}") == []
    assert await store.prune(older_than_ms=0) >= 1
    assert await store.get_run(skipped.id) is None


async def test_runs_published_with_a_finish_are_decided_like_any_other(store: Store) -> None:
    # a finish that publishes (an on-failure run, an invoked run's result) goes through the
    # same flow decisions as dispatch, in the finish's transaction
    await publish(store, RunFlow(), job_id="parent")
    [parent] = await claim(store, ["parent"])
    once = RunFlow(idempotency=Idempotent("same", 3_600_000))
    first, second = event(), event()
    await store.publish([(first, [flow_run(first, once)])], dedupe_ms=60_000)

    await store.finish(parent.lease, status="failed", output_json=None, error_json="{}",
                       publish=[(second, [flow_run(second, once)])])

    runs = await runs_of(store)
    assert [run.status for run in runs] == ["queued", "skipped"]
    assert runs[1].event_id == second.id and runs[1].reason is not None
