"""SQLAlchemy + PostgreSQL row-level security: contexts become transaction-local settings.

Every query runs as the ordinary role `stride_rls_app` against a table with FORCE'd RLS and
the policy from docs/rls.md (u1 owns two rows, u2 one).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from stride import _audit
from stride._current import RunScope, StepScope, current_run, current_step
from stride.errors import ConfigurationError
from stride.integrations import STRICT_ENV, RlsSettings
from stride.integrations.sqlalchemy import install_rls
from stride.security import MissingSecurityContext, with_actor, with_rls_bypass
from tests.security.conftest import RlsDatabase

SETTINGS_SQL = text("SELECT current_setting('app.user_id', true), "
                    "current_setting('app.rls_bypass', true), current_setting('app.rls_tag', true)")


@pytest.fixture(autouse=True)
def _forget_kept_records() -> Iterator[None]:
    yield
    _audit._registry.take_kept()


@pytest.fixture
def engine(rls_db: RlsDatabase) -> Iterator[Engine]:
    """One pooled connection, so every transaction reuses the previous one's connection."""
    eng = create_engine(rls_db.sqlalchemy_url, poolclass=QueuePool, pool_size=1, max_overflow=0)
    install_rls(eng, strict=True)
    yield eng
    eng.dispose()


@pytest.fixture
def in_job() -> Iterator[None]:
    run = current_run.set(RunScope("app", "sync-docs", "run-1", "event-1", {"id": "u1"}))
    step = current_step.set(StepScope("load-docs", 1))
    yield
    current_step.reset(step)
    current_run.reset(run)


def count(conn: Connection, db: RlsDatabase) -> int:
    return int(conn.execute(text(db.count_sql)).scalar_one())


def owners(conn: Connection, db: RlsDatabase) -> list[str]:
    return list(conn.execute(text(db.owners_sql)).scalars())


def test_outside_jobs_no_context_sees_nothing_and_strict_stays_quiet(
        engine: Engine, rls_db: RlsDatabase) -> None:
    with engine.connect() as conn:
        assert count(conn, rls_db) == 0


def test_strict_mode_inside_a_job_names_the_job_and_step(
        engine: Engine, rls_db: RlsDatabase, in_job: None) -> None:
    with engine.connect() as conn, pytest.raises(MissingSecurityContext) as caught:
        count(conn, rls_db)
    assert "job 'sync-docs', run run-1, step 'load-docs'" in str(caught.value)
    with engine.connect() as conn, with_actor({"id": "u2"}):  # the connection is fine after
        assert owners(conn, rls_db) == ["u2"]


def test_without_strict_mode_a_job_silently_sees_nothing(
        rls_db: RlsDatabase, in_job: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STRICT_ENV, raising=False)
    eng = create_engine(rls_db.sqlalchemy_url)
    install_rls(eng)
    with eng.connect() as conn:
        assert count(conn, rls_db) == 0
    monkeypatch.setenv(STRICT_ENV, "1")  # what `stride dev` sets: strict=None follows it
    with eng.connect() as conn, pytest.raises(MissingSecurityContext):
        count(conn, rls_db)
    eng.dispose()


def test_bypass_sees_every_row_and_the_actor_only_theirs(
        engine: Engine, rls_db: RlsDatabase, in_job: None) -> None:
    with with_rls_bypass("jobs:sync-all"), engine.connect() as conn:
        assert count(conn, rls_db) == 3
        assert conn.execute(SETTINGS_SQL).one() == ("", "on", "jobs:sync-all")
    with with_actor({"id": "u1"}), with_rls_bypass("jobs:for-u1"), engine.connect() as conn:
        assert count(conn, rls_db) == 3
        assert conn.execute(SETTINGS_SQL).one() == ("u1", "on", "jobs:for-u1")
    with with_actor({"id": "u1"}), engine.connect() as conn:
        assert owners(conn, rls_db) == ["u1"]
        assert count(conn, rls_db) == 2
        assert conn.execute(SETTINGS_SQL).one() == ("u1", "off", "")
    audit = _audit.unwritten()[0]
    assert (audit.tag, audit.job_id, audit.run_id, audit.step_id, audit.actor_json) == (
        "jobs:sync-all", "sync-docs", "run-1", "load-docs", None)
    assert _audit.unwritten()[1].actor_json == '{"id":"u1"}'


