"""Waits for events, cancel-on conditions, finish-with-publish and timeout checks.

A publish completes the waits its events match (indexed on event name and match key), in
its own transaction; a registration also matches events received since its step started,
so an event that arrives before the wait is committed is never lost.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from stride._ids import new_id
from stride._waits import chooser, wait_key
from stride.errors import LeaseLost
from stride.stores.base import (
    CancelCondition,
    ClaimedRun,
    NewEvent,
    NewRun,
    NewWait,
    StepRecord,
    Store,
)

from .conftest import APP, claim, enqueue, event, now_ms

CHOOSE = chooser({"id": "trigger", "name": "test/start", "data": {"user": "u1"}, "user": None,
                  "ts": 0})


def wait(step_id: str = "wait", *, name: str = "test/done", user: str | None = "u1",
         started_at: int | None = None, expires_in: int = 60_000,
         if_expr: str | None = None) -> NewWait:
    started = now_ms() if started_at is None else started_at
    step = StepRecord(step_id, 0, "wait", "waiting", started_at=started,
                      wake_at=started + expires_in)
    key = (wait_key(user) or "") if user is not None else ""
    return NewWait(step, name, "data.user" if user is not None else "", key, if_expr)


def done_event(user: str = "u1", *, name: str = "test/done", event_id: str | None = None,
               ) -> NewEvent:
    return event(event_id, name=name, data_json=json.dumps({"user": user}))


async def suspended(store: Store, *waits: NewWait) -> ClaimedRun:
    """A run claimed and suspended on `waits`."""
    await enqueue(store)
    [claimed] = await claim(store)
    resumed = await store.suspend_for_events(
        claimed.lease, waits, available_at=min(w.expires_at for w in waits))
    assert resumed is False
    return claimed


async def status_and_step(store: Store, run_id: str, step_id: str = "wait",
                          ) -> tuple[str, StepRecord]:
    row = await store.get_run(run_id)
    assert row is not None
    [step] = [s for s in row.steps if s.step_id == step_id]
    return row.status, step


async def test_a_suspended_run_is_waiting_with_its_step_recorded(store: Store) -> None:
    claimed = await suspended(store, wait())
    status, step = await status_and_step(store, claimed.lease.run_id)
    assert (status, step.status, step.kind) == ("waiting", "waiting", "wait")
    assert await claim(store) == []  # not due before its timeout


async def test_a_matching_event_completes_the_wait_and_makes_the_run_due(store: Store) -> None:
    claimed = await suspended(store, wait())
    done = done_event("u1")

    await store.publish([(done, [])], dedupe_ms=60_000)

    status, step = await status_and_step(store, claimed.lease.run_id)
    assert (status, step.status) == ("queued", "completed")
    assert step.output_json is not None
    output = json.loads(step.output_json)
    assert (output["id"], output["name"], output["data"]) == (done.id, "test/done", {"user": "u1"})
    [resumed] = await claim(store)
    assert [s.status for s in resumed.steps] == ["completed"]
    await store.publish([(done_event("u1"), [])], dedupe_ms=60_000)  # the wait is gone
    assert (await status_and_step(store, claimed.lease.run_id))[1].output_json == step.output_json


async def test_events_of_another_key_or_name_do_not_match(store: Store) -> None:
    claimed = await suspended(store, wait())
    await store.publish([(done_event("u2"), []), (done_event("u1", name="test/other"), [])],
                        dedupe_ms=60_000)
    status, step = await status_and_step(store, claimed.lease.run_id)
    assert (status, step.status) == ("waiting", "waiting")


async def test_a_wait_without_match_takes_any_event_of_its_name(store: Store) -> None:
    claimed = await suspended(store, wait(user=None))
    await store.publish([(done_event("whoever"), [])], dedupe_ms=60_000)
    assert (await status_and_step(store, claimed.lease.run_id))[0] == "queued"


async def test_an_event_received_before_registration_is_not_lost(store: Store) -> None:
    await enqueue(store)
    [claimed] = await claim(store)
    pending = wait(started_at=now_ms() - 5)  # the handler decided to wait 5 ms ago ...
    early = done_event("u1")
    await store.publish([(early, [])], dedupe_ms=60_000)  # ... then the event came

    resumed = await store.suspend_for_events(claimed.lease, [pending],
                                             available_at=now_ms() + 60_000)

    assert resumed is True
    status, step = await status_and_step(store, claimed.lease.run_id)
    assert (status, step.status) == ("queued", "completed")
    assert step.output_json is not None and json.loads(step.output_json)["id"] == early.id


async def test_an_event_from_before_the_step_started_does_not_count(store: Store) -> None:
    await store.publish([(done_event("u1"), [])], dedupe_ms=60_000)
    await asyncio.sleep(0.01)
    claimed = await suspended(store, wait())
    assert (await status_and_step(store, claimed.lease.run_id))[0] == "waiting"


async def test_an_event_for_a_running_run_is_kept_for_its_next_suspension(store: Store) -> None:
    pending = wait()
    await enqueue(store)
    [claimed] = await claim(store)
    await store.suspend_for_events(claimed.lease, [pending], available_at=now_ms())
    [again] = await claim(store)  # it resumes (due for another reason) ...
    await store.publish([(done_event("u1"), [])], dedupe_ms=60_000)  # ... and this comes
    assert (await status_and_step(store, claimed.lease.run_id))[1].status == "waiting"

    resumed = await store.suspend_for_events(again.lease, [pending],
                                             available_at=now_ms() + 60_000)

    assert resumed is True
    assert (await status_and_step(store, claimed.lease.run_id))[1].status == "completed"


async def test_resolve_completes_an_expired_wait_with_null(store: Store) -> None:
    pending = wait(expires_in=1)
    claimed = await suspended(store, pending)
    await asyncio.sleep(0.01)
    await store.publish([(done_event("u1"), [])], dedupe_ms=60_000)  # too late: ignored
    [again] = await claim(store)

    done = await store.resolve_wait(again.lease, pending, choose=CHOOSE, expire=True)

    assert done is not None and (done.status, done.output_json) == ("completed", "null")
    _, step = await status_and_step(store, claimed.lease.run_id)
    assert (step.status, step.output_json) == ("completed", "null")


async def test_an_if_filter_is_decided_by_the_chooser(store: Store) -> None:
    pending = wait(user=None, if_expr="async.data.user == event.data.user")
    claimed = await suspended(store, pending)
    await store.publish([(done_event("u2"), [])], dedupe_ms=60_000)
    status, step = await status_and_step(store, claimed.lease.run_id)
    assert (status, step.status) == ("queued", "waiting")  # woken for the executor to decide
    [again] = await claim(store)
    assert await store.resolve_wait(again.lease, pending, choose=CHOOSE, expire=False) is None
    assert await store.suspend_for_events(again.lease, [pending],
                                          available_at=now_ms() + 60_000) is False
    match = done_event("u1")

    await store.publish([(match, [])], dedupe_ms=60_000)
    [third] = await claim(store)
    done = await store.resolve_wait(third.lease, pending, choose=CHOOSE, expire=False)

    assert done is not None and done.output_json is not None
    assert json.loads(done.output_json)["id"] == match.id


async def test_an_early_event_for_an_if_wait_wakes_the_run_for_the_chooser(store: Store,
                                                                            ) -> None:
    await enqueue(store)
    [claimed] = await claim(store)
    pending = wait(user=None, started_at=now_ms() - 5, if_expr="async.data.user == 'u1'")
    early = done_event("u1")
    await store.publish([(early, [])], dedupe_ms=60_000)

    assert await store.suspend_for_events(claimed.lease, [pending],
                                          available_at=now_ms() + 60_000) is True

    assert (await status_and_step(store, claimed.lease.run_id))[1].status == "waiting"
    [again] = await claim(store)
    done = await store.resolve_wait(again.lease, pending, choose=CHOOSE, expire=False)
    assert done is not None and done.output_json is not None
    assert json.loads(done.output_json)["id"] == early.id


async def test_suspending_a_run_that_is_not_ours_raises(store: Store) -> None:
    await enqueue(store)
    [claimed] = await claim(store)
    await store.cancel_runs([claimed.lease.run_id], error_json="{}")
    with pytest.raises(LeaseLost):
        await store.suspend_for_events(claimed.lease, [wait()], available_at=now_ms())


async def test_a_cancelled_waiting_run_is_not_woken_again(store: Store) -> None:
    claimed = await suspended(store, wait())
    await store.cancel_runs([claimed.lease.run_id], error_json="{}")
    await store.publish([(done_event("u1"), [])], dedupe_ms=60_000)
    status, step = await status_and_step(store, claimed.lease.run_id)
    assert (status, step.status) == ("cancelled", "waiting")


async def test_no_wake_up_is_lost_when_registrations_and_publishes_race(
        store: Store, other_store: Store) -> None:
    count = 40
    await enqueue(store, count=count)
    claimed = await claim(store, limit=count)
    users = [f"user-{index}" for index in range(count)]

    async def register(run: ClaimedRun, user: str) -> None:
        await store.suspend_for_events(run.lease, [wait(user=user, started_at=now_ms())],
                                       available_at=now_ms() + 60_000)

    async def publish(user: str) -> None:
        await other_store.publish([(done_event(user), [])], dedupe_ms=60_000)

    await asyncio.gather(*(coro for run, user in zip(claimed, users, strict=True)
                           for coro in (register(run, user), publish(user))))

    for run in claimed:
        status, step = await status_and_step(store, run.lease.run_id)
        assert (status, step.status) == ("queued", "completed"), run.lease.run_id


async def test_an_event_stamped_after_the_suspending_workers_clock_still_wakes_it(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race of the test above, made exact: the event committed between the wait's step
    starting and its registration, stamped later than the clock the suspending worker read
    (a publish that looked waits up just before the registration committed)."""
    await enqueue(store)
    [claimed] = await claim(store)
    published_at = now_ms()
    await store.publish([(done_event("u1"), [])], dedupe_ms=60_000)
    for module in ("stride.stores.sqlite", "stride.stores.postgres"):
        monkeypatch.setattr(f"{module}._now_ms", lambda: published_at - 5_000)

    woken = await store.suspend_for_events(
        claimed.lease, [wait(started_at=published_at - 10_000)],
        available_at=published_at + 60_000)

    assert woken is True
    monkeypatch.undo()
    status, step = await status_and_step(store, claimed.lease.run_id)
    assert (status, step.status) == ("queued", "completed")


