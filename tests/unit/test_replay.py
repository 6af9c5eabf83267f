"""The pure core of replay: which recorded step a handler's call refers to.

`Memo` holds the steps a run recorded; each `next_call(user_id)` is the handler's next step
call in this execution. No store, no clock, no handler: just the rules.
"""

from __future__ import annotations

import threading

import pytest

from stride import ConfigurationError, NonDeterminismError
from stride._replay import MAX_STEP_ID_LENGTH, Memo, StepCall
from stride.stores.base import StepRecord


def done(step_id: str, position: int, output_json: str = "null") -> StepRecord:
    return StepRecord(step_id=step_id, position=position, kind="run", status="completed",
                      output_json=output_json)


def retrying(step_id: str, position: int, attempts: int, errors_json: str) -> StepRecord:
    return StepRecord(step_id=step_id, position=position, kind="run", status="retrying",
                      attempts=attempts, errors_json=errors_json)


# --- naming calls ----------------------------------------------------------------------------


def test_a_fresh_run_numbers_its_calls_in_order() -> None:
    memo = Memo()

    calls = [memo.next_call(step) for step in ("fetch", "parse", "store")]

    assert calls == [StepCall("fetch", 0, None), StepCall("parse", 1, None),
                     StepCall("store", 2, None)]


def test_a_repeated_id_gets_a_counter_per_id() -> None:
    memo = Memo()

    ids = [memo.next_call(step).step_id for step in
           ("fetch", "fetch", "parse", "fetch", "parse")]

    assert ids == ["fetch", "fetch:1", "parse", "fetch:2", "parse:1"]


def test_an_id_that_looks_like_a_counter_never_shares_a_step_with_another_call() -> None:
    memo = Memo()
    try:
        calls = [memo.next_call(step) for step in ("fetch:1", "fetch", "fetch")]
    except ConfigurationError:
        return  # refusing user ids that look like counters is a fine answer too
    memo.record(done(calls[0].step_id, calls[0].position))
    replay = Memo(memo.recorded())

    replayed = [replay.next_call(step) for step in ("fetch:1", "fetch", "fetch")]

    assert len({call.step_id for call in calls}) == 3
    assert replayed[2].recorded is None, "the third call has no recorded outcome of its own"


def test_counters_start_again_for_each_execution() -> None:
    first, replay = Memo(), Memo()
    for memo in (first, replay):
        memo.next_call("fetch")

    assert replay.next_call("fetch").step_id == "fetch:1"
    assert Memo().next_call("fetch").step_id == "fetch"


# --- replaying recorded steps ----------------------------------------------------------------


def test_a_replay_gets_each_recorded_outcome_back() -> None:
    memo = Memo([done("fetch", 0, '{"id": 1}'), done("fetch:1", 1, '{"id": 2}')])

    first, second, third = (memo.next_call("fetch") for _ in range(3))

    assert first.recorded == done("fetch", 0, '{"id": 1}')
    assert second.recorded == done("fetch:1", 1, '{"id": 2}')
    assert third == StepCall("fetch:2", 2, None), "past the memo: a new step"


def test_a_step_being_retried_carries_its_attempts_and_errors() -> None:
    memo = Memo([done("load", 0),
                 retrying("send", 1, attempts=2, errors_json='[{"name": "E1"}, {"name": "E2"}]')])

    load, send = memo.next_call("load"), memo.next_call("send")

    assert (load.previous_attempts, load.previous_errors) == (0, [])
    assert send.previous_attempts == 2
    assert send.previous_errors == [{"name": "E1"}, {"name": "E2"}]


def test_a_new_step_has_no_history() -> None:
    call = Memo().next_call("send")

    assert (call.previous_attempts, call.previous_errors) == (0, [])


def test_recording_a_step_makes_it_part_of_the_memo() -> None:
    memo = Memo()
    memo.record(done("b", 1))
    memo.record(done("a", 0))

    assert [step.step_id for step in memo.recorded()] == ["a", "b"]
    assert memo.next_call("a").recorded == done("a", 0)


# --- divergence ------------------------------------------------------------------------------


def test_a_replay_calling_another_step_than_recorded_is_non_deterministic() -> None:
    memo = Memo([done("create-invoice", 0), done("send-invoice", 1)])
    memo.next_call("create-invoice")

    with pytest.raises(NonDeterminismError) as raised:
        memo.next_call("send-reminder")

    assert str(raised.value) == (
        "replay diverged at step #2: the run recorded 'send-invoice' there but the handler now "
        "calls 'send-reminder'; code outside steps must be deterministic (move time, "
        "randomness and I/O into step.run)")


def test_swapping_two_recorded_steps_is_non_deterministic() -> None:
    memo = Memo([done("a", 0), done("b", 1)])

    with pytest.raises(NonDeterminismError,
                       match="recorded 'a' there but the handler now calls 'b'"):
        memo.next_call("b")


def test_calling_a_step_once_more_than_recorded_is_caught_by_its_counter() -> None:
    memo = Memo([done("fetch", 0), done("store", 1)])
    memo.next_call("fetch")

    with pytest.raises(NonDeterminismError, match=r"recorded 'store' there .* calls 'fetch:1'"):
        memo.next_call("fetch")


def test_calling_fewer_steps_than_recorded_is_allowed() -> None:
    """A handler that returns early on replay is not detected: only calls are checked."""
    memo = Memo([done("a", 0), done("b", 1)])

    assert memo.next_call("a").recorded == done("a", 0)


def test_new_steps_after_the_recorded_ones_are_fine() -> None:
    memo = Memo([done("a", 0)])
    memo.next_call("a")

    assert memo.next_call("b") == StepCall("b", 1, None)


# --- step ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("step_id", ["", "   ", None, 3, "s" * (MAX_STEP_ID_LENGTH + 1)])
def test_a_step_id_must_be_a_short_non_empty_string(step_id: object) -> None:
    with pytest.raises(ConfigurationError, match="step id"):
        Memo().next_call(step_id)  # type: ignore[arg-type]


def test_a_refused_step_id_does_not_use_up_a_position() -> None:
    memo = Memo()
    with pytest.raises(ConfigurationError):
        memo.next_call("")

    assert memo.next_call("a").position == 0


def test_calls_from_several_threads_get_distinct_positions() -> None:
    memo = Memo()
    positions: list[int] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        for _ in range(200):
            positions.append(memo.next_call("fetch").position)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(positions) == list(range(1600))
