"""claim: a resuming run's sleep steps whose wake-up time has passed come back completed."""

from __future__ import annotations

from stride.stores.base import StepRecord, Store

from .conftest import claim, enqueue, now_ms


def _sleep(step_id: str, position: int, wake_at: int) -> StepRecord:
    return StepRecord(step_id=step_id, position=position, kind="sleep", status="sleeping",
                      started_at=now_ms() - 5_000, wake_at=wake_at)


async def test_a_claim_completes_the_sleeps_that_are_over(store: Store) -> None:
    [run_id] = await enqueue(store)
    [first] = await claim(store)
    now = now_ms()
    await store.checkpoint(first.lease, _sleep("nap", 0, now - 10))
    await store.checkpoint(first.lease, _sleep("later", 1, now + 60_000))
    await store.checkpoint(first.lease, StepRecord(
        step_id="wait", position=2, kind="wait", status="waiting", wake_at=now - 10))
    await store.reschedule(first.lease, available_at=now - 10, status="sleeping")

    [again] = await claim(store)

    status = {step.step_id: (step.status, step.ended_at is not None) for step in again.steps}
    assert status == {"nap": ("completed", True), "later": ("sleeping", False),
                      "wait": ("waiting", False)}
    row = await store.get_run(run_id)
    assert row is not None
    assert [(step.step_id, step.status) for step in row.steps] == [
        ("nap", "completed"), ("later", "sleeping"), ("wait", "waiting")]
    [nap] = [step for step in again.steps if step.step_id == "nap"]
    assert nap == row.steps[0]  # what the claim returned is what the store holds


async def test_a_first_claim_leaves_steps_alone(store: Store) -> None:
    await enqueue(store)

    [claimed] = await claim(store)

    assert claimed.steps == ()
