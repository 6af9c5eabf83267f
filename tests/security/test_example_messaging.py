"""The Porygon example's `process-message` job on PostgreSQL under row-level security.

Each test sets up its own messaging schema and application role (unique names, so tests run
in parallel) with the example's own `MessagingDatabase.setup()`, runs the example app on an
in-process worker (Stride's store on SQLite), and checks the real rows as the superuser.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import DBAPIError

from examples.porygon.app import create_app
from examples.porygon.jobs_messaging import DATABASE_URL_ENV, messaging_from_env
from examples.porygon.messaging_db import MESSAGES_POLICY, MessagingDatabase
from stride import Run, Stride, _audit, set_actor, with_actor, with_rls_bypass
from tests.conftest import POSTGRES_URL, eventually
from tests.security.conftest import policy_template

ADMIN_URL = POSTGRES_URL.split("?", 1)[0]
ROOT = Path(__file__).resolve().parents[2]
SEND = "messaging/send.requested"
ADA = {"id": "user-ada"}
GRACE = {"id": "user-grace"}
REFUSED = 'new row violates row-level security policy for table "{}"'


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    """A fresh (schema, role) pair, both dropped after the test."""
    suffix = uuid.uuid4().hex[:12]
    schema, role = f"porygon_test_{suffix}", f"porygon_app_{suffix}"
    yield schema, role
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STRIDE_EXAMPLE_OUTPUT", str(tmp_path / "out"))
    return tmp_path / "out"


@pytest.fixture
async def messaging(names: tuple[str, str]) -> AsyncIterator[MessagingDatabase]:
    schema, role = names
    db = MessagingDatabase(ADMIN_URL, schema=schema, role=role, strict=True)
    yield db
    await db.aclose()


@pytest.fixture(autouse=True)
def _forget_kept_records() -> None:
    _audit._registry.take_kept()


async def save(db: MessagingDatabase, user: dict[str, str], message_id: str, body: str) -> None:
    """Store a message the way the web app (and demo.py) does: as its sender."""
    with set_actor(user):
        await db.save(message_id=message_id, owner_id=user["id"], channel="email",
                      recipient=user["id"], body=body)


def admin_rows(schema: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows as the superuser, whom row-level security does not filter."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"SET search_path TO {schema}")
        return admin.execute(sql).fetchall()  # type: ignore[arg-type]


async def dispatch(jobs: Stride, message_id: str, user: dict[str, str] | None) -> str:
    data = {"message_id": message_id, "channel": "email", "recipient": "ada",
            "body": "what the event says"}
    [event_id] = await jobs.dispatch(SEND, data, user=user)
    [run] = await jobs.get_runs(event_id=event_id)
    return run.id


async def test_the_job_reads_as_the_dispatching_user_and_records_delivery_as_system(
        sqlite_url: str, messaging: MessagingDatabase, names: tuple[str, str],
        output: Path) -> None:
    schema, _ = names
    await save(messaging, ADA, "m-ada", "Your file is ready")
    await save(messaging, GRACE, "m-grace", "Grace's private note")
    assert admin_rows(schema, "SELECT message_id, owner_id FROM messages ORDER BY 1") == [
        ("m-ada", "user-ada"), ("m-grace", "user-grace")]

    jobs = create_app(database_url=sqlite_url, messaging=messaging)
    async with jobs.worker(concurrency=4):
        own = await jobs.wait_for(await dispatch(jobs, "m-ada", ADA), timeout=30)
        other = await jobs.wait_for(await dispatch(jobs, "m-grace", ADA), timeout=30)

    assert own.status == "completed", own.error
    assert own.output == {"messageId": "m-ada", "channel": "email", "duplicate": False}
    assert [s.id for s in own.steps] == ["load-message", "render", "deliver", "record-delivery"]
    assert own.step("load-message").output["owner_id"] == "user-ada"
    [line] = (output / "outbox.jsonl").read_text().splitlines()
    assert json.loads(line)["text"] == (  # the stored message, not the event's copy
        "Hello user-ada,\n\nYour file is ready\n\n-- Porygon")

    # Grace's row exists (above) but Ada's run cannot see it: it fails instead of sending it
    assert other.status == "failed"
    load = other.step("load-message")
    assert load.error is not None and load.error["name"] == "NonRetriableError"
    assert "'m-grace' is not visible to user {'id': 'user-ada'}" in load.error["message"]
    assert [s.id for s in other.steps] == ["load-message"]

    assert admin_rows(schema, "SELECT idempotency_key, message_id, owner_id FROM deliveries") == [
        (f"{own.id}:deliver", "m-ada", "user-ada")]
    assert admin_rows(schema, "SELECT message_id, delivered_at IS NOT NULL FROM messages "
                              "ORDER BY 1") == [("m-ada", True), ("m-grace", False)]

    store = await jobs.store()
    [record] = await store.list_audit(run_id=own.id)
    assert (record.tag, record.job_id, record.step_id, record.outcome) == (
        "jobs:process-message", "process-message", "record-delivery", "ok")
    assert record.actor_json is not None and json.loads(record.actor_json) == ADA
    assert await store.list_audit(run_id=other.id) == []
    assert _audit.unwritten() == []
    await jobs.aclose()


async def test_the_tables_are_filtered_per_user_and_deliveries_are_system_only(
        messaging: MessagingDatabase) -> None:
    await save(messaging, ADA, "m-1", "one")
    await save(messaging, ADA, "m-2", "two")
    await save(messaging, GRACE, "m-3", "three")
    # Ada cannot file a message as Grace: the policy's WITH CHECK refuses the row
    with set_actor(ADA), pytest.raises(DBAPIError, match=REFUSED.format("messages")):
        await messaging.save(message_id="m-4", owner_id="user-grace", channel="sms",
                             recipient="x", body="forged")

    async with with_actor(ADA):
        assert await messaging.count_visible() == 2
        assert await messaging.load("m-3") is None
        ada_message = await messaging.load("m-1")
        assert ada_message is not None
        with pytest.raises(DBAPIError, match=REFUSED.format("deliveries")):
            await messaging.record_delivery(ada_message, "k-1")  # not without a bypass
    async with with_actor(GRACE):
        assert await messaging.count_visible() == 1
    assert await messaging.count_visible() == 0  # no context (outside a job): no rows
    assert await with_rls_bypass("test:count", messaging.count_visible) == 3


async def test_strict_mode_names_the_job_and_step_of_a_query_with_no_context(
        sqlite_url: str, messaging: MessagingDatabase, names: tuple[str, str]) -> None:
    await save(messaging, ADA, "m-ada", "hello")
    jobs = create_app(database_url=sqlite_url, messaging=messaging)
    lenient = MessagingDatabase(ADMIN_URL, schema=names[0], role=names[1], strict=False)

    @jobs.define_job(id="peek-messages", trigger="test/peek", retries=0)
    async def peek(ctx: Any) -> Any:
        found = await ctx.step.run("lenient", lenient.count_visible)  # silently nothing
        await ctx.step.run("peek", messaging.load, "m-ada")  # no actor, no bypass
        return found

    [event_id] = await jobs.dispatch("test/peek", {}, user=ADA)
    try:
        async with jobs.worker():
            [run] = await jobs.get_runs(event_id=event_id)
            run = await jobs.wait_for(run.id, timeout=30)
            no_user = await dispatch(jobs, "m-ada", None)
            first_error = await eventually(lambda: _first_error(jobs, no_user, "load-message"),
                                           timeout=30, what="load-message's first error")
            await jobs.cancel(no_user)
    finally:
        await lenient.aclose()
    assert run.status == "failed"
    assert run.step("lenient").output == 0
    error = run.step("peek").error
    assert error is not None and error["name"] == "MissingSecurityContext"
    assert f"job 'peek-messages', run {run.id}, step 'peek'" in error["message"]
    assert "no security context" in error["message"]

    # the example job itself, for an event dispatched with no user: it cannot act as anyone
    assert first_error["name"] == "MissingSecurityContext"
    assert f"job 'process-message', run {no_user}, step 'load-message'" in first_error["message"]
    await jobs.aclose()


async def _first_error(jobs: Stride, run_id: str, step_id: str) -> dict[str, Any] | None:
    run: Run = await jobs.get_run(run_id)
    steps = [s for s in run.steps if s.id == step_id and s.errors]
    return steps[0].errors[0] if steps else None


async def test_setup_is_idempotent_and_uses_the_documented_policy(
        names: tuple[str, str]) -> None:
    schema, role = names
    first, second = (MessagingDatabase(ADMIN_URL, schema=schema, role=role) for _ in range(2))
    await asyncio.gather(first.setup(), second.setup())  # two workers starting at once
    await MessagingDatabase(ADMIN_URL, schema=schema, role=role).setup()

    assert policy_template().replace("documents", "messages") == MESSAGES_POLICY
    tables = admin_rows(schema, "SELECT relname, relrowsecurity, relforcerowsecurity "
                                "FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
                                " AND relkind = 'r' ORDER BY 1")
    assert tables == [("deliveries", True, True), ("messages", True, True)]
    assert admin_rows(schema, f"SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles "
                              f"WHERE rolname = '{role}'") == [(False, False, False)]
    policies = admin_rows(schema, "SELECT tablename, policyname FROM pg_policies "
                                  "WHERE schemaname = current_schema() ORDER BY 1")
    assert policies == [("deliveries", "deliveries_system_only"),
                        ("messages", "messages_by_user")]


def test_without_the_url_the_example_needs_no_sqlalchemy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = {name: value for name, value in os.environ.items() if name != DATABASE_URL_ENV}
    code = "import sys, examples.porygon.app; print('sqlalchemy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False"

    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    assert messaging_from_env() is None
    monkeypatch.setenv(DATABASE_URL_ENV, ADMIN_URL)
    configured = messaging_from_env()
    assert configured is not None and (configured.schema, configured.role) == (
        "porygon", "porygon_app")
    monkeypatch.setenv(DATABASE_URL_ENV, "sqlite:///porygon.db")
    with pytest.raises(ValueError, match="SQLite has no row-level security to enforce"):
        messaging_from_env()
