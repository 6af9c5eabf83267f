"""The dashboard's Store queries on every backend, through the same real app and worker."""

from __future__ import annotations

import time

import pytest

from stride.stores.base import RunFilter
from tests.server.conftest import make_app, populate


@pytest.fixture
def backend_url(database_url: str) -> str:
    if database_url.startswith("postgresql"):
        try:
            import psycopg

            psycopg.connect(database_url.split("?")[0], connect_timeout=2).close()
        except Exception as exc:
            pytest.skip(f"PostgreSQL is not reachable: {exc}")
    return database_url


async def test_dashboard_queries_agree_on_every_backend(backend_url: str) -> None:
    app = make_app(backend_url)
    try:
        _greet, flaky, _parked, quiet = await populate(app)
        store = await app.store()
        now = time.time_ns() // 1_000_000

        everything = await store.search_runs(RunFilter(limit=100))
        assert [r.id for r in everything] == sorted((r.id for r in everything), reverse=True)
        assert len(everything) == 7
        assert [r.id for r in await store.search_runs(RunFilter(status="failed"))] == [flaky]
        assert len(await store.search_runs(RunFilter(job_id="greet", status="completed"))) == 3
        page = await store.search_runs(RunFilter(limit=3, before=everything[2].id))
        assert [r.id for r in page] == [r.id for r in everything[3:6]]
        found = await store.search_runs(RunFilter(), text="GrAcE")
        assert [r.job_id for r in found] == ["greet"]
        assert await store.search_runs(RunFilter(), text="%") == []
        assert await store.search_runs(RunFilter(since_ms=now + 3_600_000)) == []
        assert len(await store.search_runs(RunFilter(until_ms=now + 3_600_000))) == 7

        events = await store.list_events(limit=5)
        rest = await store.list_events(limit=5, before=events[-1].cursor)
        assert len(events) == 5 and len(rest) == 3
        assert len({e.id for e in events + rest}) == 8
        assert [e.id for e in await store.list_events(name="nobody/listens")] == [quiet]
        with pytest.raises(ValueError):
            await store.list_events(before="nonsense")
        runs = await store.runs_for_events([r.event_id for r in everything])
        assert {r.id for r in runs} == {r.id for r in everything}

        stats = await store.queue_stats(now + 1000)
        assert (stats.waiting, stats.due, stats.running) == (3, 3, 0)
        assert stats.oldest_due_at is not None and stats.oldest_due_at <= now
        assert len(await store.list_workers(since_ms=now - 60_000)) == 1
        counts = {(c.job_id, c.status): c.count for c in await store.run_counts()}
        assert counts == {("greet", "completed"): 3, ("flaky", "failed"): 1,
                          ("parked", "queued"): 3}

        activity = await store.job_activity(since_ms=now - 3_600_000, bucket_ms=3_600_000,
                                            limit=1000)
        by_job = {row.job_id: row for row in activity}
        assert (by_job["greet"].runs, by_job["greet"].failed) == (3, 0)
        assert (by_job["flaky"].runs, by_job["flaky"].failed) == (1, 1)
        assert by_job["greet"].p50_ms is not None
        assert by_job["greet"].p95_ms is not None and by_job["greet"].p95_ms >= by_job[
            "greet"].p50_ms
        assert by_job["parked"].p50_ms is None and by_job["parked"].lag_ms is None
        timings = await store.step_timings(since_ms=now - 3_600_000, limit=1000)
        assert sum(1 for t in timings if t.job_id == "greet") == 6
        assert {t.status for t in timings if t.job_id == "flaky"} == {"completed", "failed"}
    finally:
        await app.aclose()
