"""The benchmark's database: a fresh store per run, and direct reads to measure it.

The engine keeps its SQL inside the stores. A benchmark has to look underneath them
(timestamps of 10,000 runs at once, rows written by type, workers registered), so its few
read-only queries live here, written once for both dialects.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
FINISHED = "status IN ('completed', 'failed', 'cancelled')"


class Skip(Exception):
    """The benchmark cannot run here (e.g. the PostgreSQL store is not written yet)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One fresh store: `url` is what the app gets; the rest is for cleaning up and probing."""

    store: str
    url: str
    directory: str | None = None
    server_url: str | None = None
    schema: str | None = None

    @property
    def path(self) -> str:
        return self.url[len("sqlite:///"):]


def make_target(store: str, postgres_url: str = DEFAULT_POSTGRES_URL) -> Target:
    """A temp SQLite file, or a fresh `bench_<random>` schema on the PostgreSQL server."""
    if store == "sqlite":
        directory = tempfile.mkdtemp(prefix="stride-bench-")
        return Target("sqlite", f"sqlite:///{directory}/bench.db", directory=directory)
    _require_postgres_store()
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    server_url = _without_query(postgres_url)
    _pg_execute(server_url, f'CREATE SCHEMA "{schema}"')
    return Target("postgres", _with_schema(postgres_url, schema), server_url=server_url,
                  schema=schema)


def drop_target(target: Target) -> None:
    """Delete the temp directory or drop the schema."""
    if target.directory is not None:
        shutil.rmtree(target.directory, ignore_errors=True)
    if target.schema is not None and target.server_url is not None:
        _pg_execute(target.server_url, f'DROP SCHEMA IF EXISTS "{target.schema}" CASCADE')


def _require_postgres_store() -> None:
    try:
        import stride.stores.postgres  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError as exc:
        raise Skip("the PostgreSQL store (stride/stores/postgres.py) is not importable yet "
                   f"({exc}); run with --store sqlite, or again once it lands") from exc


def _without_query(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(query=""))


def _with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _pg_execute(server_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql)


class Probe:
    """A read-only connection to the store's tables, for counting and timing."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._conn: Any
        if target.store == "sqlite":
            self._conn = sqlite3.connect(target.path, isolation_level=None, timeout=30)
        else:
            import psycopg

            self._conn = psycopg.connect(target.server_url or "", autocommit=True)
            self._conn.execute(f'SET search_path TO "{target.schema}"')

    def close(self) -> None:
        self._conn.close()

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql).fetchall())

    def scalar(self, sql: str) -> Any:
        return self.rows(sql)[0][0]

    def workers(self) -> int:
        """Workers that registered (a worker writes its row before it claims anything)."""
        return int(self.scalar("SELECT count(*) FROM workers"))

    def finished(self, job_id: str) -> int:
        return int(self.scalar(f"SELECT count(*) FROM runs WHERE job_id = '{job_id}' AND "
                               f"{FINISHED}"))

    def status_counts(self) -> dict[str, int]:
        return dict(self.rows("SELECT status, count(*) FROM runs GROUP BY status"))

    def span_ms(self, job_id: str) -> tuple[int, int]:
        """(first created_at, last ended_at) of the job's runs, epoch ms, from the store."""
        first, last = self.rows(f"SELECT min(created_at), max(ended_at) FROM runs "
                                f"WHERE job_id = '{job_id}'")[0]
        return int(first), int(last)

    def table_rows(self) -> dict[str, int]:
        """Rows now in each table (what was inserted; updates are not visible here)."""
        return {table: int(self.scalar(f"SELECT count(*) FROM {table}"))
                for table in ("events", "runs", "steps")}

    def pg_rows_written(self) -> dict[str, tuple[int, int, int]]:
        """PostgreSQL only: (inserted, updated, deleted) rows per table of this schema.

        Read after the workers exited: a backend flushes its statistics when it ends.
        """
        rows = self.rows(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables "
            f"WHERE schemaname = '{self.target.schema}'")
        return {name: (int(i), int(u), int(d)) for name, i, u, d in rows}

    def ping_timings(self) -> list[tuple[str, str | None, int | None]]:
        """(event id, output JSON, ended_at ms) of every finished ping run."""
        return [(str(e), o, t) for e, o, t in self.rows(
            "SELECT event_id, output, ended_at FROM runs WHERE job_id = 'ping'")]
