"""Where the PostgreSQL store connects, and how driver errors become one-line Stride errors.

The URL is passed to libpq as written, minus one parameter of Stride's own: `schema`
(which PostgreSQL schema holds Stride's tables). Everything else in the query string
(`sslmode`, `options`, `application_name`, ...) reaches libpq untouched: the query string is
edited as raw text, never decoded and re-encoded, so percent-escapes survive as written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import unquote

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

from stride.errors import ConfigurationError, StoreError, StoreUnavailable

DEFAULT_SCHEMA = "stride"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_LIBPQ_PREFIX = re.compile(r'^(connection failed: )?(connection to server at "[^"]*"'
                           r'( \([^)]*\))?, port \d+ failed: )?')


@dataclass(frozen=True, slots=True)
class PgTarget:
    """A validated PostgreSQL location: the libpq conninfo, Stride's schema, and for messages
    the host, port and database (never the password)."""

    conninfo: str
    schema: str
    host: str
    port: str
    dbname: str

    @property
    def quoted_schema(self) -> str:
        return f'"{self.schema}"'

    @property
    def where(self) -> str:
        return f"PostgreSQL at {self.host}:{self.port} (database {self.dbname!r})"


def parse_postgres_url(url: str, schema: str | None = None) -> PgTarget:
    """Split `url` into conninfo and schema; `schema=` as a keyword must agree with the URL's."""
    base, _, query = url.partition("?")
    kept: list[str] = []
    from_url: str | None = None
    for item in query.split("&") if query else []:
        key, _, value = item.partition("=")
        if unquote(key) == "schema":
            from_url = unquote(value)
        elif item:
            kept.append(item)
    if schema is not None and from_url is not None and schema != from_url:
        raise ConfigurationError(
            f"schema={schema!r} disagrees with schema={from_url!r} in the database URL; "
            "give the schema in one place")
    chosen = schema or from_url or DEFAULT_SCHEMA
    if not _SCHEMA_NAME.fullmatch(chosen):
        raise ConfigurationError(
            f"PostgreSQL schema name {chosen!r} is not allowed; use letters, digits and "
            "underscores (at most 63), starting with a letter or underscore")
    conninfo = base + ("?" + "&".join(kept) if kept else "")
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"database URL is not a valid PostgreSQL URL: {exc}") from exc
    return PgTarget(conninfo, chosen, str(params.get("host") or "localhost"),
                    str(params.get("port") or "5432"), str(params.get("dbname") or "postgres"))


def libpq_timeout(seconds: float) -> int:
    """libpq's connect_timeout is whole seconds, and it treats anything below 2 as 2."""
    return max(2, math.ceil(seconds))


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "the server is not there right now", worth retrying later."""
    if isinstance(exc, (psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed, OSError)):
        return True
    return isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, psycopg.errors.QueryCanceled)


def unavailable(target: PgTarget, exc: BaseException) -> StoreUnavailable:
    """The one-line error for an unreachable server: where, why, and what to do."""
    return StoreUnavailable(
        f"cannot reach {target.where}: {reason(exc)}; check that the server is running and "
        "accepts connections, and that STRIDE_DATABASE_URL (or database_url=) points at it")


def translate(target: PgTarget, exc: BaseException) -> StoreError:
    """Any driver error as a StoreError (StoreUnavailable when the server is unreachable)."""
    if is_unavailable(exc):
        return unavailable(target, exc)
    return StoreError(f"PostgreSQL error on {target.where}: {reason(exc)}")


def reason(exc: BaseException) -> str:
    """The useful part of a driver message on one line (libpq's are several lines long)."""
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0].strip()
    return _LIBPQ_PREFIX.sub("", first) or first
