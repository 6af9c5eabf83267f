"""Fixtures shared by every test: database URLs for each backend, and a polling helper.

PostgreSQL tests use the server at STRIDE_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test); each test gets its own schema, dropped after it,
so runs cannot leak between tests even when tests run in parallel.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

if TYPE_CHECKING:
    from stride import Stride
    from stride._worker import Worker

T = TypeVar("T")
POSTGRES_URL = os.environ.get("STRIDE_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgres")


def _drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file for this test."""
    return f"sqlite:///{tmp_path / 'stride.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL server for this test."""
    schema = f"stride_test_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}schema={schema}"
    _drop_schema(schema)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes this runs once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'stride.db'}"
        return
    schema = f"stride_test_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}schema={schema}"
    _drop_schema(schema)


async def eventually(check: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0,
                     interval: float = 0.02, what: str = "condition") -> T:
    """Poll `check` until it returns something other than None/False; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def until_idle(worker: Worker) -> None:
    """The worker holds no run. A suspended run's status is visible once its commit lands,
    a moment before the worker that committed it stops counting it."""
    async def idle() -> bool:
        return worker.active_runs == 0

    await eventually(idle, timeout=2.0, what="the worker to hold no run")


async def all_finished(app: Stride, count: int, job_id: str | None = None) -> None:
    """Wait until `app` has exactly `count` runs (of `job_id`, if given), all finished."""
    async def done() -> bool:
        runs = await app.get_runs(job_id=job_id, limit=500)
        return len(runs) == count and all(run.finished for run in runs)

    await eventually(done, timeout=30, what=f"{count} finished runs")