def test_nothing_leaks_to_the_next_transaction_on_a_pooled_connection(
        engine: Engine, rls_db: RlsDatabase) -> None:
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with with_rls_bypass("jobs:leak-check"), engine.begin() as conn:
        assert count(conn, rls_db) == 3
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid
        assert conn.execute(SETTINGS_SQL).one() in {(None, None, None), ("", "", "")}
        assert count(conn, rls_db) == 0
    with pytest.raises(RuntimeError), with_actor({"id": "u1"}), engine.begin() as conn:
        assert count(conn, rls_db) == 2
        raise RuntimeError("rolled back")
    with engine.connect() as conn:
        assert count(conn, rls_db) == 0
        conn.commit()
        with with_actor({"id": "u2"}):
            assert count(conn, rls_db) == 1
        conn.rollback()
        assert count(conn, rls_db) == 0  # a new transaction on the same connection


def test_the_context_follows_scopes_inside_one_transaction(
        engine: Engine, rls_db: RlsDatabase) -> None:
    with engine.begin() as conn:
        assert count(conn, rls_db) == 0
        with with_actor({"id": "u1"}):
            assert count(conn, rls_db) == 2
            with with_rls_bypass("jobs:inner"):
                assert count(conn, rls_db) == 3
            assert count(conn, rls_db) == 2
        assert count(conn, rls_db) == 0
        assert conn.execute(SETTINGS_SQL).one() == ("", "off", "")


def test_a_rolled_back_savepoint_does_not_confuse_it(engine: Engine, rls_db: RlsDatabase) -> None:
    with with_actor({"id": "u1"}), engine.begin() as conn:
        savepoint = conn.begin_nested()
        with with_rls_bypass("jobs:savepoint"):
            assert count(conn, rls_db) == 3
        savepoint.rollback()  # the settings made in it are undone by PostgreSQL
        assert count(conn, rls_db) == 2
        savepoint = conn.begin_nested()
        with with_rls_bypass("jobs:savepoint"):
            assert count(conn, rls_db) == 3
            savepoint.rollback()  # still inside the bypass: applied again
            assert count(conn, rls_db) == 3


def test_orm_sessions_and_core_tables(engine: Engine, rls_db: RlsDatabase) -> None:
    documents = Table("documents", MetaData(schema=rls_db.schema),
                      Column("id", Integer, primary_key=True), Column("owner_id", String),
                      Column("org_id", String), Column("title", String))
    with with_actor({"id": "u2"}), Session(engine) as session:
        assert session.scalars(select(documents.c.title)).all() == ["gamma"]
        session.execute(documents.insert().values(owner_id="u2", org_id="o2", title="delta"))
        session.commit()
        assert sorted(session.scalars(select(documents.c.title))) == ["delta", "gamma"]
    with with_actor({"id": "u2"}), Session(engine) as session, pytest.raises(Exception,
                                                                        match="row-level"):
        session.execute(documents.insert().values(owner_id="u1", org_id="o1", title="forged"))
    with with_rls_bypass("jobs:count"), Session(engine) as session:
        assert len(session.scalars(select(documents.c.id)).all()) == 4


