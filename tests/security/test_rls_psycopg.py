"""psycopg 3 + PostgreSQL row-level security: rls_transaction and pooled rls_connection."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from stride import _audit
from stride._current import RunScope, StepScope, current_run, current_step
from stride.errors import ConfigurationError
from stride.integrations.psycopg import rls_connection, rls_transaction
from stride.security import MissingSecurityContext, with_actor, with_rls_bypass
from tests.security.conftest import RlsDatabase

SETTINGS_SQL = ("SELECT current_setting('app.user_id', true), "
                "current_setting('app.rls_bypass', true), current_setting('app.rls_tag', true)")


@pytest.fixture(autouse=True)
def _forget_kept_records() -> Iterator[None]:
    yield
    _audit._registry.take_kept()


@pytest.fixture
def in_job() -> Iterator[None]:
    run = current_run.set(RunScope("app", "mail-digest", "run-9", "event-9", None))
    step = current_step.set(StepScope("collect", 1))
    yield
    current_step.reset(step)
    current_run.reset(run)


def owners(conn: psycopg.Connection[tuple[str]], db: RlsDatabase) -> list[str]:
    return [row[0] for row in conn.execute(db.owners_sql)]  # type: ignore[arg-type]


async def aowners(conn: psycopg.AsyncConnection[tuple[str]], db: RlsDatabase) -> list[str]:
    cur = await conn.execute(db.owners_sql)  # type: ignore[arg-type]
    return [row[0] for row in await cur.fetchall()]


def test_sync_transaction_under_each_context(rls_db: RlsDatabase, in_job: None) -> None:
    with psycopg.connect(rls_db.url) as conn:
        with pytest.raises(MissingSecurityContext, match="job 'mail-digest', run run-9"):
            rls_transaction(conn, strict=True).__enter__()
        with rls_transaction(conn, strict=False):
            assert owners(conn, rls_db) == []
        with with_actor({"id": "u2"}), rls_transaction(conn, strict=True):
            assert owners(conn, rls_db) == ["u2"]
        with with_rls_bypass("jobs:digest"), rls_transaction(conn, strict=True):
            assert owners(conn, rls_db) == ["u1", "u2"]
            assert conn.execute(SETTINGS_SQL).fetchone() == ("", "on", "jobs:digest")
        # the same connection, the next transaction: nothing left of the bypass
        assert conn.execute(SETTINGS_SQL).fetchone() in {("", "", ""), (None, None, None)}
        assert owners(conn, rls_db) == []


def test_a_connection_inside_a_transaction_is_refused(rls_db: RlsDatabase) -> None:
    with psycopg.connect(rls_db.url) as conn:
        conn.execute("SELECT 1")  # non-autocommit: a transaction is now open
        with pytest.raises(ConfigurationError, match="INTRANS"):
            rls_transaction(conn).__enter__()


async def test_async_pool_never_leaks_settings(rls_db: RlsDatabase) -> None:
    async with AsyncConnectionPool(rls_db.url, min_size=1, max_size=1, open=False) as pool:
        async with with_rls_bypass("jobs:all"), rls_connection(pool) as conn:
            pid = conn.info.backend_pid
            assert await aowners(conn, rls_db) == ["u1", "u2"]
        with pytest.raises(RuntimeError):
            async with with_actor({"id": "u1"}), rls_connection(pool) as conn:
                assert await aowners(conn, rls_db) == ["u1"]
                raise RuntimeError("rolled back")
        async with pool.connection() as conn:  # a plain checkout of the same connection
            assert conn.info.backend_pid == pid
            cur = await conn.execute(SETTINGS_SQL)
            assert await cur.fetchone() in {("", "", ""), (None, None, None)}
            assert await aowners(conn, rls_db) == []


async def test_async_pool_with_many_concurrent_tasks(rls_db: RlsDatabase) -> None:
    async with AsyncConnectionPool(rls_db.url, min_size=4, max_size=4, open=False) as pool:
        async def task(i: int) -> None:
            user = f"u{i % 3 + 1}"
            run = current_run.set(RunScope("app", "job", f"run-{i}", f"e-{i}", None))
            scope = with_rls_bypass(f"task-{i}") if i % 4 == 0 else with_actor({"id": user})
            for _ in range(3):
                async with scope, rls_connection(pool, strict=True) as conn:
                    await asyncio.sleep(0)
                    seen = await aowners(conn, rls_db)
                expected = ["u1", "u2"] if i % 4 == 0 else [u for u in ("u1", "u2") if u == user]
                assert seen == expected, (i, seen)
            current_run.reset(run)

        await asyncio.gather(*(task(i) for i in range(30)))


def test_sync_pool_with_threads(rls_db: RlsDatabase) -> None:
    barrier = threading.Barrier(6)
    with ConnectionPool(rls_db.url, min_size=1, max_size=3, open=True) as pool:
        def work(i: int) -> list[list[str]]:
            user = "u1" if i % 2 else "u2"
            seen = []
            with with_actor({"id": user}):
                barrier.wait()
                for _ in range(4):
                    with rls_connection(pool) as conn:
                        seen.append(owners(conn, rls_db))
            return seen

        with ThreadPoolExecutor(6) as threads:
            results = list(threads.map(work, range(6)))
        with pool.connection() as conn:
            assert owners(conn, rls_db) == []
    for i, seen in enumerate(results):
        assert seen == [["u1" if i % 2 else "u2"]] * 4


async def test_strict_check_before_taking_a_pooled_connection(
        rls_db: RlsDatabase, in_job: None) -> None:
    async with AsyncConnectionPool(rls_db.url, min_size=1, max_size=1, open=False) as pool:
        with pytest.raises(MissingSecurityContext):
            async with rls_connection(pool, strict=True):
                pass
        assert pool.get_stats().get("requests_num", 0) == 0
