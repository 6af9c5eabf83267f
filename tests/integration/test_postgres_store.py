"""What only the PostgreSQL store does: URL handling, migrations, transactional dispatch."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from stride import Stride
from stride.errors import ConfigurationError
from stride.stores.postgres import PostgresStore
from tests.conftest import POSTGRES_URL, eventually

# -- the URL -------------------------------------------------------------------------------


def test_the_schema_parameter_is_stripped_and_the_rest_reaches_libpq() -> None:
    store = PostgresStore("postgresql://u@db.internal:6543/app?sslmode=disable&schema=jobs"
                          "&options=-c%20statement_timeout%3D5000&application_name=api")

    assert store.schema == "jobs"
    assert store.target.conninfo == ("postgresql://u@db.internal:6543/app?sslmode=disable"
                                     "&options=-c%20statement_timeout%3D5000"
                                     "&application_name=api")
    assert (store.target.host, store.target.port, store.target.dbname) == (
        "db.internal", "6543", "app")


def test_the_schema_defaults_to_stride_and_may_be_given_as_a_keyword() -> None:
    assert PostgresStore("postgresql://u@h/db").schema == "stride"
    assert PostgresStore("postgres://u@h/db", schema="tenant_a").schema == "tenant_a"


@pytest.mark.parametrize("url, schema, message", [
    ("postgresql://u@h/db?schema=a", "b", "disagrees"),
    ("postgresql://u@h/db?schema=bad-name", None, "not allowed"),
    ("postgresql://u@h/db", 'x"; DROP TABLE runs; --', "not allowed"),
])
def test_a_bad_schema_is_refused_at_construction(url: str, schema: str | None,
                                                 message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PostgresStore(url, schema=schema)


async def test_libpq_parameters_apply_to_the_connections(postgres_url: str) -> None:
    store = PostgresStore(f"{postgres_url}&application_name=stride-url-test")
    await store.open()
    try:
        with psycopg.connect(POSTGRES_URL) as conn:
            names = {row[0] for row in conn.execute(
                "SELECT application_name FROM pg_stat_activity").fetchall()}
        assert "stride-url-test" in names
    finally:
        await store.close()


# -- migrations ----------------------------------------------------------------------------


@pytest.fixture
def fresh_schema() -> Iterator[str]:
    schema = f"stride_race_{uuid.uuid4().hex[:10]}"
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_stores_opening_at_once_on_a_fresh_schema_migrate_it_once(
        fresh_schema: str) -> None:
    stores = [PostgresStore(POSTGRES_URL, schema=fresh_schema) for _ in range(6)]

    await asyncio.gather(*(store.open() for store in stores))
    await asyncio.gather(*(store.close() for store in stores))

    with psycopg.connect(POSTGRES_URL) as conn:
        versions = [row[0] for row in conn.execute(
            f'SELECT version FROM "{fresh_schema}".schema_migrations ORDER BY version')]
        tables = {row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (fresh_schema,))}
    assert versions[0] == 1 and versions == sorted(set(versions))
    assert {"events", "runs", "steps", "workers", "schema_migrations"} <= tables


async def test_opening_an_up_to_date_schema_applies_nothing(postgres_url: str) -> None:
    first = PostgresStore(postgres_url)
    await first.open()
    await first.close()
    second = PostgresStore(postgres_url)
    await second.open()
    await second.close()

    with psycopg.connect(POSTGRES_URL) as conn:
        [count] = conn.execute(
            f'SELECT count(*) FROM "{first.schema}".schema_migrations').fetchone() or [0]
    assert count == len(set(_shipped_versions()))


def _shipped_versions() -> list[int]:
    from stride.stores._postgres_migrate import scripts

    return [version for version, _, _ in scripts()]


# -- transactional dispatch (outbox) --------------------------------------------------------


def outbox_app(url: str) -> Stride:
    jobs = Stride(app_id="outbox", database_url=url)

    @jobs.define_job(id="send-welcome", trigger="user/signed.up")
    async def send_welcome(ctx: Any) -> str:
        return f"welcome {ctx.event.data['email']}"

    return jobs


async def test_an_event_dispatched_in_the_app_transaction_appears_when_it_commits(
        postgres_url: str) -> None:
    jobs = outbox_app(postgres_url)
    async with jobs, await psycopg.AsyncConnection.connect(POSTGRES_URL) as app_conn:
        await app_conn.execute("CREATE TEMP TABLE users (email text)")
        await app_conn.execute("INSERT INTO users VALUES ('ada@example.com')")
        [event_id] = await jobs.dispatch("user/signed.up", {"email": "ada@example.com"},
                                         conn=app_conn)

        assert await jobs.get_runs(event_id=event_id) == []  # not committed yet
        await app_conn.commit()

        [run] = await jobs.get_runs(event_id=event_id)
        assert run.job_id == "send-welcome"


async def test_an_event_dispatched_in_a_rolled_back_transaction_never_existed(
        postgres_url: str) -> None:
    jobs = outbox_app(postgres_url)
    async with jobs, await psycopg.AsyncConnection.connect(POSTGRES_URL) as app_conn:
        [event_id] = await jobs.dispatch("user/signed.up", {"email": "bob@example.com"},
                                         conn=app_conn)
        await app_conn.rollback()

        store = await jobs.store()
        assert await store.get_event(event_id) is None
        assert await jobs.get_runs(event_id=event_id) == []


async def test_a_worker_starts_the_run_as_soon_as_the_app_commits(postgres_url: str) -> None:
    jobs = outbox_app(postgres_url)
    async with jobs, jobs.worker(concurrency=2), \
            await psycopg.AsyncConnection.connect(POSTGRES_URL) as app_conn:
        [event_id] = await jobs.dispatch("user/signed.up", {"email": "cy@example.com"},
                                         conn=app_conn)
        await asyncio.sleep(0.3)
        assert await jobs.get_runs(event_id=event_id) == []
        await app_conn.commit()

        async def finished() -> Any:
            runs = await jobs.get_runs(event_id=event_id)
            return runs if runs and runs[0].status == "completed" else None

        [run] = await eventually(finished, timeout=5, what="the outbox run to complete")
        assert run.output == "welcome cy@example.com"


async def test_a_sync_psycopg_connection_joins_its_transaction_too(postgres_url: str) -> None:
    jobs = outbox_app(postgres_url)
    async with jobs:
        with psycopg.connect(POSTGRES_URL) as app_conn:
            [kept] = await jobs.dispatch("user/signed.up", {"email": "d@x"}, conn=app_conn)
            app_conn.commit()
            [dropped] = await jobs.dispatch("user/signed.up", {"email": "e@x"}, conn=app_conn)
            app_conn.rollback()
        assert len(await jobs.get_runs(event_id=kept)) == 1
        assert await jobs.get_runs(event_id=dropped) == []


async def test_a_sqlalchemy_async_session_shares_its_transaction(postgres_url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    jobs = outbox_app(postgres_url)
    engine = create_async_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    try:
        async with jobs:
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(text("SELECT 1"))  # the app's own writes go here
                sa_conn = await session.connection()
                raw = await sa_conn.get_raw_connection()  # its .driver_connection is psycopg's
                [kept] = await jobs.dispatch("user/signed.up", {"email": "f@x"}, conn=raw)
            async with AsyncSession(engine) as session, session.begin():
                raw = await (await session.connection()).get_raw_connection()
                [dropped] = await jobs.dispatch("user/signed.up", {"email": "h@x"},
                                                conn=raw.driver_connection)
                await session.rollback()
            assert len(await jobs.get_runs(event_id=kept)) == 1
            assert await jobs.get_runs(event_id=dropped) == []
    finally:
        await engine.dispose()


async def test_anything_but_a_psycopg_connection_is_refused_clearly(postgres_url: str) -> None:
    jobs = outbox_app(postgres_url)
    async with jobs:
        with pytest.raises(ConfigurationError, match="psycopg 3 connection"):
            await jobs.dispatch("user/signed.up", {"email": "g@x"}, conn=object())


# -- the concurrency-limit lock ---------------------------------------------------------------


async def test_only_claims_of_a_limited_job_wait_for_its_advisory_lock(postgres_url: str) -> None:
    from stride._ids import new_id
    from stride.stores.base import NewEvent, NewRun

    store = PostgresStore(postgres_url)
    await store.open()
    try:
        now = int(time.time() * 1000)
        batch = []
        for job in ("limited", "free"):
            event = NewEvent(new_id(), "test/e", "{}", None, now)
            batch.append((event, [NewRun(new_id(), "app", job, event.id, now)]))
        await store.publish(batch, dedupe_ms=0)
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as holder:
            # another process is in the middle of claiming "limited"
            await holder.execute("SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))",
                                 (store.schema, "app/limited"))

            free = await asyncio.wait_for(store.claim(
                worker_id="w", app_id="app", job_ids=["free"], limit=5, lease_ms=10_000,
                concurrency={}), timeout=2)
            blocked = asyncio.create_task(store.claim(
                worker_id="w", app_id="app", job_ids=["limited"], limit=5, lease_ms=10_000,
                concurrency={"limited": 1}))
            await asyncio.sleep(0.3)
            assert [c.job_id for c in free] == ["free"]
            assert not blocked.done()  # waits for the other claimer's transaction
            await holder.rollback()

        assert [c.job_id for c in await asyncio.wait_for(blocked, 2)] == ["limited"]
    finally:
        await store.close()


# -- keyed claims (migration 0011) -----------------------------------------------------------


async def publish_keyed(store: PostgresStore, keys: list[str]) -> list[str]:
    """One run of job "keyed" per key (limit 1 each), oldest first; their ids."""
    from stride._flow_decide import RunFlow
    from stride._ids import new_id
    from stride.stores.base import NewEvent, NewRun

    now = int(time.time() * 1000) - 1000
    batch, ids = [], []
    for offset, key in enumerate(keys):
        event = NewEvent(new_id(), "test/keyed", "{}", None, now)
        ids.append(new_id())
        batch.append((event, [NewRun(ids[-1], "app", "keyed", event.id, now + offset,
                                     flow=RunFlow(concurrency=((key, 1),)))]))
    await store.publish(batch, dedupe_ms=0)
    return ids


async def claim_keyed(store: PostgresStore) -> list[str]:
    claimed = await asyncio.wait_for(store.claim(
        worker_id="w", app_id="app", job_ids=["keyed"], limit=10, lease_ms=10_000,
        concurrency={}, keyed={"keyed"}), timeout=2)
    return [run.lease.run_id for run in claimed]


async def test_a_keyed_claim_leaves_a_key_another_claimer_is_deciding_on(
        postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        busy, free = await publish_keyed(store, ["busy", "free"])
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as other:
            # another worker's claim holds the key's lock until it commits
            await other.execute("SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))",
                                (f"{store.schema}/flow", "busy"))

            assert await claim_keyed(store) == [free], "no waiting, and no run of 'busy'"
            await other.rollback()

        assert await claim_keyed(store) == [busy]
    finally:
        await store.close()


async def test_the_keys_of_finished_runs_are_deleted_apart_from_the_claims(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from stride import _flow_decide

    monkeypatch.setattr(_flow_decide, "COLLECT_SECONDS", 0.0)  # at every claim
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        first, second = await publish_keyed(store, ["k", "k"])
        [lease] = [run.lease for run in await store.claim(
            worker_id="w", app_id="app", job_ids=["keyed"], limit=10, lease_ms=10_000,
            concurrency={}, keyed={"keyed"})]
        await store.finish(lease, status="completed", output_json="null", error_json=None)

        assert await claim_keyed(store) == [second], "the finished run freed the key"

        async def keys_left() -> set[str] | None:
            # a claim starts a collection unless one is still running: claim until it does
            assert await claim_keyed(store) == []
            with psycopg.connect(POSTGRES_URL) as conn:
                left = {row[0] for row in conn.execute(
                    f'SELECT run_id FROM "{store.schema}".run_keys')}
            return left if first not in left else None

        assert await eventually(keys_left, what="the finished run's keys deleted") == {second}
    finally:
        await store.close()
