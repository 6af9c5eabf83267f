"""The audit trail: stores keep records, the recorder batches them, nothing is lost silently."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator

import pytest

from stride import Stride, _audit
from stride._audit import AuditRecord, AuditRecorder
from stride._current import RunScope, StepScope, current_run, current_step
from stride.security import with_actor, with_rls_bypass
from stride.stores.base import Store, open_store_for_url
from stride.stores.sqlite import sqlite_path


def record(i: int, *, run_id: str | None = "run-1", tag: str = "jobs:x") -> AuditRecord:
    return AuditRecord(id=f"A{i:04d}", tag=tag, app_id="app", job_id="job", run_id=run_id,
                       step_id="step", attempt=1, actor_json='{"id":"u1"}', started_at=1000 + i,
                       ended_at=1005 + i, outcome="ok" if i % 2 else "error",
                       error=None if i % 2 else "KeyError")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = open_store_for_url(database_url)
    if not hasattr(opened, "record_audit"):
        pytest.skip(f"{type(opened).__name__} has no record_audit yet")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture(autouse=True)
def _forget_kept_records() -> None:
    _audit._registry.take_kept()


async def test_store_keeps_records_and_filters_them(store: Store) -> None:
    records = [record(i) for i in range(5)] + [record(9, run_id=None, tag="web:admin")]
    await store.record_audit(records)
    await store.record_audit(records[:2])  # a retried batch is not recorded twice
    assert await store.list_audit() == list(reversed(records))
    assert await store.list_audit(run_id="run-1") == list(reversed(records[:5]))
    assert await store.list_audit(tag="web:admin") == [records[5]]
    assert await store.list_audit(run_id="run-1", tag="web:admin") == []
    assert await store.list_audit(limit=2) == [records[5], records[4]]
    await store.record_audit([])


async def test_recorder_buffers_then_flushes_in_batches(sqlite_url: str) -> None:
    store = open_store_for_url(sqlite_url)
    await store.open()
    recorder = AuditRecorder(store, app_id="app", interval=60)
    recorder.start()
    try:
        token = current_run.set(RunScope("app", "job", "run-1", "event-1", None))
        for _ in range(3):
            with with_rls_bypass("jobs:batched"):
                pass
        current_run.reset(token)
        assert recorder.pending == 3  # buffered: nothing written by the bypasses themselves
        assert await recorder.flush() == 3
        assert [r.tag for r in await store.list_audit(run_id="run-1")] == ["jobs:batched"] * 3
        with with_rls_bypass("web:admin"):  # outside a job: the running recorder takes it
            pass
    finally:
        await recorder.stop()  # writes what is left
    assert recorder.pending == 0
    assert [r.tag for r in await store.list_audit(tag="web:admin")] == ["web:admin"]
    await store.close()


async def test_a_failed_flush_keeps_the_records(sqlite_url: str) -> None:
    store = open_store_for_url(sqlite_url)
    await store.open()
    recorder = AuditRecorder(store, app_id="app", interval=60)
    for i in range(3):
        recorder.add(record(i))
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        conn.execute("ALTER TABLE audit RENAME TO audit_away")
    with pytest.raises(Exception, match="audit"):
        await recorder.flush()
    assert recorder.pending == 3
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        conn.execute("ALTER TABLE audit_away RENAME TO audit")
    assert await recorder.flush() == 3
    assert len(await store.list_audit()) == 3
    await store.close()


async def test_without_a_recorder_each_bypass_is_written_before_it_returns(
        sqlite_url: str) -> None:
    jobs = Stride(app_id="audit-direct", database_url=sqlite_url)
    _audit.register_app(jobs)
    store = await jobs.store()
    run = current_run.set(RunScope("audit-direct", "job", "run-7", "event-7", None))
    step = current_step.set(StepScope("load", 1))
    try:
        async with with_actor({"id": "u1"}), with_rls_bypass("jobs:async-block"):
            pass
        [written] = await store.list_audit(run_id="run-7")
        with pytest.raises(ValueError), with_rls_bypass("jobs:sync-block"):
            raise ValueError("boom")  # a plain `with` in async code waits on the portal thread
    finally:
        current_step.reset(step)
        current_run.reset(run)
    assert (written.tag, written.app_id, written.job_id, written.step_id, written.attempt,
            written.actor_json, written.outcome) == (
        "jobs:async-block", "audit-direct", "job", "load", 1, '{"id":"u1"}', "ok")
    assert written.ended_at >= written.started_at
    latest = (await store.list_audit(run_id="run-7"))[0]
    assert (latest.tag, latest.outcome, latest.error) == ("jobs:sync-block", "error",
                                                          "ValueError")
    assert _audit.unwritten() == []
    await jobs.aclose()


def test_records_with_nowhere_to_go_are_logged_and_kept(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    registry = _audit._Registry()  # a process with no app and no worker
    registry.keep(record(1), None)
    assert [r.id for r in registry.kept] == ["A0001"]
    assert "no Stride app" in caplog.text and '"tag":"jobs:x"' in caplog.text
    registry.at_exit()
    assert "1 RLS bypass audit records were never written" in caplog.text


def test_describe_is_one_line() -> None:
    line = record(2).describe()
    assert "jobs:x" in line and "error (KeyError)" in line and "run run-1" in line
    assert "\n" not in line
