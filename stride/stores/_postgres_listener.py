"""LISTEN on the store's channel, so an idle worker hears about new work within milliseconds.

One dedicated connection (not from the pool: it must stay idle in LISTEN) per store. Every
notification, and every reconnect (notifications sent while the connection was down are
lost), calls `on_change`; the store turns that into a wake-up of `wait_for_change`. If the
server goes away, the listener reconnects with backoff and logs one line per outage; the
worker's poll keeps work moving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg

from stride.stores._postgres_conn import PgTarget, libpq_timeout, reason, unavailable

log = logging.getLogger("stride.store.postgres")

_BACKOFF_START = 0.1
_BACKOFF_MAX = 2.0


class Listener:
    """Keeps `LISTEN "<channel>"` open on its own connection and reports notifications."""

    def __init__(self, target: PgTarget, channel: str, on_change: Callable[[], None], *,
                 connect_timeout: float) -> None:
        self._target = target
        self._channel = channel
        self._on_change = on_change
        self._connect_timeout = connect_timeout
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and LISTEN now (errors surface to `open()`), then listen in the background."""
        try:
            conn = await self._connect()
        except psycopg.Error as exc:
            raise unavailable(self._target, exc) from exc
        self._task = asyncio.create_task(self._run(conn), name="stride-pg-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(
            self._target.conninfo, autocommit=True,
            connect_timeout=libpq_timeout(self._connect_timeout),
            fallback_application_name="stride-listener")
        await conn.execute(f'LISTEN "{self._channel}"')
        return conn

    async def _run(self, conn: psycopg.AsyncConnection[Any] | None) -> None:
        delay, failing = _BACKOFF_START, False
        try:
            while True:
                try:
                    if conn is None:
                        conn = await self._connect()
                        self._on_change()  # notifications sent while we were away are lost
                        if failing:
                            log.warning("listening on %s again", self._target.where)
                        delay, failing = _BACKOFF_START, False
                    async for _ in conn.notifies():
                        self._on_change()
                except psycopg.Error as exc:
                    if not failing:  # one line per outage
                        log.warning("lost the notification connection to %s (%s); "
                                    "reconnecting, workers poll meanwhile",
                                    self._target.where, reason(exc))
                    failing = True
                if conn is not None:
                    await _close_quietly(conn)
                    conn = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
        finally:
            if conn is not None:
                await _close_quietly(conn)


async def _close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(Exception):
        await conn.close()
