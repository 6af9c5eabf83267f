"""SQLAlchemy integration: every transaction on the engine runs under the current security context.

`install_rls(engine)` listens on the engine (sync `Engine` or `AsyncEngine`, Core and ORM
alike). Before a statement runs, it compares the current scope with the one already applied
to the open transaction; when they differ it runs, on the same connection,

    SELECT set_config(name, value, true) ...   -- app.user_id, app.rls_bypass, app.rls_tag

`true` makes the settings transaction-local: PostgreSQL drops them at COMMIT or ROLLBACK,
so nothing reaches the next transaction on a pooled connection. Re-checking per statement
(an identity comparison, no round trip) keeps a transaction begun before a `with` block
right inside it and after it. Outside every scope nothing is written, so an app that sets
its own session settings in web requests keeps them.

With `strict=True`, a statement inside a job (a run is executing) with neither an actor nor
a bypass raises `MissingSecurityContext` instead of silently returning no rows.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from stride._current import current_run
from stride.errors import ConfigurationError
from stride.integrations import (
    DEFAULT_SETTINGS,
    SET_CONFIG_SQL,
    SET_CONFIG_SQL_NUMBERED,
    RlsSettings,
    check_strict,
    set_config_params,
)
from stride.security import SecurityContext, current_security_context, scope_marker

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("stride.integrations.sqlalchemy")

_APPLIED = "stride.rls.applied"  # conn.info: the scope whose settings the open transaction has
_UNKNOWN = object()  # after a savepoint rollback: the settings may be anything, apply again
_ROLLING_BACK = object()  # the next statement is the ROLLBACK TO SAVEPOINT itself
_installed: weakref.WeakSet[Engine] = weakref.WeakSet()


@dataclass(slots=True, eq=False)
class RlsInstallation:
    """What `install_rls` did to an engine; `remove()` undoes it."""

    engine: Engine
    settings: RlsSettings
    strict: bool | None
    applies_settings: bool
    _listeners: list[tuple[str, Any]] = field(default_factory=list)

    def remove(self) -> None:
        """Stop applying the security context on this engine."""
        for name, fn in self._listeners:
            event.remove(self.engine, name, fn)
        self._listeners.clear()
        _installed.discard(self.engine)

    # -- the listeners -----------------------------------------------------

    def _begin(self, conn: Connection) -> None:
        conn.info[_APPLIED] = None  # a new transaction starts with the server's defaults

    def _savepoint_rolled_back(self, conn: Connection, name: str, context: Any) -> None:
        # Fired just before SQLAlchemy executes ROLLBACK TO SAVEPOINT (through this very
        # hook): settings applied now would be undone at once, so wait until it ran.
        conn.info[_APPLIED] = _ROLLING_BACK

    def _before_cursor_execute(self, conn: Connection, cursor: Any, statement: str,
                               parameters: Any, context: Any, executemany: bool) -> None:
        marker = scope_marker()
        applied = conn.info.get(_APPLIED, _UNKNOWN)
        if applied is _ROLLING_BACK:
            conn.info[_APPLIED] = _UNKNOWN
            return
        if marker is applied and (marker is not None or current_run.get() is None):
            return  # in force already, or no context outside jobs (web requests): nothing to do
        ctx = check_strict(self.strict, current_security_context())
        if marker is applied or not self.applies_settings:
            conn.info[_APPLIED] = marker
            return
        self._apply(conn, ctx)
        conn.info[_APPLIED] = marker

    def _apply(self, conn: Connection, ctx: SecurityContext) -> None:
        raw = conn.connection
        if getattr(raw.dbapi_connection, "autocommit", False) is True:
            raise ConfigurationError(
                "install_rls: this connection runs in AUTOCOMMIT mode, where transaction-local "
                "settings end with each statement; run the queries in a transaction (drop "
                "isolation_level='AUTOCOMMIT') so the security context applies")
        numbered = conn.dialect.paramstyle == "numeric_dollar"
        sql = SET_CONFIG_SQL_NUMBERED if numbered else SET_CONFIG_SQL
        params = set_config_params(self.settings, ctx)
        cursor = raw.cursor()  # a cursor of its own: the statement's may be server-side
        try:
            cursor.execute(sql, params)
        finally:
            cursor.close()


def install_rls(engine: Engine | AsyncEngine, *, settings: RlsSettings = DEFAULT_SETTINGS,
                strict: bool | None = None) -> RlsInstallation:
    """Apply the security context to every transaction of `engine` (sync or async).

    `strict=None` follows the STRIDE_RLS_STRICT environment variable (`stride dev` sets it).
    On a database other than PostgreSQL (SQLite) there is no row-level security: only the
    strict check runs, and a warning says so.

    Example:
        engine = create_async_engine("postgresql+psycopg://app@db/app")
        install_rls(engine, strict=True)

        async with with_actor(ctx.event.user), AsyncSession(engine) as session:
            docs = (await session.scalars(select(Document))).all()   # only theirs
    """
    sync_engine: object = getattr(engine, "sync_engine", engine)
    if not isinstance(sync_engine, Engine):
        raise ConfigurationError(f"install_rls needs a SQLAlchemy Engine or AsyncEngine, "
                                 f"got {engine!r}")
    if sync_engine in _installed:
        raise ConfigurationError(f"install_rls was already called on {sync_engine!r}")
    postgres = sync_engine.dialect.name == "postgresql"
    if not postgres:
        log.warning("install_rls on %s: it has no row-level security; only the strict check "
                    "applies", sync_engine.dialect.name)
    installation = RlsInstallation(sync_engine, settings, strict, postgres)
    for name, fn in (("begin", installation._begin),
                     ("rollback_savepoint", installation._savepoint_rolled_back),
                     ("before_cursor_execute", installation._before_cursor_execute)):
        event.listen(sync_engine, name, fn)
        installation._listeners.append((name, fn))
    _installed.add(sync_engine)
    return installation
