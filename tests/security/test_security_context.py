"""The security context: bypass forms, actors, nesting, and isolation between tasks and threads."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from stride import _audit
from stride._current import RunScope, StepScope, current_run, current_step
from stride.errors import ConfigurationError, StrideError
from stride.security import (
    MissingSecurityContext,
    current_actor,
    current_security_context,
    set_actor,
    with_actor,
    with_rls_bypass,
)


@pytest.fixture(autouse=True)
def _no_audit_store() -> Iterator[None]:
    """These tests have no store: bypass records are kept in memory; forget them after."""
    yield
    _audit._registry.take_kept()


@pytest.fixture
def in_job() -> Iterator[None]:
    run = current_run.set(RunScope("app", "sync-docs", "run-1", "event-1", {"id": "u1"}))
    step = current_step.set(StepScope("load", 2))
    yield
    current_step.reset(step)
    current_run.reset(run)


def test_no_context_outside_jobs() -> None:
    ctx = current_security_context()
    assert (ctx.kind, ctx.tag, ctx.actor, ctx.run_id) == ("none", None, None, None)
    assert not ctx.bypass


def test_bypass_names_job_run_and_step(in_job: None) -> None:
    with with_rls_bypass("jobs:sync") as entered:
        ctx = current_security_context()
    assert entered == ctx
    assert (ctx.kind, ctx.tag, ctx.bypass) == ("system", "jobs:sync", True)
    assert (ctx.app_id, ctx.job_id, ctx.run_id, ctx.step_id, ctx.attempt) == (
        "app", "sync-docs", "run-1", "load", 2)
    assert str(ctx) == "system, tag=jobs:sync (job 'sync-docs', run run-1, step 'load')"
    assert current_security_context().kind == "none"


def test_bypasses_nest_and_leaving_restores_the_outer_one() -> None:
    with with_actor({"id": "u1"}):
        with with_rls_bypass("outer"):
            with with_rls_bypass("inner"):
                assert current_security_context().tag == "inner"
            assert current_security_context().tag == "outer"
            with with_actor({"id": "u2"}):
                assert current_security_context().kind == "user"
                assert current_actor() == {"id": "u2"}
            ctx = current_security_context()
            assert (ctx.kind, ctx.tag, ctx.actor) == ("system", "outer", {"id": "u1"})
        assert current_security_context().kind == "user"
    assert current_security_context().kind == "none"


def test_an_exception_leaves_the_scope() -> None:
    with pytest.raises(KeyError), with_rls_bypass("failing"):
        raise KeyError("x")
    assert current_security_context().kind == "none"
    [record] = _audit.unwritten()
    assert (record.tag, record.outcome, record.error) == ("failing", "error", "KeyError")


async def test_async_with_and_the_wrapping_form() -> None:
    async with with_rls_bypass("block"):
        assert current_security_context().tag == "block"

    async def async_fn() -> str | None:
        await asyncio.sleep(0)
        return current_security_context().tag

    def sync_fn() -> str | None:
        return current_security_context().tag

    assert await with_rls_bypass("jobs:process-message", async_fn) == "jobs:process-message"
    assert await with_rls_bypass("jobs:sync-fn", sync_fn) == "jobs:sync-fn"
    assert current_security_context().kind == "none"
    assert [r.tag for r in _audit.unwritten()] == ["block", "jobs:process-message",
                                                    "jobs:sync-fn"]


async def test_decorator_on_sync_and_async_functions() -> None:
    @with_rls_bypass("jobs:report")
    async def report(n: int) -> tuple[int, str | None]:
        await asyncio.sleep(0)
        return n, current_security_context().tag

    @with_rls_bypass("jobs:cleanup")
    def cleanup() -> str | None:
        return current_security_context().tag

    assert await report(3) == (3, "jobs:report")
    assert cleanup() == "jobs:cleanup"
    # one decorated function called by many tasks at once: each call is its own scope
    results = await asyncio.gather(*(report(i) for i in range(20)))
    assert results == [(i, "jobs:report") for i in range(20)]
    assert current_security_context().kind == "none"
    assert len(_audit.unwritten()) == 22


def test_set_actor_as_call_and_as_block() -> None:
    def request() -> dict[str, object] | None:
        set_actor({"id": "u9"})
        return current_actor()

    assert contextvars.copy_context().run(request) == {"id": "u9"}
    assert current_actor() is None
    with set_actor({"id": "u1", "org_id": "o1"}) as ctx:
        assert ctx.kind == "user"
        assert current_actor() == {"id": "u1", "org_id": "o1"}
        with with_rls_bypass("admin"):
            assert current_actor() == {"id": "u1", "org_id": "o1"}  # dispatch keeps the user
    assert current_actor() is None
    with set_actor(None):
        assert current_security_context().kind == "none"


def test_actor_is_copied_so_later_changes_do_not_leak() -> None:
    actor: dict[str, object] = {"id": "u1"}
    with with_actor(actor):
        actor["id"] = "u2"
        assert current_actor() == {"id": "u1"}


def test_with_actor_none_inside_a_job_is_loud(in_job: None) -> None:
    with pytest.raises(MissingSecurityContext, match="job 'sync-docs', run run-1, step 'load'"):
        with_actor(None)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="tag"):
        with_rls_bypass("")
    with pytest.raises(ConfigurationError, match="dict"):
        with_actor("u1")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="callable"):
        with_rls_bypass("x", 42)  # type: ignore[call-overload]


def test_scopes_left_out_of_order_are_refused() -> None:
    outer = with_rls_bypass("outer")
    inner = with_actor({"id": "u1"})
    outer.__enter__()
    inner.__enter__()
    with pytest.raises(StrideError, match="reverse order"):
        outer.__exit__(None, None, None)
    inner.__exit__(None, None, None)
    outer.__exit__(None, None, None)
    assert current_security_context().kind == "none"


async def test_concurrent_tasks_never_see_each_others_context() -> None:
    async def act(i: int) -> list[tuple[str, str | None]]:
        seen = []
        scope = with_rls_bypass(f"task-{i}") if i % 3 == 0 else with_actor({"id": f"u{i}"})
        async with scope:
            for _ in range(5):
                await asyncio.sleep(0)  # interleave with every other task
                ctx = current_security_context()
                seen.append((ctx.kind, ctx.tag or (ctx.actor or {}).get("id")))
        return seen

    results = await asyncio.gather(*(act(i) for i in range(60)))
    for i, seen in enumerate(results):
        expected = ("system", f"task-{i}") if i % 3 == 0 else ("user", f"u{i}")
        assert seen == [expected] * 5


def test_threads_never_see_each_others_context() -> None:
    barrier = threading.Barrier(8)

    def act(i: int) -> tuple[str | None, str | None]:
        with with_actor({"id": f"u{i}"}):
            barrier.wait()  # all threads inside their scope at once
            ctx = current_security_context()
            return ctx.kind, (ctx.actor or {}).get("id")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(act, range(8)))
    assert results == [("user", f"u{i}") for i in range(8)]


async def test_threads_started_with_to_thread_inherit_the_callers_context() -> None:
    async with with_actor({"id": "u5"}):
        actor = await asyncio.to_thread(current_actor)
    assert actor == {"id": "u5"}
