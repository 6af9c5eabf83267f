"""Transactional dispatch: events written in the application's own transaction (outbox).

The app passes its connection (`dispatch(..., conn=...)`); the rows are written with it, and
not committed: they commit with the app's transaction or vanish with its rollback. NOTIFY is
transactional in PostgreSQL, so idle workers hear of the events exactly when they commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psycopg

from stride.errors import ConfigurationError


async def write_in(conn: Any, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run the publish statement (it notifies too) on the caller's connection; its rows.

    Accepts a psycopg `AsyncConnection`, a sync `Connection` (run in a thread: the caller
    waits for us, so nothing else uses it meanwhile), or a wrapper with `driver_connection`
    (SQLAlchemy's adapted connection, as `(await session.connection()).get_raw_connection()`
    returns it).
    """
    conn = getattr(conn, "driver_connection", conn)
    if isinstance(conn, psycopg.AsyncConnection):
        return await _write_async(conn, sql, params)
    if isinstance(conn, psycopg.Connection):
        return await asyncio.to_thread(_write_sync, conn, sql, params)
    raise ConfigurationError(
        "dispatch(conn=...) needs a psycopg 3 connection (psycopg.AsyncConnection or "
        f"psycopg.Connection) in an open transaction, got {type(conn).__name__}; with "
        "SQLAlchemy pass (await session.connection()).get_raw_connection()")


async def _write_async(conn: psycopg.AsyncConnection[Any], sql: str,
                       params: Sequence[Any]) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql, params)
    return await cur.fetchall()


def _write_sync(conn: psycopg.Connection[Any], sql: str,
                params: Sequence[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()
