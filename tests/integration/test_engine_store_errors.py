"""A database that cannot be used fails with one clear line, and is left as it was found.

SQLite only: these are failures of the file (garbage, locked by another process, a path
that cannot exist), which the PostgreSQL store meets in other forms.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from stride import StoreCorrupt, StoreError, StoreUnavailable, Stride
from stride.stores.base import NewEvent, NewRun, RunFilter
from stride.stores.sqlite import SqliteStore

GARBAGE = b"this is a spreadsheet, not a database\n" * 200


def one_event(event_id: str) -> list[tuple[NewEvent, list[NewRun]]]:
    now = time.time_ns() // 1_000_000
    return [(NewEvent(event_id, "user/signed-up", "{}", None, now),
             [NewRun(f"run-{event_id}", "store-errors", "welcome", event_id, now)])]


def assert_one_line_naming(error: BaseException, path: Path) -> None:
    message = str(error)
    assert "\n" not in message
    assert str(path) in message


# --- a file that is not a database -------------------------------------------------------------


async def test_a_garbage_file_is_reported_as_corrupt_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "stride.db"
    path.write_bytes(GARBAGE)
    app = Stride(app_id="store-errors", database_url=f"sqlite:///{path}")

    with pytest.raises(StoreCorrupt) as raised:
        await app.dispatch("user/signed-up", {"user_id": "u1"})

    assert_one_line_naming(raised.value, path)
    assert "is not a readable Stride SQLite database" in str(raised.value)
    assert path.read_bytes() == GARBAGE, "Stride must not overwrite the user's file"
    with pytest.raises(StoreCorrupt):
        await app.get_runs()
    await app.aclose()


async def test_a_damaged_database_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "stride.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    await store.publish(one_event("e1"), dedupe_ms=0)
    await store.close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[4096:] = GARBAGE[: len(data) - 4096]  # keep the header page, ruin every table page
    path.write_bytes(bytes(data))

    app = Stride(app_id="store-errors", database_url=f"sqlite:///{path}")
    with pytest.raises(StoreCorrupt) as raised:
        await app.get_runs()

    assert_one_line_naming(raised.value, path)
    await app.aclose()


async def test_a_path_that_cannot_be_created_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the directory should be")
    app = Stride(app_id="store-errors", database_url=f"sqlite:///{blocker}/stride.db")

    with pytest.raises(StoreError) as raised:
        await app.dispatch("user/signed-up", {})

    assert "\n" not in str(raised.value)
    assert str(blocker) in str(raised.value)
    await app.aclose()


# --- a database another process holds locked ---------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "stride.db"


@pytest.fixture
def exclusive_lock(db_path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the write lock (BEGIN EXCLUSIVE) until the test ends."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


async def test_a_locked_database_is_unavailable_after_the_busy_timeout(
        db_path: Path, exclusive_lock: sqlite3.Connection) -> None:
    store = SqliteStore(f"sqlite:///{db_path}", busy_timeout_ms=200)
    await store.open()
    exclusive_lock.execute("BEGIN EXCLUSIVE")

    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        await store.publish(one_event("e1"), dedupe_ms=0)
    waited = time.monotonic() - started

    assert 0.15 <= waited < 3, f"waited {waited:.2f} s for a 0.2 s busy timeout"
    assert_one_line_naming(raised.value, db_path)
    assert "locked" in str(raised.value)
    exclusive_lock.execute("ROLLBACK")
    assert await store.list_runs(RunFilter()) == [], "nothing was stored"
    await store.close()


async def test_the_store_works_again_once_the_lock_is_released(
        db_path: Path, exclusive_lock: sqlite3.Connection) -> None:
    store = SqliteStore(f"sqlite:///{db_path}", busy_timeout_ms=200)
    await store.open()
    exclusive_lock.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreUnavailable):
        await store.publish(one_event("e1"), dedupe_ms=0)

    exclusive_lock.execute("ROLLBACK")
    result = await store.publish(one_event("e2"), dedupe_ms=0)

    assert result.accepted == ("e2",)
    assert await store.get_event("e1") is None, "the refused event was not stored"
    assert await store.get_event("e2") is not None
    await store.close()


async def test_opening_a_locked_database_is_unavailable(
        db_path: Path, exclusive_lock: sqlite3.Connection) -> None:
    exclusive_lock.execute("BEGIN EXCLUSIVE")
    store = SqliteStore(f"sqlite:///{db_path}", busy_timeout_ms=200)

    with pytest.raises(StoreUnavailable) as raised:
        await store.open()

    assert_one_line_naming(raised.value, db_path)
