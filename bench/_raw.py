"""The raw limit of the store: how many single-row committed inserts per second it takes.

Measured in the same run as the figure it is printed beside, with the same settings the
store uses (SQLite: WAL, synchronous=NORMAL, one connection; PostgreSQL: autocommit), so
that `jobs/s ÷ raw commits/s` stays meaningful on a noisy shared machine.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass

from bench._db import Target, drop_target, make_target

RAW_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class RawLimit:
    commits_per_s: float
    connections: int
    how: str


def measure(target: Target, seconds: float = RAW_SECONDS) -> list[RawLimit]:
    """SQLite: one connection. PostgreSQL: one connection, then eight in parallel."""
    if target.store == "sqlite":
        assert target.directory is not None
        return [sqlite_commits(os.path.join(target.directory, "raw.db"), seconds)]
    return [postgres_commits(target, 1, seconds), postgres_commits(target, 8, seconds)]


def measure_apart(store: str, postgres_url: str) -> list[RawLimit]:
    """`measure` on a store of its own, dropped after (raises `Skip` where the store cannot
    run), for benchmarks whose own stores are made per round."""
    target = make_target(store, postgres_url)
    try:
        return measure(target)
    finally:
        drop_target(target)


def sqlite_commits(path: str, seconds: float) -> RawLimit:
    """A loop of BEGIN; INSERT one row; COMMIT on one connection, for `seconds`."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "temp_store = MEMORY",
                   "cache_size = -16000"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    count, deadline = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO raw (v) VALUES (?)", ("x" * 64,))
        conn.execute("COMMIT")
        count += 1
    elapsed = time.perf_counter() - started
    conn.close()
    return RawLimit(count / elapsed, 1, "BEGIN IMMEDIATE; INSERT 1 row; COMMIT in a loop, "
                    "one connection, WAL, synchronous=NORMAL")


def postgres_commits(target: Target, connections: int, seconds: float) -> RawLimit:
    """Autocommit single-row INSERTs from `connections` threads, each on its own connection."""
    import psycopg

    with psycopg.connect(target.server_url or "", autocommit=True) as conn:
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{target.schema}".raw '
                     "(id bigserial PRIMARY KEY, v text NOT NULL)")
    counts = [0] * connections
    start = threading.Barrier(connections)

    def loop(index: int) -> None:
        with psycopg.connect(target.server_url or "", autocommit=True) as conn:
            sql = f'INSERT INTO "{target.schema}".raw (v) VALUES (%s)'
            start.wait()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                conn.execute(sql, ("x" * 64,))
                counts[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with psycopg.connect(target.server_url or "", autocommit=True) as conn:
        conn.execute(f'DROP TABLE "{target.schema}".raw')  # keep the write counts clean
    return RawLimit(sum(counts) / seconds, connections,
                    f"autocommit INSERT 1 row in a loop, {connections} connection(s) in threads")


def describe(limits: list[RawLimit]) -> str:
    return "\n".join(f"raw limit: {limit.commits_per_s:,.0f} committed inserts/s "
                     f"({limit.how}, {RAW_SECONDS:g} s)" for limit in limits)
