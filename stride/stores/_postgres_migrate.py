"""Versioned migrations for the PostgreSQL store, safe when many processes start at once.

Scripts live in `stride/stores/migrations/postgres/NNNN_name.sql`. `migrate` holds a
session advisory lock keyed by the schema while it reads `schema_migrations` and applies
what is missing, each script in its own transaction with its version row. A second process
starting at the same moment waits for the lock, then finds nothing left to do.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import psycopg

MIGRATIONS_PACKAGE = "stride.stores.migrations"


def scripts() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every shipped migration, in version order."""
    folder = resources.files(MIGRATIONS_PACKAGE).joinpath("postgres")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str) -> list[int]:
    """Bring `schema` up to date on `conn` (autocommit); returns the versions applied."""
    quoted = f'"{schema}"'
    await conn.execute("SELECT pg_advisory_lock(hashtext(%s::text)::bigint)",
                       (f"stride.migrate:{schema}",))
    try:
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations ("
                "version integer PRIMARY KEY, applied_at bigint NOT NULL)")
        cur = await conn.execute(f"SELECT version FROM {quoted}.schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        applied = []
        for version, _name, sql in scripts():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(f"SET LOCAL search_path TO {quoted}")
                await conn.execute(sql.encode())
                await conn.execute(
                    f"INSERT INTO {quoted}.schema_migrations (version, applied_at) "
                    "VALUES (%s, %s)", (version, time.time_ns() // 1_000_000))
            applied.append(version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext(%s::text)::bigint)",
                           (f"stride.migrate:{schema}",))
