"""psycopg 3 integration: transactions that start under the current security context.

psycopg has no per-statement hook, so the context is applied where a transaction starts:

    async with rls_transaction(conn):            # a connection you hold
        await conn.execute("SELECT * FROM documents")

    async with rls_connection(pool) as conn:     # a pooled connection, in a transaction
        ...

Both begin a transaction and first run `SELECT set_config(name, value, true) ...`; the
settings are transaction-local, so they end with the block and never reach the next user of
a pooled connection. The context is read once, when the block starts: enter `with_actor` /
`with_rls_bypass` first, then the transaction. Queries run outside these blocks are not
covered (nor is strict mode): route job database work through them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from typing import Any, TypeVar, overload

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from stride.errors import ConfigurationError
from stride.integrations import (
    DEFAULT_SETTINGS,
    SET_CONFIG_SQL,
    RlsSettings,
    check_strict,
    set_config_params,
)

R = TypeVar("R")
AConn = TypeVar("AConn", bound="psycopg.AsyncConnection[Any]")
SConn = TypeVar("SConn", bound="psycopg.Connection[Any]")


@overload
def rls_transaction(conn: psycopg.AsyncConnection[R], *, settings: RlsSettings = ...,
                    strict: bool | None = ...
                    ) -> AbstractAsyncContextManager[psycopg.AsyncTransaction]: ...


@overload
def rls_transaction(conn: psycopg.Connection[R], *, settings: RlsSettings = ...,
                    strict: bool | None = ...) -> AbstractContextManager[psycopg.Transaction]: ...


def rls_transaction(conn: psycopg.AsyncConnection[R] | psycopg.Connection[R], *,
                    settings: RlsSettings = DEFAULT_SETTINGS, strict: bool | None = None
                    ) -> Any:
    """A transaction on `conn` (async or sync) under the current security context.

    `conn` must not be inside a transaction already (the settings would outlive the block
    until that outer transaction ends). With strict mode (`strict=True`, or STRIDE_RLS_STRICT
    when None), raises `MissingSecurityContext` inside a job with no actor and no bypass.

    Example:
        async with with_actor(ctx.event.user), rls_transaction(conn):
            cur = await conn.execute("SELECT id FROM documents")
    """
    if isinstance(conn, psycopg.AsyncConnection):
        return _async_transaction(conn, settings, strict)
    if isinstance(conn, psycopg.Connection):
        return _sync_transaction(conn, settings, strict)
    raise ConfigurationError(f"rls_transaction needs a psycopg 3 connection, got {conn!r}")


def _require_idle(conn: psycopg.AsyncConnection[R] | psycopg.Connection[R]) -> None:
    status = conn.info.transaction_status
    if status != pq.TransactionStatus.IDLE:
        raise ConfigurationError(
            f"rls_transaction must start the transaction, but the connection is {status.name}: "
            "commit or roll back first (or use an autocommit connection)")


@asynccontextmanager
async def _async_transaction(conn: psycopg.AsyncConnection[R], settings: RlsSettings,
                             strict: bool | None) -> AsyncIterator[psycopg.AsyncTransaction]:
    _require_idle(conn)
    ctx = check_strict(strict)
    async with conn.transaction() as tx:
        await conn.execute(SET_CONFIG_SQL, set_config_params(settings, ctx))
        yield tx


@contextmanager
def _sync_transaction(conn: psycopg.Connection[R], settings: RlsSettings,
                      strict: bool | None) -> Iterator[psycopg.Transaction]:
    _require_idle(conn)
    ctx = check_strict(strict)
    with conn.transaction() as tx:
        conn.execute(SET_CONFIG_SQL, set_config_params(settings, ctx))
        yield tx


@overload
def rls_connection(pool: AsyncConnectionPool[AConn], *, settings: RlsSettings = ...,
                   strict: bool | None = ..., timeout: float | None = ...
                   ) -> AbstractAsyncContextManager[AConn]: ...


@overload
def rls_connection(pool: ConnectionPool[SConn], *, settings: RlsSettings = ...,
                   strict: bool | None = ..., timeout: float | None = ...
                   ) -> AbstractContextManager[SConn]: ...


def rls_connection(pool: AsyncConnectionPool[AConn] | ConnectionPool[SConn], *,
                   settings: RlsSettings = DEFAULT_SETTINGS, strict: bool | None = None,
                   timeout: float | None = None) -> Any:
    """A connection from `pool` (async or sync), inside an `rls_transaction` for the block.

    Example:
        async with with_rls_bypass("jobs:reindex"), rls_connection(pool) as conn:
            await conn.execute("UPDATE documents SET indexed = true")
    """
    if isinstance(pool, AsyncConnectionPool):
        return _async_connection(pool, settings, strict, timeout)
    if isinstance(pool, ConnectionPool):
        return _sync_connection(pool, settings, strict, timeout)
    raise ConfigurationError(f"rls_connection needs a psycopg_pool pool, got {pool!r}")


@asynccontextmanager
async def _async_connection(pool: AsyncConnectionPool[AConn], settings: RlsSettings,
                            strict: bool | None, timeout: float | None) -> AsyncIterator[AConn]:
    check_strict(strict)  # before taking a connection from the pool
    async with pool.connection(timeout) as conn, rls_transaction(
            conn, settings=settings, strict=strict):
        yield conn


@contextmanager
def _sync_connection(pool: ConnectionPool[SConn], settings: RlsSettings, strict: bool | None,
                     timeout: float | None) -> Iterator[SConn]:
    check_strict(strict)
    with pool.connection(timeout) as conn, rls_transaction(conn, settings=settings,
                                                          strict=strict):
        yield conn
