"""Guarantees 2 and 4 inside one process: memoized steps, retries, backoff and failure.

Every test dispatches one event to a real SQLite file, runs an in-process worker until the
run finished, and then reads back what the store recorded. Step bodies count their own
executions in plain lists, so "ran once" means the Python function was called once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from stride import (
    Backoff,
    Context,
    NonRetriableError,
    RetryAfterError,
    Run,
    StepError,
    Stride,
    WaitTimeout,
    current_idempotency_key,
)

FAST = Backoff(initial=0.05, jitter=0.0)


@pytest.fixture
async def app(sqlite_url: str) -> AsyncIterator[Stride]:
    app = Stride(app_id="engine-retries", database_url=sqlite_url, backoff=FAST)
    yield app
    await app.aclose()


async def run_to_end(app: Stride, event: str, data: dict[str, Any] | None = None) -> Run:
    """Dispatch `event`, run a worker until the one run it triggers finished; return it."""
    async with app.worker(concurrency=4, lease=2):
        [event_id] = await app.dispatch(event, data or {})
        [run] = await app.get_runs(event_id=event_id)
        return await app.wait_for(run.id, timeout=10)


def fails_first(times: int, ran: list[str], name: str, value: Any = None) -> Any:
    """A step body that raises on its first `times` calls, then returns `value`."""

    def body() -> Any:
        ran.append(name)
        if ran.count(name) <= times:
            raise ConnectionError(f"{name} is down (call {ran.count(name)})")
        return value

    return body


# --- memoization: a committed step never runs again ---------------------------------------


async def test_a_retried_step_does_not_rerun_the_steps_before_or_after_it(app: Stride) -> None:
    ran: list[str] = []
    handler_calls: list[int] = []

    @app.define_job(id="three-steps", trigger="order/placed")
    async def three_steps(ctx: Context[dict[str, Any]]) -> dict[str, Any]:
        handler_calls.append(1)
        first = await ctx.step.run("step-1", lambda: ran.append("step-1") or "one")
        second = await ctx.step.run("step-2", fails_first(2, ran, "step-2", "two"))
        third = await ctx.step.run("step-3", lambda: ran.append("step-3") or "three")
        return {"steps": [first, second, third]}

    run = await run_to_end(app, "order/placed")

    assert run.status == "completed"
    assert run.output == {"steps": ["one", "two", "three"]}
    assert ran.count("step-1") == 1
    assert ran.count("step-2") == 3
    assert ran.count("step-3") == 1
    assert len(handler_calls) == 3, "the handler replays from the top after each backoff"


async def test_each_failed_attempt_of_a_step_is_recorded_with_its_error(app: Stride) -> None:
    ran: list[str] = []

    @app.define_job(id="three-steps", trigger="order/placed")
    async def three_steps(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("step-1", lambda: 1)
        await ctx.step.run("step-2", fails_first(2, ran, "step-2", 2))
        await ctx.step.run("step-3", lambda: 3)

    run = await run_to_end(app, "order/placed")

    step = run.step("step-2")
    assert (step.status, step.attempts, step.output) == ("completed", 3, 2)
    assert [error["attempt"] for error in step.errors] == [1, 2]
    for number, error in enumerate(step.errors, start=1):
        assert error["name"] == "ConnectionError"
        assert error["message"] == f"step-2 is down (call {number})"
        assert "Traceback (most recent call last)" in error["traceback"]
        assert "ConnectionError: step-2 is down" in error["traceback"]
    assert run.step("step-1").attempts == 1
    assert run.step("step-1").errors == []


async def test_the_idempotency_key_is_the_same_for_every_attempt_of_a_step(app: Stride) -> None:
    keys: dict[str, list[str]] = {"charge": [], "mail": []}

    def charge() -> None:
        keys["charge"].append(current_idempotency_key())
        if len(keys["charge"]) < 3:
            raise ConnectionError("payment provider timed out")

    @app.define_job(id="checkout", trigger="order/placed")
    async def checkout(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("charge", charge)
        await ctx.step.run("mail", lambda: keys["mail"].append(current_idempotency_key()))

    run = await run_to_end(app, "order/placed")

    assert run.status == "completed"
    assert keys["charge"] == [f"{run.id}:charge"] * 3
    assert keys["mail"] == [f"{run.id}:mail"]


async def test_ctx_attempt_counts_the_failed_attempts_before_this_one(app: Stride) -> None:
    ran: list[str] = []
    attempts: list[int] = []

    @app.define_job(id="counts", trigger="order/placed")
    async def counts(ctx: Context[dict[str, Any]]) -> None:
        attempts.append(ctx.attempt)
        await ctx.step.run("flaky", fails_first(2, ran, "flaky"))

    run = await run_to_end(app, "order/placed")

    assert run.status == "completed"
    assert attempts == [0, 1, 2]


# --- retries: backoff, NonRetriableError, RetryAfterError ------------------------------------


async def test_retries_wait_for_the_backoff_between_attempts(app: Stride) -> None:
    ran: list[str] = []

    @app.define_job(id="backs-off", trigger="order/placed",
                    backoff=Backoff(initial=0.2, factor=2, jitter=0.0))
    async def backs_off(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("flaky", fails_first(2, ran, "flaky"))

    run = await run_to_end(app, "order/placed")

    first, second = run.step("flaky").errors
    assert second["started_at"] - first["ended_at"] >= 200
    assert run.step("flaky").ended_at is not None
    # the third attempt starts after 0.2 * 2 = 0.4 s; it ends after that
    assert run.step("flaky").ended_at - second["ended_at"] >= 400


async def test_a_step_that_exhausts_its_attempts_fails_the_run(app: Stride) -> None:
    ran: list[str] = []

    @app.define_job(id="gives-up", trigger="order/placed", retries=2)
    async def gives_up(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("flaky", fails_first(99, ran, "flaky"))

    run = await run_to_end(app, "order/placed")

    assert run.status == "failed"
    assert ran.count("flaky") == 3, "retries=2 means three attempts"
    assert (run.step("flaky").status, run.step("flaky").attempts) == ("failed", 3)
    assert run.error is not None
    assert run.error["name"] == "StepError"
    assert run.error["message"] == (
        "step 'flaky' failed: ConnectionError: flaky is down (call 3)")


async def test_non_retriable_error_fails_the_step_at_once(app: Stride) -> None:
    ran: list[str] = []

    def charge() -> None:
        ran.append("charge")
        raise NonRetriableError("card was reported stolen")

    @app.define_job(id="charge", trigger="order/placed", retries=5)
    async def charge_job(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("charge", charge)
        await ctx.step.run("ship", lambda: ran.append("ship"))

    run = await run_to_end(app, "order/placed")

    assert ran == ["charge"]
    step = run.step("charge")
    assert (step.status, step.attempts) == ("failed", 1)
    assert step.error is not None and step.error["name"] == "NonRetriableError"
    assert run.status == "failed"
    assert run.error is not None and run.error["name"] == "StepError"
    assert "'charge'" in run.error["message"]
    assert "NonRetriableError: card was reported stolen" in run.error["message"]


async def test_retry_after_error_retries_after_its_delay_not_the_backoff(app: Stride) -> None:
    ran: list[str] = []

    def poll_api() -> str:
        ran.append("poll")
        if len(ran) <= 2:
            raise RetryAfterError("429 Too Many Requests", delay=0.3)
        return "ok"

    # the job's own backoff would wait 30 s: the test finishing at all shows it was not used
    @app.define_job(id="polite", trigger="order/placed",
                    backoff=Backoff(initial=30, jitter=0.0))
    async def polite(ctx: Context[dict[str, Any]]) -> str:
        return await ctx.step.run("poll", poll_api)

    run = await run_to_end(app, "order/placed")

    assert (run.status, run.output) == ("completed", "ok")
    first, second = run.step("poll").errors
    assert first["name"] == second["name"] == "RetryAfterError"
    assert second["started_at"] - first["ended_at"] >= 300
    assert second["started_at"] - first["ended_at"] < 3000


async def test_retry_after_error_uses_up_attempts_like_any_failure(app: Stride) -> None:
    ran: list[str] = []

    def poll_api() -> None:
        ran.append("poll")
        raise RetryAfterError("429 Too Many Requests", delay=0.05)

    @app.define_job(id="impatient", trigger="order/placed", retries=1)
    async def impatient(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("poll", poll_api)

    run = await run_to_end(app, "order/placed")

    assert run.status == "failed"
    assert ran == ["poll", "poll"]
    assert (run.step("poll").status, run.step("poll").attempts) == ("failed", 2)


async def test_a_handler_may_catch_step_error_and_carry_on(app: Stride) -> None:
    ran: list[str] = []
    caught: list[tuple[str, str, str]] = []

    def charge() -> None:
        ran.append("charge")
        raise ConnectionError("payment provider is down")

    @app.define_job(id="forgiving", trigger="order/placed", retries=1)
    async def forgiving(ctx: Context[dict[str, Any]]) -> dict[str, bool]:
        try:
            await ctx.step.run("charge", charge)
        except StepError as err:
            caught.append((err.step_id, err.name, err.message))
            await ctx.step.run("notify", lambda: ran.append("notify"))
        # a later step fails once, so the handler replays: the failed step is not tried again,
        # its memoized failure is raised again, and the handler takes the same branch
        await ctx.step.run("audit", fails_first(1, ran, "audit"))
        return {"charged": False}

    run = await run_to_end(app, "order/placed")

    assert (run.status, run.output) == ("completed", {"charged": False})
    assert ran.count("charge") == 2, "retries=1: two attempts, then the failure is memoized"
    assert ran.count("notify") == 1
    assert ran.count("audit") == 2
    assert caught == [("charge", "ConnectionError", "payment provider is down")] * 2
    assert (run.step("charge").status, run.step("charge").attempts) == ("failed", 2)


async def test_a_step_result_that_is_not_json_fails_with_the_step_and_type(app: Stride) -> None:
    ran: list[str] = []

    def make_handle() -> object:
        ran.append("make")
        return object()

    @app.define_job(id="leaky", trigger="order/placed", retries=3)
    async def leaky(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("make-handle", make_handle)

    run = await run_to_end(app, "order/placed")

    assert run.status == "failed"
    assert ran == ["make"], "retrying cannot make the value serialisable"
    step = run.step("make-handle")
    assert (step.status, step.attempts) == ("failed", 1)
    assert step.error is not None
    assert step.error["name"] == "SerializationError"
    assert "'make-handle'" in step.error["message"]
    assert "object" in step.error["message"]
    assert run.error is not None and "'make-handle'" in run.error["message"]


async def test_a_handler_return_value_that_is_not_json_fails_the_run(app: Stride) -> None:
    @app.define_job(id="returns-junk", trigger="order/placed")
    async def returns_junk(ctx: Context[dict[str, Any]]) -> object:
        return {"handle": object()}

    run = await run_to_end(app, "order/placed")

    assert run.status == "failed"
    assert run.error is not None and run.error["name"] == "SerializationError"
    assert "'returns-junk'" in run.error["message"]
    assert "object" in run.error["message"]


# --- errors outside steps ---------------------------------------------------------------------


async def test_an_error_outside_steps_retries_the_handler_and_is_recorded(app: Stride) -> None:
    ran: list[str] = []

    @app.define_job(id="broken-glue", trigger="order/placed", retries=2)
    async def broken_glue(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("load", lambda: ran.append("load"))
        ran.append("handler")
        raise KeyError(f"missing field (handler call {ran.count('handler')})")

    run = await run_to_end(app, "order/placed")

    assert run.status == "failed"
    assert ran.count("handler") == 3, "retries=2: three attempts of the handler"
    assert ran.count("load") == 1, "the step before the error stays memoized"
    assert [error["attempt"] for error in run.errors] == [1, 2, 3]
    assert all(error["name"] == "KeyError" for error in run.errors)
    assert all("Traceback" in error["traceback"] for error in run.errors)
    assert run.error is not None and "handler call 3" in run.error["message"]


async def test_run_attempts_counts_every_failed_handler_attempt(app: Stride) -> None:
    @app.define_job(id="broken-glue", trigger="order/placed", retries=2)
    async def broken_glue(ctx: Context[dict[str, Any]]) -> None:
        raise KeyError("missing field")

    run = await run_to_end(app, "order/placed")

    assert len(run.errors) == 3
    assert run.attempts == 3, "Run.attempts: the handler-level attempts that failed"


async def test_non_retriable_error_outside_steps_fails_the_run_at_once(app: Stride) -> None:
    calls: list[int] = []

    @app.define_job(id="refuses", trigger="order/placed", retries=5)
    async def refuses(ctx: Context[dict[str, Any]]) -> None:
        calls.append(1)
        raise NonRetriableError("order was cancelled by the customer")

    run = await run_to_end(app, "order/placed")

    assert run.status == "failed"
    assert calls == [1]
    assert [error["name"] for error in run.errors] == ["NonRetriableError"]


class FileUploadedV1(BaseModel):
    file_id: str


class FileUploadedV2(BaseModel):
    file_id: str
    owner: str  # added by a deploy while events of the old shape were still queued


async def test_an_event_that_no_longer_fits_its_model_fails_the_run(sqlite_url: str) -> None:
    before_deploy = Stride(app_id="files", database_url=sqlite_url)
    before_deploy.define_job(id="process", trigger=before_deploy.event(
        "file/uploaded", FileUploadedV1))(noop)
    after_deploy = Stride(app_id="files", database_url=sqlite_url)
    after_deploy.define_job(id="process", trigger=after_deploy.event(
        "file/uploaded", FileUploadedV2))(noop)
    try:
        [event_id] = await before_deploy.dispatch("file/uploaded", {"file_id": "f1"})
        [run] = await before_deploy.get_runs(event_id=event_id)

        async with after_deploy.worker(lease=1):
            with contextlib.suppress(WaitTimeout):
                await after_deploy.wait_for(run.id, timeout=4)
        run = await after_deploy.get_run(run.id)

        assert run.status == "failed", "not stuck in 'running' under a lease nobody works on"
        assert run.error is not None and "owner" in run.error["message"]
    finally:
        await before_deploy.aclose()
        await after_deploy.aclose()


async def noop(ctx: Context[Any]) -> None: ...