async def test_a_cancel_on_condition_cancels_the_run_at_publish(store: Store) -> None:
    trigger = event()
    run_id = new_id()
    condition = CancelCondition("test/deleted", "data.user", wait_key("u1") or "")
    await store.publish([(trigger, [NewRun(run_id, APP, "job", trigger.id, now_ms(),
                                           cancel_on=(condition,))])], dedupe_ms=60_000)
    await store.publish([(done_event("u2", name="test/deleted"), [])], dedupe_ms=60_000)
    row = await store.get_run(run_id)
    assert row is not None and row.status == "queued"
    deleting = done_event("u1", name="test/deleted")

    await store.publish([(deleting, [])], dedupe_ms=60_000)

    row = await store.get_run(run_id)
    assert row is not None and row.status == "cancelled" and row.error_json is not None
    error = json.loads(row.error_json)
    assert error["by"] == f"event {deleting.id}" and error["event"] == "test/deleted"


async def test_a_cancel_on_condition_with_if_is_returned_to_the_publisher(store: Store) -> None:
    trigger = event()
    run_id = new_id()
    condition = CancelCondition("test/deleted", "", "", "async.data.user == 'u1'")
    await store.publish([(trigger, [NewRun(run_id, APP, "job", trigger.id, now_ms(),
                                           cancel_on=(condition,))])], dedupe_ms=60_000)
    deleting = done_event("u1", name="test/deleted")

    result = await store.publish([(deleting, [])], dedupe_ms=60_000)

    [check] = result.checks
    assert (check.run_id, check.event_id, check.if_expr) == (run_id, deleting.id,
                                                             "async.data.user == 'u1'")
    row = await store.get_run(run_id)
    assert row is not None and row.status == "queued"