def test_extra_actor_fields_and_custom_names(rls_db: RlsDatabase) -> None:
    eng = create_engine(rls_db.sqlalchemy_url)
    install_rls(eng, settings=RlsSettings(user_id="app.user_id", bypass="myapp.sys",
                                          tag="myapp.why", extra={"org_id": "app.org_id"}))
    with with_actor({"id": "u1", "org_id": "o1"}), eng.connect() as conn:
        assert conn.execute(text("SELECT current_setting('app.org_id'), "
                                 "current_setting('myapp.sys')")).one() == ("o1", "off")
        assert count(conn, rls_db) == 2
    with with_rls_bypass("x"), eng.connect() as conn:
        assert count(conn, rls_db) == 0  # the policy reads app.rls_bypass, not myapp.sys
    eng.dispose()
    with pytest.raises(ConfigurationError, match="dotted"):
        RlsSettings(user_id="user_id")


async def test_async_engine_with_many_concurrent_tasks(rls_db: RlsDatabase) -> None:
    eng = create_async_engine(rls_db.sqlalchemy_url, pool_size=4, max_overflow=0)
    install_rls(eng, strict=True)
    expected = {"u1": ["u1"], "u2": ["u2"], "u3": []}

    async def task(i: int) -> None:
        user = f"u{i % 3 + 1}"
        run = current_run.set(RunScope("app", "job", f"run-{i}", f"event-{i}", {"id": user}))
        scope = with_rls_bypass(f"task-{i}") if i % 4 == 0 else with_actor({"id": user})
        async with scope, eng.connect() as conn:
            for _ in range(3):
                seen = list((await conn.execute(text(rls_db.owners_sql))).scalars())
                assert seen == (["u1", "u2"] if i % 4 == 0 else expected[user]), (i, seen)
                await asyncio.sleep(0)
        current_run.reset(run)

    await asyncio.gather(*(task(i) for i in range(40)))
    token = current_run.set(RunScope("app", "job", "run-x", "event-x", None))
    async with eng.connect() as conn:
        with pytest.raises(MissingSecurityContext):
            await conn.execute(text(rls_db.count_sql))
    current_run.reset(token)
    await eng.dispose()


def test_threads_with_different_actors(rls_db: RlsDatabase) -> None:
    eng = create_engine(rls_db.sqlalchemy_url, pool_size=4, max_overflow=0)
    install_rls(eng, strict=True)
    barrier = threading.Barrier(8)

    def work(i: int) -> list[list[str]]:
        user = "u1" if i % 2 else "u2"
        seen = []
        with with_actor({"id": user}):
            barrier.wait()
            for _ in range(5):
                with eng.connect() as conn:
                    seen.append(owners(conn, rls_db))
        return seen

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for i, seen in enumerate(results):
        assert seen == [["u1" if i % 2 else "u2"]] * 5
    eng.dispose()


def test_autocommit_connections_are_refused_under_a_context(
        engine: Engine, rls_db: RlsDatabase) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        assert count(conn, rls_db) == 0  # no context: nothing to apply
        with with_actor({"id": "u1"}), pytest.raises(ConfigurationError, match="AUTOCOMMIT"):
            count(conn, rls_db)


def test_install_twice_is_refused_and_remove_undoes_it(rls_db: RlsDatabase) -> None:
    eng = create_engine(rls_db.sqlalchemy_url)
    installation = install_rls(eng)
    with pytest.raises(ConfigurationError, match="already"):
        install_rls(eng)
    installation.remove()
    with with_actor({"id": "u1"}), eng.connect() as conn:
        assert count(conn, rls_db) == 0  # no longer applied
    install_rls(eng)
    eng.dispose()


def test_sqlite_has_no_rls_but_strict_mode_still_checks(
        tmp_path: object, in_job: None, caplog: pytest.LogCaptureFixture) -> None:
    eng = create_engine("sqlite://")
    with caplog.at_level(logging.WARNING):
        install_rls(eng, strict=True)
    assert "no row-level security" in caplog.text
    with eng.connect() as conn:
        with pytest.raises(MissingSecurityContext):
            conn.execute(text("SELECT 1"))
        with with_actor({"id": "u1"}):
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
