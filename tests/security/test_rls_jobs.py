"""Real jobs on a real worker, querying a PostgreSQL table under row-level security.

The Stride store is SQLite; the application database is PostgreSQL, queried as an ordinary
role through SQLAlchemy engines with `install_rls` (one strict, one not).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from stride import Context, Stride, SyncContext, _audit
from stride._audit import AuditRecorder
from stride.security import (
    MissingSecurityContext,
    current_actor,
    set_actor,
    with_actor,
    with_rls_bypass,
)
from tests.security.conftest import RlsDatabase


@dataclass
class Engines:
    strict: AsyncEngine
    lenient: AsyncEngine


@pytest.fixture
async def engines(rls_db: RlsDatabase) -> AsyncIterator[Engines]:
    from stride.integrations.sqlalchemy import install_rls

    strict = create_async_engine(rls_db.sqlalchemy_url, pool_size=2, max_overflow=0)
    lenient = create_async_engine(rls_db.sqlalchemy_url, pool_size=1, max_overflow=0)
    install_rls(strict, strict=True)
    install_rls(lenient, strict=False)
    yield Engines(strict, lenient)
    await strict.dispose()
    await lenient.dispose()


@pytest.fixture(autouse=True)
def _forget_kept_records() -> None:
    _audit._registry.take_kept()


def define_jobs(jobs: Stride, engines: Engines, db: RlsDatabase) -> None:
    async def owners(engine: AsyncEngine) -> list[str]:
        async with engine.connect() as conn:
            return list((await conn.execute(text(db.owners_sql))).scalars())

    async def unguarded() -> str:
        try:
            await owners(engines.strict)
        except MissingSecurityContext as exc:
            return str(exc)
        return "no error"

    @jobs.define_job(id="sync-docs", trigger="docs/sync", retries=0)
    async def sync_docs(ctx: Context[dict[str, Any]]) -> dict[str, Any]:
        async def as_user() -> list[str]:
            async with with_actor(ctx.event.user):
                return await owners(engines.strict)

        async def everyone() -> list[str]:
            async with with_rls_bypass("jobs:sync-docs"):
                return await owners(engines.strict)

        return {
            "strict": await ctx.step.run("unguarded", unguarded),
            "lenient": await ctx.step.run("lenient", owners, engines.lenient),
            "as_user": await ctx.step.run("as-user", as_user),
            "bypass": await ctx.step.run("bypass", everyone),
            "wrapped": await with_rls_bypass("jobs:process-message",
                                             lambda: owners(engines.strict)),
            "user": ctx.event.user,
        }

    @jobs.define_job(id="count-docs", trigger="docs/count", retries=0)
    def count_docs(ctx: SyncContext[dict[str, Any]]) -> list[list[str]]:
        # a sync handler runs in a thread; the context follows it there
        with with_actor(ctx.event.user):
            mine = ctx.step.run("mine", owners, engines.strict)
        with with_rls_bypass("jobs:count-docs"):
            every = ctx.step.run("every", owners, engines.strict)
        return [mine, every]


async def test_jobs_see_what_their_context_allows_and_every_bypass_is_audited(
        sqlite_url: str, rls_db: RlsDatabase, engines: Engines) -> None:
    jobs = Stride(app_id="rls-jobs", database_url=sqlite_url)
    define_jobs(jobs, engines, rls_db)
    store = await jobs.store()
    recorder = AuditRecorder(store, app_id=jobs.app_id, interval=30)
    recorder.start()
    try:
        [e1] = await jobs.dispatch("docs/sync", {}, user={"id": "u1"})
        [e2] = await jobs.dispatch("docs/sync", {}, user={"id": "u2"})
        [e3] = await jobs.dispatch("docs/count", {}, user={"id": "u2"})
        async with jobs.worker(concurrency=4):
            runs = [(await jobs.get_runs(event_id=e))[0] for e in (e1, e2, e3)]
            done = [await jobs.wait_for(run.id, timeout=30) for run in runs]
    finally:
        await recorder.stop()
    assert [run.status for run in done] == ["completed"] * 3, [r.error for r in done]
    first, second, counted = (run.output for run in done)
    assert "no security context" in first["strict"]
    assert f"job 'sync-docs', run {done[0].id}, step 'unguarded'" in first["strict"]
    assert first["lenient"] == [] and second["lenient"] == []
    assert (first["as_user"], second["as_user"]) == (["u1"], ["u2"])
    assert first["bypass"] == second["bypass"] == first["wrapped"] == ["u1", "u2"]
    assert counted == [["u2"], ["u1", "u2"]]

    audit = await store.list_audit(run_id=done[0].id)
    assert sorted((r.tag, r.step_id, r.outcome) for r in audit) == [
        ("jobs:process-message", None, "ok"), ("jobs:sync-docs", "bypass", "ok")]
    assert {(r.app_id, r.job_id, r.run_id) for r in audit} == {
        ("rls-jobs", "sync-docs", done[0].id)}
    assert all(r.ended_at >= r.started_at for r in audit)
    assert len(await store.list_audit(tag="jobs:sync-docs")) == 2
    [count_audit] = await store.list_audit(run_id=done[2].id)
    assert (count_audit.tag, count_audit.step_id) == ("jobs:count-docs", None)
    assert _audit.unwritten() == []
    await jobs.aclose()


async def test_the_workers_bypass_records_reach_the_store(
        sqlite_url: str, rls_db: RlsDatabase, engines: Engines) -> None:
    """Whoever takes the records (the worker's recorder, or a direct write when no recorder
    runs), they are in the store once the worker stopped."""
    jobs = Stride(app_id="rls-direct", database_url=sqlite_url)
    _audit.register_app(jobs)
    define_jobs(jobs, engines, rls_db)
    [event_id] = await jobs.dispatch("docs/count", {}, user={"id": "u1"})
    async with jobs.worker():
        [run] = await jobs.get_runs(event_id=event_id)
        run = await jobs.wait_for(run.id, timeout=30)
    assert run.output == [["u1"], ["u1", "u2"]]
    [record] = await (await jobs.store()).list_audit(run_id=run.id)
    assert (record.tag, record.job_id, record.actor_json) == (
        "jobs:count-docs", "count-docs", None)
    assert _audit.unwritten() == []
    await jobs.aclose()


async def test_dispatch_in_a_request_carries_the_actor(sqlite_url: str) -> None:
    jobs = Stride(app_id="rls-dispatch", database_url=sqlite_url)
    with set_actor({"id": "u7"}):
        assert current_actor() == {"id": "u7"}
        [event_id] = await jobs.dispatch("docs/anything", {})
    event = await (await jobs.store()).get_event(event_id)
    await jobs.aclose()
    assert event is not None and event.user_json == '{"id":"u7"}'


async def test_a_step_with_no_security_context_fails_at_once_instead_of_retrying(
        sqlite_url: str, rls_db: RlsDatabase, engines: Engines) -> None:
    """The same event and code meet the same missing context on every attempt: backoff
    would only delay the error the strict mode exists to show."""
    jobs = Stride(app_id="rls-no-retry", database_url=sqlite_url)

    @jobs.define_job(id="forgetful", trigger="docs/forget", retries=3)
    async def forgetful(ctx: Context[dict[str, Any]]) -> list[str]:
        async def owners() -> list[str]:
            async with engines.strict.connect() as conn:
                return list((await conn.execute(text(rls_db.owners_sql))).scalars())

        return await ctx.step.run("peek", owners)

    [event_id] = await jobs.dispatch("docs/forget", {}, user={"id": "u1"})
    async with jobs.worker():
        [run] = await jobs.get_runs(event_id=event_id)
        run = await jobs.wait_for(run.id, timeout=30)
    await jobs.aclose()

    assert run.status == "failed"
    [step] = run.steps
    assert (step.status, step.attempts) == ("failed", 1)
    assert "MissingSecurityContext" in str(run.error)