async def test_a_finish_publishes_its_events_only_if_it_is_accepted(store: Store) -> None:
    await enqueue(store, count=2)
    first, second = await claim(store, limit=2)
    follow_up = event(name="test/follow-up")
    follow_run = new_id()
    await store.finish(first.lease, status="failed", output_json=None, error_json="{}",
                       publish=[(follow_up, [NewRun(follow_run, APP, "job", follow_up.id,
                                                    now_ms())])])
    assert await store.get_event(follow_up.id) is not None
    assert (await store.get_run(follow_run)) is not None
    await store.cancel_runs([second.lease.run_id], error_json="{}")
    refused = event(name="test/follow-up")

    with pytest.raises(LeaseLost):
        await store.finish(second.lease, status="completed", output_json="1", error_json=None,
                           publish=[(refused, [])])

    assert await store.get_event(refused.id) is None


async def test_timeout_checks_come_due_by_time(store: Store) -> None:
    soon, later, none = event(), event(), event()
    await store.publish([
        (soon, [NewRun("run-soon", APP, "job", soon.id, now_ms(), start_timeout_ms=0)]),
        (later, [NewRun("run-later", APP, "job", later.id, now_ms(),
                        finish_timeout_ms=3_600_000)]),
        (none, [NewRun("run-none", APP, "job", none.id, now_ms())])], dedupe_ms=60_000)
    await asyncio.sleep(0.002)

    [due] = await store.due_deadlines(now_ms(), 10)

    assert (due.run_id, due.start_ms, due.finish_ms, due.status) == ("run-soon", 0, None,
                                                                     "queued")
    assert due.started_at is None and due.created_at is not None
    await store.move_deadlines([("run-soon", None), ("run-later", now_ms() - 1)])
    assert [row.run_id for row in await store.due_deadlines(now_ms(), 10)] == ["run-later"]


async def test_replayed_runs_get_their_extras_too(store: Store) -> None:
    trigger = event()
    await store.publish([(trigger, [])], dedupe_ms=60_000)
    condition = CancelCondition("test/deleted", "", "")
    await store.create_runs([NewRun("replayed", APP, "job", trigger.id, now_ms(),
                                    cancel_on=(condition,), start_timeout_ms=0)])
    await asyncio.sleep(0.002)
    assert [row.run_id for row in await store.due_deadlines(now_ms(), 10)] == ["replayed"]
    await store.publish([(event(name="test/deleted"), [])], dedupe_ms=60_000)
    row = await store.get_run("replayed")
    assert row is not None and row.status == "cancelled"


@pytest.mark.parametrize(("value", "same", "other"), [
    (7, '{"n": 7}', '{"n": "7"}'), (1.5, '{"n": 1.5}', '{"n": 2.5}'),
    (True, '{"n": true}', '{"n": "true"}'), ("x", '{"n": "x"}', '{"n": ["x"]}')])
async def test_keys_of_numbers_booleans_and_strings_match_the_same_json_value(
        store: Store, value: object, same: str, other: str) -> None:
    started = now_ms()
    pending = NewWait(StepRecord("wait", 0, "wait", "waiting", started_at=started,
                                 wake_at=started + 60_000), "test/done", "data.n",
                      wait_key(value) or "")
    claimed = await suspended(store, pending)
    await store.publish([(event(name="test/done", data_json=other), [])], dedupe_ms=60_000)
    assert (await status_and_step(store, claimed.lease.run_id))[0] == "waiting"
    await store.publish([(event(name="test/done", data_json=same), [])], dedupe_ms=60_000)
    assert (await status_and_step(store, claimed.lease.run_id))[0] == "queued"
